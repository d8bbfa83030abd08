#include "store/layout.h"

#include "common/posix_file.h"
#include "format/catalog.h"

namespace extrafs::store {

StoreLayout::StoreLayout(std::string root) : root_(std::move(root)) {
  while (root_.size() > 1 && root_.back() == '/') root_.pop_back();
}

std::string StoreLayout::catalog() const { return root_ + "/" + format::kCatalogPath; }
std::string StoreLayout::catalog_generations_dir() const { return root_ + "/" + format::kCatalogGenerationsDir; }
std::string StoreLayout::catalog_generation(uint64_t generation) const {
  return root_ + "/" + format::catalog_generation_path(generation);
}
std::string StoreLayout::layers_dir() const { return root_ + "/extrafs/layers"; }
std::string StoreLayout::layer_index(std::string_view cache_id) const {
  return root_ + "/" + format::layer_index_path(cache_id);
}
std::string StoreLayout::layer_blob(std::string_view cache_id) const {
  return root_ + "/" + blob_object_path(cache_id);
}
std::string StoreLayout::image_index(const Digest128& digest) const {
  return root_ + "/" + format::image_index_path(digest);
}
std::string StoreLayout::objects_dir() const { return root_ + "/" + kObjectsDir; }
std::string StoreLayout::object(const Digest128& digest) const { return root_ + "/" + content_object_path(digest); }
std::string StoreLayout::publish_lock() const { return root_ + "/extrafs/.publish.lock"; }
std::string StoreLayout::removed_dir() const { return root_ + "/" + kRemovedDir; }
std::string StoreLayout::removed_marker(std::string_view cache_id) const {
  return root_ + "/" + removed_marker_path(cache_id);
}
std::string StoreLayout::image_dir() const { return root_ + "/image"; }
std::string StoreLayout::docker_dir() const { return root_ + "/image/overlay2"; }
std::string StoreLayout::layerdb_dir() const { return docker_dir() + "/layerdb/sha256"; }
std::string StoreLayout::config_dir() const { return docker_dir() + "/imagedb/content/sha256"; }
std::string StoreLayout::repositories() const { return docker_dir() + "/repositories.json"; }
std::string StoreLayout::overlay2_dir() const { return root_ + "/overlay2"; }
std::string StoreLayout::overlay_dir(std::string_view cache_id) const {
  return overlay2_dir() + "/" + std::string(cache_id);
}

std::string blob_object_path(std::string_view cache_id) { return format::layer_blob_path(cache_id); }

std::string content_object_path(const Digest128& digest) { return std::string(kObjectsDir) + "/" + digest.hex(); }

std::string removed_marker_path(std::string_view cache_id) {
  return std::string(kRemovedDir) + "/" + std::string(cache_id);
}

std::string random_link_id() { return random_chars(kLinkIdLength, kLinkIdAlphabet); }

}  // namespace extrafs::store
