#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/str_util.h"
#include "format/catalog.h"

using namespace extrafs;
using namespace extrafs::format;

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

// The catalog text of `j` (a catalog as JSON, edited by a test) with the checksum a writer gives it.
std::string with_checksum(nlohmann::json j) {
  j.erase("checksum");
  std::string canon = j.dump();
  j["checksum"] = xxh3_128(canon.data(), canon.size()).hex();
  return j.dump();
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

TEST_CASE("a catalog takes a cache id by the one rule every reader of a store uses", "[catalog]") {
  // is_cache_id (common/str_util.h) is what the indexer, publish, rm, gc, the live set and docker
  // attach take as a cache id; the catalog takes exactly those, so a layer it serves is one the
  // writers and gc recognise. Before, the catalog had a looser rule of its own (1-128 characters of
  // [A-Za-z0-9_-]), which let "c1" or upper-case hex through.
  const std::string hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
  const std::vector<std::pair<std::string, bool>> cases = {
      {hex, true},
      {hex + "-init", true},
      {std::string(64, 'a'), true},
      {"c1", false},
      {std::string(64, 'A'), false},
      {hex.substr(1), false},
      {hex + "0", false},
      {hex + "-init2", false},
      {hex + "_x", false},
      {"layer-1", false},
      {"l", false},
      {"..", false},
      {"../../etc", false},
      {"", false},
  };
  for (const auto& [id, valid] : cases) {
    INFO("cache id '" << id << "'");
    CHECK(is_cache_id(id) == valid);
    CatalogLayer l = sample().layers[0];
    l.cache_id = id;
    CHECK(check_catalog_layer(l).ok() == valid);
    Catalog c = sample();
    c.layers[0].cache_id = id;
    CHECK(Catalog::parse(c.serialize()).ok() == valid);
  }
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

TEST_CASE("a layer's ordered prefix round-trips, is covered by the checksum, and is optional", "[catalog]") {
  Catalog c = sample();
  CHECK(c.serialize().find("ordered_prefix") == std::string::npos);  // 0: not written, as before
  c.layers[1].ordered_prefix = 7340032;
  const std::string text = c.serialize();
  auto parsed = Catalog::parse(text);
  REQUIRE(parsed.ok());
  CHECK(parsed->layers[0].ordered_prefix == 0);
  CHECK(parsed->layers[1].ordered_prefix == 7340032);
  CHECK(parsed->layers == c.layers);
  // The checksum covers it: a changed value is a corrupt catalog.
  std::string edited = text;
  edited.replace(edited.find("7340032"), 7, "7340033");
  auto r = Catalog::parse(edited);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("checksum") != std::string::npos);
}

TEST_CASE("a catalog written before ordered prefixes still parses, and unknown keys are ignored", "[catalog]") {
  // Written by the catalog writer of commit 24afd47 (no ordered_prefix; generation 3).
  const std::string old = R"({
 "format": "extrafs-catalog",
 "generation": 3,
 "layers": [
  {
   "bytes": 10,
   "cache_id": "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1",
   "index": "000102030405060708090a0b0c0d0e0f",
   "link": "L1"
  }
 ],
 "version": 1,
 "checksum": "CHECKSUM"
})";
  // The checksum is over the canonical (compact) form without it; compute it as the writer did.
  auto with_sum = [](std::string text, const std::string& canon) {
    text.replace(text.find("CHECKSUM"), 8, xxh3_128(canon.data(), canon.size()).hex());
    return text;
  };
  auto parsed = Catalog::parse(with_sum(
      old,
      R"({"format":"extrafs-catalog","generation":3,"layers":[{"bytes":10,"cache_id":"c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1","index":"000102030405060708090a0b0c0d0e0f","link":"L1"}],"version":1})"));
  REQUIRE(parsed.ok());
  REQUIRE(parsed->layers.size() == 1);
  CHECK(parsed->layers[0].ordered_prefix == 0);
  CHECK(parsed->generation == 3);
  // What an older daemon does with a newer catalog: keys it does not know are read past (this
  // reader knows ordered_prefix; a key from a later writer stands in for it).
  std::string newer = old;
  newer.replace(newer.find(R"("link": "L1")"), 12, R"("link": "L1", "some_later_key": 5)");
  auto later = Catalog::parse(with_sum(
      newer,
      R"({"format":"extrafs-catalog","generation":3,"layers":[{"bytes":10,"cache_id":"c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1","index":"000102030405060708090a0b0c0d0e0f","link":"L1","some_later_key":5}],"version":1})"));
  REQUIRE(later.ok());
  CHECK(later->layers[0].cache_id == "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1");
}

TEST_CASE("an ordered prefix that is not a byte count is refused with one line", "[catalog]") {
  for (const char* bad : {"-1", "\"12\"", "1.5", "null"}) {
    Catalog c = sample();
    c.layers[0].ordered_prefix = 999;
    std::string text = c.serialize();
    nlohmann::json j = nlohmann::json::parse(text);
    j["layers"][0]["ordered_prefix"] = nlohmann::json::parse(bad);
    auto r = Catalog::parse(with_checksum(j));
    INFO(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.code() == EBADMSG);
    CHECK(r.error().message.find("bad ordered_prefix for " + c.layers[0].cache_id) != std::string::npos);
    CHECK(r.error().message.find('\n') == std::string::npos);
  }
  // A huge one is a valid number: readers clamp it (fs/ordered_prefetch.h).
  Catalog c = sample();
  c.layers[0].ordered_prefix = UINT64_MAX;
  auto parsed = Catalog::parse(c.serialize());
  REQUIRE(parsed.ok());
  CHECK(parsed->layers[0].ordered_prefix == UINT64_MAX);
}

TEST_CASE("a catalog's store id round-trips, is covered by the checksum, and is optional", "[catalog]") {
  Catalog c = sample();
  CHECK(c.serialize().find("store_id") == std::string::npos);  // as writers before store ids wrote them
  auto plain = Catalog::parse(c.serialize());
  REQUIRE(plain.ok());
  CHECK(plain->store_id.empty());
  c.store_id = "0123456789abcdef0123456789abcdef";
  const std::string text = c.serialize();
  auto parsed = Catalog::parse(text);
  REQUIRE(parsed.ok());
  CHECK(parsed->store_id == c.store_id);
  CHECK(parsed->layers == c.layers);
  std::string edited = text;
  edited.replace(edited.find("0123456789abcdef0123"), 1, "f");
  auto r = Catalog::parse(edited);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("checksum") != std::string::npos);
}

TEST_CASE("a store id that is not 32 lowercase hex digits makes the catalog corrupt", "[catalog]") {
  for (const char* bad :
       {"\"\"", "\"0123456789ABCDEF0123456789ABCDEF\"", "\"0123456789abcdef\"", "\"0123456789abcdef0123456789abcdef0\"",
        "\"../../../../../../../../etc/passwd\"", "12", "null"}) {
    nlohmann::json j = nlohmann::json::parse(sample().serialize());
    j["store_id"] = nlohmann::json::parse(bad);
    auto r = Catalog::parse(with_checksum(j));
    INFO(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.code() == EBADMSG);
    CHECK(r.error().message == "corrupt catalog: bad store_id");
  }
  CHECK(is_store_id("00000000000000000000000000000000"));
  CHECK_FALSE(is_store_id("0000000000000000000000000000000g"));
}

TEST_CASE("a top-level key a later writer adds is read past, as the store id is by readers before it", "[catalog]") {
  // Readers before store ids know format, version, layers, image_index, generation and checksum
  // only: this is how they treat "store_id" (a key this reader does not know stands in for it).
  nlohmann::json j = nlohmann::json::parse(sample().serialize());
  j["some_later_top_key"] = "0123456789abcdef0123456789abcdef";
  auto r = Catalog::parse(with_checksum(j));
  REQUIRE(r.ok());
  CHECK(r->layers == sample().layers);
}

TEST_CASE("the lower-chain check of a crafted 1,600-layer catalog of long chains is linear, not quadratic",
          "[catalog]") {
  // As tests/py/hostile.py's crafted_catalog: 600 base layers, then a chain of 1,000 layers whose
  // lowers name every base layer and then the next chain layer, the last one a link nobody has.
  // Chain layer k is refused only once k+1 is, so a check repeating passes until nothing changes
  // made 1,000 passes over 600,000 lower entries (on main: minutes).
  constexpr int kGood = 600, kChain = 1000;
  auto link = [](char kind, int i) {
    std::string s = std::to_string(i);
    return std::string(1, kind) + std::string(25 - s.size(), '0') + s;
  };
  auto id = [](char kind, int i) {
    std::string s = std::to_string(i);
    return std::string(1, kind) + std::string(63 - s.size(), '0') + s;
  };
  Catalog c;
  std::string good_lower;
  for (int i = 0; i < kGood; ++i) {
    CatalogLayer l;
    l.cache_id = id('a', i);
    l.link = link('G', i);
    c.layers.push_back(l);
    good_lower += (i ? ":l/" : "l/") + l.link;
  }
  std::set<std::string> chain;
  for (int i = 0; i < kChain; ++i) {
    CatalogLayer l;
    l.cache_id = id('b', i);
    l.link = link('C', i);
    l.lower = good_lower + ":l/" + (i + 1 < kChain ? link('C', i + 1) : link('M', 0));
    c.layers.push_back(l);
    chain.insert(l.cache_id);
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto refused = unchained_layers(c);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Not a speed target (those live in tests/bench): a bound that tells linear from quadratic with
  // room for a debug build under AddressSanitizer on a busy machine (linear: ~0.1 s release,
  // ~0.8 s there; the quadratic check took 110 s release).
  CHECK(seconds < 10);
  std::set<std::string> got;
  for (const auto& [cache_id, why] : refused) got.insert(cache_id);
  CHECK(got == chain);
  CHECK(refused.size() == chain.size());
}
