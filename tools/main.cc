// The `extrafs` command: one CLI11 subcommand per verb of the contract in DESIGN.md. Each verb
// parses its arguments here and calls into the library layers; exit codes are 0 (success),
// 1 (runtime failure) and 2 (usage error), and every failure is one line on stderr.
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>

#include "cache/block_cache.h"
#include "cache/whole_files.h"
#include "common/log.h"
#include "common/str_util.h"
#include "store/indexer.h"
#include "tools/commands.h"
#include "tools/mount_cmd.h"
#include "tools/mount_stats.h"
#include "tools/prometheus.h"

namespace extrafs::tools {

int fail(const std::string& msg, int code) {
  print_error("extrafs", msg);
  return code;
}

namespace {

int cmd_index(const std::string& store) {
  bool tty = ::isatty(2);
  auto report = store::index_store(store, [&](const std::string& line) {
    if (tty) std::fprintf(stderr, "%s\n", escape_control(line).c_str());
  });
  if (!report.ok()) return fail(report.error().message);
  for (const auto& s : report->skipped) print_error("extrafs: warning", s);
  for (const auto& s : report->damaged) print_error("extrafs: warning", s);
  std::printf("%d layers indexed, %d already indexed%s%s%s\n", report->layers_indexed, report->layers_present,
              report->skipped.empty() ? "" : fmt::format(", {} skipped", report->skipped.size()).c_str(),
              report->damaged.empty() ? "" : fmt::format(", {} damaged", report->damaged.size()).c_str(),
              report->catalog_written ? "; catalog written" : "; catalog unchanged");
  // The catalog of the rest is written and mountable; exit 1 tells a script that layers are
  // missing or cannot be served.
  return report->skipped.empty() && report->damaged.empty() ? 0 : 1;
}

int cmd_stats(const std::string& mountpoint, bool json, bool prometheus) {
  auto j = read_mount_stats(mountpoint);
  if (!j.ok()) return fail(j.error().message);
  if (json) {
    std::cout << j->dump(2) << "\n";
    return 0;
  }
  if (prometheus) {
    // The image label comes from the mount's own image/ tree; without one the layers still show.
    auto images = layer_images(mountpoint);
    if (!images.ok()) std::cout << "# extrafs: no image names: " << images.error().message << "\n";
    std::cout << render_prometheus(*j, images.ok() ? *images : LayerImages{});
    return 0;
  }
  auto u = [&](const char* k) { return (*j)[k].get<uint64_t>(); };
  std::printf("source          %s\n", (*j)["source"].get<std::string>().c_str());
  std::printf("bytes fetched   %s (%llu chunks)\n", format_size(u("bytes_fetched")).c_str(),
              static_cast<unsigned long long>(u("chunks_fetched")));
  std::printf("bytes served    %s\n", format_size(u("bytes_served")).c_str());
  std::printf("cache           %llu hits, %llu misses, %s held\n", static_cast<unsigned long long>(u("cache_hits")),
              static_cast<unsigned long long>(u("cache_misses")), format_size(u("cache_bytes")).c_str());
  std::printf("backend errors  %llu\n", static_cast<unsigned long long>(u("backend_errors")));
  if (j->contains("cache_write_errors"))
    std::printf("cache errors    %llu failed writes\n", static_cast<unsigned long long>(u("cache_write_errors")));
  for (const auto& l : (*j)["layers"]) {
    uint64_t total = l["bytes_total"].get<uint64_t>(), cached = l["bytes_cached"].get<uint64_t>();
    std::printf("layer %.12s  %10s  %5.1f%% cached\n", l["cache_id"].get<std::string>().c_str(), format_size(total).c_str(),
                total ? 100.0 * static_cast<double>(cached) / static_cast<double>(total) : 100.0);
  }
  return 0;
}

int cmd_cache(const std::string& verb, const std::string& dir, const std::string& size_text) {
  if (verb == "stat") {
    auto info = cache::inspect_block_cache(dir);
    if (!info.ok()) return fail(info.error().message);
    std::printf("cache           %s\n", dir.c_str());
    std::printf("chunks          %llu (%s)\n", static_cast<unsigned long long>(info->chunks), format_size(info->bytes).c_str());
    std::printf("metadata blobs  %llu\n", static_cast<unsigned long long>(info->meta_blobs));
    const auto copies = cache::inspect_whole_files(dir);
    std::printf("whole files     %llu (%s)\n", static_cast<unsigned long long>(copies.files),
                format_size(copies.bytes).c_str());
    std::printf("stray files     %llu\n", static_cast<unsigned long long>(info->stray_files));
    if (info->owner_pid > 0) std::printf("in use by       extrafs pid %ld\n", info->owner_pid);
    else if (info->owner_pid < 0) std::printf("in use by       another process\n");
    else std::printf("in use by       nobody\n");
    return 0;
  }
  uint64_t target = 0;
  if (!size_text.empty()) {
    auto v = parse_size(size_text);
    if (!v) return fail("--size " + size_text + ": expected a size like 512M or 20G", 2);
    target = *v;
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return fail("cache " + dir + " does not exist");
  auto bc = cache::BlockCache::open(dir, UINT64_MAX);
  if (!bc.ok()) {
    if (bc.code() == EBUSY) return fail(bc.error().message + "; unmount it first");
    return fail(bc.error().message);
  }
  // Whole-file copies are not checked here (a copy is hashed against the layer index, which the
  // cache does not hold, on its first use by a mount): verify and gc remove them; a file read
  // whole again gets a new one.
  auto copies = cache::remove_whole_files(dir);
  if (!copies.ok()) return fail(copies.error().message);
  if (verb == "verify") {
    auto dropped = (*bc)->verify_all();
    if (!dropped.ok()) return fail(dropped.error().message);
    auto s = (*bc)->stats();
    std::printf("%llu chunks verified, %llu corrupt chunks dropped\n", static_cast<unsigned long long>(s.chunks + *dropped),
                static_cast<unsigned long long>(*dropped));
    if (*copies) std::printf("%s of whole-file copies removed (made again when a file is read whole)\n", format_size(*copies).c_str());
    return *dropped ? 1 : 0;
  }
  uint64_t before = (*bc)->stats().bytes;
  auto st2 = (*bc)->shrink_to(target);
  if (!st2.ok()) return fail(st2.error().message);
  auto s = (*bc)->stats();
  std::printf("%s freed, %s in %llu chunks kept\n", format_size(before - s.bytes + *copies).c_str(), format_size(s.bytes).c_str(),
              static_cast<unsigned long long>(s.chunks));
  return 0;
}

int main_impl(int argc, char** argv) {
  // Library warnings (a corrupt chunk dropped, ...) go to stderr, never into command output.
  init_logging(spdlog::level::warn, /*to_syslog=*/false);
  CLI::App app{"extrafs: container image layers from shared storage, fetched lazily", "extrafs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "extrafs 0.1.0");

  MountRequest mreq;
  std::vector<std::string> mopts;
  auto* mount = app.add_subcommand("mount", "mount a store (local directory, nfs://, http(s):// or s3:// URL) read-only");
  mount->add_option("SOURCE", mreq.source,
                    "an absolute directory, nfs://HOST[:PORT]/EXPORT[/SUBDIR][?...], http(s)://HOST[:PORT]/PATH or "
                    "s3://BUCKET[/PREFIX]; mirrors separated by ';'")
      ->required();
  mount->add_option("MOUNTPOINT", mreq.mountpoint, "an existing directory with nothing mounted on it")->required();
  mount->add_flag("-f", mreq.foreground, "stay in the foreground");
  mount->add_option("-o", mopts, "mount options: cache=DIR,cache_size=SIZE,timeout=S,threads=N,allow_other,record=DIR,log_level=L,"
                    "refresh=S,proxy=SPEC,cacert=FILE,s3_endpoint=URL,s3_region=R,s3_credentials=FILE,s3_profile=P")
      ->allow_extra_args(false);

  std::string umount_point;
  auto* unmount = app.add_subcommand("unmount", "unmount an extrafs mount");
  unmount->add_option("MOUNTPOINT", umount_point)->required();

  std::string index_store;
  auto* index = app.add_subcommand("index", "index a Hermes-style store copied by hand");
  index->add_option("STORE", index_store, "the store directory")->required();

  std::string stats_point;
  bool stats_json = false, stats_prom = false;
  auto* stats = app.add_subcommand("stats", "show the counters of a running mount");
  stats->add_option("MOUNTPOINT", stats_point)->required();
  auto* jflag = stats->add_flag("--json", stats_json, "one JSON object");
  stats->add_flag("--prometheus", stats_prom, "Prometheus text format")->excludes(jflag);

  std::string cache_dir, gc_size;
  auto* cachecmd = app.add_subcommand("cache", "inspect or maintain a local block cache");
  cachecmd->require_subcommand(1);
  auto* cache_stat = cachecmd->add_subcommand("stat", "what the cache holds (works while a mount uses it)");
  auto* cache_verify = cachecmd->add_subcommand("verify", "re-read every chunk, drop corrupt ones (exit 1 if any)");
  auto* cache_gc = cachecmd->add_subcommand("gc", "evict least recently used chunks down to --size (default 0)");
  for (auto* sub : {cache_stat, cache_verify, cache_gc}) sub->add_option("--cache", cache_dir, "the cache directory")->required();
  cache_gc->add_option("--size", gc_size, "keep at most this much (e.g. 5G)");

  int exit_code = -1;  // set by the callbacks of the commands registered below
  add_publish_command(app, &exit_code);
  add_docker_command(app, &exit_code);
  add_ls_command(app, &exit_code);
  add_verify_command(app, &exit_code);
  add_prefetch_command(app, &exit_code);

  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    for (const auto* sub : app.get_subcommands([](CLI::App*) { return true; })) known |= sub->get_name() == argv[1];
    if (!known) return fail(std::string("unknown command '") + argv[1] + "' (see 'extrafs --help')", 2);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::string what = e.what();
    return fail(what + " (see 'extrafs --help')", 2);
  }

  if (exit_code >= 0) return exit_code;
  if (mount->parsed()) {
    for (const auto& o : mopts) {
      auto st = apply_mount_options(o, &mreq);
      if (!st.ok()) return fail(st.error().message, 2);
    }
    return run_mount(mreq);
  }
  if (unmount->parsed()) return run_unmount(umount_point);
  if (index->parsed()) return cmd_index(index_store);
  if (stats->parsed()) return cmd_stats(stats_point, stats_json, stats_prom);
  if (cachecmd->parsed()) {
    for (auto* sub : {cache_stat, cache_verify, cache_gc})
      if (sub->parsed()) return cmd_cache(sub->get_name(), cache_dir, gc_size);
  }
  return fail("no command given (see 'extrafs --help')", 2);
}

}  // namespace
}  // namespace extrafs::tools

int main(int argc, char** argv) {
  try {
    return extrafs::tools::main_impl(argc, argv);
  } catch (const std::exception& e) {
    extrafs::print_error("extrafs", e.what());
    return 1;
  }
}
