// The POSIX file helpers every layer uses: an owning file descriptor, write-all and read-all
// loops that retry EINTR, reading a small file whole, atomic replacement of a file (temporary
// beside it, fsync of the file, rename, fsync of the directory), fsync of a directory, mkdir -p,
// and random names (`random_chars`, `random_cache_id`).
//
// Two kinds of calls (docs/DESIGN.md, "Errors"): the low-level loops (write_all, pwrite_all,
// pread_all, Fd::close_checked) return 0 or a positive errno value, as pthread calls do, and
// build no strings, so the block cache can use them on the read path (a count comes back through
// an out-parameter); everything else returns a Result whose message names the file. All functions are thread-safe (they
// share no state).
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace extrafs {

// An owned file descriptor, closed when it goes out of scope. Move-only.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership without closing.
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1);
  // close() that reports the error (a delayed write error can surface here): 0 or errno.
  int close_checked();

 private:
  int fd_ = -1;
};

// What identifies a file's content without reading it: a rename puts a new inode in place, and
// any write to the file moves its mtime and ctime (ctime cannot be set by hand). The cache trusts
// a file it hashed while this stays the same.
struct FileIdentity {
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  timespec mtime{}, ctime{};
  static FileIdentity of(const struct stat& st) { return {st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim}; }
  bool operator==(const FileIdentity& o) const {
    return dev == o.dev && ino == o.ino && size == o.size && mtime.tv_sec == o.mtime.tv_sec &&
           mtime.tv_nsec == o.mtime.tv_nsec && ctime.tv_sec == o.ctime.tv_sec && ctime.tv_nsec == o.ctime.tv_nsec;
  }
  // Whether the identity of a file in state `st` may be trusted later: a write within the file
  // system's timestamp granularity of its last change could leave mtime and ctime as they were,
  // so only a file unchanged for a while (2 s) qualifies.
  static bool settled(const struct stat& st);
};

// Writes all `len` bytes (retrying EINTR and short writes): 0 or errno.
int write_all(int fd, const void* data, size_t len);
// Writes all `len` bytes at `off` (retrying EINTR and short writes): 0 or errno.
int pwrite_all(int fd, const void* data, size_t len, off_t off);
// Reads up to `len` bytes at `off` (retrying EINTR and short reads; short only at end of file),
// their count in `*got` (also on failure: what was read before it): 0 or errno.
int pread_all(int fd, void* data, size_t len, off_t off, size_t* got);

// Opening a file that someone else may have made (a store, a mount, a data-root) is safe only if
// it is a regular file: opening a FIFO blocks until a writer comes (for ever, in state D when it
// is in a FUSE mount), and opening a device can act on the device. The openers below therefore
// open `path` with O_PATH first (which neither blocks nor touches a device), check its type, and
// only then open it for reading through /proc/self/fd (the very file checked, even if the name
// has been replaced meanwhile). Anything but a regular file is refused: EISDIR for a directory,
// EINVAL otherwise, with a message naming the file and what it is ("X is a FIFO, not a regular
// file"). `flags` are added to O_RDONLY|O_CLOEXEC|O_NOCTTY (O_NOATIME is dropped where the caller
// may not use it; with O_NOFOLLOW a symlink is refused as not a regular file). Needs /proc.
//
// `path` resolved as open(2) does (symlinks followed).
Result<Fd> open_regular(const std::string& path, int flags = 0);

// What a file of type `mode` (st_mode; only the S_IFMT bits count) is, for messages: "a regular
// file", "a directory", "a FIFO", "a socket", "a character device", "a block device", "a symlink".
const char* file_type_name(mode_t mode);
// The error for `name`, of type `mode`, where a regular file should be (EISDIR or EINVAL, as above).
Error not_a_regular_file(const std::string& name, mode_t mode);
// The error for `name`, `size` bytes long, where at most `limit` bytes may be: EFBIG.
Error too_large(const std::string& name, uint64_t size, uint64_t limit);

// Reads the regular file at `path` whole (opened as open_regular does). EFBIG (naming the file) if
// it is larger than `limit` bytes: said from its size before anything is read, and also if it
// grows past `limit` while being read (a file in /proc has size 0).
Result<std::string> read_file(const std::string& path, uint64_t limit = uint64_t{256} << 20);

// Whether process `pid` exists and is neither a zombie nor dead (the state in /proc/PID/stat): a
// zombie has exited and holds nothing any more, though its parent has yet to reap it.
bool process_running(long pid);

// Creates `path` (exclusively, never through a symlink) holding exactly `data` with mode `mode`
// (not subject to the umask), and fsyncs it. EEXIST if something is there.
Status write_new_file(const std::string& path, std::string_view data, mode_t mode = 0644);

// Replaces `path` atomically and durably: writes `data` to "<path>.tmp.<pid>" (mode `mode`, not
// subject to the umask), fsyncs it, renames it over `path` and fsyncs the directory. On failure
// `path` is as it was and the temporary is removed. One writer per path at a time.
Status write_file_atomic(const std::string& path, std::string_view data, mode_t mode = 0644);
// Creates `path` atomically and durably, never replacing anything: as write_file_atomic, but the
// temporary is linked (not renamed) to `path`, so EEXIST (naming `path`) if something is there
// already, and a reader sees either no file or the whole of `data`.
Status write_file_atomic_new(const std::string& path, std::string_view data, mode_t mode = 0644);

// fsync of directory `dir`, making the renames and creations in it durable.
Status fsync_dir(const std::string& dir);

// The directory part of `path` ("/" for "/x", "." for "x").
std::string parent_dir(const std::string& path);

// mkdir -p with mode `mode` for the components it creates (subject to the umask, as mkdir(1)).
// Existing directories are fine; ENOTDIR if a component is something else. `created` (may be
// null) receives the directories made, outermost first.
Status make_dirs(const std::string& path, mode_t mode = 0755, std::vector<std::string>* created = nullptr);

// Small stat-based questions: whether something is at `path` (lstat: a dangling symlink counts),
// whether `path` is a directory (stat: following symlinks), whether it is a symlink.
bool path_exists(const std::string& path);
bool is_dir(const std::string& path);
bool is_symlink(const std::string& path);
// The target of symlink `path`; nullopt if it is not one or cannot be read.
std::optional<std::string> read_link(const std::string& path);
// The names in directory `dir` (without "." and ".."), sorted.
Result<std::vector<std::string>> list_dir(const std::string& dir);
// `path` made absolute against the working directory (not resolved; unchanged if absolute).
std::string absolute_path(const std::string& path);
// realpath(3); nullopt (errno set) if `path` does not resolve.
std::optional<std::string> real_path(const std::string& path);
// rm -r of `path` that never follows a symlink (one is unlinked, never entered) and never crosses
// into another file system (EBUSY naming the mount point). A missing `path` is fine.
Status remove_tree(const std::string& path);

// What a file or tree takes: its entries that are not directories, and the sizes of its regular
// files (st_size).
struct TreeUsage {
  uint64_t files = 0;
  uint64_t bytes = 0;
};

// Opening inside a tree that someone else may have written (a store, a data-root): `rel` is
// resolved beneath the directory `dir` without following any symlink, not even in a parent
// component, and never leaving `dir` (openat2 with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS; on a
// kernel without openat2, a component-by-component openat(O_NOFOLLOW) walk with the same
// result). An absolute `rel` or one with a ".." component is EXDEV; a symlink anywhere is ELOOP
// (also for O_CREAT). "" or "." opens `dir` itself. `flags` are open(2) flags (O_CLOEXEC is
// added). The message of an error names `shown` + "/" + `rel`.
Result<Fd> open_beneath(int dir, std::string_view rel, int flags, const std::string& shown, mode_t mode = 0);
// Tests only: makes open_beneath() take the fallback walk, as on a kernel without openat2.
void use_open_beneath_fallback_for_testing(bool on);
// open_regular() of `rel` beneath `dir`, never through a symlink (see open_beneath).
Result<Fd> open_regular_beneath(int dir, std::string_view rel, const std::string& shown, int flags = 0);
// read_file() of `rel` beneath `dir`, never through a symlink (see open_beneath).
Result<std::string> read_file_beneath(int dir, std::string_view rel, const std::string& shown,
                                      uint64_t limit = uint64_t{256} << 20);
// Whether `rel` beneath `dir` is a real directory reached without a symlink: ok, or ELOOP,
// ENOTDIR, ENOENT... naming it.
Status check_dir_beneath(int dir, std::string_view rel, const std::string& shown);
// list_dir() of `rel` beneath `dir`, never through a symlink.
Result<std::vector<std::string>> list_dir_beneath(int dir, std::string_view rel, const std::string& shown);
// Removes what is at `rel` beneath `dir`: a file, a symlink (never followed), or a directory
// and everything in it, as remove_tree() does (never into another file system: EBUSY). The
// parent of `rel` is opened with open_beneath(). A missing `rel` is fine.
Status remove_beneath(int dir, std::string_view rel, const std::string& shown);
// What remove_beneath() of `rel` would free, counted the same way (never following a symlink,
// never into another file system). A missing `rel` takes nothing.
Result<TreeUsage> usage_beneath(int dir, std::string_view rel, const std::string& shown);

// `n` characters drawn uniformly from `alphabet` (at most 256 characters) with getrandom(2).
std::string random_chars(size_t n, std::string_view alphabet);
// A fresh cache-id as dockerd makes them: 64 random lowercase hex digits.
std::string random_cache_id();

}  // namespace extrafs
