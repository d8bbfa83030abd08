#include "tools/verify.h"

#include <fmt/format.h>

#include "cache/chunk_fetcher.h"
#include "format/catalog.h"
#include "format/layer_index.h"
#include "fs/index_chunks.h"

namespace extrafs::tools {

using format::ChunkRecord;
using format::LayerIndex;

namespace {

// Checks every chunk of one index; chunks shared by hard links are listed once in the index.
void verify_index(cache::ChunkFetcher& fetcher, const LayerIndex& idx, const std::string& what, VerifyReport* r) {
  for (uint32_t e = 0; e < idx.entry_count(); ++e) {
    if (idx.entry(e).primary != e) continue;
    auto chunks = idx.chunks(e);
    for (size_t i = 0; i < chunks.size(); ++i) {
      const ChunkRecord& c = chunks[i];
      if (c.flags & format::kChunkZero) continue;
      r->chunks++;
      r->bytes += c.raw_len;
      auto got = fetcher.get(fs::chunk_ref(idx, c));
      if (!got.ok()) {
        r->bad_chunks++;
        r->problems.push_back(fmt::format("{}: /{} at offset {}: {}", what, idx.path_of(e),
                                          static_cast<uint64_t>(i) * idx.chunk_size(), got.error().message));
      }
    }
  }
}

}  // namespace

Result<VerifyReport> verify_store(backend::Backend& backend, const std::function<void(const std::string&)>& progress) {
  auto catalog =
      format::store_catalog(backend.read_all(format::kCatalogPath, format::kMaxCatalogSize), backend.describe());
  if (!catalog.ok()) return catalog.error();
  // No caches: every chunk is read from the store itself, each exactly once.
  cache::FetcherOptions opts;
  opts.memory_bytes = 0;
  opts.prefetch_threads = 0;
  cache::ChunkFetcher fetcher(backend, opts);
  VerifyReport report;
  auto check = [&](const std::string& path, const Digest128& want, const std::string& what) {
    auto bytes = backend.read_all(path, format::kMaxIndexSize);
    if (!bytes.ok()) {
      report.problems.push_back(what + ": index " + path + ": " + bytes.error().message);
      return;
    }
    auto idx = LayerIndex::parse(std::move(bytes).value());
    if (!idx.ok()) {
      report.problems.push_back(what + ": " + path + ": " + idx.error().message);
      return;
    }
    if ((*idx)->digest() != want) {
      report.problems.push_back(what + ": " + path + " does not match the digest in the catalog");
      return;
    }
    verify_index(fetcher, **idx, what, &report);
  };
  for (const auto& l : catalog->layers) {
    report.layers++;
    check(format::layer_index_path(l.cache_id), l.index_digest, "layer " + l.cache_id);
    if (progress) progress(l.cache_id);
  }
  if (catalog->image_index) check(format::image_index_path(*catalog->image_index), *catalog->image_index, "image/");
  return report;
}

}  // namespace extrafs::tools
