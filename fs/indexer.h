// Building indexes from local directory trees, and `extrafs index STORE` (indexing a Hermes-style
// store: overlay2/<cache-id>/{diff,link,lower} and image/, as copied with `cp -a` from a docker
// data-root). Runs in the tools process, single-threaded (it changes the working directory while
// walking, so that arbitrarily deep trees work without PATH_MAX limits).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "fs/catalog.h"
#include "fs/index_format.h"

namespace extrafs::fs {

class IndexBuilder;

// Where the bytes of the chunks of a tree go. The walker reads every regular file in 1-chunk
// pieces, turns holes and all-zero pieces into kChunkZero chunks itself, and hands every other
// piece to put(), which stores (or references) it and fills in object, offset, stored_len and
// flags of *rec (raw_len and digest are already set). Called from the walking thread only.
class ChunkSink {
 public:
  virtual ~ChunkSink() = default;
  // Called once per regular file, before its chunks (also for empty and all-zero files).
  virtual Status begin_file(IndexBuilder& /*builder*/, const std::string& /*rel*/) { return ok_status(); }
  // `rel`: the file's path relative to the tree root; `file_offset`: where `raw` starts in it.
  virtual Status put(IndexBuilder& builder, const std::string& rel, uint64_t file_offset, std::string_view raw,
                     ChunkRecord* rec) = 0;
};

// The sink of `extrafs index`: chunks point into the files themselves (object path =
// `object_prefix` + "/" + the file's relative path, offset = offset in the file, never compressed).
class PlainFileSink : public ChunkSink {
 public:
  explicit PlainFileSink(std::string object_prefix) : prefix_(std::move(object_prefix)) {}
  Status begin_file(IndexBuilder& builder, const std::string& rel) override;
  Status put(IndexBuilder& builder, const std::string& rel, uint64_t file_offset, std::string_view raw,
             ChunkRecord* rec) override;

 private:
  std::string prefix_;
  uint32_t object_ = 0;  // of the current file
};

// Fills the raw_len/digest of *rec for `raw`, or marks it kChunkZero (returns true) if it is all
// zeros. Shared by every producer of chunk records, so all of them treat zeros alike.
bool describe_chunk(std::string_view raw, ChunkRecord* rec);

struct WalkOptions {
  uint32_t chunk_size = kDefaultChunkSize;
  // Paths (relative to the tree root, no leading '/') whose content goes to the sink first, in
  // this order; the other files follow in walk order. Paths that are not regular files are ignored.
  std::vector<std::string> first;
  // Called after each file's content went to the sink, with its size (may be empty).
  std::function<void(uint64_t)> on_file;
};

// Indexes the tree under local directory `dir`: full metadata of every entry, each regular file's
// content through `sink`. Holes and all-zero chunks become kChunkZero chunks. Returns the
// serialised index.
Result<std::string> index_directory(const std::string& dir, ChunkSink& sink, const WalkOptions& options);

// Indexes the tree under local directory `dir` with chunk references into its own files (see
// PlainFileSink).
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

// The catalog of a store as read from disk, with its text (to write it only if it changed).
struct StoreCatalog {
  Catalog catalog;
  std::string text;  // "" if the store had no catalog yet
};
// Reads STORE/extrafs/catalog; a missing catalog is an empty one, a corrupt one an error.
Result<StoreCatalog> load_store_catalog(const std::string& store);
// Replaces the layer with the same cache-id in place, or appends it (layers are never reordered).
void merge_catalog_layer(Catalog* catalog, CatalogLayer layer);

struct CatalogCommit {
  bool image_indexed = false;    // a new image/ index file was written
  bool catalog_written = false;  // the catalog changed and was written
};
// The last step of `index` and `publish`: indexes STORE/image (if present; chunks point into its
// plain files), records that index in the catalog, and writes the catalog atomically if it
// changed. Everything the catalog names must already be on disk.
Result<CatalogCommit> commit_store_catalog(const std::string& store, StoreCatalog* sc);

// Writes `data` to `path` atomically (temporary file in the same directory, fsync, rename).
Status write_file_atomic(const std::string& path, std::string_view data);

// mkdir -p (mode 0755).
Status make_dirs(const std::string& path);

}  // namespace extrafs::fs
