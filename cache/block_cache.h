// BlockCache: the persistent, bounded, crash-safe local store of verified chunks, keyed by the
// chunk's xxh3-128 digest (so a chunk shared by several layers or images is stored once), plus a
// small area for metadata blobs (the store catalog and layer indexes, so a host can remount and
// serve what it has cached while the NFS server is down).
//
// Lives in a directory given by `-o cache=DIR`. Bounded by `capacity` bytes of chunk data: after a
// put, least-recently-used chunks are evicted until the total is at most `capacity` (so it is never
// more than one chunk over the bound, and only transiently). Survives unmount, remount and SIGKILL:
// a chunk is written to a temporary file and renamed into place; a torn or corrupt chunk is
// detected on read (digest mismatch or bad header), removed, and reported as a miss, never served.
// A chunk file is hashed on its first read by this instance and again whenever the file changes
// (its inode, size, mtime or ctime differ from when it was verified); in between, reads skip the
// hash.
//
// What it creates is private (directories 0700, files 0600): chunks hold the bytes of files that
// only root may read inside the image.
//
// Thread-safety: all methods may be called concurrently from any thread. Two processes must not
// open the same directory at once: open() takes an exclusive flock on DIR/lock and fails with
// EBUSY otherwise.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "cache/chunk_buffer.h"
#include "common/hash.h"
#include "common/result.h"

namespace extrafs::cache {

struct BlockCacheStats {
  uint64_t bytes = 0;            // chunk bytes currently stored (raw, uncompressed)
  uint64_t chunks = 0;           // chunks currently stored
  uint64_t capacity = 0;         // the bound (chunks plus the external bytes, see set_external)
  uint64_t external = 0;         // bytes of whole-file copies counted against it
  uint64_t hits = 0;             // get() served from disk
  uint64_t misses = 0;           // get() found nothing (or found a corrupt chunk)
  uint64_t evictions = 0;        // chunks evicted to honour the bound
  uint64_t corrupt_dropped = 0;  // chunks found corrupt on read or verify and removed
  uint64_t write_errors = 0;     // puts that failed (disk full, ...); the read still succeeds
};

class BlockCache {
 public:
  virtual ~BlockCache() = default;

  // Opens (creating if needed) the cache in `dir`, bounded to `capacity` bytes, and rebuilds the
  // in-memory LRU from what is on disk (recency persisted approximately, e.g. by file mtime).
  static Result<std::unique_ptr<BlockCache>> open(const std::string& dir, uint64_t capacity);

  // Returns the raw bytes of the chunk with digest `d`. ENOENT when absent; a chunk whose stored
  // bytes do not hash to `d` is deleted and reported as ENOENT (counted in corrupt_dropped). The
  // bytes are hashed unless this instance verified the same, unchanged file before.
  virtual Result<ChunkBuffer> get(const Digest128& d) = 0;

  // Stores `raw` under `d` (the caller has already verified that xxh3_128(raw) == d). Evicts
  // least-recently-used chunks to stay within capacity. Idempotent.
  virtual Status put(const Digest128& d, std::span<const std::byte> raw) = 0;

  // Whether `d` is present (no verification, no recency update). Used for "fetched %".
  virtual bool contains(const Digest128& d) = 0;

  // Metadata blobs (catalog, indexes) by name ([A-Za-z0-9._-]+); not counted against capacity.
  virtual Status put_meta(const std::string& name, std::span<const std::byte> data) = 0;
  virtual Result<std::vector<std::byte>> get_meta(const std::string& name) = 0;

  // Re-reads every chunk and drops the corrupt ones; returns how many were dropped.
  virtual Result<uint64_t> verify_all() = 0;

  // Evicts until at most `target` bytes remain (gc), removes stray temporary files.
  virtual Status shrink_to(uint64_t target) = 0;

  // Bytes kept beside the chunks in the same directory (whole-file copies, cache/whole_files.h)
  // that count against the bound: chunks are evicted, now and on later puts, so that chunks plus
  // these stay within capacity.
  virtual void set_external(uint64_t bytes) = 0;

  virtual BlockCacheStats stats() = 0;
};

// What a cache directory holds, read without opening it as a cache (so it works while a daemon
// uses it): for `extrafs cache stat`.
struct CacheInspection {
  uint64_t chunks = 0;       // chunk files
  uint64_t bytes = 0;        // raw bytes in them (headers excluded)
  uint64_t meta_blobs = 0;   // files in meta/
  uint64_t stray_files = 0;  // leftovers in tmp/ and misnamed files
  long owner_pid = 0;        // the extrafs holding the cache, 0 if none
};
Result<CacheInspection> inspect_block_cache(const std::string& dir);

}  // namespace extrafs::cache
