// Layer tars for `extrafs publish --archive`, read with libarchive (Debian's libarchive-dev: well
// kept, and it reads every tar dialect docker and others produce, including pax headers with
// xattrs (SCHILY.xattr.*, LIBARCHIVE.xattr.*), GNU long names and sparse files).
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
// The `docker save` archive around the layer tars is read by store/save_archive.h.
// Single-threaded.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/result.h"
#include "format/index_format.h"
#include "store/publish_blob.h"

struct archive;

namespace extrafs::store {

struct LayerTarOptions {
  uint32_t chunk_size = format::kDefaultChunkSize;
  // Paths (relative, no leading '/') whose content is packed first, in this order.
  std::vector<std::string> first;
  // Directory for scratch files (content of the `first` files and the rest, before reordering).
  std::string scratch_dir;
  // Called with the number of content bytes read, as the tar is consumed (may be empty).
  std::function<void(uint64_t)> on_bytes;
};

struct LayerTarResult {
  std::string index;         // serialised layer index, chunks pointing into the blob
  uint64_t docker_size = 0;  // what docker records in layerdb `size`: bytes of non-directories, links once
  uint64_t entries = 0;
};

// Reads the layer tar `a` (opened by the caller, positioned before its first header) to its end,
// packing regular file content into `out` (a layer blob, or content objects). EBADMSG for a
// malformed tar or an entry that cannot be represented (a path with "..", a hard link to a
// missing entry or to a directory); EINVAL for `options.first` with an `out` that is not a
// BlobWriter (only a blob has an order to pack in).
Result<LayerTarResult> convert_layer_tar(struct archive* a, ChunkPacker& out, const LayerTarOptions& options);

// Normalises a path inside a tar: strips "./" and "/" prefixes and trailing '/'; "" for the root.
// False if it has a ".." component or an empty name where one is needed.
bool normalize_tar_path(std::string_view in, std::string* out);

}  // namespace extrafs::store
