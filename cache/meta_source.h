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
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace extrafs::cache {

// A cheap identity of one version of a metadata object: a file replaced by rename (how the
// catalog moves to a new version) gets a different one. Equal versions mean "nothing to reload".
struct MetaVersion {
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  uint64_t tag = 0;  // backend::ObjectInfo::version_tag (an HTTP ETag's hash), 0 if none
  bool operator==(const MetaVersion&) const = default;
};

// A metadata object as read_meta() found it.
struct MetaObject {
  std::string bytes;
  // Set when `bytes` are the kept copy rather than the store's: why the store's copy was not
  // used (it could not be read, or it failed the check). A caller that must see the store's
  // current version (a catalog refresh) treats this as a failure.
  std::optional<Error> store_error;
  bool from_store() const { return !store_error; }
};

class MetaSource {
 public:
  virtual ~MetaSource() = default;

  // Reads the whole object at `path` (relative to the store root) afresh from the store and
  // checks it with `check`: an object replaced since an earlier read is read in its new version.
  // Only bytes that pass are kept under `cache_name`; if the store's copy cannot be read or fails
  // the check, a kept copy that passes is returned instead (with store_error set); otherwise the
  // read's (or the check's) error (ENOENT when the store has no such object and nothing is kept).
  virtual Result<MetaObject> read_meta(std::string_view path, const std::string& cache_name,
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
