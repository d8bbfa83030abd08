#include "backend/local_backend.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "common/posix_file.h"
#include "common/thread_annotations.h"

namespace extrafs::backend {

namespace {

std::shared_ptr<int> shared_fd(int fd) {
  return std::shared_ptr<int>(new int(fd), [](int* p) {
    ::close(*p);
    delete p;
  });
}

}  // namespace

Result<std::unique_ptr<Backend>> LocalBackend::open(const std::string& root) {
  if (root.empty() || root.front() != '/') return make_error(EINVAL, "store path '" + root + "' is not absolute");
  int fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Error::from_errno(errno, "store " + root);
  auto handle = shared_fd(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return Error::from_errno(errno, "store " + root);
  return std::unique_ptr<Backend>(new LocalBackend(root, std::move(handle), st.st_dev, st.st_ino));
}

LocalBackend::~LocalBackend() { fds_.clear(); }

std::shared_ptr<int> LocalBackend::root_fd() {
  MutexLock lock(&mu_);
  return root_fd_;
}

void LocalBackend::follow_root() {
  struct stat st;
  if (::stat(root_.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return;  // gone for now: keep the old one
  {
    MutexLock lock(&mu_);
    if (st.st_dev == root_dev_ && st.st_ino == root_ino_) return;
  }
  int fd = ::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  auto handle = shared_fd(fd);
  if (::fstat(fd, &st) != 0) return;
  MutexLock lock(&mu_);
  root_fd_ = std::move(handle);
  root_dev_ = st.st_dev;
  root_ino_ = st.st_ino;
  fds_.clear();
}

Result<std::shared_ptr<int>> LocalBackend::fd_for(std::string_view path) {
  std::string key(path);
  {
    MutexLock lock(&mu_);
    if (Open* open = fds_.touch(key)) return open->fd;
  }
  // Paths come from validated indexes, but nothing is opened outside the root or through a
  // symlink in the store, whoever wrote it, and nothing but a regular file (a FIFO would block
  // the reader for ever).
  auto root = root_fd();
  EXTRAFS_TRY(opened, open_regular_beneath(*root, path, root_, O_NOATIME));
  int fd = opened.release();
  auto handle = shared_fd(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return Error::from_errno(errno, root_ + "/" + key);
  MutexLock lock(&mu_);
  if (Open* open = fds_.find(key)) return open->fd;  // another thread won; ours closes on return
  if (root_fd_ != root) return handle;               // opened in a root left meanwhile: not kept
  fds_.insert(key, Open{handle, st.st_dev, st.st_ino});
  while (fds_.size() > kMaxOpen) fds_.pop_oldest();
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
  follow_root();
  EXTRAFS_TRY(fd, open_beneath(*root_fd(), path, O_PATH, root_));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Error::from_errno(errno, root_ + "/" + std::string(path));
  {
    // A cached fd on a file that the path no longer names (replaced by rename) would serve the
    // old content: drop it, so the next read opens the current file. Readers holding it finish
    // on the old file.
    MutexLock lock(&mu_);
    const std::string key(path);
    if (Open* open = fds_.find(key); open && (open->dev != st.st_dev || open->ino != st.st_ino)) fds_.erase(key);
  }
  ObjectInfo info;
  info.size = static_cast<uint64_t>(st.st_size);
  info.is_dir = S_ISDIR(st.st_mode);
  if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) info.special = st.st_mode & S_IFMT;
  info.mtime_ns = st.st_mtim.tv_sec * 1000000000ll + st.st_mtim.tv_nsec;
  info.file_id = st.st_ino;
  info.ctime_ns = st.st_ctim.tv_sec * 1000000000ll + st.st_ctim.tv_nsec;
  return info;
}

Result<std::vector<std::string>> LocalBackend::list(std::string_view path) {
  return list_dir_beneath(*root_fd(), path, root_);
}

}  // namespace extrafs::backend
