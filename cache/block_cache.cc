// The on-disk block cache. Layout under DIR:
//
//   DIR/lock                  flock(LOCK_EX) for the life of the cache; holds the owner's pid
//   DIR/chunks/ab/<32 hex>    one file per chunk: a 32-byte header, then the raw bytes
//   DIR/meta/<name>           metadata blobs: the same 32-byte header (own magic), then the data
//   DIR/tmp/<unique>          files being written; renamed into chunks/ or meta/ when complete
//
// Header (little-endian): magic[4] "XFSC" (chunk) or "XFSM" (meta), u16 version, u16 flags (0),
// u64 raw length, 16-byte xxh3-128 digest (canonical form) of the raw bytes.
//
// Crash safety. A chunk becomes visible only by rename(2) of a complete temporary file, so after a
// SIGKILL a chunk file is either absent or complete. Chunk files are not fsync'ed (that would cost
// a disk flush per chunk); after a power loss a renamed file can be short or hold zeros, which the
// header/length/digest check catches: the chunk is then dropped and fetched again. The digest is
// checked on the first read of a file by this instance (so after every open, i.e. every mount)
// and again whenever the file's identity (inode, size, mtime, ctime) has changed since.
// For the same reason a chunk's rename is not followed by an fsync of its directory (a lost rename
// is a miss, not a wrong answer), which keeps a disk flush off the read path.
// Nothing else needs to be durable: the LRU index is rebuilt at open() from the files (size from
// st_size, recency from st_mtime, which a hit refreshes at most once per kTouchIntervalSec), and
// leftovers in tmp/ are removed. Metadata blobs are rare and precious (they let a host serve its
// cache while NFS is down), so they are fsync'ed before the rename and the directory after it.
//
// Reading. A chunk file is read whole (header included) into an aligned buffer, in one of two
// ways. If the page cache holds all of it (a chunk written or read a moment ago, a new mount of a
// warm host; asked with mincore, which reads nothing), it is copied from there. Otherwise it is read with O_DIRECT,
// from the disk straight into the buffer, where the file system allows O_DIRECT (else through the page cache, decided
// once): the bytes a reader gets land in the mount's own page cache, so a second copy in the page cache of the cache
// file would cost a copy per read and memory for nothing.
//
// Locking. `mu_` guards the in-memory index (map, LRU list, byte counts, pending puts, in-flight
// temporary names) and is never held across file I/O. File operations that change which file a
// chunk path names (rename on put, unlink on eviction or corruption) take the chunk's stripe lock
// (`stripes_`, hashed by digest) and, while holding it, check the index, so that an eviction can
// never unlink a file that a concurrent put of the same digest has just installed. Order:
// stripe lock, then mu_. Readers take no file lock: an open fd stays valid if the file is unlinked
// or replaced, and a get racing an eviction simply sees ENOENT (a miss).
//
// The bound. put() reserves room before writing anything (evicting LRU chunks first), so the sum of
// chunk files plus temporaries being written never exceeds `capacity` (not counting the headers).

#include "cache/block_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "common/lru.h"
#include "common/posix_file.h"
#include "common/thread_annotations.h"

namespace extrafs::cache {

namespace {

constexpr size_t kHeaderSize = 32;
constexpr uint16_t kFormatVersion = 1;
constexpr char kChunkMagic[4] = {'X', 'F', 'S', 'C'};
constexpr char kMetaMagic[4] = {'X', 'F', 'S', 'M'};
// No sane chunk is this large; the check keeps a bogus file from making us allocate gigabytes.
constexpr uint64_t kMaxChunkSize = uint64_t{1} << 30;
constexpr uint64_t kMaxMetaSize = uint64_t{4} << 30;
constexpr int64_t kTouchIntervalSec = 60;
constexpr size_t kStripes = 64;
constexpr size_t kMaxMetaName = 200;
// The verified-files memory is never cleared below this many entries.
constexpr size_t kVerifiedFloor = 4096;
// Buffer address, file offset and length alignment that O_DIRECT reads get: the largest logical
// block size in common use.
constexpr size_t kDirectAlign = 4096;

std::shared_ptr<spdlog::logger> log() {
  // common/ registers the per-module loggers; fall back to the default one if it has not.
  auto l = spdlog::get("cache");
  return l ? l : spdlog::default_logger();
}

int64_t now_sec() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  return ts.tv_sec;
}

struct Header {
  char magic[4];
  uint16_t version;
  uint16_t flags;
  uint64_t raw_len;
  Digest128 digest;
};

std::array<uint8_t, kHeaderSize> encode_header(const char magic[4], uint64_t raw_len, const Digest128& d) {
  std::array<uint8_t, kHeaderSize> h{};
  std::memcpy(h.data(), magic, 4);
  h[4] = kFormatVersion & 0xff;
  h[5] = kFormatVersion >> 8;
  // h[6..7] flags = 0
  for (int i = 0; i < 8; ++i) h[8 + i] = static_cast<uint8_t>(raw_len >> (8 * i));
  std::memcpy(h.data() + 16, d.bytes.data(), 16);
  return h;
}

Header decode_header(const uint8_t* p) {
  Header h{};
  std::memcpy(h.magic, p, 4);
  h.version = static_cast<uint16_t>(p[4] | p[5] << 8);
  h.flags = static_cast<uint16_t>(p[6] | p[7] << 8);
  for (int i = 0; i < 8; ++i) h.raw_len |= uint64_t{p[8 + i]} << (8 * i);
  std::memcpy(h.digest.bytes.data(), p + 16, 16);
  return h;
}

// Reads the `size`-byte file open with O_DIRECT on `fd` from offset 0 into `buf`, `cap` bytes
// long (a multiple of kDirectAlign, >= size): every read asks for whole blocks, which O_DIRECT
// wants, and the file's end makes the last one short. As pread_all (common/posix_file.h): 0 or
// errno, the count in `*got`.
int pread_direct(int fd, std::byte* buf, size_t size, size_t cap, size_t* got) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd, buf + done, cap - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      *got = done;
      return errno;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
    if (done % kDirectAlign != 0) break;  // short: the end of the file
  }
  *got = done;
  return 0;
}

// Whether the page cache holds all of the first `size` bytes of the file open on `fd`: mincore()
// of a mapping that is never touched (no fault, no read, no readahead started). False when it
// cannot tell.
bool all_cached(int fd, size_t size) {
  if (size == 0) return true;
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return false;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((size + page - 1) / page);
  bool all = ::mincore(p, size, vec.data()) == 0 &&
             std::all_of(vec.begin(), vec.end(), [](unsigned char v) { return (v & 1) != 0; });
  ::munmap(p, size);
  return all;
}

bool valid_meta_name(const std::string& name) {
  if (name.empty() || name.size() > kMaxMetaName || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
  });
}

// mkdirat that tolerates an existing directory; 0 or errno.
int ensure_dir_at(int dirfd, const char* name) {
  if (::mkdirat(dirfd, name, 0700) == 0) return 0;
  int e = errno;
  if (e != EEXIST) return e;
  struct stat st {};
  if (::fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return errno;
  return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
}

std::string chunk_rel(const Digest128& d) {
  std::string hex = d.hex();
  std::string rel = "chunks/";
  rel.append(hex, 0, 2);
  rel += '/';
  rel += hex;
  return rel;
}

class DiskBlockCache final : public BlockCache {
 public:
  DiskBlockCache(std::string dir, uint64_t capacity, Fd dir_fd, Fd lock_fd)
      : dir_(std::move(dir)), capacity_(capacity), dir_fd_(std::move(dir_fd)), lock_fd_(std::move(lock_fd)) {}

  // Callers must have finished every call before destroying the cache; the flock is released
  // when lock_fd_ closes.
  ~DiskBlockCache() override = default;

  Status init();

  Result<ChunkBuffer> get(const Digest128& d) override;
  Status put(const Digest128& d, std::span<const std::byte> raw) override;
  bool contains(const Digest128& d) override;
  Status put_meta(const std::string& name, std::span<const std::byte> data) override;
  Result<std::vector<std::byte>> get_meta(const std::string& name) override;
  Result<uint64_t> verify_all() override;
  Status shrink_to(uint64_t target) override;
  void set_external(uint64_t bytes) override;
  BlockCacheStats stats() override;

 private:
  // What chunks may take: the capacity less the external bytes.
  uint64_t chunk_limit_locked() const REQUIRES(mu_) { return capacity_ - std::min(external_, capacity_); }
  struct Entry {
    uint64_t size = 0;
    int64_t touched = 0;  // wall-clock seconds of the last mtime written to disk
  };
  struct Victim {
    Digest128 digest;
    uint64_t size;
  };
  using FileId = FileIdentity;  // what identifies a chunk file's content (common/posix_file.h)
  enum class ReadOutcome { kOk, kVanished, kCorrupt, kError };
  struct ReadResult {
    ReadOutcome outcome = ReadOutcome::kError;
    int err = 0;
    // Identity of the file read, so that dropping it cannot remove a replacement.
    dev_t dev = 0;
    ino_t ino = 0;
    timespec ctime{};
    ChunkBuffer data;
  };

  Mutex& stripe(const Digest128& d) { return stripes_[Digest128Hash{}(d) % kStripes]; }

  Error dir_error(int code, const std::string& what) const {
    return Error::from_errno(code, "cache " + dir_ + ": " + what);
  }

  // `trust`: skip hashing a file this instance has already verified and that has not changed
  // since (same identity, see FileId). verify_all() never trusts.
  ReadResult read_chunk(const Digest128& d, bool touch, bool trust);
  size_t chunk_count() EXCLUDES(mu_) {
    MutexLock lk(&mu_);
    return map_.size();
  }
  void drop_corrupt(const Digest128& d, const ReadResult& r);
  // Reads chunk files through the page cache from now on.
  void no_direct(const char* what);
  void forget_if_gone(const Digest128& d);

  // Evicts LRU entries from the index until bytes_ + reserved_ + extra <= limit (or nothing is
  // left); the caller unlinks the victims with remove_victims() after releasing mu_.
  void evict_locked(uint64_t extra, uint64_t limit, std::vector<Victim>* victims) REQUIRES(mu_);
  void remove_victims(const std::vector<Victim>& victims) EXCLUDES(mu_);
  void insert_locked(const Digest128& d, uint64_t size, int64_t touched) REQUIRES(mu_);
  void erase_locked(const Digest128& d) REQUIRES(mu_);

  std::string new_tmp_name_locked(char kind) REQUIRES(mu_);
  uint64_t clean_tmp();
  Status scan();

  const std::string dir_;
  const uint64_t capacity_;
  uint64_t external_ GUARDED_BY(mu_) = 0;  // see set_external
  Fd dir_fd_;
  Fd lock_fd_;
  std::atomic<bool> noatime_ok_{true};
  std::atomic<bool> direct_ok_{true};  // cleared when the file system refuses O_DIRECT
  std::array<Mutex, kStripes> stripes_;

  Mutex mu_;
  Lru<Digest128, Entry, Digest128Hash> map_ GUARDED_BY(mu_);
  uint64_t bytes_ GUARDED_BY(mu_) = 0;
  uint64_t reserved_ GUARDED_BY(mu_) = 0;  // room held by puts in progress
  std::unordered_set<Digest128, Digest128Hash> pending_ GUARDED_BY(mu_);
  std::unordered_set<std::string> inflight_tmp_ GUARDED_BY(mu_);
  uint64_t tmp_seq_ GUARDED_BY(mu_) = 0;

  std::atomic<uint64_t> hits_{0}, misses_{0}, evictions_{0}, corrupt_{0}, write_errors_{0};

  // Chunk files verified by this instance, by digest, with the identity they had when they
  // were. A file whose identity still matches is served without hashing it again; any other
  // (replaced, rewritten, touched by hand) is verified again. Bounded by the number of chunks
  // (entries of chunks no longer in the index are dropped when it doubles).
  Mutex verified_mu_ ACQUIRED_BEFORE(mu_);
  std::unordered_map<Digest128, FileId, Digest128Hash> verified_ GUARDED_BY(verified_mu_);
};

Status DiskBlockCache::init() {
  for (const char* sub : {"chunks", "tmp", "meta"}) {
    if (int e = ensure_dir_at(dir_fd_.get(), sub)) return dir_error(e, std::string("cannot create ") + sub + "/");
  }
  // Nobody else can be writing (we hold the flock): everything in tmp/ is left over from a crash.
  uint64_t stray = clean_tmp();
  if (stray > 0) log()->info("cache {}: removed {} stray temporary file(s)", dir_, stray);
  EXTRAFS_CHECK_STATUS(scan());
  std::vector<Victim> victims;
  {
    MutexLock lk(&mu_);
    evict_locked(0, capacity_, &victims);
  }
  remove_victims(victims);
  return ok_status();
}

Status DiskBlockCache::scan() {
  struct Found {
    int64_t mtime_ns;
    Digest128 digest;
    uint64_t size;
  };
  std::vector<Found> found;
  // The 256 fan-out directories are made on first use, so list the ones that exist.
  std::vector<std::string> subs;
  {
    int fd = ::openat(dir_fd_.get(), "chunks", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return dir_error(errno, "cannot open chunks/");
    DIR* dp = ::fdopendir(fd);
    if (dp == nullptr) {
      int e = errno;
      ::close(fd);
      return dir_error(e, "cannot read chunks/");
    }
    while (dirent* de = ::readdir(dp)) {
      std::string_view name = de->d_name;
      auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); };
      if (name.size() == 2 && hex(name[0]) && hex(name[1])) subs.emplace_back(name);
    }
    ::closedir(dp);
  }
  for (const auto& sub : subs) {
    std::string rel = "chunks/" + sub;
    int fd = ::openat(dir_fd_.get(), rel.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;  // not a directory: not ours
    DIR* dp = ::fdopendir(fd);
    if (dp == nullptr) {
      int e = errno;
      ::close(fd);
      return dir_error(e, "cannot read " + rel);
    }
    while (dirent* de = ::readdir(dp)) {
      std::string_view name = de->d_name;
      if (name == "." || name == "..") continue;
      struct stat st {};
      if (::fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
      if (!S_ISREG(st.st_mode)) continue;  // not ours to judge; it is not counted either
      Digest128 d;
      bool named_ok = Digest128::from_hex(name, &d) && name.substr(0, 2) == sub;
      if (!named_ok || static_cast<uint64_t>(st.st_size) < kHeaderSize) {
        // Unusable: unreachable by name, or too short to be anything but a torn write.
        ::unlinkat(fd, de->d_name, 0);
        continue;
      }
      found.push_back({int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec, d,
                       static_cast<uint64_t>(st.st_size) - kHeaderSize});
    }
    ::closedir(dp);
  }
  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) { return a.mtime_ns < b.mtime_ns; });
  MutexLock lk(&mu_);
  for (const auto& f : found) insert_locked(f.digest, f.size, f.mtime_ns / 1000000000);
  return ok_status();
}

void DiskBlockCache::insert_locked(const Digest128& d, uint64_t size, int64_t touched) {
  erase_locked(d);
  map_.insert(d, Entry{size, touched});
  bytes_ += size;
}

void DiskBlockCache::erase_locked(const Digest128& d) {
  if (auto e = map_.take(d)) bytes_ -= e->size;
}

void DiskBlockCache::evict_locked(uint64_t extra, uint64_t limit, std::vector<Victim>* victims) {
  while (!map_.empty() && bytes_ + reserved_ + extra > limit) {
    auto [digest, entry] = map_.pop_oldest();
    bytes_ -= entry.size;
    victims->push_back({digest, entry.size});
    evictions_.fetch_add(1, std::memory_order_relaxed);
  }
}

void DiskBlockCache::remove_victims(const std::vector<Victim>& victims) {
  for (const auto& v : victims) {
    MutexLock slk(&stripe(v.digest));
    {
      // A put of the same digest may have installed a fresh file since the eviction.
      MutexLock lk(&mu_);
      if (map_.contains(v.digest)) continue;
    }
    if (::unlinkat(dir_fd_.get(), chunk_rel(v.digest).c_str(), 0) != 0 && errno != ENOENT)
      log()->warn("cache {}: cannot remove evicted chunk {}: {}", dir_, v.digest.hex(),
                  std::generic_category().message(errno));
  }
}

std::string DiskBlockCache::new_tmp_name_locked(char kind) {
  std::string name = std::string(1, kind) + "." + std::to_string(::getpid()) + "." + std::to_string(tmp_seq_++);
  inflight_tmp_.insert(name);
  return name;
}

uint64_t DiskBlockCache::clean_tmp() {
  int fd = ::openat(dir_fd_.get(), "tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return 0;
  DIR* dp = ::fdopendir(fd);
  if (dp == nullptr) {
    ::close(fd);
    return 0;
  }
  std::vector<std::string> names;
  while (dirent* de = ::readdir(dp)) {
    std::string_view name = de->d_name;
    if (name != "." && name != "..") names.emplace_back(name);
  }
  uint64_t removed = 0;
  for (const auto& name : names) {
    {
      // Names are never reused, so one not in flight now belongs to nobody.
      MutexLock lk(&mu_);
      if (inflight_tmp_.count(name)) continue;
    }
    if (::unlinkat(fd, name.c_str(), 0) == 0 || (errno == EISDIR && ::unlinkat(fd, name.c_str(), AT_REMOVEDIR) == 0))
      ++removed;
  }
  ::closedir(dp);
  return removed;
}

DiskBlockCache::ReadResult DiskBlockCache::read_chunk(const Digest128& d, bool touch, bool trust) {
  ReadResult r;
  std::string rel = chunk_rel(d);
  // O_NOFOLLOW and O_NONBLOCK: a chunk file replaced by a symlink (perhaps to a FIFO, whose
  // open would block the FUSE request for ever) or by a FIFO is judged, never waited on.
  int flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
  // Opened through the page cache; switched to O_DIRECT below if the page cache does not hold the
  // whole file (see "Reading" above).
  bool direct = direct_ok_.load(std::memory_order_relaxed);
  auto open_chunk = [&](int how) {
    Fd f;
    if (noatime_ok_.load(std::memory_order_relaxed)) {
      f = Fd(::openat(dir_fd_.get(), rel.c_str(), how | O_NOATIME));
      if (!f.valid() && errno == EPERM) noatime_ok_.store(false, std::memory_order_relaxed);
    }
    if (!f.valid()) f = Fd(::openat(dir_fd_.get(), rel.c_str(), how));
    return f;
  };
  Fd fd = open_chunk(flags);
  struct stat st {};
  if (!fd.valid()) {
    r.err = errno;
    r.outcome = r.err == ENOENT ? ReadOutcome::kVanished : ReadOutcome::kError;
    if (r.err == ELOOP && ::fstatat(dir_fd_.get(), rel.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      r.dev = st.st_dev;
      r.ino = st.st_ino;
      r.ctime = st.st_ctim;
      r.outcome = ReadOutcome::kCorrupt;  // a symlink where a chunk file should be
    }
    return r;
  }
  // Recency for the next open(); best effort, and cheap on the fd we already hold. Done before
  // the fstat below, so that the identity remembered for the file is the one it keeps.
  if (touch) ::futimens(fd.get(), nullptr);
  if (::fstat(fd.get(), &st) != 0) {
    r.err = errno;
    return r;
  }
  const FileId id = FileId::of(st);
  bool known = false;
  if (trust) {
    MutexLock lk(&verified_mu_);
    auto it = verified_.find(d);
    known = it != verified_.end() && it->second == id;
  }
  r.dev = st.st_dev;
  r.ino = st.st_ino;
  r.ctime = st.st_ctim;
  r.outcome = ReadOutcome::kCorrupt;
  if (!S_ISREG(st.st_mode)) return r;
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < kHeaderSize || size - kHeaderSize > kMaxChunkSize) return r;
  // The whole file, header included, in one read; the buffer then shows only the chunk.
  r.data = ChunkBuffer::uninitialised((size + kDirectAlign - 1) / kDirectAlign * kDirectAlign, kDirectAlign);
  bool read_direct = direct && !all_cached(fd.get(), size);
  const int fl = read_direct ? ::fcntl(fd.get(), F_GETFL) : 0;
  if (read_direct && (fl == -1 || ::fcntl(fd.get(), F_SETFL, fl | O_DIRECT) != 0)) {
    no_direct("open");
    read_direct = false;
  }
  size_t got = 0;
  int err = read_direct ? pread_direct(fd.get(), r.data.data(), size, r.data.size(), &got) : 0;
  if (read_direct && err == EINVAL) {  // switched, but refused at read time
    no_direct("read");
    read_direct = false;
    if (::fcntl(fd.get(), F_SETFL, fl) != 0) {
      r.err = errno;
      r.outcome = ReadOutcome::kError;
      r.data = {};
      return r;
    }
  }
  if (!read_direct) err = pread_all(fd.get(), r.data.data(), size, 0, &got);
  // A read error (EIO from a bad sector) makes the chunk as useless as a digest mismatch; so does
  // a file that is not the size it was a moment ago.
  if (err != 0 || got != size) {
    r.data = {};
    return r;
  }
  Header h = decode_header(reinterpret_cast<const uint8_t*>(r.data.data()));
  if (std::memcmp(h.magic, kChunkMagic, 4) != 0 || h.version != kFormatVersion || h.flags != 0 ||
      h.raw_len != size - kHeaderSize || h.digest != d) {
    r.data = {};
    return r;
  }
  r.data.narrow(kHeaderSize, h.raw_len);
  if (!known) {
    if (xxh3_128(r.data.data(), r.data.size()) != d) {
      r.data = {};
      return r;
    }
    if (trust && FileId::settled(st)) {
      MutexLock lk(&verified_mu_);
      if (verified_.size() >= 2 * kVerifiedFloor && verified_.size() >= 2 * chunk_count()) verified_.clear();
      verified_[d] = id;
    }
  }
  r.outcome = ReadOutcome::kOk;
  return r;
}

void DiskBlockCache::no_direct(const char* what) {
  if (direct_ok_.exchange(false, std::memory_order_relaxed))
    log()->debug("cache {}: the file system refuses O_DIRECT ({}); chunk files are read through the page cache", dir_,
                 what);
}

void DiskBlockCache::drop_corrupt(const Digest128& d, const ReadResult& r) {
  corrupt_.fetch_add(1, std::memory_order_relaxed);
  log()->warn("cache {}: chunk {} is corrupt; dropped", dir_, d.hex());
  MutexLock slk(&stripe(d));
  std::string rel = chunk_rel(d);
  struct stat st {};
  if (::fstatat(dir_fd_.get(), rel.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    // Replaced by a concurrent put since we read it: that file is a fresh copy, leave it.
    if (st.st_dev != r.dev || st.st_ino != r.ino || st.st_ctim.tv_sec != r.ctime.tv_sec ||
        st.st_ctim.tv_nsec != r.ctime.tv_nsec)
      return;
    // A directory in a chunk's place goes only if it is empty; otherwise it stays, and storing
    // the chunk again fails (a cache write error), while reads are served from the backend.
    ::unlinkat(dir_fd_.get(), rel.c_str(), S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0);
  }
  MutexLock lk(&mu_);
  erase_locked(d);
}

void DiskBlockCache::forget_if_gone(const Digest128& d) {
  MutexLock slk(&stripe(d));
  struct stat st {};
  if (::fstatat(dir_fd_.get(), chunk_rel(d).c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) return;
  MutexLock lk(&mu_);
  erase_locked(d);
}

Result<ChunkBuffer> DiskBlockCache::get(const Digest128& d) {
  bool touch = false;
  {
    MutexLock lk(&mu_);
    Entry* e = map_.touch(d);
    if (e == nullptr) {
      misses_.fetch_add(1, std::memory_order_relaxed);
      return make_error(ENOENT, "chunk " + d.hex() + " not in cache " + dir_);
    }
    int64_t now = now_sec();
    if (now - e->touched >= kTouchIntervalSec || now < e->touched) {
      e->touched = now;
      touch = true;
    }
  }
  ReadResult r = read_chunk(d, touch, true);
  switch (r.outcome) {
    case ReadOutcome::kOk:
      hits_.fetch_add(1, std::memory_order_relaxed);
      return std::move(r.data);
    case ReadOutcome::kVanished:
      // Evicted (or deleted by hand) between the lookup and the open.
      forget_if_gone(d);
      misses_.fetch_add(1, std::memory_order_relaxed);
      return make_error(ENOENT, "chunk " + d.hex() + " not in cache " + dir_);
    case ReadOutcome::kCorrupt:
      drop_corrupt(d, r);
      misses_.fetch_add(1, std::memory_order_relaxed);
      return make_error(ENOENT, "chunk " + d.hex() + " in cache " + dir_ + " was corrupt and has been dropped");
    case ReadOutcome::kError:
      break;
  }
  misses_.fetch_add(1, std::memory_order_relaxed);
  return dir_error(r.err, "cannot read chunk " + d.hex());
}

Status DiskBlockCache::put(const Digest128& d, std::span<const std::byte> raw) {
  const uint64_t size = raw.size();
  if (size > capacity_ || size > kMaxChunkSize) {
    write_errors_.fetch_add(1, std::memory_order_relaxed);
    return make_error(EFBIG, "cache " + dir_ + ": chunk of " + std::to_string(size) + " bytes does not fit (capacity " +
                                 std::to_string(capacity_) + ")");
  }
  std::vector<Victim> victims;
  std::string tmp;
  {
    MutexLock lk(&mu_);
    if (map_.touch(d)) return ok_status();
    if (pending_.count(d)) return ok_status();  // another thread is storing the same bytes
    const uint64_t limit = chunk_limit_locked();
    if (reserved_ + size > limit) {
      // Only possible when the cache is a few chunks big and as many puts are in flight.
      write_errors_.fetch_add(1, std::memory_order_relaxed);
      return make_error(ENOSPC,
                        "cache " + dir_ + ": no room for chunk " + d.hex() + " while other chunks are being stored");
    }
    evict_locked(size, limit, &victims);
    reserved_ += size;
    pending_.insert(d);
    tmp = "tmp/" + new_tmp_name_locked('c');
  }
  remove_victims(victims);

  int err = 0;
  const char* step = "write";
  {
    Fd fd(::openat(dir_fd_.get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd.valid()) {
      err = errno;
      step = "create";
    } else {
      auto h = encode_header(kChunkMagic, size, d);
      err = write_all(fd.get(), h.data(), h.size());
      if (err == 0) err = write_all(fd.get(), raw.data(), raw.size());
      if (err == 0) err = fd.close_checked();
    }
  }
  MutexLock slk(&stripe(d));
  if (err == 0) {
    std::string rel = chunk_rel(d);
    int r = ::renameat(dir_fd_.get(), tmp.c_str(), dir_fd_.get(), rel.c_str());
    if (r != 0 && errno == ENOENT) {
      // First chunk in this fan-out directory.
      std::string sub = rel.substr(0, rel.size() - 33);  // "chunks/ab"
      int e = ensure_dir_at(dir_fd_.get(), sub.c_str());
      if (e == 0) {
        r = ::renameat(dir_fd_.get(), tmp.c_str(), dir_fd_.get(), rel.c_str());
      } else {
        errno = e;
      }
    }
    if (r != 0) {
      err = errno;
      step = "rename";
    }
  }
  {
    MutexLock lk(&mu_);
    reserved_ -= size;
    pending_.erase(d);
    inflight_tmp_.erase(tmp.substr(4));
    if (err == 0) insert_locked(d, size, now_sec());
  }
  slk.unlock();
  if (err == 0) return ok_status();
  ::unlinkat(dir_fd_.get(), tmp.c_str(), 0);
  write_errors_.fetch_add(1, std::memory_order_relaxed);
  return dir_error(err, std::string("cannot ") + step + " chunk " + d.hex());
}

bool DiskBlockCache::contains(const Digest128& d) {
  MutexLock lk(&mu_);
  return map_.contains(d);
}

Status DiskBlockCache::put_meta(const std::string& name, std::span<const std::byte> data) {
  if (!valid_meta_name(name)) return make_error(EINVAL, "cache " + dir_ + ": invalid meta blob name '" + name + "'");
  std::string tmp;
  {
    MutexLock lk(&mu_);
    tmp = "tmp/" + new_tmp_name_locked('m');
  }
  int err = 0;
  const char* step = "write";
  {
    Fd fd(::openat(dir_fd_.get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd.valid()) {
      err = errno;
      step = "create";
    } else {
      auto h = encode_header(kMetaMagic, data.size(), xxh3_128(data));
      err = write_all(fd.get(), h.data(), h.size());
      if (err == 0) err = write_all(fd.get(), data.data(), data.size());
      if (err == 0 && ::fsync(fd.get()) != 0) err = errno;
      if (err == 0) err = fd.close_checked();
    }
  }
  std::string rel = "meta/" + name;
  if (err == 0 && ::renameat(dir_fd_.get(), tmp.c_str(), dir_fd_.get(), rel.c_str()) != 0) {
    err = errno;
    step = "rename";
  }
  if (err == 0) {
    Fd mfd(::openat(dir_fd_.get(), "meta", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!mfd.valid() || ::fsync(mfd.get()) != 0) {
      err = errno;
      step = "sync";
    }
  }
  {
    MutexLock lk(&mu_);
    inflight_tmp_.erase(tmp.substr(4));
  }
  if (err == 0) return ok_status();
  ::unlinkat(dir_fd_.get(), tmp.c_str(), 0);  // ENOENT if the rename happened
  return dir_error(err, std::string("cannot ") + step + " meta blob " + name);
}

Result<std::vector<std::byte>> DiskBlockCache::get_meta(const std::string& name) {
  if (!valid_meta_name(name)) return make_error(EINVAL, "cache " + dir_ + ": invalid meta blob name '" + name + "'");
  std::string rel = "meta/" + name;
  Fd fd(::openat(dir_fd_.get(), rel.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return make_error(ENOENT, "cache " + dir_ + ": no meta blob " + name);
    return dir_error(errno, "cannot open meta blob " + name);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return dir_error(errno, "cannot stat meta blob " + name);
  auto corrupt = [&](const char* why) {
    return make_error(EBADMSG, "cache " + dir_ + ": meta blob " + name + " is corrupt (" + why + ")");
  };
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < kHeaderSize) return corrupt("too short");
  if (size - kHeaderSize > kMaxMetaSize) return corrupt("too large");
  uint8_t hbuf[kHeaderSize];
  size_t n = 0;
  if (int e = pread_all(fd.get(), hbuf, kHeaderSize, 0, &n)) return dir_error(e, "cannot read meta blob " + name);
  if (n != kHeaderSize) return corrupt("too short");
  Header h = decode_header(hbuf);
  if (std::memcmp(h.magic, kMetaMagic, 4) != 0) return corrupt("bad magic");
  if (h.version != kFormatVersion || h.flags != 0) return corrupt("unknown version");
  if (h.raw_len != size - kHeaderSize) return corrupt("length mismatch");
  std::vector<std::byte> data(h.raw_len);
  if (int e = pread_all(fd.get(), data.data(), data.size(), kHeaderSize, &n))
    return dir_error(e, "cannot read meta blob " + name);
  if (n != data.size()) return corrupt("length mismatch");
  if (xxh3_128(data) != h.digest) return corrupt("checksum mismatch");
  return data;
}

Result<uint64_t> DiskBlockCache::verify_all() {
  std::vector<Digest128> all;
  {
    MutexLock lk(&mu_);
    for (const auto& [d, e] : map_) all.push_back(d);
  }
  uint64_t dropped = 0;
  for (const auto& d : all) {
    ReadResult r = read_chunk(d, false, false);
    switch (r.outcome) {
      case ReadOutcome::kOk:
        break;
      case ReadOutcome::kVanished:
        forget_if_gone(d);
        break;
      case ReadOutcome::kCorrupt:
        drop_corrupt(d, r);
        ++dropped;
        break;
      case ReadOutcome::kError:
        return dir_error(r.err, "cannot read chunk " + d.hex());
    }
  }
  return dropped;
}

Status DiskBlockCache::shrink_to(uint64_t target) {
  std::vector<Victim> victims;
  {
    MutexLock lk(&mu_);
    evict_locked(0, target, &victims);
  }
  remove_victims(victims);
  clean_tmp();
  return ok_status();
}

void DiskBlockCache::set_external(uint64_t bytes) {
  std::vector<Victim> victims;
  {
    MutexLock lk(&mu_);
    external_ = bytes;
    evict_locked(0, chunk_limit_locked(), &victims);
  }
  remove_victims(victims);
}

BlockCacheStats DiskBlockCache::stats() {
  BlockCacheStats s;
  {
    MutexLock lk(&mu_);
    s.bytes = bytes_;
    s.chunks = map_.size();
    s.external = external_;
  }
  s.capacity = capacity_;
  s.hits = hits_.load(std::memory_order_relaxed);
  s.misses = misses_.load(std::memory_order_relaxed);
  s.evictions = evictions_.load(std::memory_order_relaxed);
  s.corrupt_dropped = corrupt_.load(std::memory_order_relaxed);
  s.write_errors = write_errors_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace

Result<std::unique_ptr<BlockCache>> BlockCache::open(const std::string& dir, uint64_t capacity) {
  if (dir.empty()) return make_error(EINVAL, "cache directory not given");
  if (auto made = make_dirs(dir, 0700); !made.ok()) {
    const int e = made.code();
    if (e == ENOTDIR) return make_error(ENOTDIR, "cache " + dir + " is not a directory (or a parent of it is a file)");
    return Error::from_errno(e, "cache " + dir + ": cannot create directory");
  }
  Fd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd.valid()) return Error::from_errno(errno, "cache " + dir + ": cannot open directory");
  Fd lock_fd(::openat(dir_fd.get(), "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock_fd.valid()) return Error::from_errno(errno, "cache " + dir + ": cannot create lock file");
  if (::flock(lock_fd.get(), LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    if (e != EWOULDBLOCK) return Error::from_errno(e, "cache " + dir + ": cannot lock");
    char buf[32] = {};
    std::string owner;
    if (::pread(lock_fd.get(), buf, sizeof buf - 1, 0) > 0) {
      long pid = std::strtol(buf, nullptr, 10);
      if (pid > 0) owner = " (pid " + std::to_string(pid) + ")";
    }
    return make_error(EBUSY, "cache " + dir + " is in use by another extrafs" + owner);
  }
  // Who holds it, for the message above; purely informative.
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(lock_fd.get(), 0) != 0) return Error::from_errno(errno, "cache " + dir + ": cannot write lock file");
  if (int e = write_all(lock_fd.get(), pid.data(), pid.size()))
    return Error::from_errno(e, "cache " + dir + ": cannot write lock file");
  auto cache = std::make_unique<DiskBlockCache>(dir, capacity, std::move(dir_fd), std::move(lock_fd));
  EXTRAFS_CHECK_STATUS(cache->init());
  return std::unique_ptr<BlockCache>(std::move(cache));
}

Result<CacheInspection> inspect_block_cache(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) return Error::from_errno(errno, "cache " + dir);
  if (!S_ISDIR(st.st_mode)) return make_error(ENOTDIR, "cache " + dir + " is not a directory");
  CacheInspection out;
  Fd lock_fd(::open((dir + "/lock").c_str(), O_RDONLY | O_CLOEXEC));
  if (lock_fd.valid()) {
    if (::flock(lock_fd.get(), LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
      char buf[32] = {};
      if (::pread(lock_fd.get(), buf, sizeof buf - 1, 0) > 0) out.owner_pid = std::strtol(buf, nullptr, 10);
      if (out.owner_pid <= 0) out.owner_pid = -1;  // held, owner unknown
    } else {
      ::flock(lock_fd.get(), LOCK_UN);
    }
  }
  auto list = [](const std::string& path) {
    std::vector<std::pair<std::string, struct stat>> entries;
    DIR* d = ::opendir(path.c_str());
    if (!d) return entries;
    while (struct dirent* de = ::readdir(d)) {
      if (de->d_name[0] == '.') continue;
      struct stat est;
      if (::fstatat(dirfd(d), de->d_name, &est, AT_SYMLINK_NOFOLLOW) == 0) entries.emplace_back(de->d_name, est);
    }
    ::closedir(d);
    return entries;
  };
  for (const auto& [sub, sst] : list(dir + "/chunks")) {
    if (!S_ISDIR(sst.st_mode)) {
      out.stray_files++;
      continue;
    }
    for (const auto& [name, fst] : list(dir + "/chunks/" + sub)) {
      Digest128 d;
      bool named_ok = S_ISREG(fst.st_mode) && Digest128::from_hex(name, &d) && name.compare(0, 2, sub) == 0;
      if (!named_ok || static_cast<uint64_t>(fst.st_size) < kHeaderSize) {
        out.stray_files++;
        continue;
      }
      out.chunks++;
      out.bytes += static_cast<uint64_t>(fst.st_size) - kHeaderSize;
    }
  }
  out.meta_blobs = list(dir + "/meta").size();
  out.stray_files += list(dir + "/tmp").size();
  return out;
}

}  // namespace extrafs::cache
