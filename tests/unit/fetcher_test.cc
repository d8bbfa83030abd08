#include <catch2/catch.hpp>

#include <lz4.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>

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
  Result<cache::ChunkBuffer> get(const Digest128&) override { return make_error(ENOENT, "absent"); }
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
  void set_external(uint64_t) override {}
  cache::BlockCacheStats stats() override { return {}; }
};

// A disk cache in memory whose puts wait until the test opens the gate: shows what readers do
// while cache files are being written.
class GatedCache : public cache::BlockCache {
 public:
  void open_gate() {
    {
      std::lock_guard l(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  size_t stored() {
    std::lock_guard l(mu_);
    return chunks_.size();
  }
  size_t puts_started() {
    std::lock_guard l(mu_);
    return started_;
  }
  Result<cache::ChunkBuffer> get(const Digest128& d) override {
    std::lock_guard l(mu_);
    auto it = chunks_.find(d);
    if (it == chunks_.end()) return make_error(ENOENT, "absent");
    return cache::ChunkBuffer::copy_of(it->second);
  }
  Status put(const Digest128& d, std::span<const std::byte> raw) override {
    std::unique_lock l(mu_);
    ++started_;
    cv_.wait(l, [&] { return open_; });
    chunks_[d].assign(raw.begin(), raw.end());
    order_.push_back(d);
    return ok_status();
  }
  std::vector<Digest128> order() {
    std::lock_guard l(mu_);
    return order_;
  }
  bool contains(const Digest128& d) override {
    std::lock_guard l(mu_);
    return chunks_.count(d) > 0;
  }
  Status put_meta(const std::string&, std::span<const std::byte>) override { return ok_status(); }
  Result<std::vector<std::byte>> get_meta(const std::string&) override { return make_error(ENOENT, "absent"); }
  Result<uint64_t> verify_all() override { return uint64_t{0}; }
  Status shrink_to(uint64_t) override { return ok_status(); }
  void set_external(uint64_t) override {}
  cache::BlockCacheStats stats() override { return {}; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  size_t started_ = 0;
  std::unordered_map<Digest128, std::vector<std::byte>, Digest128Hash> chunks_;
  std::vector<Digest128> order_;  // digests in the order they were stored
};

cache::FetcherOptions no_prefetch() {
  cache::FetcherOptions o;
  o.prefetch_threads = 0;
  return o;
}

cache::ChunkData bytes_of(const std::string& s) {
  auto b = std::as_bytes(std::span(s.data(), s.size()));
  return std::make_shared<const cache::ChunkBuffer>(cache::ChunkBuffer::copy_of(b));
}

}  // namespace

TEST_CASE("failed disk-cache writes are counted and logged now and then; reads still succeed", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(16 * 4096, 9);
  mem.put("obj", data);
  FullDiskCache full;
  ManualClock clock;
  cache::FetcherOptions o;
  o.disk = &full;
  o.error_log_interval = std::chrono::milliseconds(300);
  o.now = clock.clock();
  cache::ChunkFetcher f(mem, o);
  CapturedLog log;
  for (uint32_t i = 0; i < 5; ++i) {
    auto got = f.get(ref_for("obj", data, i * 4096, 4096));
    REQUIRE(got.ok());
    CHECK(std::memcmp((*got)->data(), data.data() + i * 4096, 4096) == 0);
  }
  f.flush_cache_writes();  // the writes happen in the background
  CHECK(f.stats().cache_write_errors == 5);
  auto lines = log.lines_with("cannot write to the cache");
  REQUIRE(lines.size() == 1);  // the first failure, then quiet
  CHECK(lines[0].rfind("warning", 0) == 0);
  CHECK(lines[0].find("No space left on device") != std::string::npos);

  clock.advance(std::chrono::milliseconds(350));
  REQUIRE(f.get(ref_for("obj", data, 5 * 4096, 4096)).ok());
  REQUIRE(f.read_meta("obj", "meta-obj", 1 << 20, [](const std::string&) { return ok_status(); }).ok());
  f.flush_cache_writes();
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
  ManualClock clock;
  cache::FetcherOptions o;
  o.now = clock.clock();
  cache::ChunkFetcher f(faulty, o);
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
  CHECK(f.get(ref2).code() == EIO);               // remembered: no second backend read at once
  clock.advance(std::chrono::milliseconds(600));  // past the failure memory
  CHECK(f.get(ref2).ok());
}

TEST_CASE("backend errors are counted and passed on", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(4096, 5);
  mem.put("obj", data);
  backend::FaultBackend faulty(mem);
  ManualClock clock;
  cache::FetcherOptions o;
  o.now = clock.clock();
  cache::ChunkFetcher f(faulty, o);
  faulty.fail_next_reads(1, ETIMEDOUT);
  auto ref = ref_for("obj", data, 0, 4096);
  CHECK(f.get(ref).code() == ETIMEDOUT);
  CHECK(f.stats().backend_errors == 1);
  // A retry at once (the kernel re-issuing a failed readahead) does not wait on the backend again.
  CHECK(f.get(ref).code() == EIO);
  CHECK(faulty.reads() == 1);
  clock.advance(std::chrono::milliseconds(499));
  CHECK(f.get(ref).code() == EIO);  // still within the memory
  CHECK(faulty.reads() == 1);
  clock.advance(std::chrono::milliseconds(2));
  auto again = f.get(ref);
  INFO((again.ok() ? std::string() : again.error().message));
  CHECK(again.ok());  // the next read succeeds by itself
}

TEST_CASE("failed store reads are logged the first time, then at most once per interval", "[fetcher]") {
  // A dead server, or a layer removed from the store, fails every read: the log must not grow
  // a line per chunk.
  backend::MemoryBackend mem;
  std::string data = pseudo_random(64 * 4096, 6);
  mem.put("obj", data);
  backend::FaultBackend faulty(mem);
  ManualClock clock;
  cache::FetcherOptions o;
  o.error_log_interval = std::chrono::seconds(60);
  o.now = clock.clock();
  cache::ChunkFetcher f(faulty, o);
  CapturedLog log;
  faulty.fail_next_reads(40, ENOENT);
  for (uint32_t i = 0; i < 20; ++i) CHECK(f.get(ref_for("obj", data, i * 4096, 4096)).code() == ENOENT);
  CHECK(f.stats().backend_errors == 20);
  auto lines = log.lines_with("read of obj");
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].find("read of obj at 0 failed") != std::string::npos);
  clock.advance(std::chrono::seconds(59));
  CHECK(f.get(ref_for("obj", data, 20 * 4096, 4096)).code() == ENOENT);
  CHECK(log.lines_with("read of obj").size() == 1);
  clock.advance(std::chrono::seconds(2));
  CHECK(f.get(ref_for("obj", data, 21 * 4096, 4096)).code() == ENOENT);
  lines = log.lines_with("read of obj");
  REQUIRE(lines.size() == 2);
  CHECK(lines[1].find("21 failures since the last report, 22 in all; the last: read of obj at 86016") !=
        std::string::npos);
  CHECK(f.stats().backend_errors == 22);
}

TEST_CASE("lz4 chunks are decompressed and verified", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string raw(100000, 'x');
  std::string packed(LZ4_compressBound(static_cast<int>(raw.size())), '\0');
  int n =
      LZ4_compress_default(raw.data(), packed.data(), static_cast<int>(raw.size()), static_cast<int>(packed.size()));
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

TEST_CASE("a fetched chunk is served before its cache write finishes; flush waits for the write", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(4 * 4096, 21);
  mem.put("obj", data);
  GatedCache disk;
  cache::FetcherOptions o;
  o.disk = &disk;
  o.memory_bytes = 4096;  // one chunk: the second fetch pushes the first out of memory
  cache::ChunkFetcher f(mem, o);
  auto a = ref_for("obj", data, 0, 4096), b = ref_for("obj", data, 4096, 4096);
  auto got = f.get(a);  // the disk put is blocked, yet the reader has its bytes
  REQUIRE(got.ok());
  CHECK(std::memcmp((*got)->data(), data.data(), 4096) == 0);
  REQUIRE(f.get(b).ok());
  CHECK(f.stats().cache_writes_pending == 2);
  CHECK(disk.stored() == 0);
  // Out of memory, not yet on disk: served from the writer's queue, not fetched again.
  REQUIRE(f.get(a).ok());
  CHECK(mem.reads() == 2);
  CHECK(f.is_cached(a.digest));

  std::thread flusher([&] { f.flush_cache_writes(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(disk.stored() == 0);
  disk.open_gate();
  flusher.join();
  CHECK(disk.stored() == 2);
  CHECK(disk.contains(a.digest));
  CHECK(f.stats().cache_writes_pending == 0);
}

TEST_CASE("the cache write queue is bounded: a put waits for room, and nothing is dropped", "[fetcher]") {
  GatedCache disk;
  cache::CacheWriter w(disk, 2, nullptr);
  std::string s = pseudo_random(5 * 100, 22);
  std::vector<Digest128> ds;
  for (int i = 0; i < 5; ++i) ds.push_back(xxh3_128(s.data() + i * 100, 100));
  // The writer takes the first and blocks in the disk; two more fill the queue.
  w.put(ds[0], bytes_of(s.substr(0, 100)));
  for (int i = 0; i < 100 && disk.puts_started() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  REQUIRE(disk.puts_started() == 1);
  w.put(ds[1], bytes_of(s.substr(100, 100)));
  w.put(ds[2], bytes_of(s.substr(200, 100)));
  w.put(ds[1], bytes_of(s.substr(100, 100)));  // already queued: not queued twice, does not wait
  CHECK(w.pending_count() == 3);
  std::atomic<bool> fourth_done{false};
  std::thread t([&] {
    w.put(ds[3], bytes_of(s.substr(300, 100)));
    fourth_done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK_FALSE(fourth_done.load());  // the queue is full
  REQUIRE(w.pending(ds[2]) != nullptr);
  CHECK(std::memcmp(w.pending(ds[2])->data(), s.data() + 200, 100) == 0);
  disk.open_gate();
  t.join();
  CHECK(fourth_done.load());
  w.put(ds[4], bytes_of(s.substr(400, 100)));
  w.flush();
  CHECK(w.pending_count() == 0);
  CHECK(disk.stored() == 5);
  for (auto& d : ds) CHECK(disk.contains(d));
}

TEST_CASE("callers waiting for room in the cache write queue get it first come, first served", "[fetcher]") {
  GatedCache disk;
  cache::CacheWriter w(disk, 1, nullptr);
  std::string s = pseudo_random(8 * 100, 26);
  std::vector<Digest128> ds;
  for (int i = 0; i < 8; ++i) ds.push_back(xxh3_128(s.data() + i * 100, 100));
  auto put = [&](int i) { w.put(ds[i], bytes_of(s.substr(i * 100, 100))); };
  auto wait_for = [](const std::function<bool()>& cond) {
    for (int i = 0; i < 400 && !cond(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return cond();
  };
  put(0);  // taken by the writer, which blocks in the disk
  REQUIRE(wait_for([&] { return disk.puts_started() == 1; }));
  put(1);  // fills the queue
  std::vector<std::thread> waiters;
  for (int i = 2; i <= 5; ++i) {
    waiters.emplace_back(put, i);
    REQUIRE(wait_for([&] { return w.waiting_for_room() == static_cast<size_t>(i - 1); }));
  }
  // Room opens while another caller arrives: it must queue behind the four that waited.
  disk.open_gate();
  put(6);
  for (auto& t : waiters) t.join();
  put(7);
  w.flush();
  CHECK(disk.order() == ds);
  CHECK(w.waiting_for_room() == 0);
}

TEST_CASE("the cache writer reports every failed write and still drains its queue", "[fetcher]") {
  FullDiskCache full;
  std::atomic<int> errors{0};
  std::string s = pseudo_random(800, 23);
  {
    cache::CacheWriter w(full, 3, [&](const Error& e) {
      CHECK(e.code == ENOSPC);
      errors++;
    });
    for (int i = 0; i < 8; ++i) w.put(xxh3_128(s.data() + i * 100, 100), bytes_of(s.substr(i * 100, 100)));
    w.flush();
    CHECK(errors == 8);
    w.put(xxh3_128(s.data(), 50), bytes_of(s.substr(0, 50)));
  }  // the destructor writes (here: fails) what is still queued
  CHECK(errors == 9);
}

TEST_CASE("adjacent missing chunks are fetched with one backend read and verified one by one", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(6 * 4096, 24);
  mem.put("obj", data);
  cache::ChunkFetcher f(mem, no_prefetch());
  std::vector<cache::ChunkRef> refs;
  for (uint32_t i = 0; i < 6; ++i) refs.push_back(ref_for("obj", data, i * 4096, 4096));
  // Chunk 2 is already in memory: the run is 0, 1 and stops there.
  REQUIRE(f.get(refs[2]).ok());
  REQUIRE(mem.reads() == 1);
  REQUIRE(f.get(refs[0], std::span(refs).subspan(1)).ok());
  CHECK(mem.reads() == 2);
  // Chunks 3, 4, 5: three misses, one read.
  REQUIRE(f.get(refs[3], std::span(refs).subspan(4)).ok());
  CHECK(mem.reads() == 3);
  CHECK(f.stats().chunks_fetched == 6);
  CHECK(f.stats().bytes_fetched == 6 * 4096);
  for (uint32_t i = 0; i < 6; ++i) {
    auto got = f.get(refs[i]);
    REQUIRE(got.ok());
    CHECK(std::memcmp((*got)->data(), data.data() + i * 4096, 4096) == 0);
  }
  CHECK(mem.reads() == 3);  // all of them were kept

  // A chunk that is not right after the previous one ends the run.
  cache::ChunkFetcher g(mem, no_prefetch());
  std::vector<cache::ChunkRef> gap{refs[4], refs[5]};
  REQUIRE(g.get(refs[0], gap).ok());
  CHECK(mem.reads() == 4);
  CHECK(g.stats().chunks_fetched == 1);
}

TEST_CASE("in a coalesced read, a chunk that fails verification is fetched again alone and fails alone", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(4 * 4096, 25);
  mem.put("obj", data);
  cache::ChunkFetcher f(mem, no_prefetch());
  std::vector<cache::ChunkRef> refs;
  for (uint32_t i = 0; i < 4; ++i) refs.push_back(ref_for("obj", data, i * 4096, 4096));
  refs[2].digest = xxh3_128("not these bytes", 15);  // the index and the store disagree
  REQUIRE(f.get(refs[0], std::span(refs).subspan(1)).ok());
  CHECK(mem.reads() == 1 + 1);  // the run (first attempt), then chunk 2 once more on its own
  CHECK(f.stats().corrupt_fetches == 2);
  for (uint32_t i : {0u, 1u, 3u}) {
    auto got = f.get(refs[i]);
    REQUIRE(got.ok());
    CHECK(std::memcmp((*got)->data(), data.data() + i * 4096, 4096) == 0);
  }
  CHECK(mem.reads() == 2);
  CHECK(f.get(refs[2]).code() == EIO);
  CHECK_FALSE(f.is_cached(refs[2].digest));
}

TEST_CASE("a coalesced read stays within the backend's 1 MiB READ and mixes lz4 and raw chunks", "[fetcher]") {
  backend::MemoryBackend mem;
  const uint32_t raw_len = 400 * 1024;
  std::string raw = pseudo_random(raw_len, 26);
  std::string compressible(raw_len, 'x');
  std::vector<char> lz(LZ4_compressBound(raw_len));
  int clen = LZ4_compress_default(compressible.data(), lz.data(), raw_len, static_cast<int>(lz.size()));
  REQUIRE(clen > 0);
  // raw, lz4, raw, raw: 400 KiB + small + 400 KiB fit in 1 MiB; the fourth does not.
  std::string raw2 = pseudo_random(raw_len, 27), raw3 = pseudo_random(raw_len, 28);
  std::string obj = raw + std::string(lz.data(), clen) + raw2 + raw3;
  mem.put("obj", obj);
  std::vector<cache::ChunkRef> refs(4);
  uint64_t off = 0;
  for (int i = 0; i < 4; ++i) {
    refs[i].object = "obj";
    refs[i].offset = off;
    refs[i].raw_len = raw_len;
    refs[i].lz4 = i == 1;
    refs[i].stored_len = i == 1 ? static_cast<uint32_t>(clen) : raw_len;
    const std::string& content = i == 0 ? raw : i == 1 ? compressible : i == 2 ? raw2 : raw3;
    refs[i].digest = xxh3_128(content.data(), raw_len);
    off += refs[i].stored_len;
  }
  cache::ChunkFetcher f(mem, no_prefetch());
  REQUIRE(f.get(refs[0], std::span(refs).subspan(1)).ok());
  CHECK(mem.reads() == 1);
  CHECK(f.stats().chunks_fetched == 3);
  CHECK(f.stats().bytes_fetched == 2 * raw_len + static_cast<uint64_t>(clen));
  auto z = f.get(refs[1]);
  REQUIRE(z.ok());
  CHECK(std::memcmp((*z)->data(), compressible.data(), raw_len) == 0);
  CHECK(mem.reads() == 1);
  REQUIRE(f.get(refs[3]).ok());
  CHECK(mem.reads() == 2);
}

namespace {
std::vector<cache::OwnedChunkRef> owned(const std::vector<cache::ChunkRef>& refs) {
  std::vector<cache::OwnedChunkRef> out;
  for (const auto& r : refs) out.push_back({std::string(r.object), r});
  return out;
}
// Waits until the fetcher has no prefetch work left (everything queued was fetched or dropped),
// then says whether its counter of prefetched chunks reached n.
bool wait_prefetches(cache::ChunkFetcher& f, uint64_t n) {
  f.wait_prefetch_idle();
  return f.stats().prefetches >= n;
}
}  // namespace

TEST_CASE("a prefetched sequence is read in few backend reads of at most 1 MiB, in parallel, and counted",
          "[fetcher]") {
  backend::MemoryBackend mem;
  const uint32_t len = 256 * 1024;
  std::string data = pseudo_random(10 * len, 30);
  mem.put("blob", data);
  std::vector<cache::ChunkRef> refs;
  for (uint32_t i = 0; i < 10; ++i) refs.push_back(ref_for("blob", data, uint64_t{i} * len, len));
  cache::FetcherOptions o;
  o.prefetch_threads = 4;
  cache::ChunkFetcher f(mem, o);
  // Chunk 5 is held already: it is skipped, and the reads go around it.
  REQUIRE(f.get(refs[5]).ok());
  REQUIRE(mem.reads() == 1);
  CHECK(f.prefetch_sequence(owned(refs)) == 10);
  REQUIRE(wait_prefetches(f, 9));
  // Runs of at most 1 MiB: 0-3, 4-7, 8-9; in the second, held chunk 5 splits the read in two.
  CHECK(mem.reads() == 1 + 4);
  CHECK(f.stats().prefetches == 9);
  CHECK(f.stats().chunks_fetched == 10);
  // Everything is served from memory now, verified.
  for (uint32_t i = 0; i < 10; ++i) {
    auto got = f.get(refs[i]);
    REQUIRE(got.ok());
    CHECK(std::memcmp((*got)->data(), data.data() + uint64_t{i} * len, len) == 0);
  }
  CHECK(mem.reads() == 5);
}

TEST_CASE("a prefetched sequence queues at most half the memory LRU, and nothing without workers", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(16 * 4096, 31);
  mem.put("blob", data);
  std::vector<cache::ChunkRef> refs;
  for (uint32_t i = 0; i < 16; ++i) refs.push_back(ref_for("blob", data, uint64_t{i} * 4096, 4096));
  {
    cache::FetcherOptions o;
    o.memory_bytes = 8 * 4096;  // half: 4 chunks
    cache::ChunkFetcher f(mem, o);
    CHECK(f.prefetch_sequence(owned(refs)) == 4);
    REQUIRE(wait_prefetches(f, 4));
    for (uint32_t i = 0; i < 4; ++i) CHECK(f.is_cached(refs[i].digest));
    for (uint32_t i = 4; i < 16; ++i) CHECK_FALSE(f.is_cached(refs[i].digest));
    // Once those are fetched, the budget is free again.
    CHECK(f.prefetch_sequence(owned({refs[8]})) == 1);
    REQUIRE(wait_prefetches(f, 5));
    CHECK(f.is_cached(refs[8].digest));
  }
  cache::ChunkFetcher none(mem, no_prefetch());
  CHECK(none.prefetch_sequence(owned(refs)) == 0);
}

TEST_CASE("prefetched sequences beyond the memory budget wait their turn, up to a quarter of the disk cache",
          "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(24 * 4096, 33);
  mem.put("blob", data);
  std::vector<cache::ChunkRef> refs;
  for (uint32_t i = 0; i < 24; ++i) refs.push_back(ref_for("blob", data, uint64_t{i} * 4096, 4096));
  TempDir t;
  auto disk = cache::BlockCache::open(t.path + "/cache", 48 * 4096);  // a quarter: 12 chunks
  REQUIRE(disk.ok());
  cache::FetcherOptions o;
  o.memory_bytes = 8 * 4096;  // half: 4 chunks at a time
  o.disk = disk->get();
  cache::ChunkFetcher f(mem, o);
  auto range = [&](size_t from, size_t to) { return owned({refs.begin() + from, refs.begin() + to}); };
  // Two layers' prefixes at once (as an attach of two images starts them), 8 chunks each: the
  // second is not cut off by the first.
  CHECK(f.prefetch_sequence(range(0, 8)) == 8);
  CHECK(f.prefetch_sequence(range(8, 16)) == 8);
  REQUIRE(wait_prefetches(f, 16));
  for (uint32_t i = 0; i < 16; ++i) CHECK(f.is_cached(refs[i].digest));
  CHECK(mem.reads() == 4);  // runs of 4 chunks (the budget), one backend read each
  // All 24 at once, the bound free again: 4 queued and 12 waiting are taken (chunks 0-15, held
  // already, so skipped when their turn comes); 16-23 are left to readers.
  CHECK(f.prefetch_sequence(owned(refs)) == 16);
  f.wait_prefetch_idle();
  CHECK(f.stats().prefetches == 16);
  CHECK_FALSE(f.is_cached(refs[16].digest));
  CHECK(mem.reads() == 4);
}

TEST_CASE("a prefetched sequence stops at a backend failure instead of waiting on every read", "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(8 * 4096, 32);
  mem.put("blob", data);
  backend::FaultBackend faulty(mem);
  std::vector<cache::ChunkRef> refs;
  // Not adjacent (every other chunk): four runs of one chunk each.
  for (uint32_t i = 0; i < 8; i += 2) refs.push_back(ref_for("blob", data, uint64_t{i} * 4096, 4096));
  cache::FetcherOptions o;
  o.prefetch_threads = 1;
  cache::ChunkFetcher f(faulty, o);
  faulty.fail_next_reads(1000, EIO);
  CapturedLog log;
  CHECK(f.prefetch_sequence(owned(refs)) == 4);
  f.wait_prefetch_idle();
  CHECK(faulty.reads() == 1);
  CHECK(f.stats().prefetches == 0);
  CHECK(log.lines_with("prefetch of blob stopped after a failed read; 3 reads dropped").size() == 1);
}

namespace {
Status parses_as_ok(const std::string& bytes) {
  return bytes == "ok" ? ok_status() : Status(make_error(EBADMSG, "corrupt"));
}
}  // namespace

TEST_CASE("metadata over its limit or not a regular file is refused without being read", "[fetcher]") {
  backend::MemoryBackend mem;
  mem.put_sparse("extrafs/catalog.d/2", uint64_t{1} << 30);
  mem.put_special("extrafs/layers/x.index", S_IFIFO);
  cache::ChunkFetcher f(mem, {});
  auto big = f.read_meta("extrafs/catalog.d/2", "catalog", 1 << 20, parses_as_ok);
  CHECK(big.code() == EFBIG);
  CHECK(big.error().message ==
        "extrafs/catalog.d/2 is 1073741824 bytes, over its limit of 1048576 bytes; refusing to read it");
  auto fifo = f.read_meta("extrafs/layers/x.index", "index-x", 1 << 20, parses_as_ok);
  CHECK(fifo.code() == EINVAL);
  CHECK(fifo.error().message.find("is a FIFO, not a regular file") != std::string::npos);
  CHECK(mem.reads() == 0);
  CHECK(f.stats().meta_bytes_fetched == 0);
}

TEST_CASE("a refused metadata object is not read again until it changes", "[fetcher]") {
  backend::MemoryBackend mem;
  mem.put("extrafs/catalog.d/2", std::string(1000, 'x'));
  cache::ChunkFetcher f(mem, {});
  for (int i = 0; i < 3; ++i)
    CHECK(f.read_meta("extrafs/catalog.d/2", "catalog", 1 << 20, parses_as_ok).code() == EBADMSG);
  CHECK(mem.reads() == 1);
  CHECK(f.stats().meta_bytes_fetched == 1000);
  // Written again, even with the same bytes: a new version, read once more.
  mem.put("extrafs/catalog.d/2", std::string(1000, 'x'));
  CHECK(f.read_meta("extrafs/catalog.d/2", "catalog", 1 << 20, parses_as_ok).code() == EBADMSG);
  CHECK(mem.reads() == 2);
  mem.put("extrafs/catalog.d/2", "ok");
  auto good = f.read_meta("extrafs/catalog.d/2", "catalog", 1 << 20, parses_as_ok);
  REQUIRE(good.ok());
  CHECK(*good == "ok");
  // Over the limit, too, until it changes.
  mem.put_sparse("big", 5 << 20);
  CHECK(f.read_meta("big", "big", 1 << 20, parses_as_ok).code() == EFBIG);
  mem.put("big", "ok");
  CHECK(f.read_meta("big", "big", 1 << 20, parses_as_ok).ok());
}

TEST_CASE("metadata that could not be read is tried again at the next call", "[fetcher]") {
  backend::MemoryBackend mem;
  mem.put("extrafs/catalog", "ok");
  backend::FaultBackend faulty(mem);
  cache::ChunkFetcher f(faulty, {});
  faulty.fail_next_reads(1);
  CHECK(f.read_meta("extrafs/catalog", "catalog", 1 << 20, parses_as_ok).code() == EIO);
  CHECK(f.stats().backend_errors == 1);
  CHECK(f.read_meta("extrafs/catalog", "catalog", 1 << 20, parses_as_ok).ok());
  CHECK(f.read_meta("nothing", "nothing", 1 << 20, parses_as_ok).code() == ENOENT);
}

TEST_CASE("readahead reads adjacent missing chunks in one backend read and each chunk on disk on its own",
          "[fetcher]") {
  backend::MemoryBackend mem;
  std::string data = pseudo_random(6 * 4096, 41);
  mem.put("blob", data);
  std::vector<cache::ChunkRef> refs;
  for (uint32_t i = 0; i < 6; ++i) refs.push_back(ref_for("blob", data, uint64_t{i} * 4096, 4096));
  TempDir t;
  auto disk = cache::BlockCache::open(t.path + "/cache", 64 * 4096);
  REQUIRE(disk.ok());
  // On disk: chunks 0, 3, 4 and 5; 1 and 2 only in the store.
  for (uint32_t i : {0u, 3u, 4u, 5u})
    REQUIRE((*disk)->put(refs[i].digest, std::as_bytes(std::span(data.data() + i * 4096, 4096))).ok());
  cache::FetcherOptions o;
  o.prefetch_threads = 1;  // one worker: what it takes from the queue together is deterministic
  o.disk = disk->get();
  cache::ChunkFetcher f(mem, o);
  f.prefetch(std::span(refs));  // one queue, in order: a directory's files read ahead
  f.wait_prefetch_idle();
  // 1 and 2 in one backend read; 0, 3, 4, 5 each from disk (none dropped as another's follower).
  INFO("fetched " << f.stats().chunks_fetched << " hits " << f.stats().cache_hits << " misses "
                  << f.stats().cache_misses);
  CHECK(f.stats().prefetches == 6);
  CHECK(mem.reads() == 1);
  CHECK((*disk)->stats().hits == 4);
  // All six are in memory now: the reader touches neither the disk nor the store.
  for (const auto& r : refs) {
    auto c = f.get(r);
    REQUIRE(c.ok());
    CHECK(std::memcmp((*c)->data(), data.data() + r.offset, 4096) == 0);
  }
  CHECK(mem.reads() == 1);
  CHECK((*disk)->stats().hits == 4);
}
