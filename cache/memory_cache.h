// MemoryCache: the verified chunks a ChunkFetcher keeps in memory, by digest. Bounded by the bytes
// their buffers allocated (ChunkBuffer::allocated): a put beyond the bound drops the least
// recently used chunks (got or put last longest ago) until it holds, but never the chunk just
// put, so one chunk larger than the bound is still kept until the next put.
// Chunks are shared (ChunkData): one dropped here stays alive for whoever still holds it.
//
// Thread-safety: every method may be called from any thread. Its lock is never held across a
// call out of this class.
#pragma once

#include <cstdint>

#include "cache/chunk_buffer.h"
#include "common/hash.h"
#include "common/lru.h"
#include "common/thread_annotations.h"

namespace extrafs::cache {

class MemoryCache {
 public:
  explicit MemoryCache(uint64_t capacity) : capacity_(capacity) {}
  MemoryCache(const MemoryCache&) = delete;
  MemoryCache& operator=(const MemoryCache&) = delete;

  // The chunk, now the most recently used; null if not held.
  ChunkData get(const Digest128& d) EXCLUDES(mu_);
  // Whether the chunk is held; its place in the order is left alone.
  bool contains(const Digest128& d) EXCLUDES(mu_);
  // Keeps `data` (verified bytes of `d`) as the most recently used chunk; a chunk already held
  // is left as it is.
  void put(const Digest128& d, ChunkData data) EXCLUDES(mu_);
  // Bytes the held chunks' buffers allocated.
  uint64_t bytes() EXCLUDES(mu_);
  uint64_t capacity() const { return capacity_; }

 private:
  const uint64_t capacity_;
  Mutex mu_;
  Lru<Digest128, ChunkData, Digest128Hash> chunks_ GUARDED_BY(mu_);
  uint64_t bytes_ GUARDED_BY(mu_) = 0;
};

}  // namespace extrafs::cache
