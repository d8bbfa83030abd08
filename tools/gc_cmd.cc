// `extrafs gc STORE [--grace DURATION] [--dry-run]`: the command line of store/gc.h.
#include <signal.h>
#include <time.h>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>

#include "common/log.h"
#include "common/str_util.h"
#include "store/gc.h"
#include "tools/commands.h"

namespace extrafs::tools {

namespace {

struct GcArgs {
  std::string store;
  std::string grace = "7d";
  bool dry_run = false;
};

std::string files(uint64_t n) { return fmt::format("{} file{}", n, n == 1 ? "" : "s"); }

int run_gc(const GcArgs& a) {
  auto grace = parse_duration(a.grace);
  if (!grace) return fail("gc: --grace '" + a.grace + "': expected a duration like 7d, 12h, 30m, 45s or 0", 2);
  if (a.store.find("://") != std::string::npos)
    return fail(
        "gc: STORE is a local store directory (on the NFS server, or where the export is mounted), not " + a.store, 2);
  store::GcRequest req;
  req.store = a.store;
  req.grace = *grace;
  req.dry_run = a.dry_run;
  // Test hooks (tests/py/test_gc_kill.py): a pause after each deletion, so that a kill at a
  // random moment lands between two; SIGKILL of gc itself right after deletion N.
  long pause_ns = 0;
  uint64_t kill_after = 0;
  if (const char* v = std::getenv("EXTRAFS_GC_TEST_PAUSE_MS"))
    if (auto ms = parse_uint(v); ms && *ms <= 10000) pause_ns = static_cast<long>(*ms) * 1000000;
  if (const char* v = std::getenv("EXTRAFS_GC_TEST_KILL_AFTER")) kill_after = parse_uint(v).value_or(0);
  if (pause_ns || kill_after)
    req.after_delete = [pause_ns, kill_after, n = uint64_t{0}](const std::string&) mutable {
      if (++n == kill_after) ::raise(SIGKILL);
      struct timespec ts = {pause_ns / 1000000000, pause_ns % 1000000000};
      if (pause_ns) ::nanosleep(&ts, nullptr);
    };
  auto report = store::collect_garbage(req);
  if (!report.ok()) return fail("gc: " + report.error().message, report.code() == EINVAL ? 2 : 1);
  if (*grace == 0)
    print_error("extrafs",
                std::string("gc: warning: --grace 0: only the newest catalog is kept; a host that has not loaded "
                            "it yet, or runs a container of a removed image, fails reads of what ") +
                    (a.dry_run ? "this would delete" : "was deleted"));
  for (const auto& w : report->warnings) print_error("extrafs", "gc: warning: " + w);
  const char* verb = a.dry_run ? "would delete" : "deleted";
  for (size_t k = 0; k < store::kGcKinds; ++k) {
    const auto& t = report->freed[k];
    if (t.files == 0) continue;
    std::printf("%s %-27s %12s %10s\n", verb, store::gc_kind_name(static_cast<store::GcKind>(k)),
                files(t.files).c_str(), format_size(t.bytes).c_str());
  }
  std::string young;
  if (report->young)
    young = fmt::format("; {} no catalog names left until {} an hour old", files(report->young),
                        report->young == 1 ? "it is" : "they are");
  std::printf("%s %s, %s; kept %zu catalog generation%s and %zu layer%s (grace %s)%s\n",
              a.dry_run ? "would free" : "freed", files(report->total.files).c_str(),
              format_size(report->total.bytes).c_str(), report->kept_generations,
              report->kept_generations == 1 ? "" : "s", report->kept_layers, report->kept_layers == 1 ? "" : "s",
              a.grace.c_str(), young.c_str());
  return 0;
}

}  // namespace

void add_gc_command(CLI::App& app, int* exit_code) {
  auto* sub = app.add_subcommand("gc", "delete what no catalog of the grace period names from a local store");
  auto args = std::make_shared<GcArgs>();
  sub->add_option("STORE", args->store, "the store directory")->required();
  sub->add_option("--grace", args->grace, "keep what catalogs of this period named (default 7d; 12h, 30m, 0, ...)");
  sub->add_flag("--dry-run", args->dry_run, "only print what would be deleted");
  sub->callback([args, exit_code] { *exit_code = run_gc(*args); });
}

}  // namespace extrafs::tools
