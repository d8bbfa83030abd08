// `extrafs ls STORE|MOUNTPOINT`: the images of a store (or of anything shaped like a data-root),
// their tags, layers and sizes; on an extrafs mount also how much of each layer and image is in
// the local cache (tools/image_list.h reads them). Everything printed that
// comes from the store goes through escape_control: a tag or a message cannot move the cursor
// or forge a row (tags docker would refuse are left out by DockerMeta::load, with a warning).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/str_util.h"
#include "tools/commands.h"
#include "tools/image_list.h"

namespace extrafs::tools {

namespace {

int run_ls(const std::string& target) {
  if (target.empty()) return fail("ls needs a store directory or an extrafs mount point", 2);
  auto listed = list_images(target);
  if (!listed.ok()) return fail(listed.error().message);
  const std::vector<ImageRow>& rows = listed->rows;
  const std::map<std::string, LayerCache>& stats = listed->layers;
  const bool mounted = listed->mounted;
  const std::string& root = listed->root;
  const int broken = listed->broken;

  std::map<std::string, int> uses;  // cache-id -> images using it
  for (const auto& row : rows)
    if (row.image)
      for (const auto& l : row.image->layers) uses[l.cache_id]++;

  size_t tag_w = 6;
  std::vector<std::string> tag_text;
  for (const auto& row : rows) {
    std::string t;
    for (const auto& x : row.tags) t += (t.empty() ? "" : ", ") + escape_control(x);
    if (t.empty()) t = "<none>";
    tag_w = std::max(tag_w, t.size());
    tag_text.push_back(t);
  }
  tag_w = std::min<size_t>(tag_w, 60);

  std::printf("%s %s\n", mounted ? "extrafs mount" : "store", escape_control(root).c_str());
  if (mounted)
    std::printf("%-12s  %-*s  %6s  %10s  %7s\n", "IMAGE ID", static_cast<int>(tag_w), "TAGS", "LAYERS", "SIZE",
                "CACHED");
  else
    std::printf("%-12s  %-*s  %6s  %10s\n", "IMAGE ID", static_cast<int>(tag_w), "TAGS", "LAYERS", "SIZE");
  for (size_t i = 0; i < rows.size(); ++i) {
    const ImageRow& row = rows[i];
    if (!row.image) {
      std::printf("%-12s  %-*s  unreadable: %s\n", short_hex(row.id).c_str(), static_cast<int>(tag_w),
                  tag_text[i].c_str(), escape_control(row.error).c_str());
      continue;
    }
    if (mounted)
      std::printf("%-12s  %-*s  %6zu  %10s  %7s\n", short_hex(row.id).c_str(), static_cast<int>(tag_w),
                  tag_text[i].c_str(), row.image->layers.size(), format_size(row.size).c_str(),
                  row.cache ? percent(row.cache->cached, row.cache->total).c_str() : "-");
    else
      std::printf("%-12s  %-*s  %6zu  %10s\n", short_hex(row.id).c_str(), static_cast<int>(tag_w), tag_text[i].c_str(),
                  row.image->layers.size(), format_size(row.size).c_str());
    for (const auto& l : row.image->layers) {
      auto it = stats.find(l.cache_id);
      std::string shared = uses[l.cache_id] > 1 ? "  (shared)" : "";
      if (it != stats.end() && it->second.removed) shared += "  (removed from the store)";
      if (mounted)
        std::printf("  layer %-12.12s  diff %-12s  %10s  %7s%s\n", l.cache_id.c_str(), short_hex(l.diff_id).c_str(),
                    format_size(l.size).c_str(),
                    it == stats.end() ? "-" : percent(it->second.cached, it->second.total).c_str(), shared.c_str());
      else
        std::printf("  layer %-12.12s  diff %-12s  %10s%s\n", l.cache_id.c_str(), short_hex(l.diff_id).c_str(),
                    format_size(l.size).c_str(), shared.c_str());
    }
  }

  // Totals: each layer once.
  std::set<std::string> seen;
  uint64_t size = 0, total = 0, cached = 0;
  for (const auto& row : rows) {
    if (!row.image) continue;
    for (const auto& l : row.image->layers) {
      if (!seen.insert(l.cache_id).second) continue;
      size += l.size;
      if (auto it = stats.find(l.cache_id); it != stats.end()) {
        total += it->second.total;
        cached += it->second.cached;
      }
    }
  }
  // Layers the store removed (extrafs rm, or a store made again) that the mount still serves
  // from what it has: no image of the store lists them any more, so they are listed here.
  size_t unused = 0, removed = 0;
  for (const auto& [cid, s] : stats) {
    if (seen.count(cid)) continue;
    if (!s.removed) {
      ++unused;
      continue;
    }
    if (removed++ == 0) std::printf("\nserved by this mount from what it has, no longer in the store:\n");
    std::string was;
    for (const auto& r : s.former) was += (was.empty() ? " (was " : ", ") + escape_control(r);
    if (!was.empty()) was += ")";
    std::printf("  layer %-12.12s  %10s  %7s  removed from the store%s\n", escape_control(cid).c_str(),
                format_size(s.total).c_str(), percent(s.cached, s.total).c_str(), was.c_str());
  }
  std::printf("\n%zu image%s, %zu layer%s, %s", rows.size(), rows.size() == 1 ? "" : "s", seen.size(),
              seen.size() == 1 ? "" : "s", format_size(size).c_str());
  if (mounted)
    std::printf("; %s of %s cached (%s)", format_size(cached).c_str(), format_size(total).c_str(),
                percent(cached, total).c_str());
  if (unused) std::printf("; %zu served layer%s not used by any image", unused, unused == 1 ? "" : "s");
  if (removed) std::printf("; %zu removed from the store", removed);
  std::printf("\n");
  if (broken) {
    std::fflush(stdout);
    return fail(std::to_string(broken) + " image" + (broken == 1 ? "" : "s") + " in " + root + " could not be read");
  }
  return 0;
}

}  // namespace

void add_ls_command(CLI::App& app, int* exit_code) {
  auto* ls = app.add_subcommand("ls", "list the images, tags, layers and sizes of a store or mount (with cached %)");
  auto target = std::make_shared<std::string>();
  ls->add_option("STORE|MOUNTPOINT", *target, "a store directory or an extrafs mount point")->required();
  ls->callback([target, exit_code] { *exit_code = run_ls(*target); });
}

}  // namespace extrafs::tools
