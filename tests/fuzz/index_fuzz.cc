// libFuzzer target: LayerIndex::parse must reject any malformed input with an error, and every
// accessor of an index it accepts must stay in bounds (ASan/UBSan watch).
#include <cstddef>
#include <cstdint>
#include <string>

#include "format/layer_index.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto r = extrafs::format::LayerIndex::parse(std::string(reinterpret_cast<const char*>(data), size));
  if (!r.ok()) return 0;
  const auto& idx = **r;
  uint64_t sink = 0;
  for (uint32_t i = 0; i < idx.entry_count(); ++i) {
    sink += idx.name(i).size() + idx.path_of(i).size();
    const auto& e = idx.attr_entry(i);
    if (S_ISLNK(e.mode)) sink += idx.target(i).size();
    for (const auto& x : idx.xattrs(i)) sink += idx.xattr_name(x).size() + idx.xattr_value(x).size();
    for (const auto& c : idx.chunks(i)) {
      if (!(c.flags & extrafs::format::kChunkZero)) sink += idx.object_path(c.object).size();
    }
    if (idx.is_dir(i) && i != 0) {
      auto found = idx.lookup(idx.entry(i).parent, idx.name(i));
      if (!found || *found != i) __builtin_trap();  // a validated index must find its own entries
    }
  }
  return static_cast<int>(sink & 0);
}
