// libFuzzer target: Catalog::parse must reject any malformed catalog with an error; a catalog it
// accepts must serialize and parse back to the same catalog (the daemon compares catalogs it
// re-reads with the one it holds).
#include <cstddef>
#include <cstdint>
#include <string>

#include "format/catalog.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using extrafs::format::Catalog;
  auto r = Catalog::parse(std::string(reinterpret_cast<const char*>(data), size));
  if (!r.ok()) return 0;
  auto again = Catalog::parse(r->serialize());
  if (!again.ok()) __builtin_trap();  // what we write, we must read
  if (again->layers != r->layers || again->image_index != r->image_index) __builtin_trap();
  for (const auto& l : r->layers) {
    if (r->find(l.cache_id) != &l) __builtin_trap();  // cache ids are unique
  }
  return 0;
}
