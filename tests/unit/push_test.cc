// `extrafs push` (store/push.h) into an in-memory destination: what is uploaded in which order,
// a push stopped after any number of uploads, reruns, --prune, and what is refused.
#include <catch2/catch.hpp>

#include <algorithm>
#include <set>
#include <string>

#include "backend/testing/memory_object_writer.h"
#include "common/posix_file.h"
#include "format/catalog.h"
#include "format/layer_index.h"
#include "store/indexer.h"
#include "store/push.h"
#include "test_util.h"

using namespace extrafs;
using extrafs::testing::put_file;
using extrafs::testing::TempDir;

namespace {

const std::string kA(64, 'a'), kB(64, 'b');

// A Hermes-style store of two layers and an image/ tree, indexed (so with a catalog generation,
// two layer indexes naming plain files, an image/ index naming content objects).
std::string make_store(const TempDir& t) {
  const std::string s = t.path + "/s";
  put_file(s + "/overlay2/" + kA + "/diff/etc/hello", "hello");
  put_file(s + "/overlay2/" + kA + "/diff/bin/tool", std::string(3 << 20, 't'));
  put_file(s + "/overlay2/" + kA + "/diff/empty", "");
  put_file(s + "/overlay2/" + kA + "/link", "AAAAAAAAAAAAAAAAAAAAAAAAAA\n");
  put_file(s + "/overlay2/" + kB + "/diff/etc/other", "other");
  put_file(s + "/overlay2/" + kB + "/link", "BBBBBBBBBBBBBBBBBBBBBBBBBB\n");
  put_file(s + "/overlay2/" + kB + "/lower", "l/AAAAAAAAAAAAAAAAAAAAAAAAAA\n");
  put_file(s + "/image/overlay2/repositories.json", R"({"Repositories":{}})");
  auto r = store::index_store(s, nullptr);
  REQUIRE(r.ok());
  REQUIRE(r->layers_indexed == 2);
  return s;
}

format::Catalog catalog_of(const std::string& text) {
  auto c = format::Catalog::parse(text);
  REQUIRE(c.ok());
  return *c;
}

// Every object the catalog of `objects` names (indexes and what they name), from the
// destination's own copies: what a host mounting it may ask for.
std::set<std::string> named_by(const std::map<std::string, backend::MemoryObjectWriter::Object>& objects,
                               const format::Catalog& c) {
  std::set<std::string> out;
  auto add_index = [&](const std::string& rel) {
    out.insert(rel);
    auto it = objects.find(rel);
    if (it == objects.end()) return;
    auto idx = format::LayerIndex::parse(it->second.bytes);
    REQUIRE(idx.ok());
    for (uint32_t o = 0; o < (*idx)->object_count(); ++o) out.insert(std::string((*idx)->object_path(o)));
  };
  for (const auto& l : c.layers) add_index(format::layer_index_path(l.cache_id));
  if (c.image_index) add_index(format::image_index_path(*c.image_index));
  return out;
}

store::PushReport push(const std::string& s, backend::ObjectWriter* w, bool prune = false) {
  store::PushRequest req;
  req.store = s;
  req.destination = w;
  req.prune = prune;
  req.jobs = 3;
  auto r = store::push_store(req);
  REQUIRE(r.ok());
  return *r;
}

size_t position(const std::vector<std::string>& calls, const std::string& call) {
  auto it = std::find(calls.begin(), calls.end(), call);
  REQUIRE(it != calls.end());
  return static_cast<size_t>(it - calls.begin());
}

}  // namespace

TEST_CASE("push uploads what the catalog names, then the catalog's generation, then the catalog", "[push]") {
  TempDir t;
  const std::string s = make_store(t);
  backend::MemoryObjectWriter w;
  auto r = push(s, &w);
  const auto text = *read_file(s + "/extrafs/catalog");
  const format::Catalog c = catalog_of(text);
  REQUIRE(c.generation > 0);
  const auto objects = w.objects();
  const auto named = named_by(objects, c);
  CHECK(r.objects_named == named.size());
  CHECK(r.objects_uploaded == named.size());
  CHECK(r.objects_present == 0);
  CHECK(r.catalog_uploaded);
  CHECK(r.generation == c.generation);
  const std::string gen = format::catalog_generation_path(c.generation);
  // Everything named is up, byte for byte, as immutable; the catalog twice, short-lived.
  for (const auto& p : named) {
    INFO(p);
    REQUIRE(objects.count(p));
    CHECK(objects.at(p).bytes == *read_file(s + "/" + p));
    CHECK(objects.at(p).cache_control == store::kImmutableCacheControl);
  }
  CHECK(named.count("overlay2/" + kA + "/diff/etc/hello"));
  CHECK(objects.at("extrafs/catalog").bytes == text);
  CHECK(objects.at(gen).bytes == text);
  CHECK(objects.at("extrafs/catalog").cache_control == store::kCatalogCacheControl);
  CHECK(objects.at(gen).cache_control == store::kCatalogCacheControl);
  // Nothing that no reader reads: docker's plain image/ files, link, lower.
  CHECK_FALSE(objects.count("image/overlay2/repositories.json"));
  CHECK_FALSE(objects.count("overlay2/" + kB + "/lower"));
  CHECK(objects.size() == named.size() + 2);
  // The order: every named object, then the generation, then the catalog, last of all.
  const auto calls = w.calls();
  std::vector<std::string> puts;
  for (const auto& call : calls)
    if (call.rfind("PUT ", 0) == 0) puts.push_back(call.substr(4));
  REQUIRE(puts.size() == named.size() + 2);
  CHECK(puts.back() == "extrafs/catalog");
  CHECK(puts[puts.size() - 2] == gen);
  CHECK(std::set<std::string>(puts.begin(), puts.end() - 2) == named);

  SECTION("a rerun uploads nothing and leaves the catalog alone") {
    w.clear_calls();
    auto again = push(s, &w);
    CHECK(again.objects_uploaded == 0);
    CHECK(again.objects_present == named.size());
    CHECK_FALSE(again.catalog_uploaded);
    for (const auto& call : w.calls()) CHECK(call.rfind("PUT ", 0) != 0);
  }
}

TEST_CASE("a push stopped after any upload leaves a catalog naming only what is there, and a rerun completes it",
          "[push]") {
  TempDir t;
  const std::string s = make_store(t);
  // The first catalog is up everywhere; then the store gains a layer (a new generation).
  backend::MemoryObjectWriter base;
  push(s, &base);
  put_file(s + "/overlay2/" + std::string(64, 'c') + "/diff/new/file", std::string(2 << 20, 'n'));
  put_file(s + "/overlay2/" + std::string(64, 'c') + "/link", "CCCCCCCCCCCCCCCCCCCCCCCCCC\n");
  REQUIRE(store::index_store(s, nullptr).ok());
  const format::Catalog newest = catalog_of(*read_file(s + "/extrafs/catalog"));
  size_t puts_needed = 0;
  const auto full = [&] {
    backend::MemoryObjectWriter w;
    for (const auto& [p, o] : base.objects()) w.set(p, o.bytes);
    push(s, &w);
    for (const auto& call : w.calls()) puts_needed += call.rfind("PUT ", 0) == 0;
    return w.objects().size();
  }();
  REQUIRE(puts_needed >= 4);  // the new layer's file and index, the image/ index, the catalog twice
  size_t stopped = 0;
  for (size_t k = 0; k <= puts_needed + 1; ++k) {
    backend::MemoryObjectWriter w;
    for (const auto& [p, o] : base.objects()) w.set(p, o.bytes);
    w.fail_after(static_cast<int>(k));
    store::PushRequest req;
    req.store = s;
    req.destination = &w;
    req.jobs = 2;
    auto r = store::push_store(req);
    if (!r.ok()) stopped++;
    // Whatever catalog a host finds (the catalog, or the generation after the one it holds)
    // names only objects the destination has.
    const auto objects = w.objects();
    for (const std::string& cat :
         {std::string("extrafs/catalog"), format::catalog_generation_path(newest.generation)}) {
      if (!objects.count(cat)) continue;
      const format::Catalog c = catalog_of(objects.at(cat).bytes);
      for (const auto& p : named_by(objects, c)) {
        INFO("stopped after " << k << " uploads: " << cat << " names " << p);
        CHECK(objects.count(p));
      }
    }
    // The rerun completes it, uploading only what is missing.
    w.fail_after(std::nullopt);
    auto again = push(s, &w);
    CHECK(w.objects().size() == full);
    CHECK(w.objects().at("extrafs/catalog").bytes == *read_file(s + "/extrafs/catalog"));
    if (r.ok()) CHECK(again.objects_uploaded == 0);
  }
  CHECK(stopped == puts_needed);  // every run stopped before its last upload failed
}

TEST_CASE("push --prune deletes what the store no longer has, only under its own directories and after the catalog",
          "[push]") {
  TempDir t;
  const std::string s = make_store(t);
  backend::MemoryObjectWriter w;
  w.set("extrafs/layers/" + std::string(64, 'd') + ".index", "an old layer's index");
  w.set("extrafs/objects/00112233445566778899aabbccddeeff", "an old object");
  w.set("overlay2/" + std::string(64, 'd') + "/diff/x", "an old file");
  w.set("notes/README", "not the store's");
  SECTION("without --prune nothing is deleted") {
    auto r = push(s, &w);
    CHECK(r.objects_deleted == 0);
    CHECK(w.objects().count("extrafs/objects/00112233445566778899aabbccddeeff"));
    for (const auto& call : w.calls()) CHECK(call.rfind("DELETE ", 0) != 0);
  }
  SECTION("with --prune") {
    auto r = push(s, &w, /*prune=*/true);
    CHECK(r.objects_deleted == 3);
    const auto objects = w.objects();
    CHECK_FALSE(objects.count("extrafs/objects/00112233445566778899aabbccddeeff"));
    CHECK_FALSE(objects.count("overlay2/" + std::string(64, 'd') + "/diff/x"));
    CHECK(objects.count("notes/README"));
    for (const auto& p : named_by(objects, catalog_of(objects.at("extrafs/catalog").bytes))) CHECK(objects.count(p));
    const auto calls = w.calls();
    const size_t catalog = position(calls, "PUT extrafs/catalog");
    for (size_t i = 0; i < calls.size(); ++i)
      if (calls[i].rfind("DELETE ", 0) == 0) CHECK(i > catalog);
    // A file the store still has stays in the destination, even one push does not upload.
    w.set("image/overlay2/repositories.json", "{}");
    push(s, &w, true);
    CHECK(w.objects().count("image/overlay2/repositories.json"));
  }
}

TEST_CASE("push refuses, before writing anything, what hosts could not follow", "[push]") {
  TempDir t;
  const std::string s = make_store(t);
  const format::Catalog c = catalog_of(*read_file(s + "/extrafs/catalog"));
  auto refused = [&](backend::MemoryObjectWriter& w, int code, const std::string& needle) {
    store::PushRequest req;
    req.store = s;
    req.destination = &w;
    auto r = store::push_store(req);
    REQUIRE_FALSE(r.ok());
    CHECK(r.code() == code);
    CHECK(r.error().message.find(needle) != std::string::npos);
    for (const auto& call : w.calls()) CHECK(call.rfind("PUT ", 0) != 0);
  };
  SECTION("a destination holding a newer catalog") {
    format::Catalog newer = c;
    newer.generation = c.generation + 3;
    backend::MemoryObjectWriter w;
    w.set("extrafs/catalog", newer.serialize());
    refused(w, EEXIST, "newer than the store's");
  }
  SECTION("a destination holding another catalog of the same generation") {
    format::Catalog other = c;
    other.layers.pop_back();
    backend::MemoryObjectWriter w;
    w.set("extrafs/catalog", other.serialize());
    refused(w, EEXIST, "same generation");
  }
  SECTION("an index that does not match its catalog") {
    put_file(s + "/extrafs/layers/" + kB + ".index", "not the index the catalog names");
    backend::MemoryObjectWriter w;
    refused(w, EBADMSG, kB);
  }
  SECTION("a file the catalog names that the store lacks") {
    REQUIRE(::unlink((s + "/overlay2/" + kA + "/diff/etc/hello").c_str()) == 0);
    backend::MemoryObjectWriter w;
    refused(w, ENOENT, "etc/hello");
  }
  SECTION("a store without a catalog") {
    REQUIRE(::unlink((s + "/extrafs/catalog").c_str()) == 0);
    backend::MemoryObjectWriter w;
    refused(w, ENOENT, "no catalog");
  }
}
