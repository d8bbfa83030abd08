#include "backend/testing/memory_backend.h"

#include <algorithm>
#include <cstring>

#include "common/posix_file.h"
#include "common/thread_annotations.h"

namespace extrafs::backend {

void MemoryBackend::put_object(const std::string& path, Object o) {
  MutexLock lock(&mu_);
  o.version = ++versions_;
  objects_[path] = std::move(o);
}

void MemoryBackend::put(const std::string& path, std::string data) {
  Object o;
  o.size = data.size();
  o.data = std::move(data);
  put_object(path, std::move(o));
}

void MemoryBackend::put_special(const std::string& path, uint32_t type) {
  Object o;
  o.special = type;
  put_object(path, std::move(o));
}

void MemoryBackend::put_sparse(const std::string& path, uint64_t size) {
  Object o;
  o.size = size;
  put_object(path, std::move(o));
}

Result<size_t> MemoryBackend::read(std::string_view path, uint64_t offset, std::span<std::byte> buf) {
  reads_++;
  MutexLock lock(&mu_);
  auto it = objects_.find(path);
  if (it == objects_.end()) return Error::from_errno(ENOENT, std::string(path));
  const Object& o = it->second;
  if (o.special) return not_a_regular_file(std::string(path), o.special);
  if (offset >= o.size) return size_t{0};
  size_t n = std::min<uint64_t>(buf.size(), o.size - offset);
  size_t from_data = offset < o.data.size() ? std::min<uint64_t>(n, o.data.size() - offset) : 0;
  if (from_data) std::memcpy(buf.data(), o.data.data() + offset, from_data);
  std::memset(buf.data() + from_data, 0, n - from_data);
  return n;
}

Result<ObjectInfo> MemoryBackend::stat(std::string_view path) {
  MutexLock lock(&mu_);
  auto it = objects_.find(path);
  if (it != objects_.end()) {
    ObjectInfo info;
    info.size = it->second.size;
    info.special = it->second.special;
    info.ctime_ns = it->second.version;
    return info;
  }
  std::string prefix = std::string(path) + "/";
  for (const auto& [k, v] : objects_)
    if (k.rfind(prefix, 0) == 0) return ObjectInfo{0, true, 0};
  return Error::from_errno(ENOENT, std::string(path));
}

Result<std::vector<std::string>> MemoryBackend::list(std::string_view path) {
  MutexLock lock(&mu_);
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
