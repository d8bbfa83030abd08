// Building indexes from local directory trees, and `extrafs index STORE` (indexing a Hermes-style
// store: overlay2/<cache-id>/{diff,link,lower} and image/, as copied with `cp -a` from a docker
// data-root). Runs in the tools process, single-threaded (it changes the working directory while
// walking, so that arbitrarily deep trees work without PATH_MAX limits).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "common/result.h"
#include "fs/index_format.h"

namespace extrafs::fs {

// Indexes the tree under local directory `dir`. Regular files get chunk references into
// themselves: object path = `object_prefix` + "/" + their path relative to `dir`. Holes and
// all-zero chunks become kChunkZero chunks. Returns the serialised index.
Result<std::string> index_directory(const std::string& dir, const std::string& object_prefix,
                                    uint32_t chunk_size = kDefaultChunkSize);

struct IndexStoreReport {
  int layers_indexed = 0;   // new indexes written
  int layers_present = 0;   // already indexed, left alone
  bool image_indexed = false;
  bool catalog_written = false;
};

// Indexes every overlay2/<cache-id>/diff of the store at local path `store` that has no valid
// index yet, the store's image/ tree, and writes the catalog (atomically, only if it changed).
// `progress` (may be empty) receives one line per layer.
Result<IndexStoreReport> index_store(const std::string& store, const std::function<void(const std::string&)>& progress);

// Writes `data` to `path` atomically (temporary file in the same directory, fsync, rename).
Status write_file_atomic(const std::string& path, std::string_view data);

}  // namespace extrafs::fs
