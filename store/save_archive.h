// Reading `docker save` archives for `extrafs publish --archive`: the outer tar's manifest.json,
// the image configs (checked against their digests), and each layer's stream (uncompressed or
// gzip), handed as a libarchive tar reader to a callback (store/publish_tar.h converts it) while
// its diffID is computed. Single-threaded.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/result.h"

struct archive;

namespace extrafs::store {

// One image of a `docker save` archive.
struct SavedImage {
  std::string id;                     // "sha256:<hex>" of the config
  std::string config;                 // raw config bytes
  std::vector<std::string> tags;      // RepoTags ("name:tag")
  std::vector<std::string> layers;    // paths of the layer tars in the archive, base first
  std::vector<std::string> diff_ids;  // rootfs.diff_ids of the config, base first
};

class SaveArchive {
 public:
  // Reads the archive's manifest.json and configs. Errors name the file and what is wrong
  // (not a tar; no manifest.json: not a `docker save` archive; a config that does not match
  // its digest; layer count differing from rootfs.diff_ids; a layer file that is missing).
  static Result<SaveArchive> open(const std::string& path);

  const std::vector<SavedImage>& images() const { return images_; }
  // Size of the layer tar `layer` in the archive (as stored, maybe compressed).
  uint64_t layer_size(const std::string& layer) const;

  // Opens layer `layer` (a path from SavedImage::layers), decompressing gzip if it is, and calls
  // `fn` with a libarchive tar reader over it; afterwards reads the stream to its end. Returns
  // the diffID: "sha256:" + hex SHA-256 of the whole uncompressed layer tar.
  Result<std::string> read_layer(const std::string& layer, const std::function<Status(struct archive*)>& fn) const;

 private:
  std::string path_;
  std::vector<SavedImage> images_;
  std::map<std::string, uint64_t> sizes_;     // regular entries
  std::map<std::string, std::string> links_;  // symlink/hardlink entries -> resolved target
  std::string resolve(const std::string& p) const;
};

}  // namespace extrafs::store
