#include "cache/store_meta.h"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "backend/testing/memory_backend.h"
#include "test_util.h"

using namespace extrafs;

namespace {
Status parses_as_ok(const std::string& bytes) {
  return bytes.rfind("ok", 0) == 0 ? ok_status() : Status(make_error(EBADMSG, "corrupt"));
}
}  // namespace

TEST_CASE("store metadata keeps only checked bytes, and serves them while the store has none", "[cache][meta]") {
  testing::TempDir t;
  auto disk = cache::BlockCache::open(t.path + "/cache", 16 << 20);
  REQUIRE(disk.ok());
  backend::MemoryBackend mem;
  std::vector<std::string> write_errors;
  cache::StoreMeta meta(mem, disk->get(), [&](const Error& e) { write_errors.push_back(e.message); });
  CHECK(meta.kept_meta("catalog").code() == ENOENT);

  mem.put("extrafs/catalog", "ok 1");
  auto got = meta.read_meta("extrafs/catalog", "catalog", 1 << 20, parses_as_ok);
  REQUIRE(got.ok());
  CHECK(*got == "ok 1");
  CHECK(meta.bytes_fetched() == 4);
  auto kept = meta.kept_meta("catalog");
  REQUIRE(kept.ok());
  CHECK(*kept == "ok 1");

  // Bad bytes in the store never replace the good copy.
  mem.put("extrafs/catalog", "garbage");
  CHECK(meta.read_meta("extrafs/catalog", "catalog", 1 << 20, parses_as_ok).code() == EBADMSG);
  kept = meta.kept_meta("catalog");
  REQUIRE(kept.ok());
  CHECK(*kept == "ok 1");

  auto v1 = meta.meta_version("extrafs/catalog");
  REQUIRE(v1.ok());
  mem.put("extrafs/catalog", "ok 2");
  auto v2 = meta.meta_version("extrafs/catalog");
  REQUIRE(v2.ok());
  CHECK_FALSE(*v1 == *v2);
  CHECK(meta.read_meta("extrafs/catalog", "catalog", 1 << 20, parses_as_ok).ok());
  CHECK(*meta.kept_meta("catalog") == "ok 2");
  CHECK(meta.backend_errors() == 0);
  CHECK(write_errors.empty());
}

TEST_CASE("store metadata without a disk cache keeps nothing and reads the store each time", "[cache][meta]") {
  backend::MemoryBackend mem;
  mem.put("extrafs/catalog", "ok");
  cache::StoreMeta meta(mem, nullptr, nullptr);
  for (int i = 0; i < 2; ++i) CHECK(meta.read_meta("extrafs/catalog", "catalog", 1 << 20, parses_as_ok).ok());
  CHECK(mem.reads() == 2);
  CHECK(meta.kept_meta("catalog").code() == ENOENT);
  CHECK(meta.read_meta("missing", "missing", 1 << 20, parses_as_ok).code() == ENOENT);
  CHECK(meta.backend_errors() == 0);  // a missing object is not a backend failure
  CHECK(meta.describe() == mem.describe());
}
