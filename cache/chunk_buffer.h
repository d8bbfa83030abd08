// ChunkBuffer: the bytes of one chunk in memory. Allocated without zeroing (every byte is written
// by a read or by decompression before anyone looks at it: a 1 MiB memset per chunk was a tenth of
// the daemon's time on a block-cache read), its start aligned as the caller asks (O_DIRECT reads
// need the block size). It may show only part of what it allocated (a block-cache file is read
// whole, header included; narrow() then skips the header).
//
// Freed buffers of 64 KiB and more go to a small process-wide pool (at most kPoolSlots of them,
// the oldest freed when it is full) and are handed out again for the same size and alignment.
// Without it a block-cache read faulted every chunk's memory in afresh (glibc gives such blocks
// back to the kernel): the kernel zeroing, charging and mapping 256 pages per chunk was 29% of the
// daemon's time. So up to kPoolSlots idle chunk buffers (8 MiB of 1 MiB chunks) stay allocated
// besides what the caches count.
// A buffer of that size that the pool cannot give has its pages mapped in at once
// (MADV_POPULATE_WRITE) rather than faulted in one by one as it is filled (chunk_buffer.cc).
//
// Ownership: owns its allocation; move-only. Shared between the caches and the readers, read-only,
// as ChunkData. Thread-safety: a const ChunkBuffer may be read from any thread; building one is
// the builder's business.
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <span>

namespace extrafs::cache {

// Gives what ChunkBuffer allocated back to the pool, or frees it. Thread-safe.
struct PooledFree {
  size_t size = 0;  // bytes allocated
  size_t align = 0;
  void operator()(std::byte* p) const;
};

class ChunkBuffer {
 public:
  ChunkBuffer() = default;

  // `size` bytes, not initialised, the first at an address aligned to `align` (a power of two).
  static ChunkBuffer uninitialised(size_t size, size_t align = kDefaultAlign);
  // As uninitialised(size), for bytes that live only as long as one backend read (compressed
  // chunks before decompression): the allocation is rounded up to a multiple of kPoolStep so
  // that the pool hands it out again for the next read, whose size differs.
  static ChunkBuffer scratch(size_t size);
  // A copy of `bytes`.
  static ChunkBuffer copy_of(std::span<const std::byte> bytes);

  std::byte* data() { return mem_.get() + offset_; }
  const std::byte* data() const { return mem_.get() + offset_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::span<const std::byte> span() const { return {data(), size_}; }
  // Bytes allocated: what the buffer costs in memory, for the caches' accounting.
  size_t allocated() const { return allocated_; }

  // Shows [offset, offset + len) of the allocation from now on. REQUIRES: offset + len <=
  // allocated().
  void narrow(size_t offset, size_t len);

  static constexpr size_t kDefaultAlign = 64;
  // Idle buffers kept for reuse, and the least size worth keeping.
  static constexpr size_t kPoolSlots = 8;
  static constexpr size_t kPoolMinSize = size_t{64} << 10;
  static constexpr size_t kPoolStep = size_t{256} << 10;

 private:
  std::unique_ptr<std::byte[], PooledFree> mem_;
  size_t offset_ = 0;
  size_t size_ = 0;
  size_t allocated_ = 0;
};

// Same bytes (for tests and checks).
bool operator==(const ChunkBuffer& a, std::span<const std::byte> b);

// The raw, verified bytes of one chunk, shared between the caches and the readers.
using ChunkData = std::shared_ptr<const ChunkBuffer>;

}  // namespace extrafs::cache
