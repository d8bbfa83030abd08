#include "common/posix_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "common/str_util.h"

namespace extrafs {

void Fd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

int Fd::close_checked() {
  int r = ::close(std::exchange(fd_, -1));
  return r == 0 ? 0 : errno;
}

int write_all(int fd, const void* data, size_t len) {
  auto* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return 0;
}

int pwrite_all(int fd, const void* data, size_t len, off_t off) {
  auto* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    ssize_t n = ::pwrite(fd, p, len, off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    p += n;
    off += n;
    len -= static_cast<size_t>(n);
  }
  return 0;
}

bool FileIdentity::settled(const struct stat& st) {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME_COARSE, &now);
  return now.tv_sec - st.st_ctim.tv_sec >= 2;
}

int pread_all(int fd, void* data, size_t len, off_t off, size_t* got) {
  auto* p = static_cast<uint8_t*>(data);
  size_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd, p + done, len - done, off + static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      *got = done;
      return errno;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  *got = done;
  return 0;
}

const char* file_type_name(mode_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return "a regular file";
    case S_IFDIR:
      return "a directory";
    case S_IFIFO:
      return "a FIFO";
    case S_IFSOCK:
      return "a socket";
    case S_IFCHR:
      return "a character device";
    case S_IFBLK:
      return "a block device";
    case S_IFLNK:
      return "a symlink";
    default:
      return "of an unknown type";
  }
}

Error not_a_regular_file(const std::string& name, mode_t mode) {
  return make_error(S_ISDIR(mode) ? EISDIR : EINVAL,
                    name + " is " + file_type_name(mode) + ", not a regular file; refusing to read it");
}

Error too_large(const std::string& name, uint64_t size, uint64_t limit) {
  return make_error(EFBIG, name + " is " + std::to_string(size) + " bytes, over its limit of " + std::to_string(limit) +
                               " bytes; refusing to read it");
}

namespace {

// The rest of open file `fd` (named `path` in messages), at most `limit` bytes.
Result<std::string> read_rest(const Fd& fd, const std::string& path, uint64_t limit) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno(errno, path);
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > limit)
      return make_error(EFBIG, path + " grew past its limit of " + std::to_string(limit) + " bytes while being read");
  }
  return out;
}

// `path_fd`, opened with O_PATH on `name`, if it is a regular file: opened again for reading
// (see open_regular). `st` receives its attributes.
Result<Fd> reopen_regular(const Fd& path_fd, const std::string& name, int flags, struct stat* st) {
  if (::fstat(path_fd.get(), st) != 0) return Error::from_errno(errno, name);
  if (!S_ISREG(st->st_mode)) return not_a_regular_file(name, st->st_mode);
  // The magic link names the file path_fd holds, not whatever the name leads to now.
  const std::string proc = "/proc/self/fd/" + std::to_string(path_fd.get());
  const int base = O_RDONLY | O_CLOEXEC | O_NOCTTY;
  flags &= ~O_NOFOLLOW;  // (the magic link is a symlink)
  int fd = ::open(proc.c_str(), base | flags);
  if (fd < 0 && errno == EPERM && (flags & O_NOATIME)) fd = ::open(proc.c_str(), base | (flags & ~O_NOATIME));
  if (fd < 0) {
    if (errno == ENOENT)
      return make_error(ENOENT, "cannot reopen " + name + " through " + proc + " (is /proc mounted?)");
    return Error::from_errno(errno, name);
  }
  return Fd(fd);
}

// open_regular() that also gives the file's attributes.
Result<Fd> open_regular_stat(const std::string& path, int flags, struct stat* st) {
  Fd pfd(::open(path.c_str(), O_PATH | O_CLOEXEC | (flags & O_NOFOLLOW)));
  if (!pfd.valid()) return Error::from_errno(errno, path);
  return reopen_regular(pfd, path, flags, st);
}

Result<Fd> open_regular_beneath_stat(int dir, std::string_view rel, const std::string& shown, int flags,
                                     struct stat* st) {
  EXTRAFS_TRY(pfd, open_beneath(dir, rel, O_PATH, shown));
  return reopen_regular(pfd, rel.empty() ? shown : shown + "/" + std::string(rel), flags, st);
}

// The whole of `fd`, a regular file named `name` with attributes `st`, if at most `limit` bytes.
Result<std::string> read_whole(const Fd& fd, const std::string& name, const struct stat& st, uint64_t limit) {
  if (static_cast<uint64_t>(st.st_size) > limit) return too_large(name, static_cast<uint64_t>(st.st_size), limit);
  return read_rest(fd, name, limit);
}

}  // namespace

Result<Fd> open_regular(const std::string& path, int flags) {
  struct stat st;
  return open_regular_stat(path, flags, &st);
}

Result<Fd> open_regular_beneath(int dir, std::string_view rel, const std::string& shown, int flags) {
  struct stat st;
  return open_regular_beneath_stat(dir, rel, shown, flags, &st);
}

bool process_running(long pid) {
  auto stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  if (!stat.ok()) return false;
  // "pid (comm) STATE ...": the state follows the last ')' (comm may hold one).
  auto close = stat->rfind(')');
  if (close == std::string::npos || close + 2 >= stat->size()) return false;
  const char state = (*stat)[close + 2];
  return state != 'Z' && state != 'X';
}

Result<std::string> read_file(const std::string& path, uint64_t limit) {
  struct stat st;
  EXTRAFS_TRY(fd, open_regular_stat(path, 0, &st));
  return read_whole(fd, path, st, limit);
}

namespace {

// Writes `data` into the open file `fd` (named `path` in messages), sets `mode` and fsyncs.
Status fill_and_sync(int fd, const std::string& path, std::string_view data, mode_t mode) {
  if (int e = write_all(fd, data.data(), data.size())) return Error::from_errno(e, "write " + path);
  if (::fchmod(fd, mode) != 0) return Error::from_errno(errno, "chmod " + path);
  if (::fsync(fd) != 0) return Error::from_errno(errno, "fsync " + path);
  return ok_status();
}

}  // namespace

Status write_new_file(const std::string& path, std::string_view data, mode_t mode) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode));
  if (!fd.valid()) return Error::from_errno(errno, path);
  EXTRAFS_CHECK_STATUS(fill_and_sync(fd.get(), path, data, mode));
  if (int e = fd.close_checked()) return Error::from_errno(e, path);
  return ok_status();
}

namespace {
// Writes `data` to a temporary beside `path`, fsyncs it and puts it at `path`: by rename
// (replacing) or by link (never replacing: EEXIST), then fsyncs the directory.
Status write_via_temp(const std::string& path, std::string_view data, mode_t mode, bool replace) {
  // The pid in the name lets a later run tell a killed writer's leftover from a live one's.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  Status st = [&]() -> Status {
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode));
    if (!fd.valid()) return Error::from_errno(errno, "create " + tmp);
    EXTRAFS_CHECK_STATUS(fill_and_sync(fd.get(), tmp, data, mode));
    if (int e = fd.close_checked()) return Error::from_errno(e, "close " + tmp);
    if (replace) {
      if (::rename(tmp.c_str(), path.c_str()) != 0) return Error::from_errno(errno, "rename " + tmp + " to " + path);
    } else {
      if (::link(tmp.c_str(), path.c_str()) != 0) return Error::from_errno(errno, path);
      ::unlink(tmp.c_str());
    }
    return ok_status();
  }();
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return fsync_dir(parent_dir(path));
}
}  // namespace

Status write_file_atomic(const std::string& path, std::string_view data, mode_t mode) {
  return write_via_temp(path, data, mode, /*replace=*/true);
}

Status write_file_atomic_new(const std::string& path, std::string_view data, mode_t mode) {
  return write_via_temp(path, data, mode, /*replace=*/false);
}

Status fsync_dir(const std::string& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return Error::from_errno(errno, dir);
  if (::fsync(fd.get()) != 0) return Error::from_errno(errno, "fsync " + dir);
  return ok_status();
}

std::string parent_dir(const std::string& path) {
  auto s = path.rfind('/');
  if (s == std::string::npos) return ".";
  return s == 0 ? "/" : path.substr(0, s);
}

Status make_dirs(const std::string& path, mode_t mode, std::vector<std::string>* created) {
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    const std::string cur = path.substr(0, end);
    start = end + 1;
    if (cur.empty() || cur.back() == '/') continue;  // the root, or "a//b"
    if (::mkdir(cur.c_str(), mode) == 0) {
      if (created) created->push_back(cur);
      continue;
    }
    if (errno != EEXIST) return Error::from_errno(errno, "mkdir " + cur);
    struct stat st;
    if (::stat(cur.c_str(), &st) != 0) return Error::from_errno(errno, "mkdir " + cur);
    if (!S_ISDIR(st.st_mode)) return make_error(ENOTDIR, cur + " is not a directory");
  }
  return ok_status();
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

bool is_dir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_symlink(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
}

std::optional<std::string> read_link(const std::string& path) {
  char buf[PATH_MAX + 1];
  ssize_t n = ::readlink(path.c_str(), buf, PATH_MAX);
  if (n < 0) return std::nullopt;
  return std::string(buf, static_cast<size_t>(n));
}

namespace {
// The sorted names of open directory `d` (without "." and ".."); closes it.
std::vector<std::string> names_of(DIR* d) {
  std::vector<std::string> out;
  while (struct dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(std::move(n));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

Result<std::vector<std::string>> list_dir(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return Error::from_errno(errno, dir);
  return names_of(d);
}

Result<std::vector<std::string>> list_dir_beneath(int dir, std::string_view rel, const std::string& shown) {
  EXTRAFS_TRY(fd, open_beneath(dir, rel, O_RDONLY | O_DIRECTORY, shown));
  DIR* d = ::fdopendir(fd.get());
  if (!d) return Error::from_errno(errno, shown + "/" + std::string(rel));
  fd.release();
  return names_of(d);
}

std::string absolute_path(const std::string& path) {
  if (!path.empty() && path.front() == '/') return path;
  char cwd[PATH_MAX];
  if (!::getcwd(cwd, sizeof cwd)) return path;
  return std::string(cwd) + "/" + path;
}

std::optional<std::string> real_path(const std::string& path) {
  char* r = ::realpath(path.c_str(), nullptr);
  if (!r) return std::nullopt;
  std::string out = r;
  std::free(r);
  return out;
}

namespace {

Status remove_tree_at(int parent_fd, const std::string& name, const std::string& shown, dev_t dev) {
  struct stat st;
  if (::fstatat(parent_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return ok_status();
    return Error::from_errno(errno, shown);
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlinkat(parent_fd, name.c_str(), 0) != 0 && errno != ENOENT) return Error::from_errno(errno, shown);
    return ok_status();
  }
  if (st.st_dev != dev) return make_error(EBUSY, shown + " is a mount point; unmount it first");
  int fd = ::openat(parent_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return Error::from_errno(errno, shown);
  DIR* d = ::fdopendir(fd);
  if (!d) {
    int e = errno;
    ::close(fd);
    return Error::from_errno(e, shown);
  }
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  Status result = ok_status();
  for (const auto& n : names) {
    auto s = remove_tree_at(::dirfd(d), n, shown + "/" + n, dev);
    if (!s.ok()) {
      result = s;
      break;
    }
  }
  ::closedir(d);
  if (!result.ok()) return result;
  if (::unlinkat(parent_fd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) return Error::from_errno(errno, shown);
  return ok_status();
}

}  // namespace

Status remove_tree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT ? ok_status() : Status(Error::from_errno(errno, path));
  const std::string dir = parent_dir(path);
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return Error::from_errno(errno, dir);
  return remove_tree_at(fd.get(), path.substr(path.rfind('/') + 1), path, st.st_dev);
}

namespace {

// The walk for kernels without openat2: every directory on the way with O_NOFOLLOW|O_DIRECTORY.
int open_walk(int dir, const std::vector<std::string>& comps, int flags, mode_t mode) {
  if (comps.empty()) return ::openat(dir, ".", flags, mode);
  int cur = dir;
  for (size_t i = 0; i + 1 < comps.size(); ++i) {
    int next = ::openat(cur, comps[i].c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = errno;
    if (cur != dir) ::close(cur);
    if (next < 0) {
      errno = e == ENOTDIR ? ELOOP : e;  // a symlinked parent shows as ENOTDIR under O_DIRECTORY
      return -1;
    }
    cur = next;
  }
  int fd = ::openat(cur, comps.back().c_str(), flags | O_NOFOLLOW, mode);
  int e = errno;
  struct stat st;
  // O_DIRECTORY|O_NOFOLLOW on a symlink says ENOTDIR; openat2 says ELOOP.
  if (fd < 0 && e == ENOTDIR && ::fstatat(cur, comps.back().c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
      S_ISLNK(st.st_mode))
    e = ELOOP;
  if (cur != dir) ::close(cur);
  if (fd >= 0 && (flags & O_PATH) && ::fstat(fd, &st) == 0 && S_ISLNK(st.st_mode)) {
    ::close(fd);  // O_PATH|O_NOFOLLOW opens the symlink itself; openat2 refuses it
    fd = -1;
    e = ELOOP;
  }
  errno = e;
  return fd;
}

std::atomic<bool> no_openat2{false};  // set once openat2 is known to be missing (or by a test)

}  // namespace

void use_open_beneath_fallback_for_testing(bool on) { no_openat2.store(on); }

Result<Fd> open_beneath(int dir, std::string_view rel, int flags, const std::string& shown, mode_t mode) {
  const std::string name = rel.empty() ? shown : shown + "/" + std::string(rel);
  std::vector<std::string_view> parts;
  if ((!rel.empty() && rel.front() == '/') || !split_path(rel, &parts))
    return make_error(EXDEV, name + ": path leaves its directory");
  const std::vector<std::string> comps(parts.begin(), parts.end());
  flags |= O_CLOEXEC;
  std::string joined;
  for (const auto& c : comps) {
    if (!joined.empty()) joined += '/';
    joined += c;
  }
  if (joined.empty()) joined.push_back('.');  // (not `= "."`: GCC 12 -O3 sees a -Wrestrict false positive)
  int fd = -1;
  if (!no_openat2.load(std::memory_order_relaxed)) {
    struct open_how how {};
    how.flags = static_cast<uint64_t>(flags);
    how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    fd = static_cast<int>(::syscall(SYS_openat2, dir, joined.c_str(), &how, sizeof how));
    if (fd < 0 && errno == ENOSYS) no_openat2.store(true, std::memory_order_relaxed);
  }
  if (no_openat2.load(std::memory_order_relaxed)) fd = open_walk(dir, comps, flags, mode);
  if (fd < 0) {
    int e = errno;
    if (e == ELOOP) return make_error(ELOOP, name + " is reached through a symlink; refusing to follow it");
    if (e == EXDEV) return make_error(EXDEV, name + ": path leaves its directory");
    return Error::from_errno(e, name);
  }
  return Fd(fd);
}

Result<std::string> read_file_beneath(int dir, std::string_view rel, const std::string& shown, uint64_t limit) {
  struct stat st;
  EXTRAFS_TRY(fd, open_regular_beneath_stat(dir, rel, shown, 0, &st));
  return read_whole(fd, rel.empty() ? shown : shown + "/" + std::string(rel), st, limit);
}

namespace {

// The parent directory of `rel` beneath `dir`, opened, and the last component of `rel`.
Result<std::pair<Fd, std::string>> open_parent_beneath(int dir, std::string_view rel, const std::string& shown) {
  while (!rel.empty() && rel.back() == '/') rel.remove_suffix(1);
  size_t slash = rel.rfind('/');
  std::string name(slash == std::string_view::npos ? rel : rel.substr(slash + 1));
  if (name.empty() || name == "." || name == "..")
    return make_error(EINVAL, shown + "/" + std::string(rel) + ": not a name to remove");
  EXTRAFS_TRY(parent, open_beneath(dir, slash == std::string_view::npos ? "" : rel.substr(0, slash),
                                   O_RDONLY | O_DIRECTORY, shown));
  return std::make_pair(std::move(parent), std::move(name));
}

Status usage_at(int parent_fd, const std::string& name, const std::string& shown, dev_t dev, TreeUsage* usage) {
  struct stat st;
  if (::fstatat(parent_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return ok_status();
    return Error::from_errno(errno, shown);
  }
  if (!S_ISDIR(st.st_mode)) {
    usage->files++;
    if (S_ISREG(st.st_mode)) usage->bytes += static_cast<uint64_t>(st.st_size);
    return ok_status();
  }
  if (st.st_dev != dev) return make_error(EBUSY, shown + " is a mount point");
  Fd fd(::openat(parent_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return Error::from_errno(errno, shown);
  EXTRAFS_TRY(names, list_dir_beneath(fd.get(), "", shown));
  for (const auto& n : names) EXTRAFS_CHECK_STATUS(usage_at(fd.get(), n, shown + "/" + n, dev, usage));
  return ok_status();
}

}  // namespace

Status remove_beneath(int dir, std::string_view rel, const std::string& shown) {
  auto parent = open_parent_beneath(dir, rel, shown);
  if (!parent.ok()) return parent.code() == ENOENT ? ok_status() : Status(parent.error());
  struct stat st;
  if (::fstat(parent->first.get(), &st) != 0) return Error::from_errno(errno, shown);
  return remove_tree_at(parent->first.get(), parent->second, shown + "/" + std::string(rel), st.st_dev);
}

Result<TreeUsage> usage_beneath(int dir, std::string_view rel, const std::string& shown) {
  TreeUsage usage;
  auto parent = open_parent_beneath(dir, rel, shown);
  if (!parent.ok()) {
    if (parent.code() == ENOENT) return usage;
    return parent.error();
  }
  struct stat st;
  if (::fstat(parent->first.get(), &st) != 0) return Error::from_errno(errno, shown);
  EXTRAFS_CHECK_STATUS(
      usage_at(parent->first.get(), parent->second, shown + "/" + std::string(rel), st.st_dev, &usage));
  return usage;
}

Status check_dir_beneath(int dir, std::string_view rel, const std::string& shown) {
  EXTRAFS_TRY(fd, open_beneath(dir, rel, O_RDONLY | O_DIRECTORY, shown));
  (void)fd;
  return ok_status();
}

std::string random_chars(size_t n, std::string_view alphabet) {
  EXTRAFS_INVARIANT(!alphabet.empty() && alphabet.size() <= 256, "random_chars: bad alphabet");
  // Rejection sampling keeps every character equally likely.
  const unsigned limit = 256 - 256 % static_cast<unsigned>(alphabet.size());
  std::string out;
  while (out.size() < n) {
    unsigned char b[64];
    ssize_t got = ::getrandom(b, sizeof b, 0);
    if (got < 0 && errno == EINTR) continue;
    EXTRAFS_INVARIANT(got > 0, "getrandom failed");
    for (ssize_t i = 0; i < got && out.size() < n; ++i)
      if (b[i] < limit) out += alphabet[b[i] % alphabet.size()];
  }
  return out;
}

std::string random_cache_id() { return random_chars(64, "0123456789abcdef"); }

}  // namespace extrafs
