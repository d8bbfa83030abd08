// Helpers for unit tests: small layer indexes and stores built in memory, captured log lines.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "backend/testing/fault_backend.h"
#include "backend/testing/memory_backend.h"
#include "common/hash.h"
#include "common/posix_file.h"
#include "format/catalog.h"
#include "format/layer_index.h"

namespace extrafs::testing {

inline struct stat make_stat(uint32_t mode, uint64_t size = 0, uint32_t nlink = 1) {
  struct stat st {};
  st.st_mode = mode;
  st.st_size = static_cast<off_t>(size);
  st.st_nlink = nlink;
  st.st_uid = 1000;
  st.st_gid = 100;
  st.st_mtim = {1700000000, 123456789};
  st.st_ctim = {1700000001, 1};
  st.st_atim = {1700000002, 2};
  st.st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
  return st;
}

// Adds a regular file whose content lives in object `object_path` of `backend`, chunked.
inline uint32_t add_file(format::IndexBuilder& b, backend::MemoryBackend* backend, uint32_t parent,
                         const std::string& name, const std::string& content, const std::string& object_path) {
  format::BuildEntry e;
  e.name = name;
  e.parent = parent;
  e.st = make_stat(S_IFREG | 0644, content.size());
  uint32_t obj = b.add_object(object_path);
  for (uint64_t off = 0; off < content.size(); off += b.chunk_size()) {
    format::ChunkRecord c{};
    c.object = obj;
    c.offset = off;
    c.raw_len = static_cast<uint32_t>(std::min<uint64_t>(b.chunk_size(), content.size() - off));
    c.stored_len = c.raw_len;
    Digest128 d = xxh3_128(content.data() + off, c.raw_len);
    std::memcpy(c.digest, d.bytes.data(), 16);
    e.chunks.push_back(c);
  }
  if (backend) backend->put(object_path, content);
  return b.add(std::move(e));
}

inline uint32_t add_dir(format::IndexBuilder& b, uint32_t parent, const std::string& name, uint32_t mode = 0755) {
  format::BuildEntry e;
  e.name = name;
  e.parent = parent;
  e.st = make_stat(S_IFDIR | mode, 4096, 2);
  return b.add(std::move(e));
}

inline uint32_t add_root(format::IndexBuilder& b) {
  format::BuildEntry e;
  e.st = make_stat(S_IFDIR | 0755, 4096, 2);
  return b.add(std::move(e));
}

inline std::string pseudo_random(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s[i] = static_cast<char>(x);
  }
  return s;
}

// Writes `data` to `path` (atomically), making its parent directories first.
inline void put_file(const std::string& path, const std::string& data) {
  REQUIRE(make_dirs(parent_dir(path)).ok());
  REQUIRE(write_file_atomic(path, data).ok());
}

// A private directory under $TMPDIR, removed with everything in it at the end of its scope.
struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "extrafs-test.XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// Runs `fn`, which may open the FIFO `fifo`. Returns whether it blocked there: if `fn` has not
// returned after 3 s, the FIFO is opened for writing (again and again until `fn` returns), which
// releases an open(2) waiting on it, so that a test of code that blocks fails instead of hanging.
inline bool blocked_on_fifo(const std::string& fifo, const std::function<void()>& fn) {
  std::atomic<bool> done{false}, unblocked{false};
  std::thread guard([&] {
    for (int i = 0; i < 300 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    while (!done) {
      int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) {
        unblocked = true;
        ::close(fd);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
  fn();
  done = true;
  guard.join();
  return unblocked;
}

// Sends the default logger's output to a ring buffer for the life of the object.
struct CapturedLog {
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(64);
  std::shared_ptr<spdlog::logger> saved = spdlog::default_logger();
  CapturedLog() {
    auto l = std::make_shared<spdlog::logger>("captured", sink);
    l->set_pattern("%l %v");
    spdlog::set_default_logger(l);
  }
  ~CapturedLog() { spdlog::set_default_logger(saved); }
  CapturedLog(const CapturedLog&) = delete;
  CapturedLog& operator=(const CapturedLog&) = delete;
  std::vector<std::string> lines_with(const std::string& what) {
    std::vector<std::string> out;
    for (auto& l : sink->last_formatted())
      if (l.find(what) != std::string::npos) out.push_back(l);
    return out;
  }
};

// A clock the test moves by hand (FsCoreOptions::now, FetcherOptions::now): a back-off or a
// short memory passes without a sleep. Copies share the time; any thread may read it.
struct ManualClock {
  std::shared_ptr<std::atomic<int64_t>> ms = std::make_shared<std::atomic<int64_t>>(0);
  std::function<std::chrono::steady_clock::time_point()> clock() const {
    return [ms = ms] { return std::chrono::steady_clock::time_point(std::chrono::milliseconds(ms->load())); };
  }
  void advance(std::chrono::milliseconds d) { *ms += d.count(); }
};

}  // namespace extrafs::testing
