#include <catch2/catch.hpp>

#include "common/str_util.h"

using namespace extrafs;

TEST_CASE("sizes parse with binary units and reject junk", "[strings]") {
  CHECK(parse_size("4096") == 4096u);
  CHECK(parse_size("512M") == 512ull << 20);
  CHECK(parse_size("20G") == 20ull << 30);
  CHECK(parse_size("1.5G") == (3ull << 30) / 2);
  CHECK(parse_size("2KiB") == 2048u);
  CHECK_FALSE(parse_size(""));
  CHECK_FALSE(parse_size("abc"));
  CHECK_FALSE(parse_size("12X"));
  CHECK_FALSE(parse_size("-1"));
  CHECK_FALSE(parse_size("99999999999999999999T"));
  CHECK_FALSE(parse_size("20000000000T"));
}

TEST_CASE("option lists split on unescaped commas", "[strings]") {
  auto v = split_options("a,b=c\\,d,,e");
  REQUIRE(v.size() == 4);
  CHECK(v[1] == "b=c,d");
  CHECK(v[2].empty());
}
