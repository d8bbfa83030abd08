#include "cache/memory_cache.h"

#include <utility>
#include <vector>

namespace extrafs::cache {

ChunkData MemoryCache::get(const Digest128& d) {
  MutexLock lock(&mu_);
  ChunkData* hit = chunks_.touch(d);
  return hit ? *hit : nullptr;
}

bool MemoryCache::contains(const Digest128& d) {
  MutexLock lock(&mu_);
  return chunks_.contains(d);
}

void MemoryCache::put(const Digest128& d, ChunkData data) {
  // Dropped chunks are released after the lock: the last reference frees the buffer.
  std::vector<ChunkData> dropped;
  {
    MutexLock lock(&mu_);
    const uint64_t size = data->allocated();
    if (!chunks_.insert(d, std::move(data)).second) return;
    bytes_ += size;
    while (bytes_ > capacity_ && chunks_.size() > 1) {
      ChunkData oldest = chunks_.pop_oldest().second;
      bytes_ -= oldest->allocated();
      dropped.push_back(std::move(oldest));
    }
  }
}

uint64_t MemoryCache::bytes() {
  MutexLock lock(&mu_);
  return bytes_;
}

}  // namespace extrafs::cache
