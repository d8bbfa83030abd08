// ChunkFetcher: turns a chunk reference into verified raw bytes. It
//   - serves from its MemoryCache (memory_cache.h), then from the on-disk BlockCache (if one is
//     given),
//   - otherwise reads the stored bytes from the Backend, decompresses (lz4) and verifies the
//     xxh3-128 digest, keeps the chunk in memory, returns it, and has a CacheWriter store it on
//     disk in the background (the reader does not wait for the cache-file write),
//   - merges concurrent misses on one chunk so N readers cause one backend read,
//   - counts every outcome (see FetcherStats) for `extrafs stats`.
// Readahead and ordered prefixes (prefetch(), prefetch_sequence()) are scheduled and run by a
// PrefetchScheduler (prefetch_scheduler.h) whose workers fetch through get().
// It is also the store's MetaSource (see meta_source.h), through a StoreMeta (store_meta.h) on
// the same Backend and BlockCache: metadata objects (catalog, indexes) are read afresh and a copy
// kept in the BlockCache so that a host can serve what it has cached while the backend is down.
// Failed backend reads of either kind are counted in backend_errors.
//
// Thread-safety: every method may be called from any thread. The Backend and BlockCache must
// outlive the fetcher; the fetcher never exposes the Backend.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "cache/block_cache.h"
#include "cache/cache_writer.h"
#include "cache/chunk_ref.h"
#include "cache/memory_cache.h"
#include "cache/meta_source.h"
#include "cache/prefetch_scheduler.h"
#include "cache/store_meta.h"
#include "common/hash.h"
#include "common/latency_histogram.h"
#include "common/log_limiter.h"
#include "common/result.h"
#include "common/thread_annotations.h"

namespace extrafs::backend {
class Backend;
}  // namespace extrafs::backend

namespace extrafs::cache {

struct FetcherOptions {
  uint64_t memory_bytes = 64ull << 20;  // bound of the MemoryCache (bytes its chunks allocated)
  BlockCache* disk = nullptr;           // optional persistent cache
  unsigned prefetch_threads = 4;        // workers for prefetch(); 0 disables it
  size_t prefetch_queue = 64;           // pending prefetches beyond this are dropped
  // Fetched chunks waiting to be written to `disk` by the background writer; a fetch that finds
  // the queue full waits for room. 0 writes on the fetching thread instead.
  size_t cache_write_queue = 32;
  // A failed read from the store and a failed write to the disk cache are logged the first time,
  // then at most once per interval (each kind on its own): a dead server or a full disk fails
  // every request, and a removed layer every read of a chunk no cache holds.
  std::chrono::milliseconds error_log_interval{std::chrono::minutes(1)};
  // The clock of the short memory of a failed chunk (kFailureMemory) and of error_log_interval;
  // null: steady_clock::now. Unit tests pass one they move forward by hand instead of sleeping.
  std::function<std::chrono::steady_clock::time_point()> now;
};

// Upper bounds, in seconds, of the buckets of the backend fetch latency histogram (an implicit
// last bucket takes the rest).
inline constexpr double kFetchBuckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                           0.25,   0.5,   1,      2.5,   5,    10,    30};
inline constexpr size_t kFetchBucketCount = std::size(kFetchBuckets);

struct FetcherStats {
  uint64_t bytes_fetched = 0;         // bytes of chunks read from the backend (stored form)
  uint64_t meta_bytes_fetched = 0;    // bytes of metadata (catalog, indexes) read from the backend
  uint64_t own_bytes_fetched = 0;     // bytes of chunks read from the backend for get_own()
  uint64_t chunks_fetched = 0;        // chunks read from the backend
  uint64_t cache_hits = 0;            // chunks served from memory or disk
  uint64_t cache_misses = 0;          // chunks that had to be fetched
  uint64_t merged_waits = 0;          // readers that waited on another reader's fetch
  uint64_t backend_errors = 0;        // backend reads that failed
  uint64_t corrupt_fetches = 0;       // fetched chunks that failed verification or decompression
  uint64_t prefetches = 0;            // chunks brought into memory ahead of readers
  uint64_t cache_write_errors = 0;    // chunks or metadata the disk cache failed to store (disk
                                      // full, ...); the reader still gets its bytes
  uint64_t cache_writes_pending = 0;  // fetched chunks not yet written to the disk cache
  // Backend reads of chunks by how long they took, failed ones included: fetch_buckets[i] counts
  // those that took at most kFetchBuckets[i] seconds (cumulative, as Prometheus wants it).
  std::array<uint64_t, kFetchBucketCount> fetch_buckets{};
  uint64_t fetch_count = 0;  // backend reads of chunks timed
  double fetch_seconds = 0;  // their total duration
};

class ChunkFetcher : public MetaSource {
 public:
  ChunkFetcher(backend::Backend& backend, FetcherOptions options);
  ~ChunkFetcher() override;
  ChunkFetcher(const ChunkFetcher&) = delete;
  ChunkFetcher& operator=(const ChunkFetcher&) = delete;

  // The raw bytes of chunk `c`. Errors: EIO (backend failure or bytes that never verify),
  // ETIMEDOUT, ENOENT (object missing from the store).
  // `following`: chunks the caller will want next (the rest of its read, its readahead). When `c`
  // must come from the backend, those of them that lie right after it in the same object, and
  // are neither held locally nor being fetched, are read with it in one backend read of at most
  // kMaxCoalescedRead bytes; each is verified on its own and kept like any fetched chunk.
  Result<ChunkData> get(const ChunkRef& c, std::span<const ChunkRef> following = {});
  // get() for the daemon's own use, not a reader's (the docker metadata behind the image names
  // of `extrafs stats`, fs::FsCore::read_path): a chunk held in memory or on disk is taken as it
  // is; one that must come from the backend is fetched for this caller alone and kept nowhere,
  // and counts in FetcherStats::own_bytes_fetched only (not in the latency histogram), so that
  // the disk cache, the memory cache and the readers' counters stay what readers made them.
  // Errors as get() (a failure counts in backend_errors).
  Result<ChunkData> get_own(const ChunkRef& c);

  // Queues `c` to be brought into memory in the background (readahead), from disk or from the
  // backend. Returns at once; does nothing if the chunk is in memory or being fetched, or if the
  // queue is full.
  void prefetch(const ChunkRef& c);
  // prefetch() of each of `chunks`, queued together (as far as the queue has room): the workers
  // then find adjacent ones in one object side by side in the queue and read them from the
  // backend in one read (a directory's next small files, fs/readahead.h).
  void prefetch(std::span<const ChunkRef> chunks);
  // Returns once no prefetch work is queued, waiting or being done (or the fetcher is
  // interrupted): for tests, which then check what readahead brought without sleeping.
  void wait_prefetch_idle();

  // Queues `chunks` to be fetched from the backend in the background, all of them: a layer's
  // ordered prefix (fs/ordered_prefetch.h), given in object and offset order. Consecutive chunks
  // of one object go together in backend reads of at most kMaxCoalescedRead bytes, and those
  // reads are spread over the prefetch workers, so over several backend connections at once.
  // Chunks held locally or being fetched when their turn comes are skipped. Bounded: at most
  // half the memory cache's bound (raw bytes) is queued for the workers at a time; further runs wait for
  // room (several layers' prefixes at once, as `docker attach` of several images starts them),
  // up to a quarter of the disk cache's capacity, and without a disk cache none waits. What is
  // beyond that is left to readers. Returns at once, with how many chunks were queued or set
  // waiting (0 without prefetch workers). Each chunk fetched counts in FetcherStats::prefetches.
  size_t prefetch_sequence(std::vector<OwnedChunkRef> chunks);

  // Whether the chunk is held locally (memory or disk).
  bool is_cached(const Digest128& d);
  // Whether it is held locally or on its way (being fetched, or queued for the disk): get()
  // then costs the store nothing more (it waits for the fetch in progress, if any).
  bool held(const Digest128& d) EXCLUDES(mu_);

  // MetaSource. read_meta keeps what passes `check` in the disk cache (if there is one) under
  // `cache_name`, so bad bytes in the store never replace a good cached copy.
  Result<std::string> read_meta(std::string_view path, const std::string& cache_name, uint64_t limit,
                                const std::function<Status(const std::string&)>& check) override;
  Result<std::string> kept_meta(const std::string& cache_name) override;
  Result<MetaVersion> meta_version(std::string_view path) override;
  std::string describe() const override;

  // Returns once every chunk fetched before the call is written to the disk cache (or its write
  // has failed and been counted). For `extrafs stats` and tests; unmount does it too.
  void flush_cache_writes();

  // Nothing more will be read (the mount is going away): drops the prefetch work, stops its
  // workers and interrupts the backend (Backend::interrupt), so that every backend call in
  // progress or to come fails at once with ECANCELED. Chunks already fetched are still written
  // to the disk cache. Irreversible.
  void interrupt();

  FetcherStats stats() const;
  // Bytes of chunk data held locally: the disk cache if there is one, else the memory cache.
  uint64_t cached_bytes();

 private:
  struct InFlight {
    Mutex mu;
    CondVar cv;
    bool done GUARDED_BY(mu) = false;
    Result<ChunkData> result GUARDED_BY(mu) = make_error(EIO, "pending");
  };

  // The chunk from the disk cache or the writer's queue, or null.
  ChunkData local_get(const ChunkRef& c);
  // REQUIRES: the caller leads the in-flight entries of every chunk of `run` (adjacent chunks of
  // one object, run[0] first). Reads them from the backend with one read, verifies each; a chunk
  // that fails is read once more on its own. One result per chunk.
  std::vector<Result<ChunkData>> fetch_run(std::span<const ChunkRef> run);
  // Reads one chunk from the backend, up to `attempts` times while what comes back does not
  // verify.
  // `own`: for get_own(), counted in own_bytes_fetched_ only.
  Result<ChunkData> fetch_one(const ChunkRef& c, int attempts, bool own = false);
  // Decompresses and verifies the stored bytes of `c`, at `pos` in `buf`; EIO when they are
  // wrong. May take `buf` over when it holds exactly this uncompressed chunk.
  Result<ChunkData> decode(const ChunkRef& c, ChunkBuffer& buf, size_t pos);
  // Keeps a verified chunk: the memory cache, and the disk cache through the writer.
  void keep(const ChunkRef& c, const ChunkData& data);
  // Publishes the outcome of a fetch this thread leads to its waiters; a failure is remembered
  // (see failed_) if `remember_failure`.
  void finish(const Digest128& d, const std::shared_ptr<InFlight>& flight, const Result<ChunkData>& result,
              bool remember_failure);
  // Counts a failed disk-cache write and logs it, rate-limited.
  void note_write_error(const Error& e);
  // Counts a failed backend read of `chunks` chunks of `object` at `offset` and logs it, rate-limited.
  void note_read_error(std::string_view object, uint64_t offset, size_t chunks, const Error& e);

  backend::Backend& backend_;
  FetcherOptions options_;

  MemoryCache memory_;

  // Request merging: the fetches in progress, by digest (the first reader leads, the others wait
  // on its InFlight), and the failures just seen.
  Mutex mu_;
  std::unordered_map<Digest128, std::shared_ptr<InFlight>, Digest128Hash> inflight_ GUARDED_BY(mu_);
  // Chunks whose fetch just failed, with the time: a retry within kFailureMemory gets the same
  // error at once. The kernel re-issues a failed readahead as a plain read right away; without
  // this, one read() of a dead server would wait for the timeout twice. Any successful fetch
  // (the server is back) forgets them all.
  std::unordered_map<Digest128, std::chrono::steady_clock::time_point, Digest128Hash> failed_ GUARDED_BY(mu_);
  std::chrono::steady_clock::time_point now() const {
    return options_.now ? options_.now() : std::chrono::steady_clock::now();
  }
  static constexpr std::chrono::milliseconds kFailureMemory{500};

  std::atomic<uint64_t> bytes_fetched_{0}, own_bytes_fetched_{0}, chunks_fetched_{0}, cache_hits_{0}, cache_misses_{0},
      merged_waits_{0}, backend_errors_{0}, corrupt_fetches_{0}, cache_write_errors_{0};

  // Backend reads of chunks by how long they took.
  LatencyHistogram<kFetchBucketCount> fetch_hist_{kFetchBuckets};
  // When a failed disk-cache write and a failed backend read are logged (options_.error_log_interval).
  LogLimiter write_log_, read_log_;

  // The MetaSource part. After the counters and write_log_: it reports through note_write_error.
  StoreMeta meta_;

  // Null without a disk cache or with cache_write_queue == 0. Reset in the destructor, after
  // prefetch_ and before the rest: its thread reports errors through note_write_error.
  std::unique_ptr<CacheWriter> writer_;

  // The prefetch queues and workers; their callbacks are get(), held() and memory_. Reset first
  // in the destructor (the workers joined), so that what they fetched is in writer_'s queue
  // before it is flushed.
  std::unique_ptr<PrefetchScheduler> prefetch_;
};

}  // namespace extrafs::cache
