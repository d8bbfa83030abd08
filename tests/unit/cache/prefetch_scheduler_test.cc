#include "cache/prefetch_scheduler.h"

#include <catch2/catch.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

using extrafs::Digest128;
using extrafs::cache::ChunkRef;
using extrafs::cache::OwnedChunkRef;
using extrafs::cache::PrefetchOptions;
using extrafs::cache::PrefetchScheduler;
using extrafs::cache::PrefetchSource;
using extrafs::cache::ReadaheadItem;

namespace {

constexpr uint32_t kChunk = 4096;

Digest128 digest_of(const std::string& object, uint64_t offset) {
  const std::string k = object + "@" + std::to_string(offset);
  return extrafs::xxh3_128(k.data(), k.size());
}

OwnedChunkRef chunk(const std::string& object, uint64_t offset, uint32_t len = kChunk) {
  OwnedChunkRef c;
  c.object = object;
  c.ref.offset = offset;
  c.ref.stored_len = c.ref.raw_len = len;
  c.ref.digest = digest_of(object, offset);
  return c;
}

// The fetcher's side, faked: get() records what it was asked (the chunk and how many followers it
// was offered), "brings" the chunk and the followers right after it that are not held (as
// ChunkFetcher::get does), and can be made to wait (gate) or to fail.
class FakeFetcher {
 public:
  struct Call {
    std::string object;
    uint64_t offset;
    size_t following;
    bool operator==(const Call&) const = default;
  };

  PrefetchSource source() {
    PrefetchSource s;
    s.get = [this](const ChunkRef& c, std::span<const ChunkRef> following) { return get(c, following); };
    s.held = [this](const Digest128& d) { return held(d); };
    s.in_memory = [this](const Digest128& d) { return held(d); };
    return s;
  }
  void close_gate() {
    std::lock_guard lock(mu_);
    open_ = false;
  }
  void open_gate() {
    {
      std::lock_guard lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  // Waits (bounded) until `n` get() calls have started.
  bool wait_calls(size_t n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return calls_.size() >= n; });
  }
  void fail_next(int n) {
    std::lock_guard lock(mu_);
    failing_ = n;
  }
  void hold(const OwnedChunkRef& c) {
    std::lock_guard lock(mu_);
    held_.insert(key(c.ref.digest));
  }
  std::vector<Call> calls() {
    std::lock_guard lock(mu_);
    return calls_;
  }

 private:
  static std::string key(const Digest128& d) { return std::string(d.bytes.begin(), d.bytes.end()); }
  bool held(const Digest128& d) {
    std::lock_guard lock(mu_);
    return held_.count(key(d)) > 0;
  }
  bool get(const ChunkRef& c, std::span<const ChunkRef> following) {
    std::unique_lock lock(mu_);
    calls_.push_back({std::string(c.object), c.offset, following.size()});
    cv_.notify_all();
    // Bounded: a test that failed with the gate closed must still end (the scheduler's
    // destructor joins the worker waiting here).
    cv_.wait_for(lock, std::chrono::seconds(10), [&] { return open_; });
    if (failing_ > 0) {
      --failing_;
      return false;
    }
    held_.insert(key(c.digest));
    uint64_t end = c.offset + c.stored_len;
    for (const ChunkRef& f : following) {
      if (f.object != c.object || f.offset != end || held_.count(key(f.digest))) break;
      held_.insert(key(f.digest));
      end += f.stored_len;
    }
    return true;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  int failing_ = 0;
  std::set<std::string> held_;
  std::vector<Call> calls_;
};

PrefetchOptions one_worker(uint64_t budget = 1 << 20, uint64_t wait_limit = 0) {
  PrefetchOptions o;
  o.threads = 1;  // what it takes together, and in which order, is deterministic
  o.sequence_budget = budget;
  o.wait_limit = wait_limit;
  return o;
}

}  // namespace

TEST_CASE("readahead: queued adjacent chunks go to one get(), in any order queued; a chunk on disk goes alone",
          "[prefetch]") {
  FakeFetcher f;
  PrefetchScheduler s(one_worker(), f.source());
  // The worker is held in a first job while the rest is queued, in separate calls.
  f.close_gate();
  REQUIRE(s.readahead({{chunk("x", 0), false}}) == 1);
  REQUIRE(f.wait_calls(1));
  // a: 4k, 8k, 12k adjacent (8k queued last), then 16k on disk, 20k and 24k after it; b: 0.
  REQUIRE(s.readahead({{chunk("a", 4096), false}, {chunk("b", 0), false}, {chunk("a", 12288), false}}) == 3);
  REQUIRE(s.readahead({{chunk("a", 8192), false},
                       {chunk("a", 16384), true},
                       {chunk("a", 20480), false},
                       {chunk("a", 24576), false}}) == 4);
  // Queued twice: once.
  REQUIRE(s.readahead({{chunk("b", 0), false}}) == 0);
  CHECK(s.load().readahead == 7);
  f.open_gate();
  s.wait_idle();
  using Call = FakeFetcher::Call;
  CHECK(f.calls() == std::vector<Call>{{"x", 0, 0}, {"a", 4096, 2}, {"b", 0, 0}, {"a", 16384, 0}, {"a", 20480, 1}});
  CHECK(s.prefetches() == 8);
  // A chunk in memory by its turn is dropped, not counted.
  f.close_gate();
  REQUIRE(s.readahead({{chunk("y", 0), false}}) == 1);
  REQUIRE(f.wait_calls(6));
  REQUIRE(s.readahead({{chunk("a", 4096), false}}) == 1);  // brought by the second call above
  f.open_gate();
  s.wait_idle();
  CHECK(f.calls().size() == 6);
  CHECK(s.prefetches() == 9);
}

TEST_CASE("readahead beyond the queue's bound is dropped", "[prefetch]") {
  FakeFetcher f;
  PrefetchOptions o = one_worker();
  o.queue_limit = 3;
  PrefetchScheduler s(o, f.source());
  f.close_gate();
  REQUIRE(s.readahead({{chunk("x", 0), false}}) == 1);
  REQUIRE(f.wait_calls(1));
  std::vector<ReadaheadItem> items;
  for (uint64_t i = 0; i < 5; ++i) items.push_back({chunk("a", i * 2 * kChunk), false});  // none adjacent
  CHECK(s.readahead(std::move(items)) == 3);
  f.open_gate();
  s.wait_idle();
  CHECK(f.calls().size() == 4);
}

TEST_CASE(
    "sequence runs stay within the byte budget; runs beyond it wait and are admitted in order, beyond the "
    "wait limit they are dropped",
    "[prefetch]") {
  FakeFetcher f;
  // Budget: 3 chunks at a time; 4 more may wait.
  PrefetchScheduler s(one_worker(3 * kChunk, 4 * kChunk), f.source());
  f.close_gate();
  // Run A: 2 adjacent chunks (admitted, taken by the worker, which then waits in get()).
  REQUIRE(s.sequence({chunk("a", 0), chunk("a", kChunk)}) == 2);
  REQUIRE(f.wait_calls(1));
  // Run B: 2 chunks: 2 + 2 > 3, so it waits although nothing else is queued.
  REQUIRE(s.sequence({chunk("b", 0), chunk("b", kChunk)}) == 2);
  // Run C: 1 chunk would fit beside A (2 + 1 <= 3) but B is first: it waits too (FIFO).
  REQUIRE(s.sequence({chunk("c", 0)}) == 1);
  auto l = s.load();
  CHECK(l.runs_bytes == 2 * kChunk);
  CHECK(l.waiting == 2);
  CHECK(l.waiting_bytes == 3 * kChunk);
  // The budget and the wait limit hold 7 chunks: of D's three (runs of one), the third does not fit.
  CHECK(s.sequence({chunk("d", 0), chunk("d", 2 * kChunk), chunk("d", 4 * kChunk)}) == 2);
  f.open_gate();
  s.wait_idle();
  using Call = FakeFetcher::Call;
  CHECK(f.calls() == std::vector<Call>{{"a", 0, 1}, {"b", 0, 1}, {"c", 0, 0}, {"d", 0, 0}, {"d", 8192, 0}});
  CHECK(s.prefetches() == 7);
  l = s.load();
  CHECK(l.runs_bytes == 0);
  CHECK(l.waiting_bytes == 0);
  // Held chunks are skipped; a run split by one is two reads.
  f.hold(chunk("e", kChunk));
  REQUIRE(s.sequence({chunk("e", 0), chunk("e", kChunk), chunk("e", 2 * kChunk)}) == 3);
  s.wait_idle();
  CHECK(f.calls().size() == 7);
  CHECK(s.prefetches() == 9);
}

TEST_CASE("a failed sequence read drops the runs queued and waiting; later ones still run", "[prefetch]") {
  FakeFetcher f;
  PrefetchScheduler s(one_worker(kChunk, 16 * kChunk), f.source());
  f.close_gate();
  f.fail_next(1);
  std::vector<OwnedChunkRef> chunks;
  for (uint64_t i = 0; i < 4; ++i) chunks.push_back(chunk("a", i * 2 * kChunk));  // 4 runs of one chunk
  REQUIRE(s.sequence(std::move(chunks)) == 4);
  REQUIRE(f.wait_calls(1));
  CHECK(s.load().waiting == 3);
  f.open_gate();
  s.wait_idle();
  CHECK(f.calls().size() == 1);
  CHECK(s.prefetches() == 0);
  auto l = s.load();
  CHECK(l.runs + l.waiting == 0);
  CHECK(l.runs_bytes + l.waiting_bytes == 0);
  REQUIRE(s.sequence({chunk("b", 0)}) == 1);
  s.wait_idle();
  CHECK(f.calls().size() == 2);
  CHECK(s.prefetches() == 1);
}

TEST_CASE("stop drops the queued work; the worker ends after the job in hand; nothing is queued after", "[prefetch]") {
  FakeFetcher f;
  std::optional<PrefetchScheduler> s;
  s.emplace(one_worker(kChunk, 16 * kChunk), f.source());
  f.close_gate();
  REQUIRE(s->readahead({{chunk("a", 0), false}, {chunk("b", 0), false}}) == 2);
  REQUIRE(f.wait_calls(1));
  REQUIRE(s->sequence({chunk("c", 0), chunk("c", 2 * kChunk)}) == 2);
  s->stop();
  s->wait_idle();  // returns once stopped
  CHECK(s->readahead({{chunk("d", 0), false}}) == 0);
  CHECK(s->sequence({chunk("d", 0)}) == 0);
  f.open_gate();
  s.reset();  // joins the worker
  CHECK(f.calls().size() == 1);
}

TEST_CASE("without workers nothing is queued", "[prefetch]") {
  FakeFetcher f;
  PrefetchOptions o = one_worker();
  o.threads = 0;
  PrefetchScheduler s(o, f.source());
  CHECK(s.readahead({{chunk("a", 0), false}}) == 0);
  CHECK(s.sequence({chunk("a", 0)}) == 0);
  s.wait_idle();
  CHECK(f.calls().empty());
}
