#include "cache/chunk_buffer.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <vector>

using extrafs::cache::ChunkBuffer;

namespace {

std::vector<std::byte> pattern(size_t n) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>(i * 7 + 3);
  return v;
}

}  // namespace

TEST_CASE("a chunk buffer is aligned as asked and holds what is written into it", "[cache]") {
  for (size_t align : {size_t{64}, size_t{4096}}) {
    auto b = ChunkBuffer::uninitialised(10000, align);
    CHECK(reinterpret_cast<uintptr_t>(b.data()) % align == 0);
    CHECK(b.size() == 10000);
    CHECK(b.allocated() == 10000);
    auto p = pattern(10000);
    std::memcpy(b.data(), p.data(), p.size());
    CHECK(b == std::span<const std::byte>(p));
  }
}

TEST_CASE("a narrowed chunk buffer shows only its part and still counts all it allocated", "[cache]") {
  auto p = pattern(8192);
  auto b = ChunkBuffer::uninitialised(p.size(), 4096);
  std::memcpy(b.data(), p.data(), p.size());
  b.narrow(32, 1000);
  CHECK(b.size() == 1000);
  CHECK(b.allocated() == 8192);
  CHECK(b == std::span<const std::byte>(p.data() + 32, 1000));
  CHECK_FALSE(b == std::span<const std::byte>(p.data(), 1000));
  b.narrow(8192, 0);  // nothing left: empty, not invalid
  CHECK(b.empty());
}

TEST_CASE("a chunk buffer copy compares equal to its source, empty ones included", "[cache]") {
  auto p = pattern(300);
  auto b = ChunkBuffer::copy_of(p);
  CHECK(b == std::span<const std::byte>(p));
  auto moved = std::move(b);
  CHECK(moved == std::span<const std::byte>(p));
  auto e = ChunkBuffer::copy_of({});
  CHECK(e.empty());
  CHECK(e.data() != nullptr);
  CHECK(e == std::span<const std::byte>());
}

TEST_CASE("a freed chunk-sized buffer is handed out again for the same size and alignment", "[cache]") {
  const size_t n = (size_t{1} << 20) + 4096;
  const std::byte* first;
  {
    auto b = ChunkBuffer::uninitialised(n, 4096);
    first = b.data();
  }  // freed: kept in the pool
  {
    // Another size (or alignment) never gets it, even while it is the only idle buffer.
    auto other = ChunkBuffer::uninitialised(n + 4096, 4096);
    CHECK(other.data() != first);
    auto other_align = ChunkBuffer::uninitialised(n, 64);
    CHECK(other_align.data() != first);
  }
  auto again = ChunkBuffer::uninitialised(n, 4096);
  CHECK(again.data() == first);
}

TEST_CASE("scratch buffers for backend reads of different sizes reuse one allocation", "[cache]") {
  const size_t step = ChunkBuffer::kPoolStep;
  const std::byte* first;
  {
    auto b = ChunkBuffer::scratch(3 * step + 12345);
    CHECK(b.size() == 3 * step + 12345);
    CHECK(b.allocated() == 4 * step);  // rounded up to the pool's step
    first = b.data();
  }                                                 // freed: kept in the pool
  auto again = ChunkBuffer::scratch(3 * step + 1);  // another size in the same step
  CHECK(again.data() == first);
  CHECK(again.size() == 3 * step + 1);
  auto small = ChunkBuffer::scratch(100);  // below the pool's least size: exact
  CHECK(small.size() == 100);
  CHECK(small.allocated() == 100);
}
