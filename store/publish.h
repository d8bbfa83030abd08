// `extrafs publish`: writes images into a store, packed (docs/DESIGN.md section 4), from a dockerd
// data-root (reading overlay2/<cache-id>/diff trees and image/overlay2 metadata; dockerd may be
// running) or from a `docker save` archive.
//
// For every layer, base first, unless the store already has it (same chainID in layerdb, its
// cache-id in the catalog, its index present): the blob extrafs/layers/<cache-id>.blob (or with
// chunk_objects, one object per chunk), the index extrafs/layers/<cache-id>.index (chunks into
// the blob or the objects), overlay2/<cache-id>/{link,lower} and
// image/overlay2/layerdb/sha256/<chainID>/{diff,size,cache-id,parent,tar-split.json.gz}; then the
// image configs, the tags (merged into repositories.json), and last the catalog with a new index
// of image/. Everything is validated before the store is touched; blobs and indexes are written
// to temporary files, fsynced and renamed into place only once every layer of the run has been
// read (and, for archives, its diffID checked), so a failed or killed publish never leaves a layer
// that the catalog lists and that is not complete; every rename is followed by an fsync of its
// directory before the catalog names what it published. Runs in the tools process, single-threaded;
// one publish per store at a time (a lock file in STORE/extrafs).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/result.h"

namespace extrafs::store {

struct PublishRequest {
  std::string data_root;            // --data-root (exclusive with archive)
  std::vector<std::string> images;  // IMAGE... (with data_root)
  std::string archive;              // --archive
  std::string store;                // --to
  std::string order_file;           // --order ("" = none)
  // --chunk-objects: every chunk of the layers written its own content-addressed object
  // extrafs/objects/<digest> (store/indexer.h, ObjectSink), lz4 where that pays, instead of a
  // range of a layer blob; a chunk already in the store (any layer, the image/ tree) is not
  // stored again. --order then orders nothing: such a layer has no blob, so no ordered prefix.
  bool chunk_objects = false;
  // Progress (may be empty): called often; the caller rate-limits.
  std::function<void(const struct PublishProgress&)> progress;
};

struct PublishProgress {
  int layer = 0, layers = 0;  // current layer (1-based) of those to write
  uint64_t bytes_done = 0, bytes_total = 0;
};

struct PublishReport {
  std::vector<std::string> tags;  // tags written
  int layers_written = 0;
  int layers_present = 0;        // already in the store, left alone
  uint64_t raw_bytes = 0;        // content bytes packed (non-zero chunks)
  uint64_t stored_bytes = 0;     // bytes written into blobs (or new chunk objects)
  uint64_t objects_written = 0;  // --chunk-objects: chunk objects written (the rest were there)
  uint64_t ordered_bytes = 0;    // --order: blob bytes recorded as ordered prefixes (format/catalog.h)
  bool catalog_written = false;
};

// Errors: EINVAL for bad input (unknown image, not an archive, diffID mismatch, ...), other
// errno values for I/O failures; the message is one line naming what is wrong.
Result<PublishReport> publish(const PublishRequest& req);

}  // namespace extrafs::store
