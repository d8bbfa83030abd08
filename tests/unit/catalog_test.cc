#include <catch2/catch.hpp>

#include "fs/catalog.h"

using namespace extrafs;
using namespace extrafs::fs;

namespace {
Catalog sample() {
  Catalog c;
  CatalogLayer a;
  a.cache_id = std::string(64, 'a');
  a.index_digest = xxh3_128("a", 1);
  a.link = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  a.bytes = 12345;
  CatalogLayer b = a;
  b.cache_id = std::string(64, 'b');
  b.link = "ZYXWVUTSRQPONMLKJIHGFEDCBA";
  b.lower = "l/ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  c.layers = {a, b};
  c.image_index = xxh3_128("img", 3);
  return c;
}
}  // namespace

TEST_CASE("a catalog round-trips", "[catalog]") {
  Catalog c = sample();
  auto parsed = Catalog::parse(c.serialize());
  REQUIRE(parsed.ok());
  CHECK(parsed->layers == c.layers);
  REQUIRE(parsed->image_index);
  CHECK(*parsed->image_index == *c.image_index);
  CHECK(parsed->find(std::string(64, 'b'))->lower == "l/ABCDEFGHIJKLMNOPQRSTUVWXYZ");
  CHECK_FALSE(parsed->layers[0].lower);
  CHECK(parsed->find("nope") == nullptr);
}

TEST_CASE("a corrupt catalog is rejected", "[catalog]") {
  std::string text = sample().serialize();
  CHECK(Catalog::parse("").code() == EBADMSG);
  CHECK(Catalog::parse("{}").code() == EBADMSG);
  CHECK(Catalog::parse(text.substr(0, text.size() / 2)).code() == EBADMSG);
  std::string edited = text;
  edited.replace(edited.find("12345"), 5, "12346");
  auto r = Catalog::parse(edited);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("checksum") != std::string::npos);
}

TEST_CASE("a catalog with a cache id that could escape the store is rejected", "[catalog]") {
  for (std::string bad : {"../../etc", "l"}) {
    Catalog c = sample();
    c.layers[0].cache_id = bad;
    CHECK(Catalog::parse(c.serialize()).code() == EBADMSG);
  }
  Catalog c = sample();
  c.layers[1].cache_id = c.layers[0].cache_id;
  CHECK(Catalog::parse(c.serialize()).code() == EBADMSG);
}

TEST_CASE("a catalog's generation round-trips and catalogs without one still read", "[catalog]") {
  Catalog c = sample();
  CHECK(c.serialize().find("generation") == std::string::npos);  // as older writers wrote them
  auto plain = Catalog::parse(c.serialize());
  REQUIRE(plain.ok());
  CHECK(plain->generation == 0);
  c.generation = 41;
  auto parsed = Catalog::parse(c.serialize());
  REQUIRE(parsed.ok());
  CHECK(parsed->generation == 41);
  CHECK(parsed->layers == c.layers);
  CHECK(catalog_generation_path(41) == "extrafs/catalog.d/41");
}

TEST_CASE("a catalog whose format is not a string is refused, not thrown", "[catalog]") {
  auto r = Catalog::parse(R"({"checksum": "4a8a6e569feff8237d", "format": 1})");
  CHECK(r.code() == EBADMSG);
}
