#include "cache/block_cache.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace fs = std::filesystem;
using extrafs::Digest128;
using extrafs::xxh3_128;
using extrafs::cache::BlockCache;

namespace {

constexpr uint64_t kHeader = 32;  // chunk file header size (see block_cache.cc)

// A temporary directory; the cache goes in its "cache" subdirectory.
struct TempDir : extrafs::testing::TempDir {
  std::string cache_dir() const { return path + "/cache"; }
};

// Deterministic content for chunk number `i` of `size` bytes.
std::vector<std::byte> make_chunk(uint64_t i, size_t size) {
  std::vector<std::byte> v(size);
  std::mt19937_64 rng(i * 7919 + size);
  for (size_t k = 0; k < size; k += 8) {
    uint64_t r = rng();
    std::memcpy(v.data() + k, &r, std::min<size_t>(8, size - k));
  }
  return v;
}

std::vector<std::byte> bytes_of(const std::string& s) {
  std::vector<std::byte> v(s.size());
  std::memcpy(v.data(), s.data(), s.size());
  return v;
}

std::unique_ptr<BlockCache> open_ok(const std::string& dir, uint64_t cap) {
  auto r = BlockCache::open(dir, cap);
  INFO((r.ok() ? std::string() : r.error().message));
  REQUIRE(r.ok());
  return std::move(r).value();
}

fs::path chunk_path(const std::string& dir, const Digest128& d) {
  std::string hex = d.hex();
  return fs::path(dir) / "chunks" / hex.substr(0, 2) / hex;
}

struct DiskUsage {
  uint64_t raw_bytes = 0;
  uint64_t files = 0;
};

// What is really on disk under chunks/, independent of the cache's own accounting.
DiskUsage walk_chunks(const std::string& dir) {
  DiskUsage u;
  for (const auto& e : fs::recursive_directory_iterator(fs::path(dir) / "chunks")) {
    if (!e.is_regular_file()) continue;
    REQUIRE(e.file_size() >= kHeader);
    u.raw_bytes += e.file_size() - kHeader;
    ++u.files;
  }
  return u;
}

size_t count_files(const fs::path& p) {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(p)) {
    (void)e;
    ++n;
  }
  return n;
}

void flip_byte(const fs::path& p, off_t off) {
  int fd = ::open(p.c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  unsigned char c = 0;
  REQUIRE(::pread(fd, &c, 1, off) == 1);
  c ^= 0x5a;
  REQUIRE(::pwrite(fd, &c, 1, off) == 1);
  ::close(fd);
}

void set_mtime(const fs::path& p, time_t sec) {
  timespec ts[2] = {{sec, 0}, {sec, 0}};
  REQUIRE(::utimensat(AT_FDCWD, p.c_str(), ts, 0) == 0);
}

}  // namespace

TEST_CASE("a chunk put in the cache is returned byte for byte", "[cache]") {
  TempDir t;
  auto c = open_ok(t.cache_dir(), 1 << 20);
  auto data = make_chunk(1, 10000);
  auto d = xxh3_128(data);

  CHECK_FALSE(c->contains(d));
  auto miss = c->get(d);
  REQUIRE_FALSE(miss.ok());
  CHECK(miss.code() == ENOENT);

  REQUIRE(c->put(d, data).ok());
  CHECK(c->contains(d));
  auto got = c->get(d);
  REQUIRE(got.ok());
  CHECK(*got == data);

  REQUIRE(c->put(d, data).ok());  // idempotent
  auto s = c->stats();
  CHECK(s.chunks == 1);
  CHECK(s.bytes == data.size());
  CHECK(s.hits == 1);
  CHECK(s.misses == 1);
  CHECK(s.capacity == (1 << 20));
  CHECK(fs::file_size(chunk_path(t.cache_dir(), d)) == data.size() + kHeader);
}

TEST_CASE("an empty chunk round trips", "[cache]") {
  TempDir t;
  auto c = open_ok(t.cache_dir(), 1 << 20);
  std::vector<std::byte> empty;
  auto d = xxh3_128(empty);
  REQUIRE(c->put(d, empty).ok());
  auto got = c->get(d);
  REQUIRE(got.ok());
  CHECK(got->empty());
}

TEST_CASE("chunks of every size round trip, whatever the file's length is in disk blocks", "[cache]") {
  // The files are read whole with O_DIRECT, in 4 KiB blocks: these sizes put the end of the file
  // just before, on and after a block boundary, and after many.
  TempDir t;
  auto c = open_ok(t.cache_dir(), 8 << 20);
  int i = 0;
  for (size_t n : {size_t{1}, size_t{4096 - kHeader - 1}, size_t{4096 - kHeader}, size_t{4096 - kHeader + 1},
                   size_t{4096}, size_t{1} << 20, (size_t{1} << 20) + 4096 - kHeader}) {
    auto data = make_chunk(100 + i++, n);
    auto d = xxh3_128(data);
    REQUIRE(c->put(d, data).ok());
    auto got = c->get(d);
    INFO(n);
    REQUIRE(got.ok());
    CHECK(*got == data);
  }
  CHECK(c->stats().corrupt_dropped == 0);
}

TEST_CASE("chunks survive closing and reopening the cache", "[cache]") {
  TempDir t;
  std::vector<Digest128> ds;
  uint64_t total = 0;
  {
    auto c = open_ok(t.cache_dir(), 1 << 20);
    for (uint64_t i = 0; i < 20; ++i) {
      auto data = make_chunk(i, 1000 + i * 37);
      ds.push_back(xxh3_128(data));
      total += data.size();
      REQUIRE(c->put(ds.back(), data).ok());
    }
  }
  auto c = open_ok(t.cache_dir(), 1 << 20);
  auto s = c->stats();
  CHECK(s.chunks == 20);
  CHECK(s.bytes == total);
  for (uint64_t i = 0; i < 20; ++i) {
    auto got = c->get(ds[i]);
    REQUIRE(got.ok());
    CHECK(*got == make_chunk(i, 1000 + i * 37));
  }
}

TEST_CASE("the least recently used chunk is evicted first", "[cache]") {
  TempDir t;
  const size_t n = 4096;
  auto c = open_ok(t.cache_dir(), 3 * n);
  auto a = make_chunk(1, n), b = make_chunk(2, n), cc = make_chunk(3, n), d = make_chunk(4, n);
  REQUIRE(c->put(xxh3_128(a), a).ok());
  REQUIRE(c->put(xxh3_128(b), b).ok());
  REQUIRE(c->put(xxh3_128(cc), cc).ok());
  REQUIRE(c->get(xxh3_128(a)).ok());  // A is now newer than B
  REQUIRE(c->put(xxh3_128(d), d).ok());
  CHECK(c->contains(xxh3_128(a)));
  CHECK_FALSE(c->contains(xxh3_128(b)));
  CHECK(c->contains(xxh3_128(cc)));
  CHECK(c->contains(xxh3_128(d)));
  CHECK_FALSE(fs::exists(chunk_path(t.cache_dir(), xxh3_128(b))));
  CHECK(c->stats().evictions == 1);
  CHECK(c->stats().bytes == 3 * n);
}

TEST_CASE("a put of a chunk already cached refreshes its recency", "[cache]") {
  TempDir t;
  const size_t n = 4096;
  auto c = open_ok(t.cache_dir(), 2 * n);
  auto a = make_chunk(1, n), b = make_chunk(2, n), cc = make_chunk(3, n);
  REQUIRE(c->put(xxh3_128(a), a).ok());
  REQUIRE(c->put(xxh3_128(b), b).ok());
  REQUIRE(c->put(xxh3_128(a), a).ok());
  REQUIRE(c->put(xxh3_128(cc), cc).ok());
  CHECK(c->contains(xxh3_128(a)));
  CHECK_FALSE(c->contains(xxh3_128(b)));
}

TEST_CASE("recency is rebuilt from file mtimes on reopen", "[cache]") {
  TempDir t;
  const size_t n = 4096;
  auto a = make_chunk(1, n), b = make_chunk(2, n), cc = make_chunk(3, n), d = make_chunk(4, n);
  {
    auto c = open_ok(t.cache_dir(), 3 * n);
    REQUIRE(c->put(xxh3_128(a), a).ok());
    REQUIRE(c->put(xxh3_128(b), b).ok());
    REQUIRE(c->put(xxh3_128(cc), cc).ok());
  }
  time_t now = ::time(nullptr);
  set_mtime(chunk_path(t.cache_dir(), xxh3_128(a)), now - 100);
  set_mtime(chunk_path(t.cache_dir(), xxh3_128(b)), now - 300);  // oldest
  set_mtime(chunk_path(t.cache_dir(), xxh3_128(cc)), now - 200);
  auto c = open_ok(t.cache_dir(), 3 * n);
  REQUIRE(c->put(xxh3_128(d), d).ok());
  CHECK_FALSE(c->contains(xxh3_128(b)));
  CHECK(c->contains(xxh3_128(a)));
  CHECK(c->contains(xxh3_128(cc)));
}

TEST_CASE("a hit on a chunk not touched for a while refreshes its mtime", "[cache]") {
  TempDir t;
  auto a = make_chunk(1, 4096);
  {
    auto c = open_ok(t.cache_dir(), 1 << 20);
    REQUIRE(c->put(xxh3_128(a), a).ok());
  }
  auto p = chunk_path(t.cache_dir(), xxh3_128(a));
  time_t old = ::time(nullptr) - 3600;
  set_mtime(p, old);
  auto c = open_ok(t.cache_dir(), 1 << 20);
  REQUIRE(c->get(xxh3_128(a)).ok());
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  CHECK(st.st_mtime >= ::time(nullptr) - 5);
}

TEST_CASE("the capacity bound holds on disk under many puts of more data than fits", "[cache]") {
  TempDir t;
  const uint64_t cap = 1 << 20;
  auto c = open_ok(t.cache_dir(), cap);
  std::mt19937 rng(42);
  uint64_t put_total = 0;
  for (uint64_t i = 0; i < 300; ++i) {
    size_t size = 1 + rng() % 65536;
    auto data = make_chunk(i, size);
    put_total += size;
    REQUIRE(c->put(xxh3_128(data), data).ok());
    REQUIRE(c->stats().bytes <= cap);
  }
  REQUIRE(put_total > 4 * cap);
  auto s = c->stats();
  auto u = walk_chunks(t.cache_dir());
  CHECK(u.raw_bytes <= cap);
  CHECK(u.raw_bytes == s.bytes);
  CHECK(u.files == s.chunks);
  CHECK(s.evictions > 0);
  CHECK(s.bytes > cap / 2);  // eviction does not throw away more than it must
  CHECK(count_files(fs::path(t.cache_dir()) / "tmp") == 0);
}

TEST_CASE("reopening with a smaller capacity evicts down to it", "[cache]") {
  TempDir t;
  std::vector<Digest128> ds;
  {
    auto c = open_ok(t.cache_dir(), 1 << 20);
    for (uint64_t i = 0; i < 10; ++i) {
      auto data = make_chunk(i, 10000);
      ds.push_back(xxh3_128(data));
      REQUIRE(c->put(ds.back(), data).ok());
    }
  }
  auto c = open_ok(t.cache_dir(), 35000);
  CHECK(c->stats().chunks == 3);
  CHECK(c->stats().bytes == 30000);
  CHECK(walk_chunks(t.cache_dir()).raw_bytes == 30000);
}

TEST_CASE("a chunk larger than the capacity is refused and counted", "[cache]") {
  TempDir t;
  auto c = open_ok(t.cache_dir(), 1000);
  auto data = make_chunk(1, 2000);
  auto st = c->put(xxh3_128(data), data);
  REQUIRE_FALSE(st.ok());
  CHECK(st.code() == EFBIG);
  CHECK(c->stats().write_errors == 1);
  CHECK(c->stats().bytes == 0);
  CHECK(walk_chunks(t.cache_dir()).files == 0);
}

TEST_CASE("a corrupt chunk is dropped and reported as a miss", "[cache]") {
  TempDir t;
  auto c = open_ok(t.cache_dir(), 1 << 20);
  auto data = make_chunk(7, 20000);
  auto d = xxh3_128(data);
  auto p = chunk_path(t.cache_dir(), d);

  std::string how;
  SECTION("a data byte flipped") { how = "flip"; }
  SECTION("a header byte flipped") { how = "header"; }
  SECTION("truncated") { how = "truncate"; }
  SECTION("zero length") { how = "zero"; }
  SECTION("a byte appended") { how = "append"; }
  SECTION("replaced by another chunk's file") { how = "swap"; }
  REQUIRE(c->put(d, data).ok());
  if (how == "flip") flip_byte(p, kHeader + 12345);
  if (how == "header") flip_byte(p, 3);
  if (how == "truncate") fs::resize_file(p, kHeader + 100);
  if (how == "zero") fs::resize_file(p, 0);
  if (how == "append") {
    std::ofstream(p, std::ios::app) << 'x';
  }
  if (how == "swap") {
    auto other = make_chunk(8, 20000);
    REQUIRE(c->put(xxh3_128(other), other).ok());
    fs::copy_file(chunk_path(t.cache_dir(), xxh3_128(other)), p, fs::copy_options::overwrite_existing);
  }
  INFO(how);

  auto got = c->get(d);
  REQUIRE_FALSE(got.ok());
  CHECK(got.code() == ENOENT);
  CHECK_FALSE(fs::exists(p));
  CHECK_FALSE(c->contains(d));
  auto s = c->stats();
  CHECK(s.corrupt_dropped == 1);
  CHECK(s.misses == 1);
  CHECK(s.hits == 0);
  CHECK(s.bytes == walk_chunks(t.cache_dir()).raw_bytes);

  // The caller fetches it again and stores a good copy.
  REQUIRE(c->put(d, data).ok());
  auto again = c->get(d);
  REQUIRE(again.ok());
  CHECK(*again == data);
}

TEST_CASE("a chunk file replaced by a symlink, a FIFO or a directory is dropped, never waited on", "[cache]") {
  TempDir t;
  auto c = open_ok(t.cache_dir(), 1 << 20);
  auto data = make_chunk(9, 30000);
  auto d = xxh3_128(data);
  auto p = chunk_path(t.cache_dir(), d);
  auto other = make_chunk(10, 30000);
  REQUIRE(c->put(xxh3_128(other), other).ok());
  REQUIRE(c->put(d, data).ok());
  fs::path fifo = fs::path(t.path) / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);

  std::string how;
  SECTION("a symlink to a good chunk file of its own digest") { how = "self"; }
  SECTION("a symlink to another chunk's file") { how = "other"; }
  SECTION("a symlink to /dev/zero") { how = "zero"; }
  SECTION("a symlink to a FIFO") { how = "fifo-link"; }
  SECTION("a FIFO") { how = "fifo"; }
  SECTION("an empty directory") { how = "dir"; }
  INFO(how);
  fs::path keep = fs::path(t.path) / "good";
  fs::copy_file(p, keep);
  fs::remove(p);
  if (how == "self") fs::create_symlink(keep, p);
  if (how == "other") fs::create_symlink(chunk_path(t.cache_dir(), xxh3_128(other)), p);
  if (how == "zero") fs::create_symlink("/dev/zero", p);
  if (how == "fifo-link") fs::create_symlink(fifo, p);
  if (how == "fifo") REQUIRE(::mkfifo(p.c_str(), 0600) == 0);
  if (how == "dir") fs::create_directory(p);

  // Opening a FIFO blocks until a writer comes: bound the wait, and unblock it if it happens.
  std::atomic<bool> done{false};
  extrafs::Result<extrafs::cache::ChunkBuffer> got = extrafs::make_error(EIO, "not run");
  std::thread th([&] {
    got = c->get(d);
    done = true;
  });
  for (int i = 0; i < 500 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  bool blocked = !done;
  if (blocked) {
    int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    int w2 = ::open(p.c_str(), O_WRONLY | O_NONBLOCK);
    th.join();
    if (w >= 0) ::close(w);
    if (w2 >= 0) ::close(w2);
  } else {
    th.join();
  }
  CHECK_FALSE(blocked);
  REQUIRE_FALSE(got.ok());
  CHECK(got.code() == ENOENT);
  CHECK_FALSE(fs::exists(fs::symlink_status(p)));
  CHECK_FALSE(c->contains(d));
  CHECK(c->stats().corrupt_dropped == 1);
  // Stored again, it is a regular file that reads back.
  REQUIRE(c->put(d, data).ok());
  CHECK(fs::is_regular_file(fs::symlink_status(p)));
  auto again = c->get(d);
  REQUIRE(again.ok());
  CHECK(*again == data);
}

TEST_CASE("a corrupt chunk found at open is dropped when read", "[cache]") {
  TempDir t;
  auto data = make_chunk(3, 5000);
  auto d = xxh3_128(data);
  {
    auto c = open_ok(t.cache_dir(), 1 << 20);
    REQUIRE(c->put(d, data).ok());
  }
  flip_byte(chunk_path(t.cache_dir(), d), kHeader + 1);
  auto c = open_ok(t.cache_dir(), 1 << 20);
  CHECK(c->contains(d));
  CHECK(c->get(d).code() == ENOENT);
  CHECK(c->stats().corrupt_dropped == 1);
  CHECK(c->stats().bytes == 0);
}

TEST_CASE("files too short to be chunks and misnamed files are removed at open", "[cache]") {
  TempDir t;
  { auto c = open_ok(t.cache_dir(), 1 << 20); }
  auto chunks = fs::path(t.cache_dir()) / "chunks";
  fs::create_directories(chunks / "ab");
  fs::create_directories(chunks / "cd");
  std::ofstream(chunks / "ab" / "abababababababababababababababab") << "short";
  std::ofstream(chunks / "ab" / "not-a-digest") << std::string(100, 'x');
  std::ofstream(chunks / "cd" / "abababababababababababababababab") << std::string(100, 'x');
  size_t planted = 0;
  for (const auto& e : fs::recursive_directory_iterator(chunks)) planted += e.is_regular_file();
  REQUIRE(planted == 3);
  auto c = open_ok(t.cache_dir(), 1 << 20);
  CHECK(c->stats().chunks == 0);
  CHECK(c->stats().bytes == 0);
  CHECK(walk_chunks(t.cache_dir()).files == 0);
}

TEST_CASE("stray temporary files are removed on open", "[cache]") {
  TempDir t;
  { auto c = open_ok(t.cache_dir(), 1 << 20); }
  auto tmp = fs::path(t.cache_dir()) / "tmp";
  std::ofstream(tmp / "c.123.0") << std::string(5000, 'x');
  fs::create_directory(tmp / "c.123.5");
  std::ofstream(tmp / "m.123.1") << "partial";
  REQUIRE(count_files(tmp) == 3);
  auto c = open_ok(t.cache_dir(), 1 << 20);
  CHECK(count_files(tmp) == 0);
  CHECK(c->stats().bytes == 0);
}

TEST_CASE("a second open of the same directory fails with EBUSY", "[cache]") {
  TempDir t;
  auto first = open_ok(t.cache_dir(), 1 << 20);

  SECTION("in the same process") {
    auto second = BlockCache::open(t.cache_dir(), 1 << 20);
    REQUIRE_FALSE(second.ok());
    CHECK(second.code() == EBUSY);
    CHECK_THAT(second.error().message, Catch::Contains(t.cache_dir()) && Catch::Contains("in use"));
  }
  SECTION("in another process") {
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      auto second = BlockCache::open(t.cache_dir(), 1 << 20);
      ::_exit(second.ok() ? 0 : second.code() == EBUSY ? 42 : 1);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 42);
  }
  SECTION("and succeeds once the first is closed") {
    first.reset();
    auto second = BlockCache::open(t.cache_dir(), 1 << 20);
    CHECK(second.ok());
  }
}

TEST_CASE("a cache directory that is not a directory is rejected with its name", "[cache]") {
  TempDir t;
  auto file = fs::path(t.path) / "file";
  std::ofstream(file) << "x";
  for (auto dir : {file.string(), (file / "sub").string()}) {
    auto r = BlockCache::open(dir, 1 << 20);
    REQUIRE_FALSE(r.ok());
    CHECK(r.code() == ENOTDIR);
    CHECK_THAT(r.error().message, Catch::Contains(dir));
  }
  auto r = BlockCache::open("", 1 << 20);
  CHECK_FALSE(r.ok());
}

TEST_CASE("an unwritable cache directory is rejected with its name", "[cache]") {
  // /proc does not allow creating files, even for root.
  std::string dir = "/proc/self/extrafs-cache-test";
  auto r = BlockCache::open(dir, 1 << 20);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.error().message, Catch::Contains(dir));
  if (::geteuid() != 0) {
    TempDir t;
    fs::create_directory(fs::path(t.path) / "ro");
    fs::permissions(fs::path(t.path) / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    auto r2 = BlockCache::open((fs::path(t.path) / "ro").string(), 1 << 20);
    REQUIRE_FALSE(r2.ok());
    CHECK(r2.code() == EACCES);
    fs::permissions(fs::path(t.path) / "ro", fs::perms::owner_all);
  }
}

TEST_CASE("a cache is created with its missing parent directories", "[cache]") {
  TempDir t;
  auto dir = (fs::path(t.path) / "a" / "b" / "cache").string();
  auto c = open_ok(dir, 1 << 20);
  CHECK(fs::is_directory(fs::path(dir) / "chunks"));
  auto data = make_chunk(1, 100);
  REQUIRE(c->put(xxh3_128(data), data).ok());
  CHECK(c->get(xxh3_128(data)).ok());
}

TEST_CASE("concurrent gets and puts from 8 threads stay consistent", "[cache]") {
  TempDir t;
  const size_t kSize = 16384;
  int kChunks = 0;
  uint64_t cap = 0;
  bool tiny = false;
  SECTION("a working set three times the capacity") {
    kChunks = 64;
    cap = 20 * kSize;
  }
  SECTION("a few hot chunks in a cache of four, so eviction and put of one chunk collide") {
    kChunks = 6;
    cap = 4 * kSize;
    tiny = true;
  }
  auto c = open_ok(t.cache_dir(), cap);
  std::vector<std::vector<std::byte>> data;
  std::vector<Digest128> ds;
  for (int i = 0; i < kChunks; ++i) {
    data.push_back(make_chunk(i, kSize - i));  // sizes differ so a mix-up shows
    ds.push_back(xxh3_128(data.back()));
  }
  std::atomic<uint64_t> gets{0}, hits{0}, bad{0}, put_errors{0}, over{0};
  std::vector<std::thread> threads;
  for (int th = 0; th < 8; ++th) {
    threads.emplace_back([&, th] {
      std::mt19937 rng(th);
      for (int it = 0; it < 3000; ++it) {
        int i = static_cast<int>(rng() % kChunks);
        switch (rng() % 4) {
          case 0:
          case 1: {
            ++gets;
            auto r = c->get(ds[i]);
            if (r.ok()) {
              ++hits;
              if (*r != data[i]) ++bad;
            } else if (r.code() != ENOENT) {
              ++bad;
            }
            break;
          }
          case 2: {
            // With 8 puts in flight in a cache of 4 chunks, there may be no room to reserve.
            auto st = c->put(ds[i], data[i]);
            if (!st.ok() && !(tiny && st.code() == ENOSPC)) ++put_errors;
            break;
          }
          case 3:
            (void)c->contains(ds[i]);
            if (c->stats().bytes > cap) ++over;
            break;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(bad == 0);
  CHECK(put_errors == 0);
  CHECK(over == 0);
  auto s = c->stats();
  CHECK(s.hits + s.misses == gets);
  CHECK(s.hits == hits);
  CHECK(hits > 0);
  CHECK(s.evictions > 0);
  CHECK(s.corrupt_dropped == 0);
  auto u = walk_chunks(t.cache_dir());
  CHECK(u.raw_bytes <= cap);
  CHECK(u.raw_bytes == s.bytes);
  CHECK(u.files == s.chunks);
  CHECK(count_files(fs::path(t.cache_dir()) / "tmp") == 0);
  for (int i = 0; i < kChunks; ++i) {
    if (!c->contains(ds[i])) continue;
    auto r = c->get(ds[i]);
    REQUIRE(r.ok());
    CHECK(*r == data[i]);
  }
}

TEST_CASE("meta blobs round trip, are replaced whole and are not counted as chunks", "[cache]") {
  TempDir t;
  {
    auto c = open_ok(t.cache_dir(), 1000);
    CHECK(c->get_meta("catalog").code() == ENOENT);
    auto big = make_chunk(9, 100000);  // larger than the chunk capacity
    REQUIRE(c->put_meta("catalog", bytes_of("v1")).ok());
    REQUIRE(c->put_meta("layer.abc-1_2.index", big).ok());
    REQUIRE(c->put_meta("catalog", bytes_of("version two")).ok());
    CHECK(c->stats().bytes == 0);
    REQUIRE(c->put_meta("empty", {}).ok());
  }
  auto c = open_ok(t.cache_dir(), 1000);
  auto cat = c->get_meta("catalog");
  REQUIRE(cat.ok());
  CHECK(*cat == bytes_of("version two"));
  auto idx = c->get_meta("layer.abc-1_2.index");
  REQUIRE(idx.ok());
  CHECK(*idx == make_chunk(9, 100000));
  auto empty = c->get_meta("empty");
  REQUIRE(empty.ok());
  CHECK(empty->empty());
  CHECK(count_files(fs::path(t.cache_dir()) / "tmp") == 0);
}

TEST_CASE("a meta blob with a bad name is refused", "[cache]") {
  TempDir t;
  auto c = open_ok(t.cache_dir(), 1000);
  for (std::string name : std::vector<std::string>{"", ".", "..", "a/b", "../lock", "sp ace", std::string(300, 'a')}) {
    INFO(name);
    CHECK(c->put_meta(name, bytes_of("x")).code() == EINVAL);
    CHECK(c->get_meta(name).code() == EINVAL);
  }
}

TEST_CASE("a corrupted meta blob is rejected, not returned", "[cache]") {
  TempDir t;
  auto c = open_ok(t.cache_dir(), 1000);
  auto blob = make_chunk(5, 3000);
  REQUIRE(c->put_meta("catalog", blob).ok());
  auto p = fs::path(t.cache_dir()) / "meta" / "catalog";
  SECTION("a data byte flipped") { flip_byte(p, kHeader + 1000); }
  SECTION("a header byte flipped") { flip_byte(p, 0); }
  SECTION("truncated") { fs::resize_file(p, kHeader + 10); }
  SECTION("zero length") { fs::resize_file(p, 0); }
  auto r = c->get_meta("catalog");
  REQUIRE_FALSE(r.ok());
  CHECK(r.code() == EBADMSG);
  CHECK_THAT(r.error().message, Catch::Contains("catalog") && Catch::Contains(t.cache_dir()));
  // A fresh put replaces it.
  REQUIRE(c->put_meta("catalog", blob).ok());
  auto again = c->get_meta("catalog");
  REQUIRE(again.ok());
  CHECK(*again == blob);
}

TEST_CASE("verify_all drops and counts the corrupt chunks", "[cache]") {
  TempDir t;
  auto c = open_ok(t.cache_dir(), 1 << 20);
  std::vector<Digest128> ds;
  for (uint64_t i = 0; i < 10; ++i) {
    auto data = make_chunk(i, 3000);
    ds.push_back(xxh3_128(data));
    REQUIRE(c->put(ds.back(), data).ok());
  }
  flip_byte(chunk_path(t.cache_dir(), ds[1]), kHeader + 5);
  fs::resize_file(chunk_path(t.cache_dir(), ds[4]), kHeader + 1);
  fs::resize_file(chunk_path(t.cache_dir(), ds[7]), 0);
  fs::remove(chunk_path(t.cache_dir(), ds[9]));  // gone, not corrupt

  auto r = c->verify_all();
  REQUIRE(r.ok());
  CHECK(*r == 3);
  auto s = c->stats();
  CHECK(s.corrupt_dropped == 3);
  CHECK(s.chunks == 6);
  CHECK(s.bytes == 6 * 3000);
  CHECK(walk_chunks(t.cache_dir()).raw_bytes == s.bytes);
  auto r2 = c->verify_all();
  REQUIRE(r2.ok());
  CHECK(*r2 == 0);
  for (int i : {0, 2, 3, 5, 6, 8}) CHECK(c->get(ds[i]).ok());
}

TEST_CASE("shrink_to evicts least recently used chunks down to the target", "[cache]") {
  TempDir t;
  auto c = open_ok(t.cache_dir(), 1 << 20);
  std::vector<Digest128> ds;
  for (uint64_t i = 0; i < 10; ++i) {
    auto data = make_chunk(i, 4096);
    ds.push_back(xxh3_128(data));
    REQUIRE(c->put(ds.back(), data).ok());
  }
  REQUIRE(c->get(ds[0]).ok());
  std::ofstream(fs::path(t.cache_dir()) / "tmp" / "c.999.9") << "stray";

  REQUIRE(c->shrink_to(3 * 4096 + 100).ok());
  auto s = c->stats();
  CHECK(s.chunks == 3);
  CHECK(s.bytes == 3 * 4096);
  CHECK(s.evictions == 7);
  CHECK(c->contains(ds[0]));
  CHECK(c->contains(ds[9]));
  CHECK(c->contains(ds[8]));
  CHECK(walk_chunks(t.cache_dir()).raw_bytes == 3 * 4096);
  CHECK(count_files(fs::path(t.cache_dir()) / "tmp") == 0);

  REQUIRE(c->shrink_to(0).ok());
  CHECK(c->stats().bytes == 0);
  CHECK(walk_chunks(t.cache_dir()).files == 0);
  // The capacity itself is unchanged: the cache fills again.
  auto data = make_chunk(1, 4096);
  REQUIRE(c->put(xxh3_128(data), data).ok());
  CHECK(c->stats().chunks == 1);
}

TEST_CASE("a cache killed with SIGKILL mid-put reopens with only good chunks", "[cache][crash]") {
  const uint64_t cap = 2 << 20;
  std::mt19937 rng(std::random_device{}());
  for (int iter = 0; iter < 6; ++iter) {
    TempDir t;
    auto chunk_size = [](uint64_t i) { return static_cast<size_t>(1 + (i * 104729) % 200000); };
    auto meta_of = [](uint64_t i) { return bytes_of("catalog generation " + std::to_string(i)); };
    // Lets the parent see that the child got going before it kills it.
    int pipefd[2];
    REQUIRE(::pipe(pipefd) == 0);
    // The child announces each chunk number here before putting it.
    void* shared =
        ::mmap(nullptr, sizeof(std::atomic<uint64_t>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(shared != MAP_FAILED);
    auto* progress = new (shared) std::atomic<uint64_t>(0);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(pipefd[0]);
      auto r = BlockCache::open(t.cache_dir(), cap);
      if (!r.ok()) ::_exit(1);
      auto& c = *r;
      (void)!::write(pipefd[1], "x", 1);
      for (uint64_t i = 0;; ++i) {
        auto data = make_chunk(i, chunk_size(i));
        progress->store(i);
        if (!c->put(xxh3_128(data), data).ok()) ::_exit(2);
        if (i % 7 == 0 && !c->put_meta("catalog", meta_of(i)).ok()) ::_exit(3);
        if (i % 3 == 0) (void)c->get(xxh3_128(make_chunk(i / 2, chunk_size(i / 2))));
      }
    }
    ::close(pipefd[1]);
    char x;
    REQUIRE(::read(pipefd[0], &x, 1) == 1);
    ::close(pipefd[0]);
    std::this_thread::sleep_for(std::chrono::microseconds(20000 + rng() % 200000));
    REQUIRE(::kill(pid, SIGKILL) == 0);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFSIGNALED(status));

    auto c = open_ok(t.cache_dir(), cap);
    auto s = c->stats();
    auto u = walk_chunks(t.cache_dir());
    CHECK(count_files(fs::path(t.cache_dir()) / "tmp") == 0);
    CHECK(s.bytes <= cap);
    CHECK(u.raw_bytes == s.bytes);
    CHECK(u.files == s.chunks);
    REQUIRE(s.chunks > 0);
    // Every chunk on disk is one of the child's, returned with the right bytes.
    const uint64_t last = progress->load();
    ::munmap(shared, sizeof(std::atomic<uint64_t>));
    INFO("child got to chunk " << last);
    uint64_t found = 0;
    for (uint64_t i = 0; found < s.chunks && i <= last; ++i) {
      auto data = make_chunk(i, chunk_size(i));
      auto d = xxh3_128(data);
      if (!c->contains(d)) continue;
      ++found;
      auto got = c->get(d);
      REQUIRE(got.ok());
      CHECK(*got == data);
    }
    CHECK(found == s.chunks);
    CHECK(c->stats().corrupt_dropped == 0);
    auto meta = c->get_meta("catalog");
    if (meta.ok()) {
      bool known = false;
      for (uint64_t i = 0; i <= last && !known; i += 7) known = *meta == meta_of(i);
      CHECK(known);
    } else {
      CHECK(meta.code() == ENOENT);
    }
  }
}

TEST_CASE("a chunk verified once is verified again when its file changes, even with its mtime put back", "[cache]") {
  TempDir t;
  auto c = open_ok(t.cache_dir(), 1 << 20);
  auto data = make_chunk(11, 30000);
  auto d = xxh3_128(data);
  auto p = chunk_path(t.cache_dir(), d);
  REQUIRE(c->put(d, data).ok());
  // Only a file unchanged for 2 s is remembered as verified (timestamp granularity).
  std::this_thread::sleep_for(std::chrono::milliseconds(2200));
  for (int i = 0; i < 3; ++i) {
    auto got = c->get(d);
    REQUIRE(got.ok());
    CHECK(*got == data);
  }
  struct stat before {};
  REQUIRE(::stat(p.c_str(), &before) == 0);
  flip_byte(p, kHeader + 777);
  timespec times[2] = {before.st_atim, before.st_mtim};
  REQUIRE(::utimensat(AT_FDCWD, p.c_str(), times, 0) == 0);  // same size and mtime: only ctime tells
  auto got = c->get(d);
  REQUIRE_FALSE(got.ok());
  CHECK(got.code() == ENOENT);
  CHECK(c->stats().corrupt_dropped == 1);
  CHECK_FALSE(fs::exists(p));
}
