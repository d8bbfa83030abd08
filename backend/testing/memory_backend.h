// MemoryBackend: a store held in memory, for unit tests. A real implementation of the Backend
// interface (not a mock): objects are put by path, directories exist implicitly as path prefixes,
// and every object reports mtime 0. Counts its reads so tests can check that an answer came
// without touching the store.
//
// Test-only: built into the extrafs_backend_testing library, never into the daemon.
// Thread-safety: every method may be called from any thread concurrently.
#pragma once

#include <atomic>
#include <map>
#include <mutex>
#include <string>

#include "backend/backend.h"

namespace extrafs::backend {

class MemoryBackend : public Backend {
 public:
  // Adds or replaces the object at `path`.
  void put(const std::string& path, std::string data);
  Result<size_t> read(std::string_view path, uint64_t offset, std::span<std::byte> buf) override;
  Result<ObjectInfo> stat(std::string_view path) override;
  Result<std::vector<std::string>> list(std::string_view path) override;
  std::string describe() const override { return "memory"; }
  uint64_t reads() const { return reads_; }

 private:
  std::mutex mu_;  // guards objects_
  std::map<std::string, std::string, std::less<>> objects_;
  std::atomic<uint64_t> reads_{0};
};

}  // namespace extrafs::backend
