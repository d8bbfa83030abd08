// The indexer: walking a tree without touching the working directory, opening a store's files
// without ever waiting on one, and `extrafs index` never changing what a catalog names.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "common/hash.h"
#include "common/posix_file.h"
#include "format/catalog.h"
#include "store/indexer.h"
#include "test_util.h"

using namespace extrafs;
using extrafs::testing::put_file;
using extrafs::testing::TempDir;

namespace {

const std::string kA(64, 'a'), kB(64, 'b');

// A store of one layer kA (a few files) under `t`/s, indexed once: its path, its index's path,
// and the bytes of the index and the catalog then.
struct IndexedStore {
  std::string s, index, bytes, catalog;
};
IndexedStore indexed_store(const TempDir& t) {
  const std::string s = t.path + "/s";
  put_file(s + "/overlay2/" + kA + "/diff/etc/hello", "hello");
  put_file(s + "/overlay2/" + kA + "/diff/bin/tool", std::string(3 << 20, 't'));
  put_file(s + "/overlay2/" + kA + "/link", "AAAAAAAAAAAAAAAAAAAAAAAAAA\n");
  auto r = store::index_store(s, nullptr);
  REQUIRE(r.ok());
  REQUIRE(r->layers_indexed == 1);
  const std::string index = s + "/extrafs/layers/" + kA + ".index";
  return {s, index, *read_file(index), *read_file(s + "/extrafs/catalog")};
}

struct stat stat_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st;
}

// Sets the access time of `path` (which also moves its ctime) and nothing else.
void touch_atime(const std::string& path) {
  struct timespec times[2] = {{1000000000, 5}, {0, UTIME_OMIT}};
  REQUIRE(::utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW) == 0);
}

// Runs `body` in a child process: its exit status, or -1 if it was still running after
// `seconds` (then killed). What may hang is never run in the test's own process.
int run_bounded(const std::function<int()>& body, int seconds) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) ::_exit(body());
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > end) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
}

}  // namespace

TEST_CASE("re-running index leaves a layer the catalog names, and its index, exactly as they are", "[store]") {
  TempDir t;
  const auto [s, index, bytes, catalog] = indexed_store(t);
  const ino_t ino = stat_of(index).st_ino;

  // Access times change (the index records them), the link file is edited: nothing moves.
  touch_atime(s + "/overlay2/" + kA + "/diff/etc/hello");
  touch_atime(s + "/overlay2/" + kA + "/diff/bin");
  put_file(s + "/overlay2/" + kA + "/link", "CCCCCCCCCCCCCCCCCCCCCCCCCC\n");
  auto r = store::index_store(s, nullptr);
  REQUIRE(r.ok());
  CHECK(r->layers_indexed == 0);
  CHECK(r->layers_present == 1);
  CHECK(r->damaged.empty());
  CHECK(r->skipped.empty());
  CHECK_FALSE(r->catalog_written);
  CHECK(*read_file(index) == bytes);
  CHECK(stat_of(index).st_ino == ino);  // not even replaced by the same bytes
  CHECK(*read_file(s + "/extrafs/catalog") == catalog);
}

TEST_CASE("a lost index of a named layer is written again only with the bytes the catalog names", "[store]") {
  TempDir t;
  const IndexedStore made = indexed_store(t);
  // Named, not bound: lambdas below capture them (clang 14 cannot capture structured bindings).
  const std::string &s = made.s, &index = made.index, &bytes = made.bytes, &catalog = made.catalog;

  // Removed: the unchanged layer indexes to the same bytes, which go back under the name.
  REQUIRE(::unlink(index.c_str()) == 0);
  std::vector<std::string> progress;
  auto r = store::index_store(s, [&](const std::string& l) { progress.push_back(l); });
  REQUIRE(r.ok());
  CHECK(r->layers_indexed == 1);
  CHECK(r->damaged.empty());
  CHECK(*read_file(index) == bytes);
  CHECK(*read_file(s + "/extrafs/catalog") == catalog);
  REQUIRE(progress.size() == 1);
  CHECK(progress[0].find("is missing") != std::string::npos);

  // Damaged, and the layer's files changed since: nothing is written, the layer is reported.
  touch_atime(s + "/overlay2/" + kA + "/diff/etc/hello");
  put_file(index, "not an index");
  r = store::index_store(s, nullptr);
  REQUIRE(r.ok());
  REQUIRE(r->damaged.size() == 1);
  CHECK(r->damaged[0].find("overlay2/" + kA) != std::string::npos);
  CHECK(r->damaged[0].find("does not have the digest the catalog names") != std::string::npos);
  CHECK(r->damaged[0].find("files changed") != std::string::npos);
  CHECK(r->layers_indexed == 0);
  CHECK(*read_file(index) == "not an index");
  CHECK(*read_file(s + "/extrafs/catalog") == catalog);

  // A FIFO in its place is reported too, never opened for reading.
  REQUIRE(::unlink(index.c_str()) == 0);
  REQUIRE(::mkfifo(index.c_str(), 0644) == 0);
  int rc = run_bounded(
      [&] {
        auto again = store::index_store(s, nullptr);
        return again.ok() && again->damaged.size() == 1 &&
                       again->damaged[0].find("is not a regular file") != std::string::npos
                   ? 0
                   : 1;
      },
      30);
  CHECK(rc == 0);
}

TEST_CASE("a new layer may not take the link of a layer the catalog names", "[store]") {
  TempDir t;
  const auto [s, index, bytes, catalog_before] = indexed_store(t);
  put_file(s + "/overlay2/" + kB + "/diff/f", "b");
  put_file(s + "/overlay2/" + kB + "/link", "AAAAAAAAAAAAAAAAAAAAAAAAAA\n");
  auto r = store::index_store(s, nullptr);
  REQUIRE(r.ok());
  REQUIRE(r->skipped.size() == 1);
  CHECK(r->skipped[0].find("overlay2/" + kB) != std::string::npos);
  CHECK(r->skipped[0].find("claimed by layer " + kA) != std::string::npos);
  auto c = format::Catalog::parse(*read_file(s + "/extrafs/catalog"));
  REQUIRE(c.ok());
  REQUIRE(c->layers.size() == 1);
  CHECK(c->layers[0] == format::Catalog::parse(catalog_before)->layers[0]);
}

TEST_CASE("an index no catalog names is taken if whole and written again if not", "[store]") {
  TempDir t;
  const auto [s, index, bytes, catalog] = indexed_store(t);
  // As an index stopped before its catalog leaves it: the index is there, no catalog names it.
  REQUIRE(::unlink((s + "/extrafs/catalog").c_str()) == 0);
  auto r = store::index_store(s, nullptr);
  REQUIRE(r.ok());
  CHECK(r->layers_present == 1);
  CHECK(r->layers_indexed == 0);
  auto c = format::Catalog::parse(*read_file(s + "/extrafs/catalog"));
  REQUIRE(c.ok());
  REQUIRE(c->layers.size() == 1);
  CHECK(c->layers[0].index_digest == xxh3_128(bytes.data(), bytes.size()));

  REQUIRE(::unlink((s + "/extrafs/catalog").c_str()) == 0);
  put_file(index, bytes.substr(0, bytes.size() / 2));
  r = store::index_store(s, nullptr);
  REQUIRE(r.ok());
  CHECK(r->layers_indexed == 1);
  CHECK(*read_file(index) == bytes);
}

TEST_CASE("a walk never changes the working directory", "[store]") {
  TempDir t;
  for (int d = 0; d < 200; ++d) put_file(t.path + "/tree/d" + std::to_string(d) + "/sub/f", "x");
  char before[4096];
  REQUIRE(::getcwd(before, sizeof before) != nullptr);
  // Another thread of the process looks at the working directory all through the walk.
  std::atomic<bool> done{false}, moved{false};
  std::thread watcher([&] {
    char now[4096];
    while (!done.load())
      if (!::getcwd(now, sizeof now) || std::string(now) != before) moved.store(true);
  });
  auto bytes = store::index_directory(t.path + "/tree", "overlay2/x/diff");
  done.store(true);
  watcher.join();
  REQUIRE(bytes.ok());
  CHECK_FALSE(moved.load());
  auto idx = format::LayerIndex::parse(*bytes);
  REQUIRE(idx.ok());
  CHECK((*idx)->entry_count() == 1 + 200 * 3);
}

TEST_CASE("a tree deeper than PATH_MAX is walked and read", "[store]") {
  TempDir t;
  put_file(t.path + "/tree/top", "top");
  // 24 levels of 200-character names: paths of about 4,800 bytes, beyond PATH_MAX.
  Fd dir(::open((t.path + "/tree").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  REQUIRE(dir.valid());
  const std::string name(200, 'n');
  for (int i = 0; i < 24; ++i) {
    REQUIRE(::mkdirat(dir.get(), name.c_str(), 0755) == 0);
    dir = Fd(::openat(dir.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    REQUIRE(dir.valid());
  }
  Fd f(::openat(dir.get(), "bottom", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  REQUIRE(f.valid());
  REQUIRE(write_all(f.get(), "deep", 4) == 0);
  f.reset();
  // Chunks go to one object, as publish's blob does (an index bounds the paths of its objects,
  // which `extrafs index` makes from the paths of the tree).
  struct OneObject : store::ChunkSink {
    uint64_t end = 0;
    Status put(format::IndexBuilder& b, const std::string&, uint64_t, std::string_view raw,
               format::ChunkRecord* rec) override {
      rec->object = b.add_object("blob");
      rec->offset = end;
      rec->stored_len = static_cast<uint32_t>(raw.size());
      rec->flags = 0;
      end += raw.size();
      return ok_status();
    }
  } sink;
  auto bytes = store::index_directory(t.path + "/tree", sink, store::WalkOptions{});
  REQUIRE(remove_tree(t.path + "/tree").ok());  // TempDir's remove_all cannot go that deep
  REQUIRE(bytes.ok());
  auto idx = format::LayerIndex::parse(*bytes);
  REQUIRE(idx.ok());
  CHECK((*idx)->entry_count() == 1 + 1 + 24 + 1);
  uint32_t e = 0;
  for (int i = 0; i < 24; ++i) {
    auto next = (*idx)->lookup(e, name);
    REQUIRE(next);
    e = *next;
  }
  auto bottom = (*idx)->lookup(e, "bottom");
  REQUIRE(bottom);
  REQUIRE((*idx)->chunks(*bottom).size() == 1);
  CHECK((*idx)->chunks(*bottom)[0].raw_len == 4);
}

TEST_CASE("a file swapped for a FIFO during the walk fails the walk at once", "[store]") {
  TempDir t;
  put_file(t.path + "/tree/a", "first");
  put_file(t.path + "/tree/b", "second");
  int rc = run_bounded(
      [&] {
        store::PlainFileSink sink("overlay2/x/diff");
        store::WalkOptions opts;
        // After the first file's content, the second becomes a FIFO that no one writes to.
        opts.on_file = [&](uint64_t) {
          if (::unlink((t.path + "/tree/b").c_str()) == 0) (void)::mkfifo((t.path + "/tree/b").c_str(), 0644);
        };
        auto r = store::index_directory(t.path + "/tree", sink, opts);
        return !r.ok() && r.error().message.find("b was replaced while being indexed") != std::string::npos ? 0 : 1;
      },
      30);
  CHECK(rc == 0);
}

TEST_CASE("xattrs of every kind of entry are read without opening it", "[store]") {
  TempDir t;
  put_file(t.path + "/tree/f", "x");
  REQUIRE(::symlink("/nonexistent", (t.path + "/tree/l").c_str()) == 0);
  REQUIRE(::mkfifo((t.path + "/tree/p").c_str(), 0644) == 0);
  REQUIRE(::mknod((t.path + "/tree/w").c_str(), S_IFCHR | 0644, 0) == 0);  // a whiteout
  for (const char* n : {"f", "l", "p", "w"})
    REQUIRE(::lsetxattr((t.path + "/tree/" + n).c_str(), "trusted.t", n, 1, 0) == 0);
  int rc = run_bounded(
      [&] {
        auto bytes = store::index_directory(t.path + "/tree", "overlay2/x/diff");
        if (!bytes.ok()) return 1;
        auto idx = format::LayerIndex::parse(*bytes);
        if (!idx.ok()) return 2;
        for (const char* n : {"f", "l", "p", "w"}) {
          auto e = (*idx)->lookup(0, n);
          if (!e) return 3;
          auto x = (*idx)->xattrs(*e);
          if (x.size() != 1 || (*idx)->xattr_name(x[0]) != "trusted.t" || (*idx)->xattr_value(x[0]) != n) return 4;
        }
        return 0;
      },
      30);
  CHECK(rc == 0);
}
