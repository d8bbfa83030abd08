#include "cache/memory_cache.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>

using extrafs::Digest128;
using extrafs::cache::ChunkBuffer;
using extrafs::cache::ChunkData;
using extrafs::cache::MemoryCache;

namespace {

Digest128 key(uint64_t n) { return extrafs::xxh3_128(&n, sizeof n); }

ChunkData chunk(size_t size) { return std::make_shared<const ChunkBuffer>(ChunkBuffer::uninitialised(size)); }

}  // namespace

TEST_CASE("the memory cache returns what was put and counts the bytes allocated", "[cache][memory]") {
  MemoryCache m(3 * 4096);
  auto a = chunk(4096);
  m.put(key(1), a);
  CHECK(m.get(key(1)) == a);
  CHECK(m.contains(key(1)));
  CHECK_FALSE(m.contains(key(2)));
  CHECK(m.get(key(2)) == nullptr);
  CHECK(m.bytes() == 4096);
  // A chunk held already stays as it was.
  m.put(key(1), chunk(4096));
  CHECK(m.get(key(1)) == a);
  CHECK(m.bytes() == 4096);
}

TEST_CASE("the memory cache drops the least recently got or put chunk beyond its bound", "[cache][memory]") {
  MemoryCache m(3 * 4096);
  m.put(key(1), chunk(4096));
  m.put(key(2), chunk(4096));
  m.put(key(3), chunk(4096));
  CHECK(m.get(key(1)) != nullptr);  // now the most recently used: 2 is the oldest
  CHECK(m.contains(key(2)));        // contains() leaves the order alone
  m.put(key(4), chunk(4096));
  CHECK_FALSE(m.contains(key(2)));
  CHECK(m.contains(key(1)));
  CHECK(m.contains(key(3)));
  CHECK(m.contains(key(4)));
  CHECK(m.bytes() == 3 * 4096);
}

TEST_CASE("the memory cache keeps a chunk larger than its bound until the next put", "[cache][memory]") {
  MemoryCache m(4096);
  m.put(key(1), chunk(4096));
  m.put(key(2), chunk(3 * 4096));
  CHECK_FALSE(m.contains(key(1)));
  CHECK(m.contains(key(2)));
  CHECK(m.bytes() == 3 * 4096);
  m.put(key(3), chunk(1024));
  CHECK_FALSE(m.contains(key(2)));
  CHECK(m.contains(key(3)));
  CHECK(m.bytes() == 1024);
}

TEST_CASE("a chunk dropped by the memory cache stays valid for its holder", "[cache][memory]") {
  MemoryCache m(4096);
  auto buf = ChunkBuffer::uninitialised(4096);
  std::memset(buf.data(), 7, buf.size());
  ChunkData a = std::make_shared<const ChunkBuffer>(std::move(buf));
  m.put(key(1), a);
  ChunkData held = m.get(key(1));
  a.reset();
  m.put(key(2), chunk(4096));
  CHECK_FALSE(m.contains(key(1)));
  REQUIRE(held != nullptr);
  CHECK(held->size() == 4096);
  CHECK(held->data()[4095] == std::byte{7});
}
