#include "cache/whole_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace fs = std::filesystem;
using extrafs::Digest128;
using extrafs::xxh3_128;
using extrafs::cache::ExpectedChunk;
using extrafs::cache::WholeFiles;
using extrafs::testing::TempDir;

namespace {

constexpr uint64_t kChunk = 1024;

// A file of `n` bytes (random, with a zero chunk second) and what a copy of it must hold.
struct File {
  std::vector<std::byte> bytes;
  std::vector<ExpectedChunk> chunks;
  Digest128 key;
  explicit File(size_t n, uint32_t seed) : bytes(n) {
    std::mt19937 rng(seed);
    for (auto& b : bytes) b = static_cast<std::byte>(rng());
    if (n > 2 * kChunk) std::fill(bytes.begin() + kChunk, bytes.begin() + 2 * kChunk, std::byte{0});
    for (size_t off = 0; off < n; off += kChunk) {
      size_t len = std::min<size_t>(kChunk, n - off);
      bool zero = n > 2 * kChunk && off == kChunk;
      chunks.push_back({xxh3_128(bytes.data() + off, len), static_cast<uint32_t>(len), zero});
    }
    key = xxh3_128(&seed, sizeof seed);
  }
};

void put(WholeFiles& w, const File& f) {
  auto wr = w.begin(f.key, f.bytes.size());
  REQUIRE(wr.ok());
  for (size_t off = 0; off < f.bytes.size(); off += kChunk) {
    if (f.bytes.size() > 2 * kChunk && off == kChunk) continue;  // the zero chunk: left a hole
    size_t len = std::min<size_t>(kChunk, f.bytes.size() - off);
    REQUIRE((*wr)->write(off, std::span(f.bytes.data() + off, len)).ok());
  }
  REQUIRE((*wr)->commit().ok());
}

// An instance on `t` with what DIR/files holds taken in (WholeFiles::load).
std::unique_ptr<WholeFiles> loaded(const TempDir& t, uint64_t capacity = 1 << 20,
                                   std::function<void(uint64_t)> usage = {}) {
  auto w = WholeFiles::open(t.path, capacity, std::move(usage));
  REQUIRE(w.ok());
  REQUIRE((*w)->load().ok());
  return std::move(w).value();
}

// Writes `f`'s copy through an instance of its own, closed again; returns the copy's path.
fs::path written_copy(const TempDir& t, const File& f) {
  put(*loaded(t), f);
  return fs::path(t.path) / "files" / f.key.hex();
}

// Replaces the copy at `path` by rename with a file of the same size holding other bytes (what
// a forger with write access to the cache does); returns its identity as "<key>.id" held it.
std::string forge(const fs::path& path, size_t n) {
  const fs::path tmp = path.string() + ".forged";
  {
    std::ofstream out(tmp, std::ios::binary);
    out << std::string(n, 'F');
  }
  fs::rename(tmp, path);
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return std::to_string(st.st_dev) + " " + std::to_string(st.st_ino) + " " + std::to_string(st.st_size) + " " +
         std::to_string(st.st_mtim.tv_sec) + " " + std::to_string(st.st_mtim.tv_nsec) + " " +
         std::to_string(st.st_ctim.tv_sec) + " " + std::to_string(st.st_ctim.tv_nsec) + "\n";
}

std::vector<std::byte> read_all(int fd, size_t n) {
  std::vector<std::byte> out(n);
  REQUIRE(::pread(fd, out.data(), n, 0) == static_cast<ssize_t>(n));
  return out;
}

}  // namespace

TEST_CASE("a copy is handed out only once this instance hashed it, and only while unchanged", "[cache]") {
  TempDir t;
  auto w = loaded(t);
  File f(5 * kChunk + 17, 1), g(3 * kChunk, 11), h(2 * kChunk, 12);
  CHECK_FALSE(w->has(f.key));
  CHECK(w->open_checked(f.key, f.bytes.size()).code() == ENOENT);
  CHECK(w->check(f.key, f.bytes.size(), kChunk, f.chunks).code() == ENOENT);
  put(*w, f);
  put(*w, g);
  put(*w, h);
  CHECK(w->has(f.key));
  CHECK(w->stats().written == 3);
  // Written by this instance from verified chunks, but not hashed yet: not handed out.
  CHECK(w->open_checked(f.key, f.bytes.size()).code() == EAGAIN);
  // Just written: its identity cannot be trusted for 2 s (a write within the timestamp
  // granularity would not show), so the hash is not taken yet.
  CHECK(w->check(f.key, f.bytes.size(), kChunk, f.chunks).code() == EAGAIN);
  CHECK(w->open_checked(f.key, f.bytes.size()).code() == EAGAIN);
  ::sleep(3);
  REQUIRE(w->check(f.key, f.bytes.size(), kChunk, f.chunks).ok());
  REQUIRE(w->check(g.key, g.bytes.size(), kChunk, g.chunks).ok());
  REQUIRE(w->check(h.key, h.bytes.size(), kChunk, h.chunks).ok());
  auto fd = w->open_checked(f.key, f.bytes.size());
  REQUIRE(fd.ok());
  CHECK(read_all(fd->get(), f.bytes.size()) == f.bytes);
  CHECK((::fcntl(fd->get(), F_GETFL) & O_NONBLOCK) == 0);
  auto s = w->stats();
  CHECK(s.files == 3);
  CHECK(s.bytes == f.bytes.size() + g.bytes.size() + h.bytes.size());
  CHECK(s.checked == 3);
  CHECK(s.corrupt_dropped == 0);
  CHECK_FALSE(fs::exists(fs::path(t.path) / "files" / (f.key.hex() + ".id")));

  // Replaced by rename after its check (another inode): not handed out, hashed again, removed.
  const fs::path gpath = fs::path(t.path) / "files" / g.key.hex();
  forge(gpath, g.bytes.size());
  CHECK(w->open_checked(g.key, g.bytes.size()).code() == EAGAIN);
  CHECK(w->check(g.key, g.bytes.size(), kChunk, g.chunks).code() == ENOENT);
  CHECK_FALSE(fs::exists(gpath));
  CHECK_FALSE(w->has(g.key));
  // Written in place (the same byte: content unchanged, ctime not): hashed again before use.
  const fs::path hpath = fs::path(t.path) / "files" / h.key.hex();
  {
    std::fstream st(hpath, std::ios::in | std::ios::out | std::ios::binary);
    st.seekp(0);
    st.put(static_cast<char>(h.bytes[0]));
  }
  CHECK(w->open_checked(h.key, h.bytes.size()).code() == EAGAIN);
  CHECK(w->stats().corrupt_dropped == 1);

  // A later instance trusts nothing it did not hash itself, unchanged as the copy may be.
  auto w2 = loaded(t);
  CHECK(w2->has(f.key));
  CHECK(w2->open_checked(f.key, f.bytes.size()).code() == EAGAIN);
  REQUIRE(w2->check(f.key, f.bytes.size(), kChunk, f.chunks).ok());
  CHECK(w2->open_checked(f.key, f.bytes.size()).ok());
}

TEST_CASE("a copy replaced together with a forged identity beside it is never handed out", "[cache]") {
  TempDir t;
  File f(4 * kChunk, 2);
  const fs::path copy = written_copy(t, f);
  // What older versions kept beside a copy (its identity when last hashed, which let any later
  // mount hand it out unread): forged to match the forged copy.
  const std::string id = forge(copy, f.bytes.size());
  std::ofstream(copy.string() + ".id") << id;
  auto w = loaded(t);
  CHECK_FALSE(fs::exists(copy.string() + ".id"));
  CHECK(w->has(f.key));
  CHECK(w->open_checked(f.key, f.bytes.size()).code() == EAGAIN);
  CHECK(w->check(f.key, f.bytes.size(), kChunk, f.chunks).code() == ENOENT);
  CHECK_FALSE(w->has(f.key));
  CHECK_FALSE(fs::exists(copy));
  CHECK(w->stats().corrupt_dropped == 1);
  CHECK(w->open_checked(f.key, f.bytes.size()).code() == ENOENT);
}

TEST_CASE("a copy of the wrong size or type is removed at open", "[cache]") {
  TempDir t;
  File f(4 * kChunk, 8);
  const fs::path copy = written_copy(t, f);
  auto w = loaded(t);
  CHECK(w->open_checked(f.key, f.bytes.size() + 1).code() == ENOENT);
  CHECK_FALSE(fs::exists(copy));
  CHECK_FALSE(w->has(f.key));
  // A FIFO under a copy's name: never waited on.
  put(*w, f);
  fs::remove(copy);
  REQUIRE(::mkfifo(copy.c_str(), 0600) == 0);
  CHECK(w->open_checked(f.key, f.bytes.size()).code() == ENOENT);
  CHECK(w->check(f.key, f.bytes.size(), kChunk, f.chunks).code() == ENOENT);
  CHECK_FALSE(fs::exists(copy));
}

TEST_CASE("copies stay within their bound and report their size", "[cache]") {
  TempDir t;
  uint64_t reported = 0;
  auto w = loaded(t, 10 * kChunk, [&](uint64_t b) { reported = b; });
  File a(4 * kChunk, 4), b(4 * kChunk, 5), c(4 * kChunk, 6);
  put(*w, a);
  put(*w, b);
  CHECK(reported == 8 * kChunk);
  put(*w, c);  // a, the oldest, goes
  CHECK_FALSE(w->has(a.key));
  CHECK(w->has(b.key));
  CHECK(w->has(c.key));
  CHECK(reported == 8 * kChunk);
  CHECK(w->begin(a.key, 11 * kChunk).code() == EFBIG);
  // Leftovers of an interrupted write and stray files go at the next open.
  std::ofstream(fs::path(t.path) / "files" / ".tmp-junk") << "x";
  std::ofstream(fs::path(t.path) / "files" / "not-a-key") << "x";
  std::ofstream(fs::path(t.path) / "files" / (a.key.hex() + ".id")) << "1 2 3 4 5 6 7\n";
  // Nothing is looked at, counted or removed before load().
  uint64_t reported2 = 0;
  auto w2 = WholeFiles::open(t.path, 10 * kChunk, [&](uint64_t b) { reported2 = b; });
  REQUIRE(w2.ok());
  CHECK((*w2)->stats().files == 0);
  CHECK(reported2 == 0);
  CHECK(fs::exists(fs::path(t.path) / "files" / ".tmp-junk"));
  REQUIRE((*w2)->load().ok());
  CHECK((*w2)->stats().files == 2);
  CHECK(reported2 == 8 * kChunk);
  CHECK_FALSE(fs::exists(fs::path(t.path) / "files" / ".tmp-junk"));
  CHECK_FALSE(fs::exists(fs::path(t.path) / "files" / "not-a-key"));
  CHECK_FALSE(fs::exists(fs::path(t.path) / "files" / (a.key.hex() + ".id")));
  auto freed = extrafs::cache::remove_whole_files(t.path);
  REQUIRE(freed.ok());
  CHECK(*freed == 8 * kChunk);
}

TEST_CASE("usage is reported without the lock that opens need", "[cache]") {
  // The mount wires `usage` to BlockCache::set_external, which evicts chunks and unlinks their
  // files: an open of a copy meanwhile must not wait for that.
  TempDir t;
  WholeFiles* self = nullptr;
  int reports = 0, blocked = 0;
  std::vector<std::thread> opens;
  auto w = loaded(t, 10 * kChunk, [&](uint64_t) {
    ++reports;
    if (self == nullptr) return;
    auto answered = std::make_shared<std::atomic<bool>>(false);
    opens.emplace_back([self, answered] {
      (void)self->stats();
      *answered = true;
    });
    for (int i = 0; i < 200 && !*answered; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!*answered) ++blocked;
  });
  self = w.get();
  File a(4 * kChunk, 11), b(4 * kChunk, 12), c(4 * kChunk, 13);
  put(*w, a);
  put(*w, b);
  put(*w, c);  // evicts a
  for (auto& th : opens) th.join();
  CHECK(reports >= 6);  // a reservation and an install each
  CHECK(blocked == 0);
  CHECK_FALSE(w->has(a.key));
  CHECK_FALSE(fs::exists(fs::path(t.path) / "files" / a.key.hex()));
  CHECK(w->has(c.key));
}

TEST_CASE("a mount that cannot use copies removes them and counts none", "[cache]") {
  TempDir t;
  File a(4 * kChunk, 9), b(3 * kChunk, 10);
  written_copy(t, a);
  written_copy(t, b);
  std::ofstream(fs::path(t.path) / "files" / ".tmp-junk") << "x";
  bool reported = false;
  auto w = WholeFiles::open(t.path, 10 * kChunk, [&](uint64_t) { reported = true; });
  REQUIRE(w.ok());
  auto freed = (*w)->discard();
  REQUIRE(freed.ok());
  CHECK(*freed == 7 * kChunk + 1);
  CHECK_FALSE(reported);
  CHECK(fs::is_empty(fs::path(t.path) / "files"));
  CHECK((*w)->stats().files == 0);
  CHECK((*w)->stats().bytes == 0);
}

TEST_CASE("an abandoned writer leaves nothing behind", "[cache]") {
  TempDir t;
  auto w = WholeFiles::open(t.path, 1 << 20);
  REQUIRE(w.ok());
  File f(2 * kChunk, 7);
  {
    auto wr = (*w)->begin(f.key, f.bytes.size());
    REQUIRE(wr.ok());
    REQUIRE((*wr)->write(0, std::span(f.bytes.data(), kChunk)).ok());
    CHECK((*wr)->write(f.bytes.size(), std::span(f.bytes.data(), 1)).code() == EINVAL);
  }
  CHECK_FALSE((*w)->has(f.key));
  CHECK(fs::is_empty(fs::path(t.path) / "files"));
  CHECK((*w)->stats().bytes == 0);
}
