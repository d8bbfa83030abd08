#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "common/lru.h"

using namespace extrafs;

namespace {
std::vector<std::string> keys(const Lru<std::string, int>& lru) {
  std::vector<std::string> out;
  for (const auto& [k, v] : lru) out.push_back(k);
  return out;
}
}  // namespace

TEST_CASE("lru: the oldest is the least recently inserted or touched; iteration is oldest first", "[lru]") {
  Lru<std::string, int> lru;
  CHECK(lru.empty());
  CHECK(lru.insert("a", 1).second);
  CHECK(lru.insert("b", 2).second);
  CHECK(lru.insert("c", 3).second);
  CHECK(keys(lru) == std::vector<std::string>{"a", "b", "c"});
  CHECK(lru.oldest().first == "a");

  REQUIRE(lru.touch("a") != nullptr);
  CHECK(*lru.touch("a") == 1);
  CHECK(keys(lru) == std::vector<std::string>{"b", "c", "a"});
  CHECK(lru.oldest().first == "b");

  // find() and contains() do not reorder.
  REQUIRE(lru.find("b") != nullptr);
  CHECK(lru.contains("c"));
  CHECK(keys(lru) == std::vector<std::string>{"b", "c", "a"});
  CHECK(lru.touch("zz") == nullptr);
  CHECK(lru.find("zz") == nullptr);
}

TEST_CASE("lru: insert of a present key keeps its value and place", "[lru]") {
  Lru<std::string, int> lru;
  lru.insert("a", 1);
  lru.insert("b", 2);
  auto [v, inserted] = lru.insert("a", 9);
  CHECK_FALSE(inserted);
  CHECK(*v == 1);
  CHECK(keys(lru) == std::vector<std::string>{"a", "b"});
  CHECK(lru.size() == 2);
}

TEST_CASE("lru: pop_oldest evicts in use order; take and erase remove one entry", "[lru]") {
  Lru<std::string, int> lru;
  for (int i = 0; i < 5; ++i) lru.insert(std::to_string(i), i);
  lru.touch("0");
  auto e = lru.pop_oldest();
  CHECK(e.first == "1");
  CHECK(e.second == 1);
  CHECK_FALSE(lru.contains("1"));
  auto t = lru.take("3");
  REQUIRE(t.has_value());
  CHECK(*t == 3);
  CHECK_FALSE(lru.take("3").has_value());
  CHECK(lru.erase("2"));
  CHECK_FALSE(lru.erase("2"));
  CHECK(keys(lru) == std::vector<std::string>{"4", "0"});
  // A removed key inserted again is the newest.
  lru.insert("2", 22);
  CHECK(keys(lru) == std::vector<std::string>{"4", "0", "2"});
  lru.clear();
  CHECK(lru.empty());
  CHECK(lru.size() == 0);
  CHECK(lru.begin() == lru.end());
}

TEST_CASE("lru: a value stays where it is while other entries come, go and move", "[lru]") {
  Lru<int, std::string> lru;
  lru.insert(0, "zero");
  lru.insert(1, "one");
  std::string* one = lru.find(1);
  for (int i = 2; i < 100; ++i) lru.insert(i, "x");
  CHECK(lru.pop_oldest().first == 0);
  for (int i = 50; i < 60; ++i) lru.touch(i);
  lru.touch(1);
  for (int i = 2; i < 40; ++i) lru.erase(i);
  CHECK(*one == "one");
  CHECK(lru.find(1) == one);
  CHECK(lru.size() == 61);
}
