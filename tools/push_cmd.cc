// `extrafs push`: the command line of store/push.h, writing through the S3 writer of backend/.
#include <time.h>
#include <unistd.h>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>

#include "backend/object_writer.h"
#include "common/log.h"
#include "common/posix_file.h"
#include "common/str_util.h"
#include "store/push.h"
#include "tools/commands.h"

namespace extrafs::tools {

namespace {

double now_s() {
  struct timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

struct PushArgs {
  std::string store, destination;
  backend::HttpOptions s3;
  bool prune = false;
};

// For the tests only (not part of the command line contract): objects larger than this many
// bytes go up as multipart uploads in parts of this size (at least 5 MiB), so that multipart can
// be tested without 5 GiB blobs.
constexpr const char* kPartSizeEnv = "EXTRAFS_PUSH_PART_SIZE";

int run_push(const PushArgs& a) {
  if (a.destination.rfind("s3://", 0) != 0)
    return fail("push: the destination '" + escape_control(a.destination) + "' is not an s3://BUCKET[/PREFIX] URL", 2);
  if (!is_dir(a.store)) return fail("push: store " + a.store + " does not exist or is not a directory", 2);
  backend::S3WriterOptions wo;
  wo.http = a.s3;
  if (const char* env = std::getenv(kPartSizeEnv); env != nullptr && *env != '\0') {
    auto v = parse_size(env);
    if (!v || *v < backend::kMinPartSize)
      return fail(fmt::format("push: {}={}: expected a size of at least 5M", kPartSizeEnv, env), 2);
    wo.multipart_threshold = wo.part_size = std::min(*v, backend::kMaxSinglePut);
  }
  auto writer = backend::make_s3_writer(a.destination, wo);
  if (!writer.ok()) return fail("push: " + writer.error().message, writer.code() == EINVAL ? 2 : 1);

  store::PushRequest req;
  req.store = a.store;
  req.destination = writer->get();
  req.prune = a.prune;
  const double t0 = now_s();
  double last = 0;
  bool shown = false;
  if (::isatty(2)) {
    req.progress = [&](const store::PushProgress& p) {
      const double t = now_s();
      if (t - last < 0.1 && p.objects_done < p.objects_total) return;
      last = t;
      const double rate = t > t0 ? static_cast<double>(p.bytes_done) / (t - t0) : 0;
      std::fprintf(stderr, "\r\033[Kpushing: %llu/%llu objects checked, %s of %s uploaded, %s/s",
                   static_cast<unsigned long long>(p.objects_done), static_cast<unsigned long long>(p.objects_total),
                   format_size(p.bytes_done).c_str(), format_size(p.bytes_total).c_str(),
                   format_size(static_cast<uint64_t>(rate)).c_str());
      std::fflush(stderr);
      shown = true;
    };
  }
  auto report = store::push_store(req);
  if (shown) std::fprintf(stderr, "\r\033[K");
  if (!report.ok()) return fail("push: " + report.error().message, 1);
  std::string catalog =
      report->generation > 0 ? fmt::format("catalog generation {}", report->generation) : std::string("catalog");
  catalog += report->catalog_uploaded ? " uploaded" : " already there";
  std::string pruned;
  if (a.prune)
    pruned = fmt::format("; {} objects ({}) deleted", report->objects_deleted, format_size(report->bytes_deleted));
  std::printf("pushed %s to %s: %llu objects, %llu uploaded (%s), %llu already there; %s%s in %.1f s\n",
              a.store.c_str(), a.destination.c_str(), static_cast<unsigned long long>(report->objects_named),
              static_cast<unsigned long long>(report->objects_uploaded), format_size(report->bytes_uploaded).c_str(),
              static_cast<unsigned long long>(report->objects_present), catalog.c_str(), pruned.c_str(), now_s() - t0);
  return 0;
}

}  // namespace

void add_push_command(CLI::App& app, int* exit_code) {
  auto* sub = app.add_subcommand("push", "upload a local store into an S3 bucket, the catalog last");
  auto args = std::make_shared<PushArgs>();
  sub->add_option("STORE", args->store, "the local store directory")->required();
  sub->add_option("DESTINATION", args->destination, "s3://BUCKET[/PREFIX]")->required();
  sub->add_option("--s3-endpoint", args->s3.s3_endpoint, "an S3-compatible service (path-style); default AWS");
  sub->add_option("--s3-region", args->s3.s3_region, "the region to sign for (default us-east-1)");
  sub->add_option("--s3-credentials", args->s3.s3_credentials, "an AWS shared-credentials file (mode 0600)");
  sub->add_option("--s3-profile", args->s3.s3_profile, "its profile (default 'default')");
  sub->add_flag("--prune", args->prune, "then delete what the store no longer has from the bucket");
  sub->callback([args, exit_code] { *exit_code = run_push(*args); });
}

}  // namespace extrafs::tools
