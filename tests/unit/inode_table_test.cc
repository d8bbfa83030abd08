#include <catch2/catch.hpp>

#include <thread>
#include <vector>

#include "fs/inode_table.h"

using extrafs::fs::InodeTable;
using extrafs::fs::make_ino;

TEST_CASE("lookups and forgets are counted per node and per slot", "[inode]") {
  InodeTable t;
  uint64_t a = make_ino(5, 16), b = make_ino(5, 17), c = make_ino(6, 16);
  t.ref(a);
  t.ref(a);
  t.ref(b);
  t.ref(c);
  CHECK(t.count(a) == 2);
  CHECK(t.slot_nodes(5) == 2);
  CHECK(t.slot_nodes(6) == 1);
  CHECK(t.forget(a, 1) == 1);
  CHECK(t.slot_nodes(5) == 2);
  CHECK(t.forget(a, 1) == 0);
  CHECK(t.count(a) == 0);
  CHECK(t.slot_nodes(5) == 1);
  CHECK(t.forget(b, 1) == 0);
  CHECK(t.slot_nodes(5) == 0);
  CHECK(t.size() == 1);
}

TEST_CASE("forgetting more than was looked up clamps at zero", "[inode]") {
  InodeTable t;
  t.ref(42);
  CHECK(t.forget(42, 5) == 0);
  CHECK(t.forget(42, 1) == 0);
  CHECK(t.size() == 0);
  CHECK(t.slot_nodes(0) == 0);
}

TEST_CASE("concurrent lookups and forgets balance", "[inode]") {
  InodeTable t;
  std::vector<std::thread> threads;
  for (int k = 0; k < 8; ++k) {
    threads.emplace_back([&t, k] {
      for (uint64_t i = 0; i < 20000; ++i)
        t.ref(make_ino(static_cast<uint32_t>(i % 3), static_cast<uint32_t>((i % 101) | (uint64_t(k) << 8))));
      for (uint64_t i = 0; i < 20000; ++i)
        t.forget(make_ino(static_cast<uint32_t>(i % 3), static_cast<uint32_t>((i % 101) | (uint64_t(k) << 8))), 1);
    });
  }
  for (auto& th : threads) th.join();
  CHECK(t.size() == 0);
  for (uint32_t s = 0; s < 3; ++s) CHECK(t.slot_nodes(s) == 0);
}
