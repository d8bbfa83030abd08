#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "common/posix_file.h"
#include "test_util.h"

using namespace extrafs;
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

TEST_CASE("link ids use docker's alphabet and length", "[files]") {
  std::set<std::string> seen;
  std::set<char> chars;
  for (int i = 0; i < 200; ++i) {
    std::string l = random_link_id();
    CHECK(l.size() == 26);
    CHECK(l.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") == std::string::npos);
    chars.insert(l.begin(), l.end());
    seen.insert(l);
  }
  CHECK(seen.size() == 200);
  CHECK(chars.size() == 32);  // every character of the alphabet turns up (5200 draws)
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
