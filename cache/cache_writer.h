// CacheWriter: stores verified chunks in a BlockCache from one background thread, so that a reader
// whose chunk was just fetched gets the bytes at once instead of waiting for the cache-file write
// (a temporary file, a write and a rename).
//
// Bounded: at most `max_pending` chunks wait to be written. Their bytes are shared with whoever
// holds the ChunkData (the fetcher's memory LRU, the reader), never copied. A put() that finds the
// queue full waits until the writer has made room, so memory stays bounded and no verified chunk
// is dropped on the floor; waiting callers get room in the order they asked (first come, first
// served), so none waits longer than the writes queued ahead of it. A chunk waiting in the queue can be read back with
// pending(), so a reader never fetches again what is about to be on disk.
//
// Failed writes (disk full, ...) are passed to `on_error` from the writer thread; the reader has
// long had its bytes.
//
// Thread-safety: every method may be called from any thread. The BlockCache must outlive the
// writer; the destructor writes everything still queued, then joins the thread.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cache/block_cache.h"
#include "cache/chunk_buffer.h"
#include "common/hash.h"
#include "common/result.h"
#include "common/thread_annotations.h"

namespace extrafs::cache {

class CacheWriter {
 public:
  using ErrorSink = std::function<void(const Error&)>;

  // REQUIRES: max_pending >= 1.
  CacheWriter(BlockCache& disk, size_t max_pending, ErrorSink on_error);
  ~CacheWriter();
  CacheWriter(const CacheWriter&) = delete;
  CacheWriter& operator=(const CacheWriter&) = delete;

  // Queues `data` (already verified against `d`) to be stored. Returns at once unless
  // `max_pending` chunks are already waiting. A chunk already queued is not queued twice.
  void put(const Digest128& d, ChunkData data);

  // The bytes of chunk `d` if it is queued or being written, else null.
  ChunkData pending(const Digest128& d);

  // Returns once every chunk queued before the call has been written (or has failed).
  void flush();

  // Chunks queued or being written.
  size_t pending_count();

  // Callers of put() waiting for room now.
  size_t waiting_for_room();

 private:
  void run();

  BlockCache& disk_;
  const size_t max_pending_;
  ErrorSink on_error_;

  Mutex mu_;
  CondVar work_cv_;  // the writer waits for work or stop
  CondVar room_cv_;  // producers wait for room; flush() waits for progress
  std::deque<std::pair<Digest128, ChunkData>> queue_ GUARDED_BY(mu_);
  std::unordered_map<Digest128, ChunkData, Digest128Hash> pending_ GUARDED_BY(mu_);  // queued + being written
  uint64_t queued_seq_ GUARDED_BY(mu_) = 0;                                          // chunks ever queued
  uint64_t written_seq_ GUARDED_BY(mu_) = 0;  // chunks ever taken off the queue and written (or failed)
  uint64_t next_ticket_ GUARDED_BY(mu_) = 0;  // put() callers ever (the next one's ticket)
  uint64_t turn_ GUARDED_BY(mu_) = 0;         // the ticket whose turn it is to take room
  size_t waiting_ GUARDED_BY(mu_) = 0;        // put() callers waiting for room
  bool stopping_ GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: started once everything above is constructed
};

}  // namespace extrafs::cache
