// IndexLoader: reads the store's indexes (each layer's and the image/ tree's) through a
// cache::MetaSource, and owns the lazy loading of layer indexes with its retry policy.
//
// Indexes are immutable and named by their digest in the catalog: a copy the block cache kept
// with that digest is the same index and costs the store nothing (a restart, or a store that is
// down); otherwise the store's copy is read, and it must hash to the digest and parse.
//
// A layer's index is read on its first use (LazyIndex, one per layer): one caller reads it and
// the others for that layer wait on that layer's condition variable only, so lookups in other
// layers never wait for it. A failed read answers EIO (with its cause) for `retry_s` by the
// loader's clock; the first access after that reads again. One log line per outage, not one
// per access.
//
// Thread-safety: every method may be called from any thread concurrently (FUSE workers; the
// refresh thread, for image/ indexes; the stats server, for kept copies). Locks: each
// LazyIndex's `mu_`, a leaf, never held while the store or the block cache is read. The
// MetaSource must outlive the loader, and the loader every LazyIndex it is given.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "cache/meta_source.h"
#include "common/hash.h"
#include "common/result.h"
#include "common/thread_annotations.h"
#include "format/layer_index.h"

namespace extrafs::fs {

// One layer's index as far as it has been loaded: set once, never reset.
class LazyIndex {
 public:
  LazyIndex(std::string cache_id, const Digest128& digest) : cache_id_(std::move(cache_id)), digest_(digest) {}
  LazyIndex(const LazyIndex&) = delete;
  LazyIndex& operator=(const LazyIndex&) = delete;

  // The index if it is loaded, else null; never reads anything.
  std::shared_ptr<const format::LayerIndex> loaded() const EXCLUDES(mu_) {
    MutexLock lock(&mu_);
    return index_;
  }

 private:
  friend class IndexLoader;
  const std::string cache_id_;
  const Digest128 digest_;  // the catalog's index_digest
  mutable Mutex mu_;
  CondVar cv_;                                                         // a load finished
  std::shared_ptr<const format::LayerIndex> index_ GUARDED_BY(mu_);    // set once, never reset
  bool loading_ GUARDED_BY(mu_) = false;                               // a caller is reading it (the others wait)
  std::optional<Error> failure_ GUARDED_BY(mu_);                       // the last failed load's error, answered until
  std::chrono::steady_clock::time_point failed_at_ GUARDED_BY(mu_){};  // retry_s after this
};

class IndexLoader {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  // `now` is the clock of the retry policy (null: std::chrono::steady_clock::now; unit tests
  // pass their own, so that a back-off needs no sleep).
  IndexLoader(cache::MetaSource& meta, double retry_s, Clock now = nullptr);

  // The index at `path` whose digest is `want`: the copy kept under `cache_name` if it has that
  // digest, else the store's, checked (digest, then parse). `what` names it in messages
  // ("layer <id>", "the image/ tree").
  Result<std::shared_ptr<const format::LayerIndex>> load(const std::string& path, const std::string& cache_name,
                                                         const Digest128& want, const std::string& what);
  // The copy kept under `cache_name` if it parses and has the digest `want`, else null. Never
  // reads the store.
  std::shared_ptr<const format::LayerIndex> kept(const std::string& cache_name, const Digest128& want);

  // The index of `layer`: loaded already, or read now (see above): EIO while it cannot be read.
  Result<std::shared_ptr<const format::LayerIndex>> get(LazyIndex& layer);
  // For statistics: the loaded index, or the kept copy (then installed as loaded), never the
  // store; null if neither.
  std::shared_ptr<const format::LayerIndex> local(LazyIndex& layer);

 private:
  cache::MetaSource& meta_;
  const std::chrono::steady_clock::duration retry_;
  const Clock now_;
};

}  // namespace extrafs::fs
