// The paths of a store (extrafs-store(5); docs/DESIGN.md section 8), in one place:
//
//   STORE/image/overlay2/...                      docker metadata: imagedb, layerdb, repositories.json
//   STORE/overlay2/<cache-id>/{link,lower[,diff/]}
//   STORE/extrafs/catalog                         the layers and images with their index digests
//   STORE/extrafs/catalog.d/<generation>          each catalog also under a name never reused
//   STORE/extrafs/layers/<cache-id>.index         a layer's index
//   STORE/extrafs/layers/<cache-id>.blob          a published layer's packed chunks
//   STORE/extrafs/image-<digest>.index            the index of the image/ tree
//   STORE/extrafs/objects/<digest>                one chunk of an image/ file, named by its xxh3-128
//   STORE/extrafs/removed/<cache-id>              a layer `extrafs rm` took out of the catalog, until
//                                                 `extrafs gc` deletes its files (remove_images.h)
//   STORE/extrafs/.publish.lock                   flock of the running writer: publish, index, rm, gc (store_lock.h)
//
// The formats name the same files relative to the store (format::kCatalogPath,
// format::layer_index_path, format::image_index_path in format/catalog.h); this is their
// absolute, write-side form. A value type; thread-safe. Also here: how large docker's metadata files may be (below).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/hash.h"

namespace extrafs::store {

// The largest docker metadata files anyone reads (index, publish, rm, gc, docker attach, ls,
// prefetch, stats), in a store, a mount or a data-root; a larger one is refused from its size
// before it is read. (The catalog's and the indexes' limits are beside their formats:
// format::kMaxCatalogSize, format::kMaxIndexSize.) Each is far above what dockerd writes:
// repositories.json: about 150 bytes a tag, so 64 MiB is some 400,000 tags.
inline constexpr uint64_t kMaxRepositoriesSize = uint64_t{64} << 20;
// An image config (imagedb/content/sha256/<id>): its history, environment and labels, a few KiB
// and rarely a few hundred; registries refuse manifests over 4 MiB, and 16 MiB leaves room.
inline constexpr uint64_t kMaxImageConfigSize = uint64_t{16} << 20;
// layerdb's tar-split.json.gz: every tar header of the layer, gzipped, about 100 bytes a file,
// so 1 GiB is a layer of some 10 million files (and the layer index's own cap, 1 GiB, comes first).
inline constexpr uint64_t kMaxTarSplitSize = uint64_t{1} << 30;
// The one-line files: layerdb's diff, size, cache-id and parent, overlay2's link and lower (a
// lower of docker's deepest chain, 128 layers, is 3.7 KiB).
inline constexpr uint64_t kMaxLineFileSize = uint64_t{64} << 10;

class StoreLayout {
 public:
  // `root` is the store directory; trailing '/' are dropped.
  explicit StoreLayout(std::string root);

  const std::string& root() const { return root_; }
  std::string catalog() const;
  std::string catalog_generations_dir() const;
  std::string catalog_generation(uint64_t generation) const;
  std::string layers_dir() const;
  std::string layer_index(std::string_view cache_id) const;
  std::string layer_blob(std::string_view cache_id) const;
  std::string image_index(const Digest128& digest) const;
  std::string objects_dir() const;
  std::string object(const Digest128& digest) const;
  std::string publish_lock() const;
  std::string removed_dir() const;
  std::string removed_marker(std::string_view cache_id) const;
  std::string image_dir() const;     // STORE/image
  std::string docker_dir() const;    // STORE/image/overlay2
  std::string layerdb_dir() const;   // STORE/image/overlay2/layerdb/sha256
  std::string config_dir() const;    // STORE/image/overlay2/imagedb/content/sha256
  std::string repositories() const;  // STORE/image/overlay2/repositories.json
  std::string overlay2_dir() const;  // STORE/overlay2
  std::string overlay_dir(std::string_view cache_id) const;

 private:
  std::string root_;
};

// Where content-addressed objects live (relative to the store root): the image/ tree's chunks,
// and every chunk of a layer published with --chunk-objects. Each is only ever read whole.
inline constexpr const char* kObjectsDir = "extrafs/objects";

// The blob of layer `cache_id` as chunk records name it (relative to the store root).
std::string blob_object_path(std::string_view cache_id);
// The content-addressed object holding the chunk with xxh3-128 `digest` (relative to the store root).
std::string content_object_path(const Digest128& digest);
// The directory of the marks of removed layers, and a layer's mark (relative to the store root).
inline constexpr const char* kRemovedDir = "extrafs/removed";
std::string removed_marker_path(std::string_view cache_id);

// Docker's overlay2 link ids: the names in STORE/overlay2/l/ (and in a data-root's overlay2/l/,
// docker/attach.h), one per layer, written in its overlay2/<cache-id>/link and named by the
// `lower` files of the layers above it. Base32 (RFC 4648) characters, 26 of them, as dockerd 20.10
// makes them.
inline constexpr std::string_view kLinkIdAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
inline constexpr size_t kLinkIdLength = 26;
// A fresh link id as dockerd makes them: kLinkIdLength characters of kLinkIdAlphabet, drawn
// uniformly with getrandom(2).
std::string random_link_id();

}  // namespace extrafs::store
