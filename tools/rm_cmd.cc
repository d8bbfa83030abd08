// `extrafs rm IMAGE... --from STORE | --all-untagged --from STORE`: the command line of
// store/remove_images.h.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>

#include "common/log.h"
#include "common/str_util.h"
#include "store/remove_images.h"
#include "tools/commands.h"

namespace extrafs::tools {

namespace {

struct RmArgs {
  std::vector<std::string> images;
  std::string store;
  bool all_untagged = false;
};

int run_rm(const RmArgs& a) {
  if (a.all_untagged == !a.images.empty()) return fail("rm: give either IMAGE... or --all-untagged", 2);
  if (a.store.find("://") != std::string::npos)
    return fail(
        "rm: --from takes a local store directory (on the NFS server, or where the export is mounted), not " + a.store,
        2);
  for (const auto& i : a.images)
    if (auto st = store::check_image_argument(i); !st.ok()) return fail("rm: " + st.error().message, 2);
  store::RemoveRequest req;
  req.store = a.store;
  req.images = a.images;
  req.all_untagged = a.all_untagged;
  auto report = store::remove_images(req);
  if (!report.ok()) return fail("rm: " + report.error().message, report.code() == EINVAL ? 2 : 1);
  for (const auto& img : report->images) {
    std::string refs;
    for (const auto& r : img.refs) refs += (refs.empty() ? "" : ", ") + r;
    std::printf("removed image %s%s\n", img.id.substr(7, 12).c_str(),
                refs.empty() ? " (untagged)" : (" (" + refs + ")").c_str());
  }
  for (const auto& t : report->untagged)
    std::printf("untagged %s (its image keeps another tag)\n", escape_control(t).c_str());
  if (report->images.empty() && report->untagged.empty())
    std::printf("no untagged images in %s\n", escape_control(a.store).c_str());
  if (!report->layers_dropped.empty())
    std::printf(
        "%zu layer%s (%s) out of the catalog, now generation %llu; 'extrafs gc' deletes %s once no catalog of its "
        "grace period names %s\n",
        report->layers_dropped.size(), report->layers_dropped.size() == 1 ? "" : "s",
        format_size(report->bytes_dropped).c_str(), static_cast<unsigned long long>(report->generation),
        report->layers_dropped.size() == 1 ? "its files" : "their files",
        report->layers_dropped.size() == 1 ? "it" : "them");
  else if (report->catalog_written)
    std::printf("no layer out of the catalog (the images left use them all), now generation %llu\n",
                static_cast<unsigned long long>(report->generation));
  return 0;
}

}  // namespace

void add_rm_command(CLI::App& app, int* exit_code) {
  auto* sub = app.add_subcommand("rm", "remove images from a store's catalog (gc deletes their files later)");
  auto args = std::make_shared<RmArgs>();
  sub->add_option("IMAGE", args->images, "name:tag, or an image id (sha256:<hex> or at least 12 hex digits)");
  sub->add_option("--from", args->store, "the store directory")->required();
  sub->add_flag("--all-untagged", args->all_untagged, "remove every image that no tag names");
  sub->callback([args, exit_code] { *exit_code = run_rm(*args); });
}

}  // namespace extrafs::tools
