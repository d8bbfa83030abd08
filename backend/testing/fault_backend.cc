#include "backend/testing/fault_backend.h"

#include <thread>

namespace extrafs::backend {

Result<size_t> FaultBackend::read(std::string_view path, uint64_t offset, std::span<std::byte> buf) {
  reads_++;
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

}  // namespace extrafs::backend
