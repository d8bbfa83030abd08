// MetaSource: how the file system layer reads the store's metadata objects (the catalog, the
// layer and image/ indexes) without knowing where the store lives. It is the cache layer's
// interface upward for metadata, as ChunkFetcher::get() is for file content: fs/ reaches the
// store only through these two.
//
// Implemented by cache::ChunkFetcher (backend reads, with a copy of each object kept in the
// block cache so that a host can start and serve what it has cached while the store is down);
// unit tests may pass their own.
//
// Thread-safety: every method may be called from any thread concurrently. An implementation
// must outlive every user (FsCore holds a reference for its whole life).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace extrafs::cache {

// A cheap identity of one version of a metadata object: a file replaced by rename (how the
// catalog moves to a new version) or written again gets a different one. Equal versions mean
// "nothing to reload".
struct MetaVersion {
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  uint64_t tag = 0;      // backend::ObjectInfo::version_tag (an HTTP ETag's hash), 0 if none
  uint64_t file_id = 0;  // inode or NFS file id, where the store has one
  int64_t ctime_ns = 0;  // change time, where the store has one
  bool operator==(const MetaVersion&) const = default;
};

class MetaSource {
 public:
  virtual ~MetaSource() = default;

  // Reads the whole object at `path` (relative to the store root) afresh from the store and
  // checks it with `check`: an object replaced since an earlier read is read in its new version.
  // Only bytes that pass are kept under `cache_name` (see kept_meta).
  // Nothing but a regular file of at most `limit` bytes is ever read: a larger object (EFBIG)
  // or one of another type (EISDIR, EINVAL: a FIFO, a device...) is refused from its attributes
  // before anything of it is read. A refused object (of the wrong type, over `limit`, or failing
  // `check`) is remembered with the version refused: until the store shows another version,
  // read_meta answers the same error after one stat, without reading the object again. (Over
  // http(s) an object over `limit` is refused from the headers of its answer, the body never
  // fetched, but not remembered.) Other errors (ENOENT when the store has no such object, EIO,
  // ETIMEDOUT, ...) are not remembered: the next call tries again.
  virtual Result<std::string> read_meta(std::string_view path, const std::string& cache_name, uint64_t limit,
                                        const std::function<Status(const std::string&)>& check) = 0;

  // The copy of an object kept under `cache_name` by an earlier read_meta, without asking the
  // store (ENOENT if none). Unchecked: the caller checks it (an index against its digest).
  virtual Result<std::string> kept_meta(const std::string& cache_name) {
    (void)cache_name;
    return make_error(ENOENT, "no kept copy");
  }

  // The current version of the object at `path` in the store, without reading it (one stat).
  virtual Result<MetaVersion> meta_version(std::string_view path) = 0;

  // Human-readable name of the store, e.g. "/srv/store" or "nfs://127.0.0.1/export"; stable for
  // the life of the source (used in messages and to name kept copies per store).
  virtual std::string describe() const = 0;
};

}  // namespace extrafs::cache
