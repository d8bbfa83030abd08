// An index's chunk records as the cache layer fetches them (cache::ChunkRef, cache/chunk_ref.h).
#pragma once

#include <cstring>

#include "cache/chunk_fetcher.h"
#include "format/layer_index.h"

namespace extrafs::fs {

inline Digest128 chunk_digest(const format::ChunkRecord& c) {
  Digest128 d;
  std::memcpy(d.bytes.data(), c.digest, 16);
  return d;
}

// The reference points into `idx` (object path), which must outlive its use.
inline cache::ChunkRef chunk_ref(const format::LayerIndex& idx, const format::ChunkRecord& c) {
  cache::ChunkRef ref;
  ref.object = idx.object_path(c.object);
  ref.offset = c.offset;
  ref.stored_len = c.stored_len;
  ref.raw_len = c.raw_len;
  ref.lz4 = (c.flags & format::kChunkLz4) != 0;
  ref.digest = chunk_digest(c);
  return ref;
}

}  // namespace extrafs::fs
