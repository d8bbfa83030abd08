#include "backend/testing/memory_backend.h"

#include <algorithm>
#include <cstring>

namespace extrafs::backend {

void MemoryBackend::put(const std::string& path, std::string data) {
  std::lock_guard lock(mu_);
  objects_[path] = std::move(data);
}

Result<size_t> MemoryBackend::read(std::string_view path, uint64_t offset, std::span<std::byte> buf) {
  reads_++;
  std::lock_guard lock(mu_);
  auto it = objects_.find(path);
  if (it == objects_.end()) return Error::from_errno(ENOENT, std::string(path));
  const std::string& d = it->second;
  if (offset >= d.size()) return size_t{0};
  size_t n = std::min<uint64_t>(buf.size(), d.size() - offset);
  std::memcpy(buf.data(), d.data() + offset, n);
  return n;
}

Result<ObjectInfo> MemoryBackend::stat(std::string_view path) {
  std::lock_guard lock(mu_);
  auto it = objects_.find(path);
  if (it != objects_.end()) return ObjectInfo{it->second.size(), false, 0};
  std::string prefix = std::string(path) + "/";
  for (const auto& [k, v] : objects_)
    if (k.rfind(prefix, 0) == 0) return ObjectInfo{0, true, 0};
  return Error::from_errno(ENOENT, std::string(path));
}

Result<std::vector<std::string>> MemoryBackend::list(std::string_view path) {
  std::lock_guard lock(mu_);
  std::string prefix = path.empty() ? "" : std::string(path) + "/";
  std::vector<std::string> out;
  for (const auto& [k, v] : objects_) {
    if (k.rfind(prefix, 0) != 0) continue;
    std::string rest = k.substr(prefix.size());
    rest = rest.substr(0, rest.find('/'));
    if (out.empty() || out.back() != rest) out.push_back(rest);
  }
  if (out.empty()) return Error::from_errno(ENOENT, std::string(path));
  return out;
}

}  // namespace extrafs::backend
