// StoreMeta: the store's MetaSource (meta_source.h) over a Backend: reads metadata objects (the
// catalog, the layer and image/ indexes) afresh, keeps a copy of each that passes its check in
// the BlockCache (if one is given) so that a host can start and serve what it has cached while
// the store is down, and remembers refused objects by version. ChunkFetcher holds one and
// answers the MetaSource methods with it.
//
// Thread-safety: every method may be called from any thread. The Backend and the BlockCache must
// outlive it. `on_write_error` is called (from the reading thread, no lock held) for each copy
// the disk cache failed to keep.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "cache/block_cache.h"
#include "cache/meta_source.h"
#include "common/result.h"
#include "common/thread_annotations.h"

namespace extrafs::backend {
class Backend;
}  // namespace extrafs::backend

namespace extrafs::cache {

class StoreMeta final : public MetaSource {
 public:
  StoreMeta(backend::Backend& backend, BlockCache* disk, std::function<void(const Error&)> on_write_error);
  StoreMeta(const StoreMeta&) = delete;
  StoreMeta& operator=(const StoreMeta&) = delete;

  // MetaSource. read_meta keeps what passes `check` in the disk cache under `cache_name`, so bad
  // bytes in the store never replace a good cached copy.
  Result<std::string> read_meta(std::string_view path, const std::string& cache_name, uint64_t limit,
                                const std::function<Status(const std::string&)>& check) override;
  Result<std::string> kept_meta(const std::string& cache_name) override;
  Result<MetaVersion> meta_version(std::string_view path) override;
  std::string describe() const override;

  // Bytes of metadata read from the backend.
  uint64_t bytes_fetched() const { return bytes_fetched_.load(std::memory_order_relaxed); }
  // Backend reads and stats that failed (a missing object, ENOENT, is not a failure).
  uint64_t backend_errors() const { return backend_errors_.load(std::memory_order_relaxed); }

 private:
  backend::Backend& backend_;
  BlockCache* const disk_;
  const std::function<void(const Error&)> on_write_error_;

  // Metadata objects read_meta() refused, by path, with the version refused and why: answered
  // again without a read while the store's version is the same. An entry goes when its object is
  // read in another version.
  struct Refusal {
    MetaVersion version;
    Error error;
  };
  Mutex refused_mu_;
  std::unordered_map<std::string, Refusal> refused_ GUARDED_BY(refused_mu_);

  std::atomic<uint64_t> bytes_fetched_{0}, backend_errors_{0};
};

}  // namespace extrafs::cache
