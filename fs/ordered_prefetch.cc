#include "fs/ordered_prefetch.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <optional>
#include <unordered_set>

#include "fs/index_chunks.h"

namespace extrafs::fs {

using format::CatalogLayer;
using format::kChunkZero;
using format::layer_blob_path;
using format::LayerIndex;

std::vector<cache::OwnedChunkRef> ordered_prefix_chunks(const CatalogLayer& layer, const LayerIndex& idx,
                                                        std::string* note) {
  std::vector<cache::OwnedChunkRef> out;
  const std::string blob = layer_blob_path(layer.cache_id);
  const std::optional<uint32_t> object = idx.find_object(blob);
  if (!object) {
    *note = "its index names no blob " + blob + "; no prefix fetched";
    return out;
  }
  uint64_t blob_end = 0;
  std::unordered_set<Digest128, Digest128Hash> seen;
  for (const auto& c : idx.all_chunks()) {
    if ((c.flags & kChunkZero) || c.object != *object) continue;
    const uint64_t end = c.offset + c.stored_len;
    blob_end = std::max(blob_end, end);
    if (end > layer.ordered_prefix || !seen.insert(chunk_digest(c)).second) continue;
    cache::OwnedChunkRef owned{blob, chunk_ref(idx, c)};
    out.push_back(std::move(owned));
  }
  if (layer.ordered_prefix > blob_end)
    *note = "ordered_prefix " + std::to_string(layer.ordered_prefix) + " is beyond the " + std::to_string(blob_end) +
            " bytes of chunks in its blob; clamped";
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.ref.offset < b.ref.offset; });
  return out;
}

void OrderedPrefetch::touch(const CatalogLayer& layer, const LayerIndex& idx) {
  if (layer.ordered_prefix == 0) return;
  {
    MutexLock lock(&mu_);
    if (!done_.insert(layer.cache_id).second) return;
  }
  std::string note;
  auto chunks = ordered_prefix_chunks(layer, idx, &note);
  if (!note.empty()) spdlog::warn("layer {}: {}", layer.cache_id, note);
  const size_t total = chunks.size();
  const size_t queued = fetcher_.prefetch_sequence(std::move(chunks));
  spdlog::info("layer {}: {} of the {} chunks of its ordered prefix queued for prefetch", layer.cache_id, queued,
               total);
}

}  // namespace extrafs::fs
