// The indexer: walking a tree without touching the working directory, opening a store's files
// without ever waiting on one.
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
#include "store/indexer.h"
#include "test_util.h"

using namespace extrafs;
using extrafs::testing::TempDir;

namespace {

void put_file(const std::string& path, const std::string& data) {
  REQUIRE(make_dirs(parent_dir(path)).ok());
  REQUIRE(write_file_atomic(path, data).ok());
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
  auto idx = fs::LayerIndex::parse(*bytes);
  REQUIRE(idx.ok());
  CHECK((*idx)->entry_count() == 1 + 200 * 3);
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
        auto idx = fs::LayerIndex::parse(*bytes);
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
