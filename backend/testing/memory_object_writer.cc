#include "backend/testing/memory_object_writer.h"

#include "common/posix_file.h"
#include "common/thread_annotations.h"

namespace extrafs::backend {

Status MemoryObjectWriter::check_failing() {
  if (puts_left_ && *puts_left_ <= 0) return make_error(EIO, "memory writer: stopped (fail_after)");
  return ok_status();
}

Result<std::optional<uint64_t>> MemoryObjectWriter::head(std::string_view path) {
  MutexLock lock(&mu_);
  calls_.push_back("HEAD " + std::string(path));
  EXTRAFS_CHECK_STATUS(check_failing());
  auto it = objects_.find(path);
  if (it == objects_.end()) return std::optional<uint64_t>();
  return std::optional<uint64_t>(it->second.bytes.size());
}

Result<std::string> MemoryObjectWriter::get(std::string_view path, uint64_t limit) {
  MutexLock lock(&mu_);
  calls_.push_back("GET " + std::string(path));
  EXTRAFS_CHECK_STATUS(check_failing());
  auto it = objects_.find(path);
  if (it == objects_.end()) return make_error(ENOENT, std::string(path) + ": no such object");
  if (it->second.bytes.size() > limit) return make_error(EFBIG, std::string(path) + ": too large");
  return it->second.bytes;
}

Status MemoryObjectWriter::put(std::string_view path, const PutBody& body, std::string_view cache_control,
                               const std::function<void(int64_t)>& on_bytes) {
  std::string bytes;
  if (body.fd >= 0) {
    bytes.resize(body.size);
    size_t n = 0;
    if (pread_all(body.fd, bytes.data(), bytes.size(), 0, &n) != 0 || n != body.size)
      return make_error(EIO, "memory writer: short read of " + std::string(path));
  } else {
    bytes = body.bytes;
  }
  MutexLock lock(&mu_);
  calls_.push_back("PUT " + std::string(path));
  EXTRAFS_CHECK_STATUS(check_failing());
  if (puts_left_) --*puts_left_;
  if (on_bytes) on_bytes(static_cast<int64_t>(bytes.size()));
  objects_[std::string(path)] = Object{std::move(bytes), std::string(cache_control)};
  return ok_status();
}

Status MemoryObjectWriter::remove(std::string_view path) {
  MutexLock lock(&mu_);
  calls_.push_back("DELETE " + std::string(path));
  EXTRAFS_CHECK_STATUS(check_failing());
  auto it = objects_.find(path);
  if (it != objects_.end()) objects_.erase(it);
  return ok_status();
}

Result<std::vector<ListedObject>> MemoryObjectWriter::list(std::string_view prefix) {
  MutexLock lock(&mu_);
  calls_.push_back("LIST " + std::string(prefix));
  EXTRAFS_CHECK_STATUS(check_failing());
  std::vector<ListedObject> out;
  for (const auto& [p, o] : objects_)
    if (p.compare(0, prefix.size(), prefix) == 0) out.push_back(ListedObject{p, o.bytes.size()});
  return out;
}

void MemoryObjectWriter::fail_after(std::optional<int> puts) {
  MutexLock lock(&mu_);
  puts_left_ = puts;
}

void MemoryObjectWriter::set(const std::string& path, std::string bytes) {
  MutexLock lock(&mu_);
  objects_[path] = Object{std::move(bytes), ""};
}

std::map<std::string, MemoryObjectWriter::Object> MemoryObjectWriter::objects() const {
  MutexLock lock(&mu_);
  return {objects_.begin(), objects_.end()};
}

std::vector<std::string> MemoryObjectWriter::calls() const {
  MutexLock lock(&mu_);
  return calls_;
}

void MemoryObjectWriter::clear_calls() {
  MutexLock lock(&mu_);
  calls_.clear();
}

}  // namespace extrafs::backend
