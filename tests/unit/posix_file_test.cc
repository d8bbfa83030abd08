#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/posix_file.h"
#include "test_util.h"

using namespace extrafs;
using extrafs::testing::blocked_on_fifo;
using extrafs::testing::TempDir;

namespace {

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path().filename());
  return out;
}

}  // namespace

TEST_CASE("an atomic replace leaves the new content and no temporary", "[files]") {
  TempDir t;
  const std::string f = t.path + "/catalog";
  REQUIRE(write_file_atomic(f, "one").ok());
  REQUIRE(write_file_atomic(f, "two", 0600).ok());
  auto got = read_file(f);
  REQUIRE(got.ok());
  CHECK(*got == "two");
  struct stat st;
  REQUIRE(::stat(f.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  CHECK(names_in(t.path) == std::vector<std::string>{"catalog"});
}

TEST_CASE("a failed atomic replace leaves the old file and no temporary", "[files]") {
  TempDir t;
  const std::string f = t.path + "/name";
  REQUIRE(write_file_atomic(f, "old").ok());
  // The rename fails: a non-empty directory cannot be replaced by a file.
  const std::string d = t.path + "/dir";
  REQUIRE(::mkdir(d.c_str(), 0755) == 0);
  REQUIRE(write_file_atomic(d + "/x", "x").ok());
  auto st = write_file_atomic(d, "new");
  CHECK_FALSE(st.ok());
  CHECK(st.error().message.find(d) != std::string::npos);
  std::set<std::string> left;
  for (const auto& n : names_in(t.path)) left.insert(n);
  CHECK(left == std::set<std::string>{"name", "dir"});
  CHECK(*read_file(f) == "old");
  // A missing directory: nothing is created anywhere.
  CHECK(write_file_atomic(t.path + "/missing/file", "x").code() == ENOENT);
  CHECK(names_in(t.path).size() == 2);
}

TEST_CASE("write_new_file refuses to replace or follow", "[files]") {
  TempDir t;
  const std::string f = t.path + "/f";
  REQUIRE(write_new_file(f, "a", 0600).ok());
  CHECK(write_new_file(f, "b").code() == EEXIST);
  REQUIRE(::symlink("/nonexistent-target", (t.path + "/link").c_str()) == 0);
  CHECK_FALSE(write_new_file(t.path + "/link", "b").ok());
  CHECK(*read_file(f) == "a");
}

TEST_CASE("an atomic create never replaces and leaves no temporary", "[files]") {
  TempDir t;
  const std::string f = t.path + "/7";
  REQUIRE(write_file_atomic_new(f, "seven", 0600).ok());
  auto st = write_file_atomic_new(f, "other");
  CHECK(st.code() == EEXIST);
  CHECK(st.error().message.find(f) != std::string::npos);
  CHECK(*read_file(f) == "seven");
  struct stat sb;
  REQUIRE(::stat(f.c_str(), &sb) == 0);
  CHECK((sb.st_mode & 07777) == 0600);
  CHECK(names_in(t.path) == std::vector<std::string>{"7"});
}

TEST_CASE("read_file reads whole files and bounds them", "[files]") {
  TempDir t;
  const std::string f = t.path + "/big";
  std::string data(200000, 'x');
  REQUIRE(write_new_file(f, data).ok());
  CHECK(*read_file(f) == data);
  CHECK(read_file(f, 1000).code() == EFBIG);
  CHECK(read_file(t.path + "/none").code() == ENOENT);
}

TEST_CASE("make_dirs creates missing components and names what is in the way", "[files]") {
  TempDir t;
  std::vector<std::string> created;
  REQUIRE(make_dirs(t.path + "/a/b//c/", 0755, &created).ok());
  CHECK(created == std::vector<std::string>{t.path + "/a", t.path + "/a/b", t.path + "/a/b//c"});
  struct stat st;
  CHECK((::stat((t.path + "/a/b/c").c_str(), &st) == 0 && S_ISDIR(st.st_mode)));
  created.clear();
  REQUIRE(make_dirs(t.path + "/a/b/c", 0755, &created).ok());
  CHECK(created.empty());
  REQUIRE(write_new_file(t.path + "/a/file", "").ok());
  auto bad = make_dirs(t.path + "/a/file/d");
  CHECK(bad.code() == ENOTDIR);
  CHECK(bad.error().message.find("a/file") != std::string::npos);
  CHECK(fsync_dir(t.path + "/a").ok());
  CHECK(parent_dir("/x") == "/");
  CHECK(parent_dir("/a/b") == "/a");
  CHECK(parent_dir("b") == ".");
}

TEST_CASE("cache ids are 64 random lowercase hex digits", "[files]") {
  std::string id = random_cache_id();
  CHECK(id.size() == 64);
  CHECK(id.find_first_not_of("0123456789abcdef") == std::string::npos);
}

TEST_CASE("Fd closes what it owns and hands it over on move", "[files]") {
  TempDir t;
  Fd a(::open(t.path.c_str(), O_RDONLY | O_DIRECTORY));
  REQUIRE(a.valid());
  int raw = a.get();
  Fd b(std::move(a));
  CHECK_FALSE(a.valid());
  CHECK(b.get() == raw);
  CHECK(b.close_checked() == 0);
  CHECK_FALSE(b.valid());
  CHECK(::fcntl(raw, F_GETFD) == -1);
}

TEST_CASE("the POSIX loops return 0 or a positive errno, counts through an out-parameter", "[files]") {
  TempDir t;
  const std::string path = t.path + "/f";
  Fd w(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  REQUIRE(w.valid());
  CHECK(write_all(w.get(), "hello world", 11) == 0);
  CHECK(pwrite_all(w.get(), "W", 1, 6) == 0);
  CHECK(w.close_checked() == 0);
  Fd r(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(r.valid());
  char buf[32] = {};
  size_t got = 99;
  CHECK(pread_all(r.get(), buf, 5, 0, &got) == 0);
  CHECK(got == 5);
  CHECK(std::string(buf, 5) == "hello");
  // Short only at the end of the file; not an error.
  CHECK(pread_all(r.get(), buf, sizeof buf, 6, &got) == 0);
  CHECK(got == 5);
  CHECK(std::string(buf, 5) == "World");
  // Failures: the errno, positive; nothing read.
  CHECK(pread_all(w.get(), buf, 4, 0, &got) == EBADF);  // w holds -1 since close_checked()
  CHECK(got == 0);
  CHECK(write_all(r.get(), "x", 1) == EBADF);  // opened read-only
  CHECK(pwrite_all(r.get(), "x", 1, 0) == EBADF);
}

TEST_CASE("remove_tree removes a tree without following symlinks", "[files]") {
  TempDir t, outside;
  REQUIRE(write_new_file(outside.path + "/keep", "k").ok());
  REQUIRE(make_dirs(t.path + "/tree/a/b").ok());
  REQUIRE(write_new_file(t.path + "/tree/a/b/f", "f").ok());
  REQUIRE(::symlink(outside.path.c_str(), (t.path + "/tree/a/diff").c_str()) == 0);
  CHECK(is_symlink(t.path + "/tree/a/diff"));
  CHECK(read_link(t.path + "/tree/a/diff") == outside.path);
  auto names = list_dir(t.path + "/tree/a");
  REQUIRE(names.ok());
  CHECK(*names == std::vector<std::string>{"b", "diff"});
  REQUIRE(remove_tree(t.path + "/tree").ok());
  CHECK_FALSE(path_exists(t.path + "/tree"));
  CHECK(is_dir(outside.path));
  CHECK(*read_file(outside.path + "/keep") == "k");
  CHECK(remove_tree(t.path + "/tree").ok());  // already gone
}

namespace {

// Bytes this process has read with read(2) and its kin so far (/proc/self/io's rchar).
uint64_t bytes_read_so_far() {
  std::ifstream io("/proc/self/io");
  std::string key;
  uint64_t value = 0;
  while (io >> key >> value)
    if (key == "rchar:") return value;
  FAIL("no rchar in /proc/self/io");
  return 0;
}

}  // namespace

TEST_CASE("every file reader refuses a FIFO at once instead of waiting for a writer", "[files]") {
  TempDir t;
  const std::string fifo = t.path + "/catalog";
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  Fd root(::open(t.path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  REQUIRE(root.valid());
  std::optional<Result<std::string>> whole, beneath;
  CHECK_FALSE(blocked_on_fifo(fifo, [&] { whole = read_file(fifo); }));
  CHECK_FALSE(blocked_on_fifo(fifo, [&] { beneath = read_file_beneath(root.get(), "catalog", t.path); }));
  for (const auto* got : {&whole, &beneath}) {
    REQUIRE(*got);
    CHECK((**got).code() == EINVAL);
    CHECK((**got).error().message == fifo + " is a FIFO, not a regular file; refusing to read it");
  }
}

TEST_CASE("a device or a directory is refused as a file, and a symlink where none may be", "[files]") {
  TempDir t;
  // Never opened: opening a device can act on it.
  auto dev = read_file("/dev/null");
  CHECK(dev.code() == EINVAL);
  CHECK(dev.error().message.find("/dev/null is a character device") == 0);
  CHECK(read_file(t.path).code() == EISDIR);
  REQUIRE(write_new_file(t.path + "/file", "content").ok());
  REQUIRE(::symlink("file", (t.path + "/link").c_str()) == 0);
  CHECK(open_regular(t.path + "/link").ok());
  auto nofollow = open_regular(t.path + "/link", O_NOFOLLOW);
  CHECK(nofollow.code() == EINVAL);
  CHECK(nofollow.error().message.find("is a symlink") != std::string::npos);
  Fd root(::open(t.path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  auto fd = open_regular_beneath(root.get(), "file", t.path, O_NOATIME);
  REQUIRE(fd.ok());
  char buf[16];
  CHECK(::read(fd->get(), buf, sizeof buf) == 7);
  CHECK(open_regular_beneath(root.get(), "link", t.path).code() == ELOOP);
}

TEST_CASE("a file over its limit is refused from its size, before any of it is read", "[files]") {
  TempDir t;
  const std::string big = t.path + "/index";
  {
    Fd fd(::open(big.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
    REQUIRE(fd.valid());
    REQUIRE(::ftruncate(fd.get(), off_t{1} << 30) == 0);  // 1 GiB of holes
  }
  Fd root(::open(t.path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  const uint64_t before = bytes_read_so_far();
  auto whole = read_file(big, 1 << 20);
  auto beneath = read_file_beneath(root.get(), "index", t.path, 1 << 20);
  const uint64_t read = bytes_read_so_far() - before;
  CHECK(read < 4096);  // (the reads of /proc/self/io itself)
  CHECK(whole.code() == EFBIG);
  CHECK(whole.error().message == big + " is 1073741824 bytes, over its limit of 1048576 bytes; refusing to read it");
  CHECK(beneath.code() == EFBIG);
}
