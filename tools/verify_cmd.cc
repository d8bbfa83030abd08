// `extrafs verify STORE`: every chunk of every layer checked against its digest.
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <spdlog/spdlog.h>

#include <cstdio>

#include "backend/backend.h"
#include "common/log.h"
#include "common/str_util.h"
#include "store/verify.h"
#include "tools/commands.h"

namespace extrafs::tools {

void add_verify_command(CLI::App& app, int* exit_code) {
  auto* sub = app.add_subcommand("verify", "read every chunk of every layer of a store and check its digest");
  auto store = std::make_shared<std::string>();
  sub->add_option("STORE", *store, "an absolute store directory or an nfs:// URL")->required();
  sub->callback([store, exit_code] {
    if (store->rfind("nfs://", 0) != 0 && (store->empty() || store->front() != '/')) {
      *exit_code = fail("store '" + *store + "' must be an absolute path or an nfs:// URL", 2);
      return;
    }
    auto backend = backend::open_backend(*store, 30000);
    if (!backend.ok()) {
      *exit_code = fail(backend.error().message);
      return;
    }
    spdlog::set_level(spdlog::level::off);  // every problem is reported below, once
    bool tty = ::isatty(2);
    auto report = store::verify_store(**backend, [&](const std::string& id) {
      if (tty) std::fprintf(stderr, "verified layer %s\n", id.c_str());
    });
    if (!report.ok()) {
      *exit_code = fail(report.error().message);
      return;
    }
    for (const auto& p : report->problems) print_error("extrafs", p);
    std::printf("%llu layers, %llu chunks, %s checked: %s\n", static_cast<unsigned long long>(report->layers),
                static_cast<unsigned long long>(report->chunks), format_size(report->bytes).c_str(),
                report->problems.empty() ? "all good" : (std::to_string(report->problems.size()) + " problems").c_str());
    *exit_code = report->problems.empty() ? 0 : 1;
  });
}

}  // namespace extrafs::tools
