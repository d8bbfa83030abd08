#include "store/live_set.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>

#include "common/posix_file.h"
#include "common/str_util.h"
#include "format/layer_index.h"
#include "store/layout.h"

namespace extrafs::store {

namespace {

std::string content_object_prefix() { return "extrafs/objects/"; }

// "extrafs/catalog.d/<n>" with n written as the writers write it (decimal, no leading zero).
std::optional<uint64_t> generation_name(std::string_view name) {
  auto n = parse_uint(name);
  if (!n || *n == 0 || std::to_string(*n) != name) return std::nullopt;
  return n;
}

Result<format::Catalog> read_catalog(int store_fd, const std::string& store, const std::string& rel) {
  EXTRAFS_TRY(text, read_file_beneath(store_fd, rel, store, format::kMaxCatalogSize));
  auto parsed = format::Catalog::parse(text);
  if (!parsed.ok()) return make_error(parsed.code(), store + "/" + rel + ": " + parsed.error().message);
  return parsed;
}

void add_named(const format::Catalog& c, LiveSet* live) {
  for (const auto& l : c.layers) {
    live->layers.insert(l.cache_id);
    if (!l.link.empty()) live->links.insert(l.link);
  }
  if (c.image_index) live->image_indexes.insert(c.image_index->hex());
}

}  // namespace

std::vector<uint64_t> kept_generations(std::vector<GenerationFile> files, uint64_t grace, int64_t now) {
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.generation < b.generation; });
  std::vector<uint64_t> kept;
  // The grace period reaches back to `cutoff`; a generation superseded after it was still the
  // newest within the period.
  const int64_t cutoff = grace > static_cast<uint64_t>(now) ? INT64_MIN : now - static_cast<int64_t>(grace);
  for (size_t i = 0; i < files.size(); ++i) {
    if (i > 0 && files[i].generation == files[i - 1].generation) continue;
    size_t next = i + 1;
    while (next < files.size() && files[next].generation == files[i].generation) ++next;
    if (next == files.size() || files[next].mtime > cutoff) kept.push_back(files[i].generation);
  }
  return kept;
}

bool LiveSet::keeps_generation(uint64_t g) const {
  return std::binary_search(generations.begin(), generations.end(), g);
}

bool LiveSet::holds(std::string_view rel) const {
  auto starts = [&](std::string_view p) { return rel.substr(0, p.size()) == p; };
  auto ends = [&](std::string_view s) { return rel.size() >= s.size() && rel.substr(rel.size() - s.size()) == s; };
  if (starts("extrafs/catalog.d/")) {
    auto g = generation_name(rel.substr(18));
    return !g || keeps_generation(*g);
  }
  if (starts("extrafs/layers/")) {
    std::string_view name = rel.substr(15);
    for (std::string_view suffix : {".index", ".blob"})
      if (ends(suffix)) {
        std::string_view id = name.substr(0, name.size() - suffix.size());
        if (is_cache_id(id)) return layers.count(std::string(id)) > 0;
      }
    return true;
  }
  if (starts("extrafs/image-") && ends(".index")) {
    std::string_view hex = rel.substr(14, rel.size() - 14 - 6);
    Digest128 d;
    if (Digest128::from_hex(hex, &d) && d.hex() == hex) return image_indexes.count(std::string(hex)) > 0;
    return true;
  }
  if (starts(content_object_prefix())) {
    std::string_view hex = rel.substr(content_object_prefix().size());
    Digest128 d;
    if (!objects_known || !Digest128::from_hex(hex, &d) || d.hex() != hex) return true;
    return objects.count(std::string(hex)) > 0;
  }
  if (starts("overlay2/")) {
    std::string_view rest = rel.substr(9);
    std::string_view first = rest.substr(0, rest.find('/'));
    if (first == "l") {
      std::string_view link = rest.substr(2);
      return link.empty() || links.count(std::string(link.substr(0, link.find('/')))) > 0;
    }
    return !is_cache_id(first) || layers.count(std::string(first)) > 0;
  }
  return true;
}

Result<LiveSet> compute_live_set(int store_fd, const std::string& store, uint64_t grace, int64_t now) {
  LiveSet live;
  auto current = read_catalog(store_fd, store, format::kCatalogPath);
  if (!current.ok()) {
    if (current.code() == ENOENT)
      return make_error(ENOENT, "store " + store + " has no extrafs catalog (nothing was published or indexed there)");
    return current.error();
  }
  live.current = std::move(current).value();
  add_named(live.current, &live);

  auto names = list_dir_beneath(store_fd, format::kCatalogGenerationsDir, store);
  if (!names.ok() && names.code() != ENOENT) return names.error();
  if (names.ok()) {
    EXTRAFS_TRY(dir, open_beneath(store_fd, format::kCatalogGenerationsDir, O_RDONLY | O_DIRECTORY, store));
    for (const auto& n : *names) {
      auto g = generation_name(n);
      if (!g) continue;  // temporaries and anything else: not a generation
      struct stat st;
      if (::fstatat(dir.get(), n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;
        return Error::from_errno(errno, store + "/" + format::catalog_generation_path(*g));
      }
      if (!S_ISREG(st.st_mode)) continue;  // never written by a writer; left alone
      live.on_disk.push_back({*g, st.st_mtim.tv_sec});
    }
  }
  std::sort(live.on_disk.begin(), live.on_disk.end(),
            [](const auto& a, const auto& b) { return a.generation < b.generation; });
  live.generations = kept_generations(live.on_disk, grace, now);

  std::vector<format::Catalog> dropped;
  for (const auto& f : live.on_disk) {
    const std::string rel = format::catalog_generation_path(f.generation);
    auto c = read_catalog(store_fd, store, rel);
    if (live.keeps_generation(f.generation)) {
      // What a kept catalog names must be known, or nothing may be deleted.
      if (!c.ok())
        return make_error(c.code(),
                          "kept catalog generation " + std::to_string(f.generation) + ": " + c.error().message);
      add_named(*c, &live);
    } else if (c.ok()) {
      dropped.push_back(std::move(c).value());
    } else {
      live.unreadable.push_back(store + "/" + rel + ": " + c.error().message);
    }
  }
  for (const auto& c : dropped) {
    for (const auto& l : c.layers)
      if (!live.layers.count(l.cache_id)) live.dropped_layers.insert(l.cache_id);
    if (c.image_index && !live.image_indexes.count(c.image_index->hex()))
      live.dropped_image_indexes.insert(c.image_index->hex());
  }
  return live;
}

Result<std::vector<std::string>> index_objects(int store_fd, const std::string& store, const std::string& rel) {
  EXTRAFS_TRY(bytes, read_file_beneath(store_fd, rel, store, format::kMaxIndexSize));
  auto idx = format::LayerIndex::parse(std::move(bytes));
  if (!idx.ok()) return make_error(idx.code(), store + "/" + rel + ": " + idx.error().message);
  std::vector<std::string> out;
  const std::string prefix = content_object_prefix();
  for (uint32_t o = 0; o < (*idx)->object_count(); ++o) {
    std::string_view p = (*idx)->object_path(o);
    if (p.substr(0, prefix.size()) == prefix) out.emplace_back(p.substr(prefix.size()));
  }
  return out;
}

Status add_live_objects(int store_fd, const std::string& store, bool layer_indexes, LiveSet* live) {
  auto add = [&](const std::string& rel) -> Status {
    EXTRAFS_TRY(objects, index_objects(store_fd, store, rel));
    live->objects.insert(objects.begin(), objects.end());
    return ok_status();
  };
  for (const auto& hex : live->image_indexes) {
    Digest128 d;
    Digest128::from_hex(hex, &d);
    EXTRAFS_CHECK_STATUS(add(format::image_index_path(d)));
  }
  if (!layer_indexes) return ok_status();
  for (const auto& id : live->layers) EXTRAFS_CHECK_STATUS(add(format::layer_index_path(id)));
  live->objects_known = true;
  return ok_status();
}

}  // namespace extrafs::store
