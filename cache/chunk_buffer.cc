#include "cache/chunk_buffer.h"

#include <algorithm>
#include <cstring>
#include <deque>

#include <sys/mman.h>
#include <unistd.h>

#include "common/result.h"
#include "common/thread_annotations.h"

namespace extrafs::cache {

namespace {

struct Idle {
  std::byte* mem;
  size_t size;
  size_t align;
};

struct Pool {
  Mutex mu;
  std::deque<Idle> idle GUARDED_BY(mu);  // back = freed last
};

// Never destroyed: buffers held by static objects may be freed after main() returns.
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

void free_now(std::byte* p, size_t align) { ::operator delete[](p, std::align_val_t(align)); }

std::byte* take_idle(size_t size, size_t align) {
  Pool& pl = pool();
  MutexLock lock(&pl.mu);
  for (auto it = pl.idle.rbegin(); it != pl.idle.rend(); ++it) {
    if (it->size == size && it->align == align) {
      std::byte* p = it->mem;
      pl.idle.erase(std::next(it).base());
      return p;
    }
  }
  return nullptr;
}

// Maps in the pages of a fresh allocation with one system call instead of one page fault per
// 4 KiB page. Measured on the start of tests/bench/order_ab.sh from an empty cache (a local
// directory store, perf and the threads' schedstat): the faults of decompressing into fresh 1 MiB
// buffers and of reading into them were a quarter of the daemon's time, most of it the exception
// entry and exit of each fault; populated in one call, the daemon's CPU for that start fell from
// ~97 ms to ~72 ms (BENCHMARKS.md, "Page faults on the fetch path"). Kernels before 5.14 refuse
// the advice, and the pages are then faulted in as they are written, as before.
void populate(std::byte* p, size_t n) {
#ifdef MADV_POPULATE_WRITE
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + n) & ~(page - 1);
  if (e > b) (void)::madvise(reinterpret_cast<void*>(b), e - b, MADV_POPULATE_WRITE);
#else
  (void)p;
  (void)n;
#endif
}

}  // namespace

void PooledFree::operator()(std::byte* p) const {
  if (size < ChunkBuffer::kPoolMinSize) {
    free_now(p, align);
    return;
  }
  Idle evicted{nullptr, 0, 0};
  {
    Pool& pl = pool();
    MutexLock lock(&pl.mu);
    if (pl.idle.size() >= ChunkBuffer::kPoolSlots) {
      evicted = pl.idle.front();
      pl.idle.pop_front();
    }
    pl.idle.push_back({p, size, align});
  }
  if (evicted.mem) free_now(evicted.mem, evicted.align);
}

ChunkBuffer ChunkBuffer::uninitialised(size_t size, size_t align) {
  EXTRAFS_INVARIANT(align != 0 && (align & (align - 1)) == 0, "ChunkBuffer alignment must be a power of two");
  ChunkBuffer b;
  // One byte at least, so that data() is a real pointer even for an empty chunk.
  const size_t n = std::max<size_t>(size, 1);
  std::byte* p = n >= kPoolMinSize ? take_idle(n, align) : nullptr;
  // new[] of std::byte default-initialises: no zeroing.
  if (!p) {
    p = new (std::align_val_t(align)) std::byte[n];
    if (n >= kPoolMinSize) populate(p, n);
  }
  b.mem_ = std::unique_ptr<std::byte[], PooledFree>(p, PooledFree{n, align});
  b.size_ = size;
  b.allocated_ = size;
  return b;
}

ChunkBuffer ChunkBuffer::scratch(size_t size) {
  if (size < kPoolMinSize) return uninitialised(size);
  ChunkBuffer b = uninitialised((size + kPoolStep - 1) / kPoolStep * kPoolStep);
  b.narrow(0, size);
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
