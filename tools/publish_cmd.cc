// `extrafs publish`: the command line of store/publish.h.
#include <time.h>
#include <unistd.h>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>

#include "common/log.h"
#include "common/str_util.h"
#include "store/docker_meta.h"
#include "store/publish.h"
#include "tools/commands.h"

namespace extrafs::tools {

namespace {

using store::PublishProgress;
using store::PublishRequest;

double now_s() {
  struct timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

struct PublishArgs {
  std::string data_root, archive, store, order;
  std::vector<std::string> images;
  bool chunk_objects = false;
};

int run_publish(const PublishArgs& a) {
  if (!a.data_root.empty() && !a.archive.empty())
    return fail("publish: --data-root and --archive exclude each other", 2);
  if (a.data_root.empty() && a.archive.empty())
    return fail("publish: give --data-root DIR IMAGE... or --archive FILE.tar", 2);
  if (!a.data_root.empty() && a.images.empty())
    return fail("publish: --data-root needs at least one IMAGE (name:tag)", 2);
  if (!a.archive.empty() && !a.images.empty())
    return fail("publish: --archive takes no IMAGE (it publishes every image of the archive)", 2);
  for (const auto& i : a.images)
    if (i.rfind("sha256:", 0) != 0)
      if (auto st = store::check_reference(store::normalize_ref(i)); !st.ok())
        return fail("publish: " + st.error().message, 2);
  PublishRequest req;
  req.data_root = a.data_root;
  req.archive = a.archive;
  req.store = a.store;
  req.order_file = a.order;
  req.images = a.images;
  req.chunk_objects = a.chunk_objects;
  const double t0 = now_s();
  const bool tty = ::isatty(2);
  double last = 0;
  bool shown = false;
  if (tty) {
    req.progress = [&](const PublishProgress& p) {
      double t = now_s();
      if (t - last < 0.1 && p.bytes_done < p.bytes_total) return;
      last = t;
      double rate = t > t0 ? static_cast<double>(p.bytes_done) / (t - t0) : 0;
      std::fprintf(stderr, "\r\033[Kpublishing layer %d/%d: %s of %s, %s/s", p.layer, p.layers,
                   format_size(p.bytes_done).c_str(), format_size(p.bytes_total).c_str(),
                   format_size(static_cast<uint64_t>(rate)).c_str());
      std::fflush(stderr);
      shown = true;
    };
  }
  auto report = store::publish(req);
  if (shown) std::fprintf(stderr, "\r\033[K");
  if (!report.ok()) return fail("publish: " + report.error().message, 1);
  std::string tags;
  for (const auto& t : report->tags) tags += (tags.empty() ? "" : ", ") + t;
  std::string ordered;
  if (!a.order.empty() && !a.chunk_objects)
    ordered = ", " + format_size(report->ordered_bytes) + " of it in trace order first";
  if (a.chunk_objects) ordered = fmt::format(" ({} new chunk objects)", report->objects_written);
  if (!a.order.empty() && a.chunk_objects)
    print_error("extrafs",
                "publish: warning: --order has no effect with --chunk-objects (the layers have no blob to order; "
                "hosts fetch their start-up's chunks as they read them)");
  // A layer already in the store is left as it is: its blob keeps the packing (and the catalog
  // the ordered prefix) of the publish that wrote it, which live hosts may be reading.
  if (!a.order.empty() && report->layers_present > 0)
    print_error(
        "extrafs",
        fmt::format("publish: warning: --order applies only to layers written now; {} layer{} already in {} keep{} the "
                    "packing they were written with (publish into a new store to pack them in this trace's order)",
                    report->layers_present, report->layers_present == 1 ? "" : "s", a.store,
                    report->layers_present == 1 ? "s" : ""));
  std::printf("published %s to %s: %d layers written, %d already in the store; %s packed into %s%s in %.1f s\n",
              tags.empty() ? "(untagged)" : tags.c_str(), a.store.c_str(), report->layers_written,
              report->layers_present, format_size(report->raw_bytes).c_str(), format_size(report->stored_bytes).c_str(),
              ordered.c_str(), now_s() - t0);
  return 0;
}

}  // namespace

void add_publish_command(CLI::App& app, int* exit_code) {
  auto* sub = app.add_subcommand("publish", "write images into a store (packed layers, indexes, docker metadata)");
  auto args = std::make_shared<PublishArgs>();
  sub->add_option("IMAGE", args->images, "name:tag of images in the data-root");
  sub->add_option("--data-root", args->data_root, "a dockerd data-root to read (dockerd may be running)");
  sub->add_option("--archive", args->archive, "a 'docker save' tar");
  sub->add_option("--to", args->store, "the store directory (created if missing)")->required();
  sub->add_option("--order", args->order, "a first-access trace (extrafs mount -o record=DIR): pack its files first");
  sub->add_flag("--chunk-objects", args->chunk_objects,
                "every chunk its own object extrafs/objects/<digest> (cacheable whole by any HTTP proxy, stored once "
                "across layers) instead of ranges of a layer blob");
  sub->callback([args, exit_code] { *exit_code = run_publish(*args); });
}

}  // namespace extrafs::tools
