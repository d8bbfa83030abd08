#include "cache/chunk_buffer.h"

#include <algorithm>
#include <cstring>

#include "common/result.h"

namespace extrafs::cache {

ChunkBuffer ChunkBuffer::uninitialised(size_t size, size_t align) {
  EXTRAFS_INVARIANT(align != 0 && (align & (align - 1)) == 0, "ChunkBuffer alignment must be a power of two");
  ChunkBuffer b;
  // new[] of std::byte default-initialises: no zeroing. One byte at least, so that data() is a
  // real pointer even for an empty chunk.
  const size_t n = std::max<size_t>(size, 1);
  b.mem_ = std::unique_ptr<std::byte[], AlignedFree>(new (std::align_val_t(align)) std::byte[n], AlignedFree{align});
  b.size_ = size;
  b.allocated_ = size;
  return b;
}

ChunkBuffer ChunkBuffer::copy_of(std::span<const std::byte> bytes) {
  ChunkBuffer b = uninitialised(bytes.size());
  if (!bytes.empty()) std::memcpy(b.data(), bytes.data(), bytes.size());
  return b;
}

void ChunkBuffer::narrow(size_t offset, size_t len) {
  EXTRAFS_INVARIANT(offset <= allocated_ && len <= allocated_ - offset, "ChunkBuffer::narrow outside the buffer");
  offset_ = offset;
  size_ = len;
}

bool operator==(const ChunkBuffer& a, std::span<const std::byte> b) {
  return a.size() == b.size() && (b.empty() || std::memcmp(a.data(), b.data(), b.size()) == 0);
}

}  // namespace extrafs::cache
