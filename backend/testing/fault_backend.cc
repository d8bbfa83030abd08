#include "backend/testing/fault_backend.h"

#include <thread>

namespace extrafs::backend {

Result<size_t> FaultBackend::read(std::string_view path, uint64_t offset, std::span<std::byte> buf) {
  reads_++;
  {
    std::unique_lock lock(hold_mu_);
    if (holding_) {
      ++held_;
      hold_cv_.notify_all();
      hold_cv_.wait(lock, [&] { return !holding_; });
      --held_;
    }
  }
  if (int64_t d = delay_ms_.load()) std::this_thread::sleep_for(std::chrono::milliseconds(d));
  if (fail_count_.load() > 0 && fail_count_.fetch_sub(1) > 0) {
    return Error::from_errno(fail_code_.load(), "injected failure reading " + std::string(path));
  }
  auto r = inner_.read(path, offset, buf);
  if (r.ok() && *r > 0 && corrupt_count_.load() > 0 && corrupt_count_.fetch_sub(1) > 0) {
    buf[*r / 2] ^= std::byte{0x5a};
  }
  return r;
}

void FaultBackend::hold_reads() {
  std::lock_guard lock(hold_mu_);
  holding_ = true;
}

void FaultBackend::release_reads() {
  {
    std::lock_guard lock(hold_mu_);
    holding_ = false;
  }
  hold_cv_.notify_all();
}

bool FaultBackend::wait_held(uint64_t n, std::chrono::milliseconds timeout) {
  std::unique_lock lock(hold_mu_);
  return hold_cv_.wait_for(lock, timeout, [&] { return held_ >= n; });
}

}  // namespace extrafs::backend
