// FaultBackend: wraps any Backend and injects failures, corruption and delays into its reads,
// for unit tests of what sits above a backend (retries, verification, error counting). A real
// Backend, not a mock: everything it does not inject is the inner backend's behaviour.
//
// Test-only: built into the extrafs_backend_testing library, never into the daemon.
// Thread-safety: every method may be called from any thread concurrently; the inner backend
// must outlive the wrapper.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>

#include "backend/backend.h"

namespace extrafs::backend {

class FaultBackend : public Backend {
 public:
  explicit FaultBackend(Backend& inner) : inner_(inner) {}
  // The next `n` reads fail with `code`.
  void fail_next_reads(int n, int code = EIO) {
    fail_count_ = n;
    fail_code_ = code;
  }
  // The next `n` reads return data with one byte flipped.
  void corrupt_next_reads(int n) { corrupt_count_ = n; }
  // Every read sleeps this long first.
  void set_delay(std::chrono::milliseconds d) { delay_ms_ = d.count(); }
  uint64_t reads() const { return reads_; }
  // Reads that start from now on wait, once counted, until release_reads(): a store that does
  // not answer yet, for a test that must act while a read is in progress (no sleep).
  void hold_reads();
  void release_reads();
  // Waits until at least `n` reads are held, for at most `timeout`; whether they are.
  bool wait_held(uint64_t n, std::chrono::milliseconds timeout);

  Result<size_t> read(std::string_view path, uint64_t offset, std::span<std::byte> buf) override;
  Result<ObjectInfo> stat(std::string_view path) override { return inner_.stat(path); }
  Result<std::vector<std::string>> list(std::string_view path) override { return inner_.list(path); }
  std::string describe() const override { return "fault(" + inner_.describe() + ")"; }

 private:
  Backend& inner_;
  std::atomic<int> fail_count_{0}, fail_code_{EIO}, corrupt_count_{0};
  std::atomic<int64_t> delay_ms_{0};
  std::atomic<uint64_t> reads_{0};
  std::mutex hold_mu_;  // guards holding_, held_
  std::condition_variable hold_cv_;
  bool holding_ = false;
  uint64_t held_ = 0;  // reads waiting in hold
};

}  // namespace extrafs::backend
