#include "fs/stats_json.h"

#include <unistd.h>

#include <algorithm>

namespace extrafs::fs {

nlohmann::json stats_json(const FsStatistics& s) {
  const cache::FetcherStats& f = s.fetcher;
  nlohmann::json j;
  j["pid"] = static_cast<uint64_t>(::getpid());  // the daemon's (extrafs unmount waits for it to exit)
  j["bytes_fetched"] = f.bytes_fetched;
  j["meta_bytes_fetched"] = f.meta_bytes_fetched;
  j["own_bytes_fetched"] = f.own_bytes_fetched;
  j["bytes_served"] = s.bytes_served;
  j["open_requests"] = s.open_requests;
  j["opendir_requests"] = s.opendir_requests;
  j["passthrough"] = s.passthrough;
  j["passthrough_opens"] = s.passthrough_opens;
  if (s.whole_files) {
    const cache::WholeFileStats& w = *s.whole_files;
    j["whole_files"] = w.files;
    j["whole_file_bytes"] = w.bytes;
    j["whole_files_written"] = w.written;
    j["whole_files_checked"] = w.checked;
    j["whole_files_corrupt_dropped"] = w.corrupt_dropped;
  }
  j["chunks_fetched"] = f.chunks_fetched;
  j["cache_hits"] = f.cache_hits;
  j["cache_misses"] = f.cache_misses;
  j["merged_waits"] = f.merged_waits;
  j["backend_errors"] = f.backend_errors;
  j["corrupt_fetches"] = f.corrupt_fetches;
  j["prefetches"] = f.prefetches;
  j["cache_write_errors"] = f.cache_write_errors;
  j["removed_layer_errors"] = s.removed_layer_errors;
  j["cache_bytes"] = s.cache_bytes;
  // Backend chunk reads by duration: cumulative counts per upper bound "le" (seconds).
  nlohmann::json le = nlohmann::json::array(), buckets = nlohmann::json::array();
  for (size_t i = 0; i < cache::kFetchBucketCount; ++i) {
    le.push_back(cache::kFetchBuckets[i]);
    buckets.push_back(f.fetch_buckets[i]);
  }
  j["fetch_seconds"] = {
      {"le", std::move(le)}, {"buckets", std::move(buckets)}, {"sum", f.fetch_seconds}, {"count", f.fetch_count}};
  j["inodes"] = s.inodes;
  j["source"] = s.source;
  nlohmann::json arr = nlohmann::json::array();
  uint64_t loaded = 0;
  for (const LayerStatistics& l : s.layers) {
    if (l.index_loaded) ++loaded;
    arr.push_back({{"cache_id", l.cache_id},
                   {"bytes_total", l.bytes_total},
                   {"bytes_cached", l.bytes_cached},
                   {"index_loaded", l.index_loaded},
                   {"removed", l.removed}});
  }
  j["layers"] = std::move(arr);
  j["layer_indexes_loaded"] = loaded;
  return j;
}

}  // namespace extrafs::fs
