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

TEST_CASE("trim_trailing drops only trailing ASCII whitespace", "[strings]") {
  CHECK(trim_trailing("abc\n") == "abc");
  CHECK(trim_trailing("abc \t\r\n") == "abc");
  CHECK(trim_trailing("  a b\n") == "  a b");
  CHECK(trim_trailing("\n\n") == "");
  CHECK(trim_trailing("") == "");
  CHECK(trim_trailing("l/A:l/B") == "l/A:l/B");
}

TEST_CASE("cache-ids are docker's: 64 lowercase hex, optionally -init", "[strings]") {
  const std::string hex(64, 'a');
  CHECK(is_cache_id(hex));
  CHECK(is_cache_id(hex + "-init"));
  CHECK(is_cache_id("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
  CHECK_FALSE(is_cache_id(""));
  CHECK_FALSE(is_cache_id(std::string(64, 'A')));
  CHECK_FALSE(is_cache_id(hex.substr(1)));
  CHECK_FALSE(is_cache_id(hex + "0"));
  CHECK_FALSE(is_cache_id(hex + "-init2"));
  CHECK_FALSE(is_cache_id(hex + "-lnit"));
  CHECK_FALSE(is_cache_id("l"));
  CHECK_FALSE(is_cache_id(".."));
  CHECK_FALSE(is_cache_id("../" + hex.substr(3)));
  CHECK_FALSE(is_cache_id(hex.substr(0, 63) + "/"));
}
