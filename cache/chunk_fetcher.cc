#include "cache/chunk_fetcher.h"

#include <fmt/format.h>
#include <lz4.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "backend/backend.h"
#include "common/thread_annotations.h"

namespace extrafs::cache {

ChunkFetcher::ChunkFetcher(backend::Backend& backend, FetcherOptions options)
    : backend_(backend),
      options_(options),
      memory_(options.memory_bytes),
      write_log_(options.error_log_interval),
      read_log_(options.error_log_interval),
      meta_(backend, options.disk, [this](const Error& e) { note_write_error(e); }) {
  if (options_.disk && options_.cache_write_queue > 0)
    writer_ = std::make_unique<CacheWriter>(*options_.disk, options_.cache_write_queue,
                                            [this](const Error& e) { note_write_error(e); });
  PrefetchOptions po;
  po.threads = options_.prefetch_threads;
  po.queue_limit = options_.prefetch_queue;
  // Sequences: half the memory cache at a time, so that what they bring is still in memory when
  // the container reads it; beyond that, runs wait for room: with a disk cache up to a quarter
  // of it (the chunks land there, and a container reads them from there); without one, nothing
  // waits (they would push each other out of memory) and the rest is left to readers.
  po.sequence_budget = options_.memory_bytes / 2;
  po.wait_limit = options_.disk ? options_.disk->stats().capacity / 4 : 0;
  PrefetchSource source;
  source.get = [this](const ChunkRef& c, std::span<const ChunkRef> following) { return get(c, following).ok(); };
  source.held = [this](const Digest128& d) { return held(d); };
  source.in_memory = [this](const Digest128& d) { return memory_.contains(d); };
  prefetch_ = std::make_unique<PrefetchScheduler>(po, std::move(source));
}

ChunkFetcher::~ChunkFetcher() {
  prefetch_.reset();  // its workers fetch through this fetcher, and put into writer_
  writer_.reset();    // writes what is queued
}

void ChunkFetcher::interrupt() {
  prefetch_->stop();
  backend_.interrupt();
}

void ChunkFetcher::flush_cache_writes() {
  if (writer_) writer_->flush();
}

void ChunkFetcher::prefetch(const ChunkRef& c) { prefetch(std::span(&c, 1)); }

void ChunkFetcher::prefetch(std::span<const ChunkRef> chunks) {
  if (options_.prefetch_threads == 0 || chunks.empty()) return;
  // A chunk on disk but not in memory is still worth reading ahead: the disk read and the
  // verification then happen before the reader asks.
  std::vector<ReadaheadItem> items;
  items.reserve(chunks.size());
  for (const ChunkRef& c : chunks) {
    if (memory_.contains(c.digest)) continue;
    {
      MutexLock lock(&mu_);
      if (inflight_.count(c.digest)) continue;
    }
    items.push_back({OwnedChunkRef{std::string(c.object), c}, options_.disk && options_.disk->contains(c.digest)});
  }
  prefetch_->readahead(std::move(items));
}

void ChunkFetcher::wait_prefetch_idle() { prefetch_->wait_idle(); }

size_t ChunkFetcher::prefetch_sequence(std::vector<OwnedChunkRef> chunks) {
  return prefetch_->sequence(std::move(chunks));
}

bool ChunkFetcher::held(const Digest128& d) {
  {
    MutexLock lock(&mu_);
    if (inflight_.count(d)) return true;
  }
  return is_cached(d);
}

bool ChunkFetcher::is_cached(const Digest128& d) {
  if (memory_.contains(d)) return true;
  if (writer_ && writer_->pending(d)) return true;
  return options_.disk && options_.disk->contains(d);
}

Result<ChunkData> ChunkFetcher::get_own(const ChunkRef& c) {
  // Held locally: taken as it is (the reader who brought it was counted then).
  if (auto hit = memory_.get(c.digest)) return hit;
  if (auto local = local_get(c)) return local;
  // Else fetched for this caller alone: no in-flight entry (a reader wanting the same chunk at
  // that moment fetches it too, counted and kept as its own), nothing kept.
  return fetch_one(c, 2, /*own=*/true);
}

Result<ChunkData> ChunkFetcher::get(const ChunkRef& c, std::span<const ChunkRef> following) {
  if (auto hit = memory_.get(c.digest)) {
    cache_hits_++;
    return hit;
  }
  std::shared_ptr<InFlight> flight;
  bool leader = false;
  {
    MutexLock lock(&mu_);
    if (auto f = failed_.find(c.digest); f != failed_.end()) {
      if (now() - f->second < kFailureMemory)
        return make_error(EIO,
                          "chunk of " + std::string(c.object) + " at " + std::to_string(c.offset) + " failed just now");
      failed_.erase(f);
    }
    auto [it, inserted] = inflight_.try_emplace(c.digest);
    if (inserted) it->second = std::make_shared<InFlight>();
    flight = it->second;
    leader = inserted;
  }
  if (!leader) {
    merged_waits_++;
    MutexLock lock(&flight->mu);
    while (!flight->done) flight->cv.wait(&flight->mu);
    if (flight->result.ok()) cache_hits_++;
    return flight->result;
  }
  if (auto local = local_get(c)) {
    cache_hits_++;
    finish(c.digest, flight, local, true);
    return local;
  }
  cache_misses_++;

  // The run: `c`, then the following chunks that sit right after it in the object, are not held
  // locally and that no one else is fetching; this thread leads them all.
  std::vector<ChunkRef> run{c};
  std::vector<std::shared_ptr<InFlight>> flights{flight};
  uint64_t end = c.offset + c.stored_len, total = c.stored_len;
  for (const ChunkRef& f : following) {
    if (f.object != c.object || f.offset != end || f.stored_len == 0 || total + f.stored_len > kMaxCoalescedRead) break;
    if (f.digest == c.digest || memory_.get(f.digest) || (writer_ && writer_->pending(f.digest)) ||
        (options_.disk && options_.disk->contains(f.digest)))
      break;
    MutexLock lock(&mu_);
    if (failed_.count(f.digest)) break;
    auto [it, inserted] = inflight_.try_emplace(f.digest);
    if (!inserted) break;
    it->second = std::make_shared<InFlight>();
    flights.push_back(it->second);
    run.push_back(f);
    end += f.stored_len;
    total += f.stored_len;
  }
  cache_misses_ += run.size() - 1;
  auto results = fetch_run(run);
  // Waiters first (the chunk is in memory once finish() returns), then the disk cache. Only the
  // chunk asked for is remembered as failed: the others were not asked for yet.
  for (size_t i = 0; i < run.size(); ++i) finish(run[i].digest, flights[i], results[i], /*remember_failure=*/i == 0);
  for (size_t i = 0; i < run.size(); ++i)
    if (results[i].ok()) keep(run[i], results[i].value());
  return results[0];
}

void ChunkFetcher::finish(const Digest128& d, const std::shared_ptr<InFlight>& flight, const Result<ChunkData>& result,
                          bool remember_failure) {
  if (result.ok()) memory_.put(d, result.value());
  {
    MutexLock lock(&mu_);
    inflight_.erase(d);
    if (!result.ok()) {
      if (remember_failure) {
        if (failed_.size() > 4096) failed_.clear();
        failed_[d] = now();
      }
    } else if (!failed_.empty()) {
      failed_.clear();
    }
  }
  {
    MutexLock lock(&flight->mu);
    flight->result = result;
    flight->done = true;
  }
  flight->cv.notify_all();
}

ChunkData ChunkFetcher::local_get(const ChunkRef& c) {
  // Fetched a moment ago and dropped from memory, but not yet on disk.
  if (writer_) {
    if (auto queued = writer_->pending(c.digest)) return queued;
  }
  if (options_.disk) {
    auto got = options_.disk->get(c.digest);
    if (got.ok() && got->size() == c.raw_len) return std::make_shared<const ChunkBuffer>(std::move(got).value());
  }
  return nullptr;
}

void ChunkFetcher::keep(const ChunkRef& c, const ChunkData& data) {
  if (writer_) {
    writer_->put(c.digest, data);
  } else if (options_.disk) {
    if (auto st = options_.disk->put(c.digest, data->span()); !st.ok()) note_write_error(st.error());
  }
}

std::vector<Result<ChunkData>> ChunkFetcher::fetch_run(std::span<const ChunkRef> run) {
  std::vector<Result<ChunkData>> out;
  if (run.size() == 1) {
    out.push_back(fetch_one(run[0], 2));
    return out;
  }
  uint64_t total = 0;
  for (const auto& c : run) total += c.stored_len;
  ChunkBuffer stored = ChunkBuffer::scratch(total);
  auto started = std::chrono::steady_clock::now();
  auto n = backend_.read(run[0].object, run[0].offset, std::span(stored.data(), stored.size()));
  fetch_hist_.observe(std::chrono::steady_clock::now() - started);
  if (!n.ok()) {
    note_read_error(run[0].object, run[0].offset, run.size(), n.error());
    for (size_t i = 0; i < run.size(); ++i) out.push_back(n.error());
    return out;
  }
  bytes_fetched_ += *n;
  uint64_t pos = 0;
  for (const auto& c : run) {
    Result<ChunkData> r = make_error(EIO, "short read");
    if (pos + c.stored_len <= *n) {
      chunks_fetched_++;
      r = decode(c, stored, pos);
    }
    // Short or bad: caught mid-replacement or corrupted in transit; this chunk alone, again.
    out.push_back(r.ok() ? std::move(r) : fetch_one(c, 1));
    pos += c.stored_len;
  }
  return out;
}

Result<ChunkData> ChunkFetcher::decode(const ChunkRef& c, ChunkBuffer& buf, size_t pos) {
  ChunkBuffer raw;
  const std::byte* stored = buf.data() + pos;
  if (c.lz4) {
    raw = ChunkBuffer::uninitialised(c.raw_len);
    int got = LZ4_decompress_safe(reinterpret_cast<const char*>(stored), reinterpret_cast<char*>(raw.data()),
                                  static_cast<int>(c.stored_len), static_cast<int>(c.raw_len));
    if (got != static_cast<int>(c.raw_len)) {
      corrupt_fetches_++;
      return make_error(EIO, fmt::format("chunk of {} at {} does not decompress", c.object, c.offset));
    }
  } else if (pos == 0 && buf.size() == c.stored_len) {
    raw = std::move(buf);  // the whole buffer is this chunk: no copy
  } else {
    raw = ChunkBuffer::copy_of(std::span(stored, c.stored_len));
  }
  if (xxh3_128(raw.data(), raw.size()) != c.digest) {
    corrupt_fetches_++;
    return make_error(EIO, fmt::format("chunk of {} at {} fails verification", c.object, c.offset));
  }
  return std::make_shared<const ChunkBuffer>(std::move(raw));
}

Result<ChunkData> ChunkFetcher::fetch_one(const ChunkRef& c, int attempts, bool own) {
  // One retry: a chunk that fails verification may have been caught mid-replacement or
  // corrupted in transit; a second failure is reported as EIO.
  Error last = make_error(EIO, "unreachable");
  for (int attempt = 0; attempt < attempts; ++attempt) {
    ChunkBuffer stored = ChunkBuffer::scratch(c.stored_len);
    auto started = std::chrono::steady_clock::now();
    auto n = backend_.read(c.object, c.offset, std::span(stored.data(), stored.size()));
    if (!own) fetch_hist_.observe(std::chrono::steady_clock::now() - started);
    if (!n.ok()) {
      note_read_error(c.object, c.offset, 1, n.error());
      return n.error();
    }
    if (own) {
      own_bytes_fetched_ += *n;
    } else {
      bytes_fetched_ += *n;
      chunks_fetched_++;
    }
    if (*n != c.stored_len) {
      corrupt_fetches_++;
      last = make_error(EIO, fmt::format("{} is shorter than the index says (offset {})", c.object, c.offset));
      continue;
    }
    auto data = decode(c, stored, 0);
    if (data.ok()) return data;
    last = data.error();
  }
  spdlog::error("{}", last.message);
  return last;
}

Result<std::string> ChunkFetcher::read_meta(std::string_view path, const std::string& cache_name, uint64_t limit,
                                            const std::function<Status(const std::string&)>& check) {
  return meta_.read_meta(path, cache_name, limit, check);
}

Result<std::string> ChunkFetcher::kept_meta(const std::string& cache_name) { return meta_.kept_meta(cache_name); }

Result<MetaVersion> ChunkFetcher::meta_version(std::string_view path) { return meta_.meta_version(path); }

std::string ChunkFetcher::describe() const { return meta_.describe(); }

void ChunkFetcher::note_write_error(const Error& e) {
  ++cache_write_errors_;
  // A full cache disk fails every put: one line now and then says so without flooding the log.
  const auto due = write_log_.note(now());
  if (!due) return;
  if (due->first) {
    spdlog::warn("cannot write to the cache (reads still succeed from the store; more failures are reported {}): {}",
                 write_log_.cadence(), e.message);
  } else {
    spdlog::warn("cannot write to the cache: {}; reads still succeed: {}", due->counts("failure"), e.message);
  }
}

void ChunkFetcher::note_read_error(std::string_view object, uint64_t offset, size_t chunks, const Error& e) {
  ++backend_errors_;
  const auto due = read_log_.note(now());
  if (!due) return;
  const std::string what = chunks == 1 ? fmt::format("{} at {}", object, offset)
                                       : fmt::format("{} at {} ({} chunks)", object, offset, chunks);
  if (due->first) {
    spdlog::warn("read of {} failed (more failures are reported {}): {}", what, read_log_.cadence(), e.message);
  } else {
    spdlog::warn("store reads: {}; the last: read of {}: {}", due->counts("failure"), what, e.message);
  }
}

uint64_t ChunkFetcher::cached_bytes() {
  if (options_.disk) return options_.disk->stats().bytes;
  return memory_.bytes();
}

FetcherStats ChunkFetcher::stats() const {
  FetcherStats s;
  s.bytes_fetched = bytes_fetched_;
  s.meta_bytes_fetched = meta_.bytes_fetched();
  s.own_bytes_fetched = own_bytes_fetched_;
  s.chunks_fetched = chunks_fetched_;
  s.cache_hits = cache_hits_;
  s.cache_misses = cache_misses_;
  s.merged_waits = merged_waits_;
  s.backend_errors = backend_errors_ + meta_.backend_errors();
  s.corrupt_fetches = corrupt_fetches_;
  s.prefetches = prefetch_->prefetches();
  s.cache_write_errors = cache_write_errors_;
  s.cache_writes_pending = writer_ ? writer_->pending_count() : 0;
  const auto hist = fetch_hist_.snapshot();
  s.fetch_buckets = hist.cumulative;
  s.fetch_count = hist.count;
  s.fetch_seconds = hist.seconds;
  return s;
}

}  // namespace extrafs::cache
