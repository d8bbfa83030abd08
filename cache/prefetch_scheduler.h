// PrefetchScheduler: the background work of bringing chunks in ahead of readers, for a
// ChunkFetcher. It owns what is waiting to be fetched and the threads that fetch it, and decides
// the order and the grouping; the fetching itself is the fetcher's (the `get` callback):
//   - readahead (readahead()): single chunks a reader will want next (the next chunks of a file,
//     the next small files of a directory). A bounded FIFO queue (PrefetchOptions::queue_limit;
//     beyond it they are dropped). A worker takes the oldest and the queued chunks right after it
//     in its object (one backend read, at most kMaxCoalescedRead stored bytes), up to the first
//     one marked on disk; a chunk marked on disk goes alone, so that chunks on disk are read by
//     several workers at once.
//   - sequences (sequence()): a layer's ordered prefix, all of it, in runs of adjacent chunks
//     (one backend read each). Runs queued or being fetched are bounded by
//     PrefetchOptions::sequence_budget raw bytes; further runs wait, FIFO, up to wait_limit more
//     bytes, and are admitted in order as fetched runs make room (a run alone is always
//     admitted); beyond that they are dropped. A failed fetch drops every run queued or waiting
//     (the backend is failing: readers fetch and report what they need).
// Readahead goes first: a reader is at the end of what it has.
//
// Ownership: the callbacks (PrefetchSource) are the owner's and must stay valid until the
// scheduler is destroyed; the destructor stops and joins the workers, so an owner whose
// callbacks use its members destroys the scheduler before those members (ChunkFetcher does so
// before flushing its cache writer).
//
// Thread-safety: every method may be called from any thread. Lock: `mu_`, a leaf: the callbacks
// are called with it not held, by the workers only.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include "cache/chunk_ref.h"
#include "common/hash.h"
#include "common/thread_annotations.h"

namespace extrafs::cache {

struct PrefetchOptions {
  unsigned threads = 4;          // workers; 0: nothing is ever queued
  size_t queue_limit = 64;       // readahead chunks queued at most; more are dropped
  uint64_t sequence_budget = 0;  // raw bytes of sequence runs queued or being fetched at a time
  uint64_t wait_limit = 0;       // raw bytes of sequence runs that may wait for that budget
};

// What the scheduler asks of its owner. Called by the workers, with no scheduler lock held.
struct PrefetchSource {
  // Brings chunk `c` into memory, reading with it those of `following` that lie right after it
  // (ChunkFetcher::get). False if it failed.
  std::function<bool(const ChunkRef& c, std::span<const ChunkRef> following)> get;
  // Whether the chunk is held anywhere already (memory, disk, on its way to either): a sequence
  // skips those.
  std::function<bool(const Digest128&)> held;
  // Whether the chunk is in memory: a readahead job for it is dropped.
  std::function<bool(const Digest128&)> in_memory;
};

// A readahead request: the chunk, and whether it was on disk when asked for (so the worker reads
// it from there alone instead of making it part of a backend read; checked by the caller, so
// that the scheduler's lock is never held across a call into the disk cache).
struct ReadaheadItem {
  OwnedChunkRef chunk;
  bool on_disk = false;
};

class PrefetchScheduler {
 public:
  PrefetchScheduler(PrefetchOptions options, PrefetchSource source);
  // Stops (as stop()) and joins the workers: a worker in a `get` call finishes it first.
  ~PrefetchScheduler();
  PrefetchScheduler(const PrefetchScheduler&) = delete;
  PrefetchScheduler& operator=(const PrefetchScheduler&) = delete;

  // Queues `items` for readahead, in order, all under one hold of the lock (so that a worker
  // finds adjacent ones side by side); skips those already queued, stops at the queue's bound.
  // Returns how many were queued.
  size_t readahead(std::vector<ReadaheadItem> items) EXCLUDES(mu_);
  // Queues `chunks` (in object and offset order) as sequence runs; chunks of stored length 0 are
  // skipped. Returns how many were queued or set waiting (0 without workers or once stopped).
  size_t sequence(std::vector<OwnedChunkRef> chunks) EXCLUDES(mu_);
  // Drops everything queued or waiting; the workers end after the job in hand. Irreversible.
  void stop() EXCLUDES(mu_);
  // Returns once nothing is queued, waiting or being fetched, or once stopped.
  void wait_idle() EXCLUDES(mu_);

  // Chunks brought in (or found in memory on the way) by the workers.
  uint64_t prefetches() const { return prefetches_.load(std::memory_order_relaxed); }
  // What is queued now, for tests.
  struct Load {
    size_t readahead = 0;          // queued readahead chunks
    size_t runs = 0, waiting = 0;  // sequence runs admitted (queued or being fetched), waiting
    uint64_t runs_bytes = 0, waiting_bytes = 0;
  };
  Load load() const EXCLUDES(mu_);

 private:
  using Run = std::pair<std::vector<OwnedChunkRef>, uint64_t>;  // chunks, raw bytes
  void worker() EXCLUDES(mu_);
  // A worker's readahead job: `job` and the queued chunks that follow it.
  void fetch_readahead(OwnedChunkRef& job, std::vector<OwnedChunkRef>& following) EXCLUDES(mu_);
  // A worker's sequence job: one admitted run.
  void fetch_run(std::vector<OwnedChunkRef>& run, uint64_t raw) EXCLUDES(mu_);
  // Moves waiting runs to runs_ while they fit the budget (FIFO: the first that does not fit
  // stops the rest).
  void admit_waiting_locked() REQUIRES(mu_);
  // Drops every run queued or waiting (not those being fetched: they take their bytes off
  // runs_bytes_ when they end).
  size_t drop_runs_locked() REQUIRES(mu_);
  bool idle_locked() const REQUIRES(mu_);

  const PrefetchOptions options_;
  const PrefetchSource source_;

  mutable Mutex mu_;
  CondVar work_cv_;  // work queued, or stopping
  CondVar idle_cv_;  // the work ran out (wait_idle)
  std::deque<ReadaheadItem> queue_ GUARDED_BY(mu_);
  std::deque<Run> runs_ GUARDED_BY(mu_), waiting_ GUARDED_BY(mu_);
  uint64_t runs_bytes_ GUARDED_BY(mu_) = 0;  // runs queued or being fetched
  uint64_t waiting_bytes_ GUARDED_BY(mu_) = 0;
  unsigned busy_ GUARDED_BY(mu_) = 0;  // workers with a job in hand
  bool stopping_ GUARDED_BY(mu_) = false;

  std::atomic<uint64_t> prefetches_{0};
  std::vector<std::thread> workers_;  // last: started once the rest is set up
};

}  // namespace extrafs::cache
