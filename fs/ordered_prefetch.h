// OrderedPrefetch: the daemon's side of `publish --order`. A layer published from a recorded
// start-up holds the files that start-up read at the start of its blob, and its catalog entry
// says how many bytes they take (format::CatalogLayer::ordered_prefix, format/catalog.h). The first time in
// a mount that layer's diff/ is looked up (`docker attach` checks it; overlayfs resolves it when
// a container starts), or anything under it is looked up or read, the whole prefix is queued for
// background fetching (ChunkFetcher::prefetch_sequence: a few large backend reads, in parallel),
// so the files a container reads next are there before it asks. Once per layer per mount; a
// layer without a prefix costs one comparison.
//
// The prefix is a hint from the store: a value beyond the blob's chunks is clamped to them (one
// warning line), and the fetcher bounds what it takes (ChunkFetcher::prefetch_sequence: half its
// memory LRU at a time, up to a quarter of the disk cache waiting); the rest is left to readers.
//
// Thread-safety: touch() may be called from any thread; it never waits for I/O. The fetcher must
// outlive this object; indexes are only read during the call.
#pragma once

#include <string>
#include <unordered_set>
#include <vector>

#include "cache/chunk_fetcher.h"
#include "common/thread_annotations.h"
#include "format/catalog.h"
#include "format/layer_index.h"

namespace extrafs::fs {

// The chunks of `layer`'s ordered prefix in `idx`: those of its blob (format::layer_blob_path) that lie
// wholly within the first layer.ordered_prefix bytes, in offset order, each digest once. If the
// prefix reaches beyond the blob's last chunk, *note says so (else it is left alone).
std::vector<cache::OwnedChunkRef> ordered_prefix_chunks(const format::CatalogLayer& layer,
                                                        const format::LayerIndex& idx, std::string* note);

class OrderedPrefetch {
 public:
  explicit OrderedPrefetch(cache::ChunkFetcher& fetcher) : fetcher_(fetcher) {}
  OrderedPrefetch(const OrderedPrefetch&) = delete;
  OrderedPrefetch& operator=(const OrderedPrefetch&) = delete;

  // A lookup of `layer`'s diff/, or a lookup or read under it (served from `idx`, its index). The first call for a
  // layer with a prefix queues it; every other call returns at once.
  void touch(const format::CatalogLayer& layer, const format::LayerIndex& idx) EXCLUDES(mu_);

 private:
  cache::ChunkFetcher& fetcher_;
  Mutex mu_;
  std::unordered_set<std::string> done_ GUARDED_BY(mu_);  // cache-ids whose prefix was queued (or refused)
};

}  // namespace extrafs::fs
