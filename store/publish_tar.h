// Reading `docker save` archives for `extrafs publish --archive`, with libarchive (Debian's
// libarchive-dev: well kept, and it reads every tar dialect docker and others produce, including
// pax headers with xattrs (SCHILY.xattr.*, LIBARCHIVE.xattr.*), GNU long names and sparse files).
//
// convert_layer_tar() turns one layer tar into an index tree as overlay2 would hold it:
//   `.wh.NAME`          -> NAME, a character device 0/0 (mode 0000, owner and mtime of the header)
//   `DIR/.wh..wh..opq`  -> xattr trusted.overlay.opaque=y on DIR
//   hard-link entries   -> hard-link groups (the first member holds content, xattrs, attributes)
//   xattrs of entries   -> xattrs
//   directories without an entry of their own (implicit parents, and the root unless the tar
//   has "./") -> mode 0755, uid 0, gid 0, all times 0 (the epoch): deterministic, so two
//   publishes of one archive give identical indexes.
// Later entries for the same path replace earlier ones (directories keep their children), as
// when a tar is extracted. Sizes as a local file system would show them: directories 4096 bytes,
// st_blocks from the stored (non-zero) chunks, rounded up to 4 KiB.
//
// SaveArchive reads the outer tar: manifest.json, the image configs, and each layer's stream
// (uncompressed or gzip), handing the layer tar to a callback while computing its diffID.
// Single-threaded.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/result.h"
#include "fs/index_format.h"
#include "store/publish_blob.h"

struct archive;

namespace extrafs::store {

struct LayerTarOptions {
  uint32_t chunk_size = fs::kDefaultChunkSize;
  // Paths (relative, no leading '/') whose content is packed first, in this order.
  std::vector<std::string> first;
  // Directory for scratch files (content of the `first` files and the rest, before reordering).
  std::string scratch_dir;
  // Called with the number of content bytes read, as the tar is consumed (may be empty).
  std::function<void(uint64_t)> on_bytes;
};

struct LayerTarResult {
  std::string index;       // serialised layer index, chunks pointing into the blob
  uint64_t docker_size = 0;  // what docker records in layerdb `size`: bytes of non-directories, links once
  uint64_t entries = 0;
};

// Reads the layer tar `a` (opened by the caller, positioned before its first header) to its end,
// packing regular file content into `blob`. EBADMSG for a malformed tar or an entry that cannot be
// represented (a path with "..", a hard link to a missing entry or to a directory).
Result<LayerTarResult> convert_layer_tar(struct archive* a, BlobWriter& blob, const LayerTarOptions& options);

// One image of a `docker save` archive.
struct SavedImage {
  std::string id;                   // "sha256:<hex>" of the config
  std::string config;               // raw config bytes
  std::vector<std::string> tags;    // RepoTags ("name:tag")
  std::vector<std::string> layers;  // paths of the layer tars in the archive, base first
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
  std::map<std::string, uint64_t> sizes_;          // regular entries
  std::map<std::string, std::string> links_;       // symlink/hardlink entries -> resolved target
  std::string resolve(const std::string& p) const;
};

// Normalises a path inside a tar: strips "./" and "/" prefixes and trailing '/'; "" for the root.
// False if it has a ".." component or an empty name where one is needed.
bool normalize_tar_path(std::string_view in, std::string* out);

}  // namespace extrafs::store
