// The images a store or an extrafs mount holds, with their tags, layers and sizes, and on a mount
// how much of each layer the local cache holds (from the daemon's statistics, mount_stats.h):
// what `extrafs ls` and `docker extrafs images` print. Reads the tree's image/overlay2 metadata
// (tags docker would refuse are left out by DockerMeta::load, with a warning) and, on a mount,
// asks its daemon; thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "store/docker_meta.h"

namespace extrafs::tools {

struct LayerCache {
  uint64_t total = 0;               // bytes of the layer's files
  uint64_t cached = 0;              // of those, bytes in the local cache
  bool removed = false;             // no longer in the store's catalog; the mount serves it from what it has
  std::vector<std::string> former;  // removed: the images that used it, as the mount last knew them
};

struct ImageRow {
  std::string id;                 // "sha256:<hex>"
  std::vector<std::string> tags;  // "name:tag", sorted; empty for an untagged config
  std::optional<store::DockerImage> image;
  std::string error;  // why `image` could not be read
  uint64_t size = 0;  // the sum of its layers' sizes
  // On a mount: its layers' bytes and cached bytes, if the daemon knows every layer.
  std::optional<LayerCache> cache;
};

struct ImageList {
  std::string root;                          // the resolved path
  bool mounted = false;                      // an extrafs mount (else a store or data-root-shaped directory)
  std::map<std::string, LayerCache> layers;  // on a mount: cache-id -> what its daemon says
  std::vector<ImageRow> rows;                // tagged images by first tag, then untagged ones by id
  int broken = 0;                            // rows whose image could not be read
};

// The images under `target` (a store directory or an extrafs mount point; not a URL). Errors in
// one line naming `target`: not a directory, no image/overlay2, the daemon's statistics
// unreadable, the tags unreadable. An image that cannot be read is a row with `error`.
Result<ImageList> list_images(const std::string& target);

// "12.5%" of part in whole (100% of nothing).
std::string percent(uint64_t part, uint64_t whole);
// The 12 hex digits docker shows of "sha256:<hex>".
std::string short_hex(const std::string& id);

}  // namespace extrafs::tools
