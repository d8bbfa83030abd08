// Test backends: MemoryBackend holds objects in memory; FaultBackend wraps any backend and injects
// failures, corruption and delays. Real implementations of the Backend interface, used by unit
// tests instead of mocks.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>

#include "backend/backend.h"

namespace extrafs::backend {

class MemoryBackend : public Backend {
 public:
  void put(const std::string& path, std::string data);
  Result<size_t> read(std::string_view path, uint64_t offset, std::span<std::byte> buf) override;
  Result<ObjectInfo> stat(std::string_view path) override;
  Result<std::vector<std::string>> list(std::string_view path) override;
  std::string describe() const override { return "memory"; }
  uint64_t reads() const { return reads_; }

 private:
  std::mutex mu_;
  std::map<std::string, std::string, std::less<>> objects_;
  std::atomic<uint64_t> reads_{0};
};

class FaultBackend : public Backend {
 public:
  explicit FaultBackend(Backend& inner) : inner_(inner) {}
  // The next `n` reads fail with `code`.
  void fail_next_reads(int n, int code = EIO) { fail_count_ = n; fail_code_ = code; }
  // The next `n` reads return data with one byte flipped.
  void corrupt_next_reads(int n) { corrupt_count_ = n; }
  // Every read sleeps this long first.
  void set_delay(std::chrono::milliseconds d) { delay_ms_ = d.count(); }
  uint64_t reads() const { return reads_; }

  Result<size_t> read(std::string_view path, uint64_t offset, std::span<std::byte> buf) override;
  Result<ObjectInfo> stat(std::string_view path) override { return inner_.stat(path); }
  Result<std::vector<std::string>> list(std::string_view path) override { return inner_.list(path); }
  std::string describe() const override { return "fault(" + inner_.describe() + ")"; }

 private:
  Backend& inner_;
  std::atomic<int> fail_count_{0}, fail_code_{EIO}, corrupt_count_{0};
  std::atomic<int64_t> delay_ms_{0};
  std::atomic<uint64_t> reads_{0};
};

}  // namespace extrafs::backend
