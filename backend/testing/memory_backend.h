// MemoryBackend: a store held in memory, for unit tests. A real implementation of the Backend
// interface (not a mock): objects are put by path, directories exist implicitly as path prefixes,
// and every object reports mtime 0 and a change time that moves with each put (so a replaced
// object is a new version even at the same size). Besides regular objects it can hold the shapes
// a hostile store has: objects of another type (a FIFO, ...), refused like a real store refuses
// them, and huge sparse objects that read as zeros without being allocated. Counts its reads so
// tests can check that an answer came without touching the store.
//
// Test-only: built into the extrafs_backend_testing library, never into the daemon.
// Thread-safety: every method may be called from any thread concurrently.
#pragma once

#include <atomic>
#include <map>
#include <string>

#include "backend/backend.h"
#include "common/thread_annotations.h"

namespace extrafs::backend {

class MemoryBackend : public Backend {
 public:
  // Adds or replaces the object at `path`.
  void put(const std::string& path, std::string data);
  // Puts an object of type `type` (S_IFIFO, S_IFCHR, ...: S_IFMT bits) at `path`.
  void put_special(const std::string& path, uint32_t type);
  // Puts a sparse object of `size` bytes, all zeros, at `path`.
  void put_sparse(const std::string& path, uint64_t size);
  Result<size_t> read(std::string_view path, uint64_t offset, std::span<std::byte> buf) override;
  Result<ObjectInfo> stat(std::string_view path) override;
  Result<std::vector<std::string>> list(std::string_view path) override;
  std::string describe() const override { return "memory"; }
  uint64_t reads() const { return reads_; }

 private:
  struct Object {
    std::string data;
    uint64_t size = 0;     // data.size(), or the size of a sparse object
    uint32_t special = 0;  // S_IFMT bits of a non-regular object
    int64_t version = 0;   // reported as the change time
  };
  void put_object(const std::string& path, Object o);

  Mutex mu_;
  std::map<std::string, Object, std::less<>> objects_ GUARDED_BY(mu_);
  int64_t versions_ GUARDED_BY(mu_) = 0;
  std::atomic<uint64_t> reads_{0};
};

}  // namespace extrafs::backend
