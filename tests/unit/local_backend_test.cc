#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <optional>
#include <span>

#include "backend/local_backend.h"
#include "test_util.h"

using namespace extrafs;
using extrafs::testing::TempDir;

namespace {

void write_file(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
}

}  // namespace

TEST_CASE("a file replaced by rename is read in its new version, not through the old fd", "[backend]") {
  TempDir dir;
  write_file(dir.path + "/catalog", "first version");
  auto b = backend::LocalBackend::open(dir.path);
  REQUIRE(b.ok());
  auto first = (*b)->read_all("catalog", 1 << 20);
  REQUIRE(first.ok());
  CHECK(*first == "first version");

  // What a publish does: write a new file beside it, rename it over the old one.
  write_file(dir.path + "/catalog.tmp", "the second, longer version");
  REQUIRE(std::rename((dir.path + "/catalog.tmp").c_str(), (dir.path + "/catalog").c_str()) == 0);
  auto second = (*b)->read_all("catalog", 1 << 20);
  INFO((second.ok() ? std::string() : second.error().message));
  REQUIRE(second.ok());
  CHECK(*second == "the second, longer version");

  write_file(dir.path + "/catalog.tmp", "third");
  REQUIRE(std::rename((dir.path + "/catalog.tmp").c_str(), (dir.path + "/catalog").c_str()) == 0);
  auto third = (*b)->read_all("catalog", 1 << 20);
  REQUIRE(third.ok());
  CHECK(*third == "third");
}

TEST_CASE("a FIFO where a store object should be is refused from its type, never opened", "[backend]") {
  TempDir dir;
  const std::string fifo = dir.path + "/blob";
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  auto b = backend::LocalBackend::open(dir.path);
  REQUIRE(b.ok());
  auto info = (*b)->stat("blob");
  REQUIRE(info.ok());
  CHECK(info->special == S_IFIFO);
  CHECK_FALSE(info->is_dir);
  std::string buf(4096, '\0');
  std::optional<Result<size_t>> read;
  CHECK_FALSE(testing::blocked_on_fifo(
      fifo, [&] { read = (*b)->read("blob", 0, std::as_writable_bytes(std::span(buf.data(), buf.size()))); }));
  REQUIRE(read);
  CHECK(read->code() == EINVAL);
  CHECK(read->error().message == fifo + " is a FIFO, not a regular file; refusing to read it");
  CHECK((*b)->read_all("blob", 1 << 20).code() == EINVAL);
}

TEST_CASE("stat tells a rewritten file from the one before, even at the same size and mtime", "[backend]") {
  TempDir dir;
  write_file(dir.path + "/catalog", "same");
  auto b = backend::LocalBackend::open(dir.path);
  REQUIRE(b.ok());
  auto first = (*b)->stat("catalog");
  REQUIRE(first.ok());
  write_file(dir.path + "/catalog.tmp", "SAME");
  struct timespec times[2] = {{0, UTIME_OMIT}, {first->mtime_ns / 1000000000, first->mtime_ns % 1000000000}};
  REQUIRE(::utimensat(AT_FDCWD, (dir.path + "/catalog.tmp").c_str(), times, 0) == 0);
  REQUIRE(std::rename((dir.path + "/catalog.tmp").c_str(), (dir.path + "/catalog").c_str()) == 0);
  auto second = (*b)->stat("catalog");
  REQUIRE(second.ok());
  CHECK(second->size == first->size);
  CHECK(second->mtime_ns == first->mtime_ns);
  CHECK(second->file_id != first->file_id);
}

TEST_CASE("a store directory removed and made again at the same path is read in its new version", "[backend]") {
  TempDir dir;
  const std::string store = dir.path + "/store";
  REQUIRE(::mkdir(store.c_str(), 0755) == 0);
  write_file(store + "/catalog", "old store");
  write_file(store + "/blob", "old blob");
  auto b = backend::LocalBackend::open(store);
  REQUIRE(b.ok());
  REQUIRE((*b)->read_all("catalog", 1 << 20).ok());
  std::string buf(8, '\0');
  REQUIRE((*b)->read("blob", 0, std::as_writable_bytes(std::span<char>(buf))).ok());  // an fd kept open

  // Rebuilt from scratch: the directory removed, a new one made at its path.
  REQUIRE(std::rename(store.c_str(), (dir.path + "/gone").c_str()) == 0);
  REQUIRE(::mkdir(store.c_str(), 0755) == 0);
  write_file(store + "/catalog", "the new store");
  write_file(store + "/blob", "new blob");
  auto cat = (*b)->read_all("catalog", 1 << 20);
  REQUIRE(cat.ok());
  CHECK(*cat == "the new store");
  auto n = (*b)->read("blob", 0, std::as_writable_bytes(std::span<char>(buf)));
  REQUIRE(n.ok());
  CHECK(buf.substr(0, *n) == "new blob");
  auto names = (*b)->list("");
  REQUIRE(names.ok());
  CHECK(names->size() == 2);

  // While the path names nothing (between the removal and the new directory), the old one stays.
  REQUIRE(std::rename(store.c_str(), (dir.path + "/gone2").c_str()) == 0);
  cat = (*b)->read_all("catalog", 1 << 20);
  REQUIRE(cat.ok());
  CHECK(*cat == "the new store");
}
