// `extrafs verify STORE`: every chunk of every layer checked against its digest.
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <spdlog/spdlog.h>

#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "common/log.h"
#include "common/str_util.h"
#include "tools/commands.h"
#include "tools/mount_cmd.h"
#include "tools/verify.h"

namespace extrafs::tools {

void add_verify_command(CLI::App& app, int* exit_code) {
  auto* sub = app.add_subcommand("verify", "read every chunk of every layer of a store and check its digest");
  auto store = std::make_shared<std::string>();
  auto opts = std::make_shared<std::vector<std::string>>();
  sub->add_option("STORE", *store, "an absolute store directory or an nfs://, http://, https:// or s3:// URL")
      ->required();
  sub->add_option("-o", *opts,
                  "source options: timeout=S, and for http(s)/s3 proxy=, cacert=, s3_endpoint=, s3_region=, "
                  "s3_credentials=, s3_profile=")
      ->allow_extra_args(false);
  sub->callback([store, opts, exit_code] {
    if (!backend::is_source(*store)) {
      *exit_code =
          fail("store '" + *store + "' must be an absolute path or an nfs://, http://, https:// or s3:// URL", 2);
      return;
    }
    // The mount's own parser, for the options that concern reading the store.
    static const std::set<std::string> kSourceOptions = {"timeout",   "proxy",          "cacert",    "s3_endpoint",
                                                         "s3_region", "s3_credentials", "s3_profile"};
    MountRequest req;
    for (const auto& list : *opts) {
      for (const auto& o : split_options(list)) {
        if (o.empty()) continue;
        if (!kSourceOptions.count(o.substr(0, o.find('=')))) {
          *exit_code = fail("verify -o " + o +
                                ": not an option of verify (timeout, proxy, cacert, s3_endpoint, s3_region, "
                                "s3_credentials, s3_profile)",
                            2);
          return;
        }
        if (auto st = apply_mount_options(o, &req); !st.ok()) {
          *exit_code = fail(st.error().message, 2);
          return;
        }
      }
    }
    if (auto st = backend::check_http_options(*store, req.http); !st.ok()) {
      *exit_code = fail(st.error().message, 2);
      return;
    }
    backend::BackendOptions bopts;
    bopts.timeout_ms = req.timeout_s * 1000;
    bopts.http = req.http;
    auto backend = backend::open_backend(*store, bopts);
    if (!backend.ok()) {
      *exit_code = fail(backend.error().message);
      return;
    }
    spdlog::set_level(spdlog::level::off);  // every problem is reported below, once
    bool tty = ::isatty(2);
    auto report = verify_store(**backend, [&](const std::string& id) {
      if (tty) std::fprintf(stderr, "verified layer %s\n", id.c_str());
    });
    if (!report.ok()) {
      *exit_code = fail(report.error().message);
      return;
    }
    for (const auto& p : report->problems) print_error("extrafs", p);
    std::printf(
        "%llu layers, %llu chunks, %s checked: %s\n", static_cast<unsigned long long>(report->layers),
        static_cast<unsigned long long>(report->chunks), format_size(report->bytes).c_str(),
        report->problems.empty() ? "all good" : (std::to_string(report->problems.size()) + " problems").c_str());
    *exit_code = report->problems.empty() ? 0 : 1;
  });
}

}  // namespace extrafs::tools
