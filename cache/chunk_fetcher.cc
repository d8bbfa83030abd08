#include "cache/chunk_fetcher.h"

#include <fmt/format.h>
#include <lz4.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "backend/backend.h"

namespace extrafs::cache {

ChunkFetcher::ChunkFetcher(backend::Backend& backend, FetcherOptions options)
    : backend_(backend), options_(options) {
  for (unsigned i = 0; i < options_.prefetch_threads; ++i) workers_.emplace_back([this] { prefetch_worker(); });
}

ChunkFetcher::~ChunkFetcher() {
  {
    std::lock_guard lock(queue_mu_);
    stopping_ = true;
    queue_.clear();
  }
  queue_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ChunkFetcher::prefetch(const ChunkRef& c) {
  if (workers_.empty()) return;
  {
    // A chunk on disk but not in memory is still worth reading ahead: the disk read and the
    // verification then happen before the reader asks.
    std::lock_guard lock(mu_);
    if (map_.count(c.digest) || inflight_.count(c.digest)) return;
  }
  {
    std::lock_guard lock(queue_mu_);
    if (stopping_ || queue_.size() >= options_.prefetch_queue) return;
    for (const auto& q : queue_)
      if (q.ref.digest == c.digest) return;
    OwnedChunkRef owned{std::string(c.object), c};
    queue_.push_back(std::move(owned));
  }
  queue_cv_.notify_one();
}

void ChunkFetcher::prefetch_worker() {
  for (;;) {
    OwnedChunkRef job;
    {
      std::unique_lock lock(queue_mu_);
      queue_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job.ref.object = job.object;
    {
      std::lock_guard lock(mu_);
      if (map_.count(job.ref.digest)) continue;
    }
    prefetches_++;
    (void)get(job.ref);
  }
}

ChunkData ChunkFetcher::memory_get(const Digest128& d) {
  std::lock_guard lock(mu_);
  auto it = map_.find(d);
  if (it == map_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->second;
}

void ChunkFetcher::memory_put(const Digest128& d, ChunkData data) {
  std::lock_guard lock(mu_);
  if (map_.count(d)) return;
  mem_bytes_ += data->size();
  lru_.emplace_front(d, std::move(data));
  map_[d] = lru_.begin();
  while (mem_bytes_ > options_.memory_bytes && lru_.size() > 1) {
    auto& victim = lru_.back();
    mem_bytes_ -= victim.second->size();
    map_.erase(victim.first);
    lru_.pop_back();
  }
}

bool ChunkFetcher::is_cached(const Digest128& d) {
  {
    std::lock_guard lock(mu_);
    if (map_.count(d)) return true;
  }
  return options_.disk && options_.disk->contains(d);
}

Result<ChunkData> ChunkFetcher::get(const ChunkRef& c) {
  if (auto hit = memory_get(c.digest)) {
    cache_hits_++;
    return hit;
  }
  std::shared_ptr<InFlight> flight;
  bool leader = false;
  {
    std::lock_guard lock(mu_);
    if (auto f = failed_.find(c.digest); f != failed_.end()) {
      if (std::chrono::steady_clock::now() - f->second < kFailureMemory)
        return make_error(EIO, "chunk of " + std::string(c.object) + " at " + std::to_string(c.offset) + " failed just now");
      failed_.erase(f);
    }
    auto [it, inserted] = inflight_.try_emplace(c.digest);
    if (inserted) it->second = std::make_shared<InFlight>();
    flight = it->second;
    leader = inserted;
  }
  if (!leader) {
    merged_waits_++;
    std::unique_lock lock(flight->mu);
    flight->cv.wait(lock, [&] { return flight->done; });
    if (flight->result.ok()) cache_hits_++;
    return flight->result;
  }
  Result<ChunkData> result = fetch(c);
  if (result.ok()) memory_put(c.digest, result.value());
  {
    std::lock_guard lock(mu_);
    inflight_.erase(c.digest);
    if (!result.ok()) {
      if (failed_.size() > 4096) failed_.clear();
      failed_[c.digest] = std::chrono::steady_clock::now();
    } else if (!failed_.empty()) {
      failed_.clear();
    }
  }
  {
    std::lock_guard lock(flight->mu);
    flight->result = result;
    flight->done = true;
  }
  flight->cv.notify_all();
  return result;
}

Result<ChunkData> ChunkFetcher::fetch(const ChunkRef& c) {
  if (options_.disk) {
    auto got = options_.disk->get(c.digest);
    if (got.ok() && got->size() == c.raw_len) {
      cache_hits_++;
      return std::make_shared<const std::vector<std::byte>>(std::move(got).value());
    }
  }
  cache_misses_++;
  // One retry: a chunk that fails verification may have been caught mid-replacement or
  // corrupted in transit; a second failure is reported as EIO.
  Error last = make_error(EIO, "unreachable");
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::vector<std::byte> stored(c.stored_len);
    auto started = std::chrono::steady_clock::now();
    auto n = backend_.read(c.object, c.offset, stored);
    observe_fetch(std::chrono::steady_clock::now() - started);
    if (!n.ok()) {
      backend_errors_++;
      spdlog::warn("read of {} at {} failed: {}", c.object, c.offset, n.error().message);
      return n.error();
    }
    bytes_fetched_ += *n;
    chunks_fetched_++;
    if (*n != c.stored_len) {
      corrupt_fetches_++;
      last = make_error(EIO, fmt::format("{} is shorter than the index says (offset {})", c.object, c.offset));
      continue;
    }
    std::vector<std::byte> raw;
    if (c.lz4) {
      raw.resize(c.raw_len);
      int got = LZ4_decompress_safe(reinterpret_cast<const char*>(stored.data()), reinterpret_cast<char*>(raw.data()),
                                    static_cast<int>(c.stored_len), static_cast<int>(c.raw_len));
      if (got != static_cast<int>(c.raw_len)) {
        corrupt_fetches_++;
        last = make_error(EIO, fmt::format("chunk of {} at {} does not decompress", c.object, c.offset));
        continue;
      }
    } else {
      raw = std::move(stored);
    }
    if (xxh3_128(raw.data(), raw.size()) != c.digest) {
      corrupt_fetches_++;
      last = make_error(EIO, fmt::format("chunk of {} at {} fails verification", c.object, c.offset));
      continue;
    }
    if (options_.disk) {
      if (auto st = options_.disk->put(c.digest, raw); !st.ok()) note_write_error(st.error());
    }
    return std::make_shared<const std::vector<std::byte>>(std::move(raw));
  }
  spdlog::error("{}", last.message);
  return last;
}

Result<MetaObject> ChunkFetcher::read_meta(std::string_view path, const std::string& cache_name,
                                           const std::function<Status(const std::string&)>& check) {
  auto got = backend_.read_all(path, 1ull << 32);
  if (got.ok()) {
    auto verdict = check(*got);
    if (verdict.ok()) {
      if (options_.disk) {
        auto st = options_.disk->put_meta(cache_name, std::as_bytes(std::span(got->data(), got->size())));
        if (!st.ok()) note_write_error(st.error());
      }
      return MetaObject{std::move(got).value(), std::nullopt};
    }
    got = verdict.error();
  } else if (got.code() != ENOENT) {
    backend_errors_++;
  }
  if (options_.disk) {
    auto cached = options_.disk->get_meta(cache_name);
    if (cached.ok()) {
      std::string copy(reinterpret_cast<const char*>(cached->data()), cached->size());
      if (check(copy).ok()) {
        // The caller decides how loud this is: at start-up it is worth a warning, while a
        // refresh that keeps failing must not repeat one every tick.
        spdlog::debug("{}: {}; using the cached copy", path, got.error().message);
        return MetaObject{std::move(copy), got.error()};
      }
    }
  }
  return got.error();
}

Result<MetaVersion> ChunkFetcher::meta_version(std::string_view path) {
  EXTRAFS_TRY(info, backend_.stat(path));
  return MetaVersion{info.size, info.mtime_ns};
}

std::string ChunkFetcher::describe() const { return backend_.describe(); }

void ChunkFetcher::observe_fetch(std::chrono::steady_clock::duration d) {
  uint64_t ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
  double seconds = static_cast<double>(ns) / 1e9;
  size_t i = 0;
  while (i < kFetchBucketCount && seconds > kFetchBuckets[i]) ++i;
  fetch_hist_[i].fetch_add(1, std::memory_order_relaxed);
  fetch_ns_.fetch_add(ns, std::memory_order_relaxed);
}

void ChunkFetcher::note_write_error(const Error& e) {
  uint64_t total = ++cache_write_errors_;
  auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(write_log_mu_);
  // A full cache disk fails every put: one line now and then says so without flooding the log.
  if (write_errors_logged_ != 0 && now - write_logged_at_ < options_.write_error_log_interval) return;
  uint64_t since = total - write_errors_logged_;
  bool first = write_errors_logged_ == 0;
  write_logged_at_ = now;
  write_errors_logged_ = total;
  if (first) {
    spdlog::warn("cannot write to the cache (reads still succeed from the store; more failures are reported at most "
                 "once a minute): {}", e.message);
  } else {
    spdlog::warn("cannot write to the cache: {} failure{} since the last report, {} in all; reads still succeed: {}", since,
                 since == 1 ? "" : "s", total, e.message);
  }
}

uint64_t ChunkFetcher::cached_bytes() {
  if (options_.disk) return options_.disk->stats().bytes;
  std::lock_guard lock(mu_);
  return mem_bytes_;
}

FetcherStats ChunkFetcher::stats() const {
  FetcherStats s;
  s.bytes_fetched = bytes_fetched_;
  s.chunks_fetched = chunks_fetched_;
  s.cache_hits = cache_hits_;
  s.cache_misses = cache_misses_;
  s.merged_waits = merged_waits_;
  s.backend_errors = backend_errors_;
  s.corrupt_fetches = corrupt_fetches_;
  s.prefetches = prefetches_;
  s.cache_write_errors = cache_write_errors_;
  // The count is the sum of the buckets, so the +Inf bucket always equals it.
  uint64_t running = 0;
  for (size_t i = 0; i <= kFetchBucketCount; ++i) {
    running += fetch_hist_[i].load(std::memory_order_relaxed);
    if (i < kFetchBucketCount) s.fetch_buckets[i] = running;
  }
  s.fetch_count = running;
  s.fetch_seconds = static_cast<double>(fetch_ns_.load(std::memory_order_relaxed)) / 1e9;
  return s;
}

}  // namespace extrafs::cache
