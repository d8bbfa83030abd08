// `extrafs gc STORE [--grace DURATION] [--dry-run]`: deletes from a local store directory what no
// catalog kept for the grace period names (live_set.h says which catalogs are kept and what they
// name). What it deletes, in this order, each group made durable (fsync of its directory) before
// the next:
//   1. catalog generations that are not kept (extrafs/catalog.d/<N>), oldest first;
//   2. image/ indexes (extrafs/image-<digest>.index) no kept catalog names;
//   3. layer indexes, then layer blobs (extrafs/layers/<cache-id>.{index,blob}) of layers no kept
//      catalog names;
//   4. content objects (extrafs/objects/<digest>) no kept or remaining index names;
//   5. of layers `extrafs rm` removed (marked, remove_images.h) that no kept catalog names and
//      whose mark is a grace period old: the overlay2/l/<link> symlink, the whole
//      overlay2/<cache-id>/ directory (with a Hermes-style plain diff/ tree), then the mark;
//   6. writers' temporaries (stale_temporary_pid) an hour old or more.
// Whatever names a file is deleted before the file, so at no moment does a file on disk name one
// that gc deleted: a gc killed at any point leaves every kept catalog whole (the current one
// included, so every host can mount and read), and only files nothing names, which the next gc
// deletes. A mark goes last, so a half-deleted plain tree is never indexed again.
//
// The files of a layer rm removed go once no kept catalog names the layer and its mark is a grace
// period old (the mark was written just before the catalog that dropped the layer, so this holds
// the promise also where the catalogs before rm have no generations to keep). Another file no
// catalog on disk names (left by a killed writer, or being written by a writer the lock cannot
// see) is deleted only once it is an hour old; one that a catalog gc deletes named, or an image/
// index gc deletes named, goes at once. A plain overlay2/<cache-id>/ tree without a mark is never
// deleted: it may be a copy waiting for `extrafs index`.
//
// Holds the writers' lock (store_lock.h) for the whole run (a dry run too, without removing
// anything), so no publish, index or rm runs meanwhile. Runs in the tools process,
// single-threaded.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/result.h"

namespace extrafs::store {

// How old (seconds) a file no catalog names must be before gc deletes it.
inline constexpr int64_t kUnnamedMinAge = 3600;

struct GcRequest {
  std::string store;
  uint64_t grace = 7 * 86400;  // seconds
  bool dry_run = false;
  int64_t now = 0;  // seconds since the epoch; 0: the clock
  // Called after each deletion with the store-relative path deleted (tests: to stop gc between
  // two deletions). May be empty.
  std::function<void(const std::string&)> after_delete;
};

enum class GcKind { kGeneration, kImageIndex, kLayerIndex, kLayerBlob, kObject, kLink, kLayerTree, kMark, kTemporary };
inline constexpr size_t kGcKinds = 9;
// "catalog generations", "image/ indexes", ...: what a line of gc's report counts.
const char* gc_kind_name(GcKind kind);

struct GcTally {
  uint64_t files = 0;
  uint64_t bytes = 0;
};

struct GcReport {
  std::array<GcTally, kGcKinds> freed{};  // by GcKind; deleted (or, in a dry run, to be deleted)
  GcTally total;
  size_t kept_generations = 0;        // catalog generations kept (the current catalog aside)
  size_t kept_layers = 0;             // layers the kept catalogs name
  uint64_t young = 0;                 // unnamed files left until they are kUnnamedMinAge old
  std::vector<std::string> warnings;  // one line each: what gc could not judge and left alone
};

// Collects the garbage of the local store directory `req.store` (see above). Errors: ENOENT if
// it has no catalog; EBUSY if another writer holds the lock; a kept catalog that cannot be read
// (nothing deleted); the first deletion that fails (gc stops there; what it deleted before is
// counted in no report, and a new run goes on).
Result<GcReport> collect_garbage(const GcRequest& req);

}  // namespace extrafs::store
