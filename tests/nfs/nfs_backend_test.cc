// Tests of NfsBackend against a real nfs-ganesha started by run_nfs_backend_test.sh, which passes:
//   EXTRAFS_NFS4_URL, EXTRAFS_NFS3_URL   URLs of the export (NFSv4, NFSv3 with explicit ports)
//   EXTRAFS_NFS_EXPORT_DIR               the exported directory (to compare bytes with)
//   EXTRAFS_NFS_PORT                     the NFS port
//   EXTRAFS_NFS_CLOSED_PORT              a loopback port nothing listens on
//   EXTRAFS_GANESHA_SH, EXTRAFS_GANESHA_STATE   to stop/kill/pause/start the server
// A missing variable is a failure, not a skip.
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include "backend/nfs_backend.h"

namespace {

using extrafs::backend::Backend;
using extrafs::backend::make_nfs_backend;
using extrafs::backend::parse_nfs_url;
using Clock = std::chrono::steady_clock;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') {
    FAIL("environment variable " << name << " is not set (run via run_nfs_backend_test.sh)");
  }
  return v;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::unique_ptr<Backend> connect(const std::string& url, int timeout_ms = 10000) {
  auto r = make_nfs_backend(url, timeout_ms);
  INFO("url " << url << ": " << (r.ok() ? std::string("ok") : r.error().message));
  REQUIRE(r.ok());
  return std::move(r).value();
}

std::string read_range(Backend& b, const std::string& path, uint64_t off, size_t len) {
  std::string out(len, '\0');
  auto r = b.read(path, off, std::span<std::byte>(reinterpret_cast<std::byte*>(out.data()), len));
  INFO("read " << path << " @" << off << "+" << len << ": " << (r.ok() ? "ok" : r.error().message));
  REQUIRE(r.ok());
  out.resize(*r);
  return out;
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void ganesha(const std::string& verb) {
  std::string cmd = fmt::format("'{}' {} '{}'", env("EXTRAFS_GANESHA_SH"), verb, env("EXTRAFS_GANESHA_STATE"));
  if (verb == "start") {
    cmd += fmt::format(" '{}' {}", env("EXTRAFS_NFS_EXPORT_DIR"), env("EXTRAFS_NFS_PORT"));
  }
  cmd += " >/dev/null";
  INFO(cmd);
  REQUIRE(std::system(cmd.c_str()) == 0);
}

std::vector<std::string> both_urls() { return {env("EXTRAFS_NFS4_URL"), env("EXTRAFS_NFS3_URL")}; }

}  // namespace

TEST_CASE("nfs URLs are validated with a clear message", "[nfs][url]") {
  struct Bad {
    const char* url;
    const char* needle;
  };
  const Bad bad[] = {
      {"nfs:///export", "no host"},
      {"nfs://", "no host"},
      {"nfs://:2049/export", "no host"},
      {"nfs://127.0.0.1:99999/x", "port '99999'"},
      {"nfs://127.0.0.1:0/x", "port '0'"},
      {"nfs://127.0.0.1:abc/x", "port 'abc'"},
      {"nfs://127.0.0.1/x?foo=1", "unknown nfs URL option 'foo'"},
      {"nfs://127.0.0.1/x?version=5", "version '5'"},
      {"nfs://127.0.0.1/x?version=", "'version' has no value"},
      {"nfs://127.0.0.1/x?nfsport=70000", "nfsport '70000'"},
      {"nfs://127.0.0.1/x?mountport=-1", "mountport '-1'"},
      {"nfs://127.0.0.1/x?version=3&version=4", "given twice"},
      {"nfs://127.0.0.1:2049/x?nfsport=2050", "disagree"},
      {"nfs://127.0.0.1", "no export path"},
      {"nfs://127.0.0.1/", "no export path"},
      {"nfs://127.0.0.1/a/../b", "'..'"},
      {"nfs://bad_host!/x", "bad host"},
      {"nfs://user@host/x", "user name"},
      {"http://127.0.0.1/x", "scheme 'http'"},
      {"/srv/store", "not an nfs:// URL"},
  };
  for (const auto& b : bad) {
    auto t0 = Clock::now();
    auto r = make_nfs_backend(b.url, 5000);
    INFO("url " << b.url << " -> " << (r.ok() ? std::string("ok") : r.error().message));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == EINVAL);
    CHECK(r.error().message.find(b.needle) != std::string::npos);
    CHECK(r.error().message.find('\n') == std::string::npos);
    CHECK(seconds_since(t0) < 0.5);  // no network involved
  }

  auto u = parse_nfs_url("nfs://127.0.0.1:2050//export//sub/?version=3&mountport=2051");
  REQUIRE(u.ok());
  CHECK(u->host == "127.0.0.1");
  CHECK(u->path == "/export/sub");
  CHECK(u->version == 3);
  CHECK(u->nfsport == 2050);
  CHECK(u->mountport == 2051);
  auto d = parse_nfs_url("nfs://server.example/export");
  REQUIRE(d.ok());
  CHECK(d->version == 4);
  CHECK(d->nfsport == 0);
  auto v6 = parse_nfs_url("nfs://[::1]:2049/export");
  REQUIRE(v6.ok());
  CHECK(v6->host == "::1");
  CHECK(v6->nfsport == 2049);
}

TEST_CASE("whole files read byte-identical over NFSv3 and NFSv4", "[nfs][read]") {
  const std::string dir = env("EXTRAFS_NFS_EXPORT_DIR");
  const std::string big = slurp(dir + "/big.bin");
  REQUIRE(big.size() > 3u * 1024 * 1024);
  constexpr size_t kMiB = 1024 * 1024;
  for (const auto& url : both_urls()) {
    SECTION(url) {
      auto b = connect(url);
      CHECK(b->describe() == url);
      // One call for the whole file (buffer larger than the file: short count at EOF).
      CHECK(read_range(*b, "big.bin", 0, big.size() + 1000) == big);
      // A 3 MiB single read (three capped READs) and reads crossing the 1 MiB cap.
      CHECK(read_range(*b, "big.bin", 0, 3 * kMiB) == big.substr(0, 3 * kMiB));
      CHECK(read_range(*b, "big.bin", kMiB - 100, 200) == big.substr(kMiB - 100, 200));
      CHECK(read_range(*b, "big.bin", 123, 2 * kMiB + 7) == big.substr(123, 2 * kMiB + 7));
      CHECK(read_range(*b, "/big.bin", kMiB, kMiB) == big.substr(kMiB, kMiB));
      // Sequential 64 KiB chunks, as the cache layer reads.
      std::string seq;
      for (uint64_t off = 0; off < big.size(); off += 65536) seq += read_range(*b, "big.bin", off, 65536);
      CHECK(seq == big);
      // Tail, past EOF, empty file, zero-length read, small and nested files.
      CHECK(read_range(*b, "big.bin", big.size() - 10, 100) == big.substr(big.size() - 10));
      CHECK(read_range(*b, "big.bin", big.size(), 100).empty());
      CHECK(read_range(*b, "big.bin", big.size() + 5 * kMiB, 100).empty());
      CHECK(read_range(*b, "empty", 0, 4096).empty());
      CHECK(read_range(*b, "small.txt", 0, 0).empty());
      CHECK(read_range(*b, "small.txt", 0, 100) == "hello nfs\n");
      CHECK(read_range(*b, "nested/deeper/file.txt", 0, 100) == "deep\n");
      CHECK(read_range(*b, "./nested//deeper/file.txt", 1, 100) == "eep\n");
    }
  }
}

TEST_CASE("16 threads reading random ranges concurrently", "[nfs][threads]") {
  const std::string big = slurp(env("EXTRAFS_NFS_EXPORT_DIR") + "/big.bin");
  for (const auto& url : both_urls()) {
    SECTION(url) {
      auto b = connect(url);
      std::atomic<int> bad{0}, errors{0}, done{0};
      std::vector<std::thread> threads;
      for (int t = 0; t < 16; ++t) {
        threads.emplace_back([&, t] {
          std::mt19937_64 rng(1234 + t);
          std::string buf;
          for (int i = 0; i < 40; ++i) {
            uint64_t off = rng() % big.size();
            size_t len = 1 + rng() % (i % 4 == 0 ? 2 * 1024 * 1024 : 128 * 1024);
            buf.assign(len, '\0');
            auto r = b->read(i % 7 == 0 ? "small.txt" : "big.bin", i % 7 == 0 ? 0 : off,
                             std::span<std::byte>(reinterpret_cast<std::byte*>(buf.data()), len));
            if (!r.ok()) {
              errors++;
              continue;
            }
            buf.resize(*r);
            std::string want = i % 7 == 0 ? std::string("hello nfs\n").substr(0, len) : big.substr(off, len);
            if (buf != want) bad++;
            done++;
          }
        });
      }
      for (auto& t : threads) t.join();
      CHECK(errors == 0);
      CHECK(bad == 0);
      CHECK(done == 16 * 40);
    }
  }
}

TEST_CASE("missing objects give ENOENT at once", "[nfs][enoent]") {
  for (const auto& url : both_urls()) {
    SECTION(url) {
      auto b = connect(url, 20000);
      std::string buf(100, '\0');
      auto t0 = Clock::now();
      auto r = b->read("no/such/file", 0, std::span<std::byte>(reinterpret_cast<std::byte*>(buf.data()), 100));
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().code == ENOENT);
      auto r2 = b->read("missing.bin", 0, std::span<std::byte>(reinterpret_cast<std::byte*>(buf.data()), 100));
      REQUIRE_FALSE(r2.ok());
      CHECK(r2.error().code == ENOENT);
      auto s = b->stat("nope");
      REQUIRE_FALSE(s.ok());
      CHECK(s.error().code == ENOENT);
      auto l = b->list("nope");
      REQUIRE_FALSE(l.ok());
      CHECK(l.error().code == ENOENT);
      CHECK(seconds_since(t0) < 1.0);  // not retried until the 20 s timeout
      // The backend still works afterwards, also for files not opened before (NFSv4: a failed
      // OPEN must not poison the open-owner of the context).
      CHECK(read_range(*b, "small.txt", 0, 5) == "hello");
      for (int i = 0; i < 3; ++i) {
        auto m = b->read("missing-" + std::to_string(i), 0,
                         std::span<std::byte>(reinterpret_cast<std::byte*>(buf.data()), 100));
        CHECK(m.code() == ENOENT);
        CHECK(read_range(*b, "many/entry-with-a-longish-name-" + std::to_string(i + 1), 0, 100) ==
              std::to_string(i + 1) + "\n");
      }
      CHECK(read_range(*b, "nested/deeper/file.txt", 0, 100) == "deep\n");
    }
  }
}

TEST_CASE("stat and list", "[nfs][stat]") {
  const std::string dir = env("EXTRAFS_NFS_EXPORT_DIR");
  struct stat local {};
  REQUIRE(::stat((dir + "/big.bin").c_str(), &local) == 0);
  const int64_t mtime_ns = static_cast<int64_t>(local.st_mtim.tv_sec) * 1000000000 + local.st_mtim.tv_nsec;
  for (const auto& url : both_urls()) {
    SECTION(url) {
      auto b = connect(url);
      auto s = b->stat("big.bin");
      REQUIRE(s.ok());
      CHECK(s->size == static_cast<uint64_t>(local.st_size));
      CHECK_FALSE(s->is_dir);
      CHECK(s->mtime_ns == mtime_ns);
      auto e = b->stat("empty");
      REQUIRE(e.ok());
      CHECK(e->size == 0);
      auto n = b->stat("nested");
      REQUIRE(n.ok());
      CHECK(n->is_dir);
      auto root = b->stat("");
      REQUIRE(root.ok());
      CHECK(root->is_dir);

      auto l = b->list("");
      REQUIRE(l.ok());
      std::set<std::string> names(l->begin(), l->end());
      CHECK(names == std::set<std::string>{"big.bin", "empty", "small.txt", "nested", "many"});
      CHECK(names.size() == l->size());
      auto nl = b->list("nested");
      REQUIRE(nl.ok());
      CHECK(*nl == std::vector<std::string>{"deeper"});
      auto many = b->list("many");
      REQUIRE(many.ok());
      std::set<std::string> m(many->begin(), many->end());
      CHECK(m.size() == 600);
      CHECK(many->size() == 600);
      CHECK(m.count("entry-with-a-longish-name-1") == 1);
      CHECK(m.count("entry-with-a-longish-name-600") == 1);
      auto notdir = b->list("small.txt");
      CHECK_FALSE(notdir.ok());
      auto bad = b->stat("../etc/passwd");
      REQUIRE_FALSE(bad.ok());
      CHECK(bad.error().code == EINVAL);
    }
  }
}

TEST_CASE("a subdirectory of the export is the store root", "[nfs][subdir]") {
  for (const auto& url : both_urls()) {
    SECTION(url) {
      std::string sub = url;
      auto q = sub.find('?');
      sub.insert(q == std::string::npos ? sub.size() : q, "/nested");
      auto b = connect(sub);
      CHECK(read_range(*b, "deeper/file.txt", 0, 100) == "deep\n");
      auto l = b->list("");
      REQUIRE(l.ok());
      CHECK(*l == std::vector<std::string>{"deeper"});
      std::string missing = url;
      missing.insert(q == std::string::npos ? missing.size() : q, "/no-such-dir");
      auto r = make_nfs_backend(missing, 5000);
      REQUIRE_FALSE(r.ok());
      INFO(r.error().message);
      CHECK(r.error().code == ENOENT);
      CHECK(r.error().message.find("no-such-dir") != std::string::npos);
      std::string file = url;
      file.insert(q == std::string::npos ? file.size() : q, "/small.txt");
      auto f = make_nfs_backend(file, 5000);
      REQUIRE_FALSE(f.ok());
      INFO(f.error().message);
      CHECK(f.error().code == ENOTDIR);
    }
  }
}

TEST_CASE("an unreachable server fails within the timeout", "[nfs][unreachable]") {
  const std::string closed = env("EXTRAFS_NFS_CLOSED_PORT");
  const std::string urls[] = {
      "nfs://127.0.0.1:" + closed + "/export",
      "nfs://127.0.0.1/export?version=3&nfsport=" + closed + "&mountport=" + closed,
  };
  for (const auto& url : urls) {
    auto t0 = Clock::now();
    auto r = make_nfs_backend(url, 3000);
    double took = seconds_since(t0);
    INFO(url << " -> " << (r.ok() ? std::string("ok") : r.error().message) << " in " << took << " s");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == ECONNREFUSED);
    CHECK(r.error().message.find("127.0.0.1") != std::string::npos);
    CHECK(r.error().message.find('\n') == std::string::npos);
    CHECK(took < 3.5);
  }
  // A mount of an export the server does not have: an error, not a hang.
  std::string missing = env("EXTRAFS_NFS4_URL") + "-does-not-exist";
  auto t0 = Clock::now();
  auto r = make_nfs_backend(missing, 3000);
  REQUIRE_FALSE(r.ok());
  INFO(r.error().message);
  CHECK(seconds_since(t0) < 3.5);
}

TEST_CASE("server stopped mid-way: bounded failure, then recovery by itself", "[nfs][restart]") {
  const std::string big = slurp(env("EXTRAFS_NFS_EXPORT_DIR") + "/big.bin");
  auto check_down = [&](Backend& b, const char* how) {
    auto t0 = Clock::now();
    std::string buf(256 * 1024, '\0');
    auto r = b.read("big.bin", 4096, std::span<std::byte>(reinterpret_cast<std::byte*>(buf.data()), buf.size()));
    double took = seconds_since(t0);
    INFO(how << ": " << (r.ok() ? std::string("ok") : r.error().message) << " after " << took << " s");
    REQUIRE_FALSE(r.ok());
    CHECK((r.error().code == ETIMEDOUT || r.error().code == EIO));
    CHECK(took >= 1.0);
    CHECK(took < 4.0);
    // stat and list are bounded too
    t0 = Clock::now();
    CHECK_FALSE(b.stat("big.bin").ok());
    CHECK(seconds_since(t0) < 4.0);
  };
  for (const auto& url : both_urls()) {
    SECTION(url + " killed") {
      auto b = connect(url, 2000);
      CHECK(read_range(*b, "big.bin", 0, 100000) == big.substr(0, 100000));
      ganesha("kill");
      check_down(*b, "killed");
      ganesha("start");
      CHECK(read_range(*b, "big.bin", 1 << 20, 1 << 20) == big.substr(1 << 20, 1 << 20));
    }
    SECTION(url + " hung (SIGSTOP)") {
      auto b = connect(url, 2000);
      CHECK(read_range(*b, "big.bin", 0, 100000) == big.substr(0, 100000));
      ganesha("pause");
      check_down(*b, "hung");
      ganesha("resume");
      CHECK(read_range(*b, "big.bin", 2 << 20, 1 << 20) == big.substr(2 << 20, 1 << 20));
    }
  }
  SECTION("stopped cleanly while 8 threads read, then restarted") {
    auto b = connect(env("EXTRAFS_NFS4_URL"), 2000);
    std::atomic<bool> stop{false};
    std::atomic<int> ok{0}, failed{0}, wrong{0};
    std::atomic<double> max_fail_s{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 rng(99 + t);
        std::string buf;
        while (!stop) {
          uint64_t off = rng() % big.size();
          size_t len = 1 + rng() % (1 << 20);
          buf.assign(len, '\0');
          auto t0 = Clock::now();
          auto r = b->read("big.bin", off, std::span<std::byte>(reinterpret_cast<std::byte*>(buf.data()), len));
          if (r.ok()) {
            buf.resize(*r);
            if (buf != big.substr(off, len)) wrong++;
            ok++;
          } else {
            double s = seconds_since(t0);
            if (s > max_fail_s) max_fail_s = s;
            failed++;
          }
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ganesha("stop");
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    ganesha("start");
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    int ok_before_end = ok;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    stop = true;
    for (auto& t : threads) t.join();
    INFO("ok " << ok << " failed " << failed << " max failing read " << max_fail_s << " s");
    CHECK(wrong == 0);
    CHECK(failed > 0);
    CHECK(max_fail_s < 4.0);
    CHECK(ok > ok_before_end);  // reads succeed again after the restart
    CHECK(read_range(*b, "small.txt", 0, 100) == "hello nfs\n");
  }
}

TEST_CASE("more files than the handle cache holds", "[nfs][handles]") {
  for (const auto& url : both_urls()) {
    SECTION(url) {
      auto b = connect(url);
      for (int round = 0; round < 2; ++round) {
        for (int i = 1; i <= 600; ++i) {
          std::string name = "many/entry-with-a-longish-name-" + std::to_string(i);
          REQUIRE(read_range(*b, name, 0, 100) == std::to_string(i) + "\n");
        }
      }
      CHECK(read_range(*b, "small.txt", 0, 100) == "hello nfs\n");
    }
  }
}

TEST_CASE("an object replaced on the server is seen after a stat", "[nfs][replace]") {
  const std::string dir = env("EXTRAFS_NFS_EXPORT_DIR");
  auto put = [&](const std::string& content) {
    {
      std::ofstream out(dir + "/replace.tmp", std::ios::binary | std::ios::trunc);
      out << content;
    }
    REQUIRE(std::rename((dir + "/replace.tmp").c_str(), (dir + "/replace.txt").c_str()) == 0);
  };
  for (const auto& url : both_urls()) {
    SECTION(url) {
      put("first version");
      auto b = connect(url);
      CHECK(read_range(*b, "replace.txt", 0, 100) == "first version");
      put("second, longer version");
      // As Backend::read_all does: stat, then read the whole object.
      auto s = b->stat("replace.txt");
      REQUIRE(s.ok());
      CHECK(s->size == std::string("second, longer version").size());
      CHECK(read_range(*b, "replace.txt", 0, s->size) == "second, longer version");
      CHECK(read_range(*b, "small.txt", 0, 100) == "hello nfs\n");
      std::remove((dir + "/replace.txt").c_str());
    }
  }
}

TEST_CASE("a FIFO or a device on the server is refused from its attributes, never opened", "[nfs][special]") {
  const std::string dir = env("EXTRAFS_NFS_EXPORT_DIR");
  REQUIRE(::mkfifo((dir + "/fifo").c_str(), 0644) == 0);
  REQUIRE(::mknod((dir + "/device").c_str(), S_IFCHR | 0644, makedev(1, 3)) == 0);
  for (const auto& url : both_urls()) {
    SECTION(url) {
      auto b = connect(url, 10000);
      auto s = b->stat("fifo");
      REQUIRE(s.ok());
      CHECK(s->special == S_IFIFO);
      auto d = b->stat("device");
      REQUIRE(d.ok());
      CHECK(d->special == S_IFCHR);
      std::string buf(100, '\0');
      for (const char* name : {"fifo", "device"}) {
        auto t0 = Clock::now();
        auto r = b->read(name, 0, std::span<std::byte>(reinterpret_cast<std::byte*>(buf.data()), buf.size()));
        INFO(name << ": " << (r.ok() ? std::string("read ") + std::to_string(*r) : r.error().message));
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == EINVAL);
        CHECK(r.error().message.find("not a regular file") != std::string::npos);
        CHECK(seconds_since(t0) < 1.0);  // refused, not retried until the timeout
      }
      CHECK(b->read_all("fifo", 1 << 20).code() == EINVAL);
      // The context is still good (NFSv4: nothing was OPENed, no open-owner state disturbed).
      CHECK(read_range(*b, "small.txt", 0, 100) == "hello nfs\n");
    }
  }
  std::remove((dir + "/fifo").c_str());
  std::remove((dir + "/device").c_str());
}
