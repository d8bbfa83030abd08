// `extrafs ls STORE|MOUNTPOINT`: the images of a store (or of anything shaped like a data-root),
// their tags, layers and sizes; on an extrafs mount also how much of each layer and image is in
// the local cache (from the daemon's statistics, tools/mount_stats.h). Everything printed that
// comes from the store goes through escape_control: a tag or a message cannot move the cursor
// or forge a row (tags docker would refuse are left out by DockerMeta::load, with a warning).
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <dirent.h>

#include "common/mountinfo.h"
#include "common/str_util.h"
#include "store/docker_meta.h"
#include "tools/commands.h"
#include "tools/mount_stats.h"

namespace extrafs::tools {

namespace {

using store::DockerImage;
using store::DockerMeta;

struct LayerStat {
  uint64_t total = 0;
  uint64_t cached = 0;
};

Result<std::map<std::string, LayerStat>> mount_layer_stats(const std::string& mnt) {
  EXTRAFS_TRY(j, read_mount_stats(mnt));
  if (!j.contains("layers") || !j["layers"].is_array()) return make_error(EBADMSG, mnt + " returned unreadable statistics");
  std::map<std::string, LayerStat> out;
  for (const auto& l : j["layers"]) {
    if (!l.is_object() || !l.contains("cache_id") || !l["cache_id"].is_string()) continue;
    LayerStat s;
    if (l.contains("bytes_total") && l["bytes_total"].is_number_unsigned()) s.total = l["bytes_total"].get<uint64_t>();
    if (l.contains("bytes_cached") && l["bytes_cached"].is_number_unsigned()) s.cached = l["bytes_cached"].get<uint64_t>();
    out[l["cache_id"].get<std::string>()] = s;
  }
  return out;
}

std::string percent(uint64_t part, uint64_t whole) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f%%", whole ? 100.0 * static_cast<double>(part) / static_cast<double>(whole) : 100.0);
  return b;
}

std::string short_hex(const std::string& id) { return id.substr(id.find(':') + 1, 12); }

struct Row {
  std::string id;
  std::vector<std::string> tags;
  std::optional<DockerImage> image;
  std::string error;
};

int run_ls(const std::string& target) {
  std::string abs = target;
  if (abs.empty()) return fail("ls needs a store directory or an extrafs mount point", 2);
  // A store's image list is in directories (imagedb), which http(s) and s3 cannot list.
  if (abs.find("://") != std::string::npos)
    return fail("ls takes a store directory or an extrafs mount point, not a URL: mount " + target + " first");
  char* r = ::realpath(abs.c_str(), nullptr);
  if (!r) return fail(target + ": " + std::strerror(errno));
  std::string root = r;
  std::free(r);
  struct stat st;
  if (::stat(root.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return fail(target + " is not a directory");

  std::string fstype;
  const bool mounted = is_mount_point(root, &fstype) && fstype == "fuse.extrafs";
  std::map<std::string, LayerStat> stats;
  if (mounted) {
    auto s = mount_layer_stats(root);
    if (!s.ok()) return fail(s.error().message);
    stats = std::move(*s);
  }
  const std::string image_dir = root + "/image/overlay2";
  if (::stat(image_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return fail(target + " is not a store or an extrafs mount (it has no image/overlay2)");
  auto meta = DockerMeta::load(root);
  if (!meta.ok()) return fail(meta.error().message);

  // Every image: the tagged ones, then untagged configs in imagedb.
  std::map<std::string, Row> by_id;
  for (const auto& [ref, id] : meta->refs()) {
    by_id[id].id = id;
    by_id[id].tags.push_back(ref);
  }
  if (DIR* d = ::opendir((image_dir + "/imagedb/content/sha256").c_str())) {
    while (struct dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (is_hex64(n)) by_id["sha256:" + n].id = "sha256:" + n;
    }
    ::closedir(d);
  }
  std::vector<Row> rows;
  int broken = 0;
  for (auto& [id, row] : by_id) {
    auto img = meta->image(id);
    if (img.ok()) row.image = std::move(*img);
    else {
      row.error = img.error().message;
      ++broken;
    }
    rows.push_back(std::move(row));
  }
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    if (a.tags.empty() != b.tags.empty()) return !a.tags.empty();
    if (!a.tags.empty() && a.tags.front() != b.tags.front()) return a.tags.front() < b.tags.front();
    return a.id < b.id;
  });

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
  if (mounted) std::printf("%-12s  %-*s  %6s  %10s  %7s\n", "IMAGE ID", static_cast<int>(tag_w), "TAGS", "LAYERS", "SIZE", "CACHED");
  else std::printf("%-12s  %-*s  %6s  %10s\n", "IMAGE ID", static_cast<int>(tag_w), "TAGS", "LAYERS", "SIZE");
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& row = rows[i];
    if (!row.image) {
      std::printf("%-12s  %-*s  unreadable: %s\n", short_hex(row.id).c_str(), static_cast<int>(tag_w), tag_text[i].c_str(),
                  escape_control(row.error).c_str());
      continue;
    }
    uint64_t size = 0, total = 0, cached = 0;
    bool all_known = true;
    for (const auto& l : row.image->layers) {
      size += l.size;
      auto it = stats.find(l.cache_id);
      if (it == stats.end()) all_known = false;
      else {
        total += it->second.total;
        cached += it->second.cached;
      }
    }
    if (mounted)
      std::printf("%-12s  %-*s  %6zu  %10s  %7s\n", short_hex(row.id).c_str(), static_cast<int>(tag_w), tag_text[i].c_str(),
                  row.image->layers.size(), format_size(size).c_str(), all_known ? percent(cached, total).c_str() : "-");
    else
      std::printf("%-12s  %-*s  %6zu  %10s\n", short_hex(row.id).c_str(), static_cast<int>(tag_w), tag_text[i].c_str(),
                  row.image->layers.size(), format_size(size).c_str());
    for (const auto& l : row.image->layers) {
      auto it = stats.find(l.cache_id);
      std::string shared = uses[l.cache_id] > 1 ? "  (shared)" : "";
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
  size_t unused = 0;
  for (const auto& [cid, s] : stats) unused += seen.count(cid) ? 0 : 1;
  std::printf("\n%zu image%s, %zu layer%s, %s", rows.size(), rows.size() == 1 ? "" : "s", seen.size(),
              seen.size() == 1 ? "" : "s", format_size(size).c_str());
  if (mounted) std::printf("; %s of %s cached (%s)", format_size(cached).c_str(), format_size(total).c_str(), percent(cached, total).c_str());
  if (unused) std::printf("; %zu served layer%s not used by any image", unused, unused == 1 ? "" : "s");
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
