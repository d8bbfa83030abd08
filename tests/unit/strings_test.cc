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

TEST_CASE("sizes are parsed strictly: the whole string, no overflow, exact fractions", "[strings]") {
  CHECK(parse_size("0") == 0u);
  CHECK(parse_size("1B") == 1u);
  CHECK(parse_size("1k") == 1024u);
  CHECK(parse_size("3GB") == 3ull << 30);
  CHECK(parse_size("2T") == 2ull << 40);
  CHECK(parse_size("0.5K") == 512u);
  CHECK(parse_size("2.25M") == (9ull << 20) / 4);
  CHECK(parse_size("1.0G") == 1ull << 30);
  CHECK(parse_size("16383.999999999999940395K") == std::nullopt);  // not a whole number of bytes
  CHECK(parse_size("16777215T") == 16777215ull << 40);             // the largest whole-T size
  CHECK(parse_size("18446744073709551615") == UINT64_MAX);
  for (const char* bad : {"1.5.2G",
                          "1..5G",
                          ".5G",
                          "1.G",
                          "1.1G",
                          "1.5",
                          "0.3K",
                          "+1G",
                          "-1G",
                          " 1G",
                          "1G ",
                          "1 G",
                          "1GG",
                          "1Gb",
                          "1BB",
                          "1KiBB",
                          "1e3",
                          "0x10",
                          "1,5G",
                          "16777216T",
                          "18446744073709551616",
                          "99999999999999999999999",
                          "1.1234567890123456789G",
                          "G",
                          "1.5.2"}) {
    INFO(bad);
    CHECK_FALSE(parse_size(bad));
  }
}

TEST_CASE("unsigned integers are parsed strictly", "[strings]") {
  CHECK(parse_uint("0") == 0u);
  CHECK(parse_uint("007") == 7u);
  CHECK(parse_uint("18446744073709551615") == UINT64_MAX);
  for (const char* bad : {"", "18446744073709551616", "-1", "+1", " 1", "1 ", "1.0", "1e3", "0x1", "12a"}) {
    INFO(bad);
    CHECK_FALSE(parse_uint(bad));
  }
}

TEST_CASE("durations take one unit of s, m, h or d, or a bare 0, and nothing else", "[strings]") {
  CHECK(parse_duration("0") == 0u);
  CHECK(parse_duration("0d") == 0u);
  CHECK(parse_duration("45s") == 45u);
  CHECK(parse_duration("30m") == 1800u);
  CHECK(parse_duration("12h") == 43200u);
  CHECK(parse_duration("7d") == 604800u);
  CHECK(parse_duration("007d") == 604800u);
  CHECK(parse_duration("213503982334601d") == 213503982334601ull * 86400);
  for (const char* bad : {"",
                          "7",
                          "60",
                          "d",
                          "-1d",
                          "+1d",
                          " 7d",
                          "7d ",
                          "7 d",
                          "1.5h",
                          "7D",
                          "7H",
                          "1w",
                          "7dd",
                          "1h30m",
                          "0x10s",
                          "213503982334602d",
                          "18446744073709551616s",
                          "7days",
                          "00"}) {
    INFO(bad);
    CHECK_FALSE(parse_duration(bad));
  }
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
