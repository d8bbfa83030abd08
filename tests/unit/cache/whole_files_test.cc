#include "cache/whole_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
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

// Writes `f`'s copy through an instance of its own, closed again; returns the copy's path.
fs::path written_copy(const TempDir& t, const File& f) {
  auto w = WholeFiles::open(t.path, 1 << 20);
  REQUIRE(w.ok());
  put(**w, f);
  return fs::path(t.path) / "files" / f.key.hex();
}

std::vector<std::byte> read_all(int fd, size_t n) {
  std::vector<std::byte> out(n);
  REQUIRE(::pread(fd, out.data(), n, 0) == static_cast<ssize_t>(n));
  return out;
}

}  // namespace

TEST_CASE("a whole-file copy is written, found, checked and handed out", "[cache]") {
  TempDir t;
  auto w = WholeFiles::open(t.path, 1 << 20);
  REQUIRE(w.ok());
  File f(5 * kChunk + 17, 1);
  CHECK_FALSE((*w)->has(f.key));
  CHECK((*w)->open_verified(f.key, f.bytes.size(), kChunk, f.chunks).code() == ENOENT);
  put(**w, f);
  CHECK((*w)->has(f.key));
  auto fd = (*w)->open_verified(f.key, f.bytes.size(), kChunk, f.chunks);
  REQUIRE(fd.ok());
  CHECK(read_all(fd->get(), f.bytes.size()) == f.bytes);
  auto s = (*w)->stats();
  CHECK(s.files == 1);
  CHECK(s.bytes == f.bytes.size());
  CHECK(s.written == 1);
}

TEST_CASE("a copy that does not match its chunks is removed, never handed out", "[cache]") {
  TempDir t;
  File f(4 * kChunk, 2);
  const fs::path copy = written_copy(t, f);
  REQUIRE(fs::exists(copy));
  {
    std::fstream s(copy, std::ios::in | std::ios::out | std::ios::binary);
    s.seekp(3 * kChunk + 5);
    s.put(static_cast<char>(static_cast<unsigned char>(f.bytes[3 * kChunk + 5]) ^ 0xff));
  }
  auto w = WholeFiles::open(t.path, 1 << 20);
  REQUIRE(w.ok());
  CHECK((*w)->has(f.key));
  CHECK((*w)->open_verified(f.key, f.bytes.size(), kChunk, f.chunks).code() == ENOENT);
  CHECK_FALSE((*w)->has(f.key));
  CHECK_FALSE(fs::exists(copy));
  CHECK((*w)->stats().corrupt_dropped == 1);
  // Wrong size for the index: also refused.
  put(**w, f);
  CHECK((*w)->open_verified(f.key, f.bytes.size() + 1, kChunk, f.chunks).code() == ENOENT);
}

TEST_CASE("a copy hashed once is trusted by later instances while unchanged", "[cache]") {
  TempDir t;
  File f(3 * kChunk, 3);
  const fs::path copy = written_copy(t, f);
  // Only a file unchanged for two seconds is trusted later (timestamp granularity): age it.
  struct timespec old[2] = {{::time(nullptr) - 10, 0}, {::time(nullptr) - 10, 0}};
  REQUIRE(::utimensat(AT_FDCWD, copy.c_str(), old, 0) == 0);
  // ctime moved with utimensat; wait until it is two seconds old.
  ::sleep(3);
  {
    auto w = WholeFiles::open(t.path, 1 << 20);
    REQUIRE(w.ok());
    REQUIRE((*w)->open_verified(f.key, f.bytes.size(), kChunk, f.chunks).ok());
  }
  CHECK(fs::exists(copy.string() + ".id"));
  // A later instance trusts the identity: expectations that would not match are not checked.
  auto w = WholeFiles::open(t.path, 1 << 20);
  REQUIRE(w.ok());
  auto wrong = f.chunks;
  wrong[0].digest = xxh3_128("x", 1);
  CHECK((*w)->open_verified(f.key, f.bytes.size(), kChunk, wrong).ok());
  // Any write changes the identity: hashed again, and refused.
  {
    std::fstream s(copy, std::ios::in | std::ios::out | std::ios::binary);
    s.seekp(0);
    s.put(static_cast<char>(f.bytes[0]));  // the same byte: content unchanged, ctime not
  }
  auto w2 = WholeFiles::open(t.path, 1 << 20);
  REQUIRE(w2.ok());
  CHECK((*w2)->open_verified(f.key, f.bytes.size(), kChunk, wrong).code() == ENOENT);
}

TEST_CASE("copies stay within their bound and report their size", "[cache]") {
  TempDir t;
  uint64_t reported = 0;
  auto w = WholeFiles::open(t.path, 10 * kChunk, [&](uint64_t b) { reported = b; });
  REQUIRE(w.ok());
  File a(4 * kChunk, 4), b(4 * kChunk, 5), c(4 * kChunk, 6);
  put(**w, a);
  put(**w, b);
  CHECK(reported == 8 * kChunk);
  put(**w, c);  // a, the oldest, goes
  CHECK_FALSE((*w)->has(a.key));
  CHECK((*w)->has(b.key));
  CHECK((*w)->has(c.key));
  CHECK(reported == 8 * kChunk);
  CHECK((*w)->begin(a.key, 11 * kChunk).code() == EFBIG);
  // Leftovers of an interrupted write and stray files go at the next open.
  std::ofstream(fs::path(t.path) / "files" / ".tmp-junk") << "x";
  std::ofstream(fs::path(t.path) / "files" / "not-a-key") << "x";
  std::ofstream(fs::path(t.path) / "files" / (a.key.hex() + ".id")) << "1 2 3 4 5 6 7\n";
  auto w2 = WholeFiles::open(t.path, 10 * kChunk);
  REQUIRE(w2.ok());
  CHECK((*w2)->stats().files == 2);
  CHECK_FALSE(fs::exists(fs::path(t.path) / "files" / ".tmp-junk"));
  CHECK_FALSE(fs::exists(fs::path(t.path) / "files" / "not-a-key"));
  CHECK_FALSE(fs::exists(fs::path(t.path) / "files" / (a.key.hex() + ".id")));
  auto freed = extrafs::cache::remove_whole_files(t.path);
  REQUIRE(freed.ok());
  CHECK(*freed == 8 * kChunk);
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
