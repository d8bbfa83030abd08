#include "cache/whole_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "common/lru.h"
#include "common/thread_annotations.h"

namespace extrafs::cache {

namespace {

// Temporaries live beside the copies (one file system, so the rename is atomic) under a name no
// key has; they are removed by load().
constexpr const char* kTmpPrefix = ".tmp-";

using FileId = FileIdentity;  // common/posix_file.h

// Calls fn(name, lstat) for every entry of the directory `dir_fd` (as list_dir_beneath names
// them; entries that vanish meanwhile are skipped). The one place that lists DIR/files.
Status for_each_entry(int dir_fd, const std::string& shown,
                      const std::function<void(const std::string&, const struct stat&)>& fn) {
  EXTRAFS_TRY(names, list_dir_beneath(dir_fd, ".", shown));
  for (const auto& name : names) {
    struct stat st {};
    if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) fn(name, st);
  }
  return ok_status();
}

// Whether an entry of DIR/files is a copy (a regular file named by its key).
bool is_copy(const std::string& name, const struct stat& st, Digest128* key) {
  return S_ISREG(st.st_mode) && Digest128::from_hex(name, key);
}

// Unlinks everything but directories in the directory `dir_fd` (named `shown`); returns the
// bytes of the regular files removed.
Result<uint64_t> remove_entries(int dir_fd, const std::string& shown) {
  uint64_t freed = 0;
  int err = 0;
  EXTRAFS_CHECK_STATUS(for_each_entry(dir_fd, shown, [&](const std::string& name, const struct stat& st) {
    if (S_ISDIR(st.st_mode)) return;
    if (::unlinkat(dir_fd, name.c_str(), 0) != 0)
      err = errno;
    else if (S_ISREG(st.st_mode))
      freed += static_cast<uint64_t>(st.st_size);
  }));
  if (err) return make_error(err, shown + ": cannot remove every copy");
  return freed;
}

// DIR/files opened as a directory; an invalid Fd with errno set if it cannot be.
Fd open_files_dir(const std::string& dir) {
  return Fd(::open((dir + "/files").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
}

class DiskWholeFiles;

class DiskWriter : public WholeFiles::Writer {
 public:
  DiskWriter(DiskWholeFiles& owner, Digest128 key, uint64_t size, Fd fd, std::string tmp)
      : owner_(owner), key_(key), size_(size), fd_(std::move(fd)), tmp_(std::move(tmp)) {}
  ~DiskWriter() override;
  Status write(uint64_t offset, std::span<const std::byte> bytes) override {
    if (offset + bytes.size() > size_) return make_error(EINVAL, "write past the end of the copy");
    if (int e = pwrite_all(fd_.get(), bytes.data(), bytes.size(), static_cast<off_t>(offset)))
      return make_error(e, "writing a whole-file copy");
    return ok_status();
  }
  Status commit() override;

 private:
  DiskWholeFiles& owner_;
  Digest128 key_;
  uint64_t size_;
  Fd fd_;
  std::string tmp_;
  bool done_ = false;
};

class DiskWholeFiles : public WholeFiles {
 public:
  DiskWholeFiles(std::string dir, Fd dir_fd, uint64_t capacity, std::function<void(uint64_t)> usage)
      : dir_(std::move(dir)), dir_fd_(std::move(dir_fd)), capacity_(capacity), usage_(std::move(usage)) {}

  Status load() override {
    // Oldest first, by when they were written (opens are not recorded on disk: touching a copy
    // would change the identity it is trusted by).
    struct Found {
      Digest128 key;
      uint64_t size;
      timespec mtime;
    };
    std::vector<Found> found;
    EXTRAFS_CHECK_STATUS(for_each_entry(dir_fd_.get(), dir_, [&](const std::string& name, const struct stat& st) {
      Digest128 key;
      // A torn write, or nothing of ours (such as the <key>.id files of older versions, which
      // let a later mount trust a copy without hashing it).
      if (name.rfind(kTmpPrefix, 0) == 0 || !is_copy(name, st, &key)) {
        ::unlinkat(dir_fd_.get(), name.c_str(), 0);
        return;
      }
      found.push_back({key, static_cast<uint64_t>(st.st_size), st.st_mtim});
    }));
    std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
      return a.mtime.tv_sec != b.mtime.tv_sec ? a.mtime.tv_sec < b.mtime.tv_sec : a.mtime.tv_nsec < b.mtime.tv_nsec;
    });
    MutexLock files(&files_mu_);
    std::vector<Digest128> victims;
    {
      MutexLock lock(&mu_);
      loaded_ = true;
      for (const auto& f : found) add_locked(f.key, f.size);
      make_room_locked(0, &victims);
    }
    unlink_victims(victims);
    report();
    return ok_status();
  }

  Result<uint64_t> discard() override {
    {
      MutexLock files(&files_mu_);
      bool loaded;
      {
        MutexLock lock(&mu_);
        copies_.clear();
        verified_.clear();
        bytes_ = 0;
        loaded = loaded_;
      }
      if (loaded) report();
    }
    return remove_entries(dir_fd_.get(), dir_);
  }

  bool has(const Digest128& key) override {
    MutexLock lock(&mu_);
    return copies_.contains(key);
  }

  Result<std::unique_ptr<Writer>> begin(const Digest128& key, uint64_t size) override {
    if (size > capacity_) return make_error(EFBIG, "larger than the whole-file bound");
    {
      MutexLock files(&files_mu_);
      std::vector<Digest128> victims;
      {
        MutexLock lock(&mu_);
        make_room_locked(size, &victims);
        reserved_ += size;
      }
      unlink_victims(victims);
      report();
    }
    static std::atomic<uint64_t> seq{0};
    std::string tmp =
        std::string(kTmpPrefix) + key.hex() + "." + std::to_string(::getpid()) + "." + std::to_string(seq++);
    Fd fd(::openat(dir_fd_.get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd.valid() || ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
      int e = errno;
      if (fd.valid()) ::unlinkat(dir_fd_.get(), tmp.c_str(), 0);
      unreserve(size);
      return make_error(e, "creating a whole-file copy in " + dir_);
    }
    return std::unique_ptr<Writer>(new DiskWriter(*this, key, size, std::move(fd), std::move(tmp)));
  }

  Result<Fd> open_checked(const Digest128& key, uint64_t size) override {
    const std::string name = key.hex();
    EXTRAFS_TRY(fd, open_copy(key, name, size));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return make_error(errno, "stat of a copy");
    MutexLock lock(&mu_);
    auto it = verified_.find(key);
    if (it == verified_.end() || !(it->second == FileId::of(st)))
      return make_error(EAGAIN, "copy not checked by this mount since it last changed");
    copies_.touch(key);
    return clear_nonblock(std::move(fd));
  }

  Status check(const Digest128& key, uint64_t size, uint64_t chunk_size,
               std::span<const ExpectedChunk> chunks) override {
    const std::string name = key.hex();
    EXTRAFS_TRY(fd, open_copy(key, name, size));
    struct stat before {
    }, after{};
    if (::fstat(fd.get(), &before) != 0) return make_error(errno, "stat of a copy");
    if (!matches(fd.get(), size, chunk_size, chunks)) {
      drop(key, name);
      return make_error(ENOENT, "copy did not match");
    }
    // Trusted by its identity from now on: only if a write during the hash would show in it, and
    // one right after it would too (timestamp granularity).
    if (::fstat(fd.get(), &after) != 0) return make_error(errno, "stat of a copy");
    const FileId id = FileId::of(after);
    if (!(FileId::of(before) == id) || !FileId::settled(after)) return make_error(EAGAIN, "copy changed recently");
    MutexLock lock(&mu_);
    if (!copies_.contains(key)) return make_error(ENOENT, "copy evicted meanwhile");
    verified_[key] = id;
    checked_++;
    return ok_status();
  }

  WholeFileStats stats() override {
    MutexLock lock(&mu_);
    return {copies_.size(), bytes_, capacity_, written_, checked_, corrupt_};
  }

  // For the writer.
  void unreserve(uint64_t size) {
    MutexLock files(&files_mu_);
    {
      MutexLock lock(&mu_);
      reserved_ -= size;
    }
    report();
  }
  Status install(const Digest128& key, const std::string& tmp, uint64_t size) {
    const std::string name = key.hex();
    MutexLock files(&files_mu_);
    if (::renameat(dir_fd_.get(), tmp.c_str(), dir_fd_.get(), name.c_str()) != 0) {
      int e = errno;
      ::unlinkat(dir_fd_.get(), tmp.c_str(), 0);
      files.unlock();
      unreserve(size);
      return make_error(e, "installing a whole-file copy in " + dir_);
    }
    {
      MutexLock lock(&mu_);
      reserved_ -= size;
      add_locked(key, size);
      written_++;
    }
    report();
    return ok_status();
  }
  void remove_tmp(const std::string& tmp) { ::unlinkat(dir_fd_.get(), tmp.c_str(), 0); }

 private:
  // Whether the `size` bytes on `fd` are the chunks expected; reads through the page cache, which
  // the kernel then reads from.
  static bool matches(int fd, uint64_t size, uint64_t chunk_size, std::span<const ExpectedChunk> chunks) {
    std::vector<std::byte> buf(chunk_size);
    uint64_t off = 0;
    for (const auto& c : chunks) {
      if (c.raw_len > chunk_size || off + c.raw_len > size) return false;
      size_t n = 0;
      if (pread_all(fd, buf.data(), c.raw_len, static_cast<off_t>(off), &n) != 0 || n != c.raw_len) return false;
      if (c.zero) {
        if (std::any_of(buf.begin(), buf.begin() + c.raw_len, [](std::byte b) { return b != std::byte{0}; }))
          return false;
      } else if (xxh3_128(buf.data(), c.raw_len) != c.digest) {
        return false;
      }
      off += c.raw_len;
    }
    return off == size;
  }

  // The copy `name` of `key`, opened without blocking (whatever is there); ENOENT if there is
  // none, or if it is not a regular file of `size` bytes (then removed).
  Result<Fd> open_copy(const Digest128& key, const std::string& name, uint64_t size) {
    Fd fd(::openat(dir_fd_.get(), name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
    if (!fd.valid()) return make_error(ENOENT, "no copy");
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return make_error(errno, "stat of a copy");
    if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != size) {
      drop(key, name);
      return make_error(ENOENT, "copy is not a regular file of the right size");
    }
    return fd;
  }

  void unlink_copy(const std::string& name) { ::unlinkat(dir_fd_.get(), name.c_str(), 0); }
  void drop(const Digest128& key, const std::string& name) {
    {
      MutexLock files(&files_mu_);
      unlink_copy(name);
      {
        MutexLock lock(&mu_);
        corrupt_++;
        remove_locked(key);
      }
      report();
    }
    spdlog::warn("whole-file copy {} in {} did not match its chunks; removed", name, dir_);
  }

  // Tells `usage` the bytes taken now. Under files_mu_, so that reports arrive in the order of
  // the changes they report; not under mu_, since the callback enters the block cache.
  void report() REQUIRES(files_mu_) EXCLUDES(mu_) {
    if (!usage_) return;
    uint64_t now;
    {
      MutexLock lock(&mu_);
      now = bytes_ + reserved_;
    }
    usage_(now);
  }
  // Unlinks evicted copies' files.
  void unlink_victims(const std::vector<Digest128>& victims) REQUIRES(files_mu_) EXCLUDES(mu_) {
    for (const auto& v : victims) unlink_copy(v.hex());
  }
  void add_locked(const Digest128& key, uint64_t size) REQUIRES(mu_) {
    if (copies_.insert(key, size).second) bytes_ += size;
  }
  void remove_locked(const Digest128& key) REQUIRES(mu_) {
    if (auto size = copies_.take(key)) bytes_ -= *size;
    verified_.erase(key);
  }
  // Evicts the least recently opened copies from the index until `incoming` more bytes fit; the
  // caller unlinks `victims` after releasing mu_ (unlink_victims). An open copy stays readable
  // through its descriptors after its name goes.
  void make_room_locked(uint64_t incoming, std::vector<Digest128>* victims) REQUIRES(mu_) {
    while (!copies_.empty() && bytes_ + reserved_ + incoming > capacity_) {
      Digest128 victim = copies_.oldest().first;
      remove_locked(victim);
      victims->push_back(victim);
    }
  }

  const std::string dir_;
  Fd dir_fd_;
  const uint64_t capacity_;
  const std::function<void(uint64_t)> usage_;
  // Serialises what changes the names in DIR (install's rename, evictions' and drops' unlinks)
  // with the index's view of them, and the reports to `usage_`: a victim's name is unlinked
  // before any copy of the same key can be installed again, and the last report is of the last
  // change. Taken before mu_; held across file I/O and the callback, but opens (open_checked,
  // has, stats) never take it.
  Mutex files_mu_ ACQUIRED_BEFORE(mu_);
  // The index: never held across file I/O or a call out of this class.
  Mutex mu_;
  // Sizes of the copies; the oldest is the least recently opened by this instance (or, never
  // opened, the oldest by mtime at load()).
  Lru<Digest128, uint64_t, Digest128Hash> copies_ GUARDED_BY(mu_);
  // Copies this instance hashed and found right, with the identity they had then.
  std::unordered_map<Digest128, FileId, Digest128Hash> verified_ GUARDED_BY(mu_);
  uint64_t bytes_ GUARDED_BY(mu_) = 0, reserved_ GUARDED_BY(mu_) = 0, written_ GUARDED_BY(mu_) = 0,
                  checked_ GUARDED_BY(mu_) = 0, corrupt_ GUARDED_BY(mu_) = 0;
  bool loaded_ GUARDED_BY(mu_) = false;

  static Fd clear_nonblock(Fd fd) {
    int fl = ::fcntl(fd.get(), F_GETFL);
    if (fl != -1) ::fcntl(fd.get(), F_SETFL, fl & ~O_NONBLOCK);
    return fd;
  }
};

DiskWriter::~DiskWriter() {
  if (!done_) {
    fd_.reset();
    owner_.remove_tmp(tmp_);
    owner_.unreserve(size_);
  }
}

Status DiskWriter::commit() {
  if (done_) return make_error(EINVAL, "copy already committed");
  int err = ::fsync(fd_.get()) != 0 ? errno : 0;
  if (err == 0) err = fd_.close_checked();
  if (err != 0) return make_error(err, "writing a whole-file copy");  // the destructor cleans up
  done_ = true;
  return owner_.install(key_, tmp_, size_);
}

}  // namespace

Result<std::unique_ptr<WholeFiles>> WholeFiles::open(const std::string& dir, uint64_t capacity,
                                                     std::function<void(uint64_t)> usage) {
  const std::string files = dir + "/files";
  if (::mkdir(files.c_str(), 0700) != 0 && errno != EEXIST) return make_error(errno, files + ": cannot create");
  Fd fd(::open(files.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return make_error(errno, files + ": cannot open");
  return std::unique_ptr<WholeFiles>(
      std::make_unique<DiskWholeFiles>(files, std::move(fd), capacity, std::move(usage)));
}

Result<uint64_t> remove_whole_files(const std::string& dir) {
  Fd files = open_files_dir(dir);
  if (!files.valid()) {
    if (errno == ENOENT) return uint64_t{0};
    return make_error(errno, dir + "/files: cannot list");
  }
  return remove_entries(files.get(), dir + "/files");
}

WholeFilesInspection inspect_whole_files(const std::string& dir) {
  WholeFilesInspection out;
  Fd files = open_files_dir(dir);
  if (!files.valid()) return out;
  (void)for_each_entry(files.get(), dir + "/files", [&](const std::string& name, const struct stat& st) {
    Digest128 key;
    if (!is_copy(name, st, &key)) return;
    out.files++;
    out.bytes += static_cast<uint64_t>(st.st_size);
  });
  return out;
}

}  // namespace extrafs::cache
