#include "tools/image_list.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <nlohmann/json.hpp>

#include "common/mountinfo.h"
#include "common/str_util.h"
#include "tools/mount_stats.h"

namespace extrafs::tools {

namespace {

Result<std::map<std::string, LayerCache>> mount_layer_stats(const std::string& mnt) {
  EXTRAFS_TRY(j, read_mount_stats(mnt, /*with_images=*/true));
  if (!j.contains("layers") || !j["layers"].is_array())
    return make_error(EBADMSG, mnt + " returned unreadable statistics");
  std::map<std::string, LayerCache> out;
  for (const auto& l : j["layers"]) {
    if (!l.is_object() || !l.contains("cache_id") || !l["cache_id"].is_string()) continue;
    LayerCache s;
    if (l.contains("bytes_total") && l["bytes_total"].is_number_unsigned()) s.total = l["bytes_total"].get<uint64_t>();
    if (l.contains("bytes_cached") && l["bytes_cached"].is_number_unsigned())
      s.cached = l["bytes_cached"].get<uint64_t>();
    if (l.contains("removed") && l["removed"].is_boolean()) s.removed = l["removed"].get<bool>();
    if (l.contains("former_images") && l["former_images"].is_array())
      for (const auto& r : l["former_images"])
        if (r.is_string()) s.former.push_back(r.get<std::string>());
    out[l["cache_id"].get<std::string>()] = s;
  }
  return out;
}

}  // namespace

std::string percent(uint64_t part, uint64_t whole) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f%%", whole ? 100.0 * static_cast<double>(part) / static_cast<double>(whole) : 100.0);
  return b;
}

std::string short_hex(const std::string& id) { return id.substr(id.find(':') + 1, 12); }

Result<ImageList> list_images(const std::string& target) {
  if (target.empty()) return make_error(EINVAL, "give a store directory or an extrafs mount point");
  // A store's image list is in directories (imagedb), which http(s) and s3 cannot list.
  if (target.find("://") != std::string::npos)
    return make_error(EINVAL,
                      "a store directory or an extrafs mount point is needed, not a URL: mount " + target + " first");
  char* r = ::realpath(target.c_str(), nullptr);
  if (!r) return Error::from_errno(errno, target);
  ImageList out;
  out.root = r;
  std::free(r);
  struct stat st;
  if (::stat(out.root.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return make_error(ENOTDIR, target + " is not a directory");

  std::string fstype;
  out.mounted = is_mount_point(out.root, &fstype) && fstype == "fuse.extrafs";
  if (out.mounted) {
    EXTRAFS_TRY(s, mount_layer_stats(out.root));
    out.layers = std::move(s);
  }
  const std::string image_dir = out.root + "/image/overlay2";
  if (::stat(image_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return make_error(ENOENT, target + " is not a store or an extrafs mount (it has no image/overlay2)");
  EXTRAFS_TRY(meta, store::DockerMeta::load(out.root));

  // Every image: the tagged ones, then untagged configs in imagedb.
  std::map<std::string, ImageRow> by_id;
  for (const auto& [ref, id] : meta.refs()) {
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
  for (auto& [id, row] : by_id) {
    auto img = meta.image(id);
    if (img.ok()) {
      row.image = std::move(*img);
      LayerCache c;
      bool all_known = true;
      for (const auto& l : row.image->layers) {
        row.size += l.size;
        auto it = out.layers.find(l.cache_id);
        if (it == out.layers.end())
          all_known = false;
        else {
          c.total += it->second.total;
          c.cached += it->second.cached;
        }
      }
      if (out.mounted && all_known) row.cache = c;
    } else {
      row.error = img.error().message;
      ++out.broken;
    }
    std::sort(row.tags.begin(), row.tags.end());
    out.rows.push_back(std::move(row));
  }
  std::sort(out.rows.begin(), out.rows.end(), [](const ImageRow& a, const ImageRow& b) {
    if (a.tags.empty() != b.tags.empty()) return !a.tags.empty();
    if (!a.tags.empty() && a.tags.front() != b.tags.front()) return a.tags.front() < b.tags.front();
    return a.id < b.id;
  });
  return out;
}

}  // namespace extrafs::tools
