#include <catch2/catch.hpp>

#include <lz4.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <thread>

#include "cache/chunk_fetcher.h"
#include "test_util.h"

using namespace extrafs;
using namespace extrafs::testing;

namespace {
cache::ChunkRef ref_for(std::string_view object, const std::string& content, uint64_t off, uint32_t len) {
  cache::ChunkRef r;
  r.object = object;
  r.offset = off;
  r.raw_len = r.stored_len = len;
  r.digest = xxh3_128(content.data() + off, len);
  return r;
}
// A disk cache on a full disk: every write fails, nothing is ever found.
class FullDiskCache : public cache::BlockCache {
 public:
  Result<std::vector<std::byte>> get(const Digest128&) override { return make_error(ENOENT, "absent"); }
  Status put(const Digest128& d, std::span<const std::byte>) override {
    return make_error(ENOSPC, "cache /full: cannot write chunk " + d.hex() + ": No space left on device");
  }
  bool contains(const Digest128&) override { return false; }
  Status put_meta(const std::string& name, std::span<const std::byte>) override {
    return make_error(ENOSPC, "cache /full: cannot write " + name + ": No space left on device");
  }
  Result<std::vector<std::byte>> get_meta(const std::string&) override { return make_error(ENOENT, "absent"); }
  Result<uint64_t> verify_all() override { return uint64_t{0}; }
  Status shrink_to(uint64_t) override { return ok_status(); }
  cache::BlockCacheStats stats() override { return {}; }
};

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
  std::vector<std::string> lines_with(const std::string& what) {
    std::vector<std::string> out;
    for (auto& l : sink->last_formatted())
      if (l.find(what) != std::string::npos) out.push_back(l);
    return out;
  }
};

}  // namespace

TEST_CASE("failed disk-cache writes are counted and logged now and then; reads still succeed", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(16 * 4096, 9);
  mem.put("obj", data);
  FullDiskCache full;
  cache::FetcherOptions o;
  o.disk = &full;
  o.write_error_log_interval = std::chrono::milliseconds(300);
  cache::ChunkFetcher f(mem, o);
  CapturedLog log;
  for (uint32_t i = 0; i < 5; ++i) {
    auto got = f.get(ref_for("obj", data, i * 4096, 4096));
    REQUIRE(got.ok());
    CHECK(std::memcmp((*got)->data(), data.data() + i * 4096, 4096) == 0);
  }
  CHECK(f.stats().cache_write_errors == 5);
  auto lines = log.lines_with("cannot write to the cache");
  REQUIRE(lines.size() == 1);  // the first failure, then quiet
  CHECK(lines[0].rfind("warning", 0) == 0);
  CHECK(lines[0].find("No space left on device") != std::string::npos);

  std::this_thread::sleep_for(std::chrono::milliseconds(350));
  REQUIRE(f.get(ref_for("obj", data, 5 * 4096, 4096)).ok());
  REQUIRE(f.read_meta("obj", "meta-obj", [](const std::string&) { return ok_status(); }).ok());
  CHECK(f.stats().cache_write_errors == 7);  // a metadata copy that cannot be kept counts too
  lines = log.lines_with("cannot write to the cache");
  REQUIRE(lines.size() == 2);  // one more once the interval has passed
  CHECK(lines[1].find("5 failures since the last report, 6 in all") != std::string::npos);
}

TEST_CASE("a chunk is fetched once and then served from memory", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(10000, 3);
  mem.put("obj", data);
  cache::ChunkFetcher f(mem, {});
  auto ref = ref_for("obj", data, 4096, 4096);
  for (int i = 0; i < 3; ++i) {
    auto got = f.get(ref);
    REQUIRE(got.ok());
    CHECK(std::memcmp((*got)->data(), data.data() + 4096, 4096) == 0);
  }
  CHECK(mem.reads() == 1);
  CHECK(f.stats().cache_hits == 2);
  CHECK(f.stats().cache_misses == 1);
  CHECK(f.is_cached(ref.digest));
}

TEST_CASE("a corrupt chunk from the backend is fetched again, then reported as EIO", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(8192, 4);
  mem.put("obj", data);
  backend::FaultBackend faulty(mem);
  cache::ChunkFetcher f(faulty, {});
  auto ref = ref_for("obj", data, 0, 8192);
  faulty.corrupt_next_reads(1);
  auto got = f.get(ref);
  REQUIRE(got.ok());
  CHECK(std::memcmp((*got)->data(), data.data(), 8192) == 0);
  CHECK(f.stats().corrupt_fetches == 1);

  auto ref2 = ref_for("obj", data, 0, 4096);
  faulty.corrupt_next_reads(2);
  auto bad = f.get(ref2);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.code() == EIO);
  CHECK_FALSE(f.is_cached(ref2.digest));
  std::this_thread::sleep_for(std::chrono::milliseconds(600));  // past the failure memory
  CHECK(f.get(ref2).ok());
}

TEST_CASE("backend errors are counted and passed on", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(4096, 5);
  mem.put("obj", data);
  backend::FaultBackend faulty(mem);
  cache::ChunkFetcher f(faulty, {});
  faulty.fail_next_reads(1, ETIMEDOUT);
  auto ref = ref_for("obj", data, 0, 4096);
  CHECK(f.get(ref).code() == ETIMEDOUT);
  CHECK(f.stats().backend_errors == 1);
  // A retry at once (the kernel re-issuing a failed readahead) does not wait on the backend again.
  CHECK(f.get(ref).code() == EIO);
  CHECK(faulty.reads() == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  auto again = f.get(ref);
  INFO((again.ok() ? std::string() : again.error().message));
  CHECK(again.ok());  // the next read succeeds by itself
}

TEST_CASE("lz4 chunks are decompressed and verified", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string raw(100000, 'x');
  std::string packed(LZ4_compressBound(static_cast<int>(raw.size())), '\0');
  int n = LZ4_compress_default(raw.data(), packed.data(), static_cast<int>(raw.size()), static_cast<int>(packed.size()));
  REQUIRE(n > 0);
  packed.resize(static_cast<size_t>(n));
  mem.put("blob", "HEAD" + packed);
  cache::ChunkFetcher f(mem, {});
  cache::ChunkRef r;
  r.object = "blob";
  r.offset = 4;
  r.stored_len = static_cast<uint32_t>(n);
  r.raw_len = static_cast<uint32_t>(raw.size());
  r.lz4 = true;
  r.digest = xxh3_128(raw.data(), raw.size());
  auto got = f.get(r);
  REQUIRE(got.ok());
  CHECK(std::string(reinterpret_cast<const char*>((*got)->data()), (*got)->size()) == raw);
  r.offset = 3;  // garbage in: never served
  r.digest = xxh3_128("other", 5);
  CHECK(f.get(r).code() == EIO);
}

TEST_CASE("32 concurrent readers of one chunk cause one backend read", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(65536, 6);
  mem.put("obj", data);
  backend::FaultBackend slow(mem);
  slow.set_delay(std::chrono::milliseconds(50));
  cache::ChunkFetcher f(slow, {});
  auto ref = ref_for("obj", data, 0, 65536);
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int i = 0; i < 32; ++i) {
    threads.emplace_back([&] {
      auto got = f.get(ref);
      if (got.ok() && std::memcmp((*got)->data(), data.data(), 65536) == 0) good++;
    });
  }
  for (auto& t : threads) t.join();
  CHECK(good == 32);
  CHECK(slow.reads() == 1);
}

TEST_CASE("the memory cache stays within its bound", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(1 << 20, 8);
  mem.put("obj", data);
  cache::FetcherOptions o;
  o.memory_bytes = 64 * 1024;
  cache::ChunkFetcher f(mem, o);
  for (uint32_t i = 0; i < 64; ++i) REQUIRE(f.get(ref_for("obj", data, i * 16384, 16384)).ok());
  CHECK(f.cached_bytes() <= 64 * 1024);
  CHECK(f.is_cached(ref_for("obj", data, 63 * 16384, 16384).digest));
  CHECK_FALSE(f.is_cached(ref_for("obj", data, 0, 16384).digest));
}

TEST_CASE("every backend read of a chunk is timed into the latency histogram", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(3 * 4096, 10);
  mem.put("obj", data);
  backend::FaultBackend slow(mem);
  slow.set_delay(std::chrono::milliseconds(30));
  cache::ChunkFetcher f(slow, {});
  REQUIRE(f.get(ref_for("obj", data, 0, 4096)).ok());
  REQUIRE(f.get(ref_for("obj", data, 0, 4096)).ok());  // from memory: no backend read, not timed
  slow.fail_next_reads(1);
  REQUIRE_FALSE(f.get(ref_for("obj", data, 4096, 4096)).ok());  // failed reads are timed too
  auto s = f.stats();
  CHECK(s.fetch_count == 2);
  CHECK(s.fetch_seconds >= 0.06);
  static_assert(cache::kFetchBuckets[5] == 0.025);
  CHECK(s.fetch_buckets[5] == 0);  // none took 25 ms or less
  CHECK(s.fetch_buckets[cache::kFetchBucketCount - 1] == 2);
  for (size_t i = 1; i < cache::kFetchBucketCount; ++i) CHECK(s.fetch_buckets[i - 1] <= s.fetch_buckets[i]);
}
