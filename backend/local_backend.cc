#include "backend/local_backend.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

namespace extrafs::backend {

namespace {
// Paths come from indexes that have been validated, but the backend still refuses anything that
// could leave the root.
bool safe_relative(std::string_view p) {
  if (p.empty()) return true;
  if (p.front() == '/') return false;
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find('/', start);
    if (end == std::string_view::npos) end = p.size();
    auto comp = p.substr(start, end - start);
    if (comp == "..") return false;
    start = end + 1;
  }
  return true;
}
std::string rel(std::string_view p) { return p.empty() ? std::string(".") : std::string(p); }
}  // namespace

Result<std::unique_ptr<Backend>> LocalBackend::open(const std::string& root) {
  if (root.empty() || root.front() != '/') return make_error(EINVAL, "store path '" + root + "' is not absolute");
  int fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Error::from_errno(errno, "store " + root);
  return std::unique_ptr<Backend>(new LocalBackend(root, fd));
}

LocalBackend::~LocalBackend() {
  fds_.clear();
  ::close(root_fd_);
}

Result<std::shared_ptr<int>> LocalBackend::fd_for(std::string_view path) {
  std::string key(path);
  {
    std::lock_guard lock(mu_);
    auto it = fds_.find(key);
    if (it != fds_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.pos);
      return it->second.fd;
    }
  }
  if (!safe_relative(path)) return make_error(EINVAL, "path '" + key + "' leaves the store");
  int fd = ::openat(root_fd_, rel(path).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOATIME);
  if (fd < 0 && errno == EPERM) fd = ::openat(root_fd_, rel(path).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return Error::from_errno(errno, root_ + "/" + key);
  auto handle = std::shared_ptr<int>(new int(fd), [](int* p) {
    ::close(*p);
    delete p;
  });
  struct stat st;
  if (::fstat(fd, &st) != 0) return Error::from_errno(errno, root_ + "/" + key);
  std::lock_guard lock(mu_);
  auto it = fds_.find(key);
  if (it != fds_.end()) return it->second.fd;  // another thread won; ours closes on return
  lru_.push_front(key);
  fds_[key] = Open{handle, lru_.begin(), st.st_dev, st.st_ino};
  while (fds_.size() > kMaxOpen) {
    fds_.erase(lru_.back());
    lru_.pop_back();
  }
  return handle;
}

Result<size_t> LocalBackend::read(std::string_view path, uint64_t offset, std::span<std::byte> buf) {
  EXTRAFS_TRY(fd, fd_for(path));
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::pread(*fd, buf.data() + done, buf.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno(errno, "read " + root_ + "/" + std::string(path));
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

Result<ObjectInfo> LocalBackend::stat(std::string_view path) {
  if (!safe_relative(path)) return make_error(EINVAL, "path '" + std::string(path) + "' leaves the store");
  struct stat st;
  if (::fstatat(root_fd_, rel(path).c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
    return Error::from_errno(errno, root_ + "/" + std::string(path));
  {
    // A cached fd on a file that the path no longer names (replaced by rename) would serve the
    // old content: drop it, so the next read opens the current file. Readers holding it finish
    // on the old file.
    std::lock_guard lock(mu_);
    auto it = fds_.find(std::string(path));
    if (it != fds_.end() && (it->second.dev != st.st_dev || it->second.ino != st.st_ino)) {
      lru_.erase(it->second.pos);
      fds_.erase(it);
    }
  }
  ObjectInfo info;
  info.size = static_cast<uint64_t>(st.st_size);
  info.is_dir = S_ISDIR(st.st_mode);
  info.mtime_ns = st.st_mtim.tv_sec * 1000000000ll + st.st_mtim.tv_nsec;
  return info;
}

Result<std::vector<std::string>> LocalBackend::list(std::string_view path) {
  if (!safe_relative(path)) return make_error(EINVAL, "path '" + std::string(path) + "' leaves the store");
  int fd = ::openat(root_fd_, rel(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Error::from_errno(errno, root_ + "/" + std::string(path));
  DIR* d = ::fdopendir(fd);
  if (!d) {
    int e = errno;
    ::close(fd);
    return Error::from_errno(e, root_ + "/" + std::string(path));
  }
  std::vector<std::string> names;
  while (struct dirent* de = ::readdir(d)) {
    if (std::strcmp(de->d_name, ".") == 0 || std::strcmp(de->d_name, "..") == 0) continue;
    names.emplace_back(de->d_name);
  }
  ::closedir(d);
  return names;
}

}  // namespace extrafs::backend
