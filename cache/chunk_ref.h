// ChunkRef: where a chunk's bytes are in the store and what they must hash to, as the cache
// layer's classes take it (ChunkFetcher, PrefetchScheduler). Plain values; no thread rules.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/hash.h"

namespace extrafs::cache {

// Where a chunk's bytes are and what they must hash to (mirrors format::ChunkRecord, without
// depending on fs/).
struct ChunkRef {
  std::string_view object;  // path relative to the store root
  uint64_t offset = 0;
  uint32_t stored_len = 0;
  uint32_t raw_len = 0;
  bool lz4 = false;
  Digest128 digest;
};

// Adjacent chunks fetched together are read with one backend read of at most this many bytes:
// the NFS backend's READ cap, so one round trip.
inline constexpr uint64_t kMaxCoalescedRead = uint64_t{1} << 20;

// A chunk reference that owns its object path, for work queued beyond the caller's lifetime.
struct OwnedChunkRef {
  std::string object;
  ChunkRef ref;  // ref.object is re-pointed at `object` when used
};

}  // namespace extrafs::cache
