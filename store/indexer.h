// Building indexes from local directory trees, and `extrafs index STORE` (indexing a Hermes-style
// store: overlay2/<cache-id>/{diff,link,lower} and image/, as copied with `cp -a` from a docker
// data-root). A walk is single-threaded and opens everything relative to directory descriptors
// (openat, one name at a time), so that arbitrarily deep trees work without PATH_MAX limits and
// the process's working directory is never touched; extended attributes are read through
// /proc/self/fd, which must be mounted. Every index and the catalog are written atomically and
// durably (store/catalog_writer.h).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/result.h"
#include "format/index_format.h"
#include "format/layer_index.h"

namespace extrafs::store {

using format::ChunkRecord;
using format::IndexBuilder;

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

// A sink that stores the chunks themselves (rather than pointing into the files walked), so that
// it also takes chunks that come from elsewhere than a walk, such as a layer tar: BlobWriter
// (publish_blob.h) and ObjectSink.
class ChunkPacker : public ChunkSink {
 public:
  // Stores the (not all-zero) chunk `raw`; rec->raw_len and rec->digest are set (describe_chunk).
  virtual Status pack(IndexBuilder& builder, std::string_view raw, ChunkRecord* rec) = 0;
  Status put(IndexBuilder& builder, const std::string& /*rel*/, uint64_t /*file_offset*/, std::string_view raw,
             ChunkRecord* rec) override {
    return pack(builder, raw, rec);
  }
};

// Content-addressed objects: every distinct chunk stored once as the immutable object
// STORE/extrafs/objects/<xxh3-128 hex of its raw bytes> (offset 0). The sink of the image/ tree
// (`extrafs index` and `extrafs publish`: an image/ file a publisher later rewrites never changes
// the bytes an index names, so hosts reading the old index keep reading what it verified) and of
// the layers of `publish --chunk-objects` (each chunk an object any HTTP cache keeps whole, the
// same chunk in several layers or images stored once).
//
// A chunk whose object is there already (written by this sink, an earlier publish, or the
// image/ tree) is not written again: its record takes the object as it is, raw if its size is
// the chunk's, else lz4 (an object is never larger than its chunk; one that is is EBADMSG). New
// objects are lz4-compressed where that makes them smaller if `compress`, else stored raw; they
// are written to temporaries ("<object>.tmp.<pid>", which the store lock removes after a killed
// writer) and put in place by finish(): one syncfs for all of them, then the renames and an
// fsync of the directory. So an object in place is always whole and durable, which is what
// lets the next writer take one it finds as it is. Single-threaded; unfinished temporaries are
// removed when the sink is destroyed.
class ObjectSink : public ChunkPacker {
 public:
  // `store`: the store's local root.
  ObjectSink(std::string store, bool compress);
  ~ObjectSink() override;
  ObjectSink(const ObjectSink&) = delete;
  ObjectSink& operator=(const ObjectSink&) = delete;

  Status pack(IndexBuilder& builder, std::string_view raw, ChunkRecord* rec) override;
  // Makes every object written since the last call durable and puts it in place. An index that
  // names them may be written only after it succeeded.
  Status finish();

  int objects_written() const { return written_; }
  uint64_t stored_bytes() const { return stored_bytes_; }  // bytes of the objects written
  uint64_t raw_bytes() const { return raw_bytes_; }        // raw bytes of the chunks packed

 private:
  struct Known {
    uint32_t stored_len = 0;
    bool lz4 = false;
  };
  std::string store_;
  bool compress_;
  std::unordered_map<std::string, Known> known_;             // hex digest -> the object's form
  std::vector<std::pair<std::string, std::string>> staged_;  // (temporary, final path)
  std::string lz4_;                                          // compression scratch
  int written_ = 0;
  uint64_t stored_bytes_ = 0, raw_bytes_ = 0;
};

struct WalkOptions {
  uint32_t chunk_size = format::kDefaultChunkSize;
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

// The same for the directory open as `dir_fd` (named `shown` in messages): what the store and
// data-root readers use after opening the directory with open_beneath().
Result<std::string> index_directory_at(int dir_fd, const std::string& shown, ChunkSink& sink,
                                       const WalkOptions& options);
Result<std::string> index_directory_at(int dir_fd, const std::string& shown, const std::string& object_prefix,
                                       uint32_t chunk_size = format::kDefaultChunkSize);

// Indexes the tree under local directory `dir` with chunk references into its own files (see
// PlainFileSink).
Result<std::string> index_directory(const std::string& dir, const std::string& object_prefix,
                                    uint32_t chunk_size = format::kDefaultChunkSize);

struct IndexStoreReport {
  int layers_indexed = 0;  // new indexes written
  int layers_present = 0;  // already indexed, left alone
  int layers_removed = 0;  // trees of layers `extrafs rm` took out of the catalog: left for gc
  bool image_indexed = false;
  bool catalog_written = false;
  // One line per layer left out of the catalog, naming it and why: a directory name that is not
  // a cache-id, a symlinked diff/, link or lower, a link or lower the catalog reader refuses (or
  // one a layer of the catalog has), a lower chain naming links no layer has. The rest of the
  // store is indexed and stays mountable.
  std::vector<std::string> skipped;
  // One line per layer the catalog names whose index file is missing or no longer has the
  // catalog's digest, and whose files no longer index to those bytes either: it stays in the
  // catalog as it was (mounts that hold its index keep serving it; others answer EIO there).
  std::vector<std::string> damaged;
};

// Indexes every overlay2/<cache-id>/diff of the store at local path `store` that the catalog
// does not name yet and `extrafs rm` did not remove (remove_images.h; taking an index file
// already there if it is whole), the store's image/ tree, and writes the catalog (atomically,
// only if it changed). A layer the catalog names is
// never changed: its entry stays, and its index file is only checked against the catalog's
// digest (and, if missing or damaged, written again only if indexing the layer again gives the
// very same bytes; else it is listed in `damaged`). Nothing is opened through a symlink inside
// the store (open_beneath). New layers that cannot go into a catalog the reader accepts are left
// out and listed in `skipped`; a symlinked overlay2/, extrafs/layers or image/ is an error.
// `progress` (may be empty) receives one line per layer indexed.
Result<IndexStoreReport> index_store(const std::string& store, const std::function<void(const std::string&)>& progress);

}  // namespace extrafs::store
