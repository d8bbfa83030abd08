// `extrafs push`: uploads a local store (what `publish` and `index` write) into an object store
// (an S3 bucket: backend/object_writer.h), so that a host mounting the destination never sees a
// catalog that names something absent, however the push ends.
//
// What is uploaded, in this order:
//   1. every object the store's catalog (STORE/extrafs/catalog, read once at the start) names:
//      each layer's index and the objects its chunks point into (its blob, its content objects
//      extrafs/objects/<digest>, or the plain files of an indexed Hermes-style layer), the image/
//      index and its objects. Those the destination has already (the same path with the same
//      size, asked by HEAD) are skipped: nothing in a store is ever rewritten under the same
//      name (extrafs-store(5)). Several uploads run at once; any failure stops the push here.
//   2. the catalog's generation, extrafs/catalog.d/<N> (the name a mounted host looks for next);
//   3. extrafs/catalog.
// A host learns of a new catalog only through 2 or 3, so what a push killed earlier uploaded is
// unreachable until a later push completes it, and a rerun skips what is up. Plain files that
// no reader uses (image/'s docker metadata, overlay2/<id>/link and lower: hosts take those from
// the catalog and the image/ index) are not uploaded.
// Cache-Control: kImmutableCacheControl on everything but the catalog and its generations, which
// get kCatalogCacheControl.
//   4. with `prune`: the destination's objects under extrafs/, overlay2/ and image/ that the local
//      store no longer has are deleted, after the catalog is up (so never one a host may be led
//      to by the new catalog). The local store's file list decides: whatever `extrafs gc` keeps
//      locally for hosts on older catalogs (its grace period) stays in the destination too.
//      Nothing is ever deleted without it.
//
// Refused before anything is written: a store without a catalog, an index that does not match
// the digest its catalog gives, an object the catalog names that the store lacks, and a
// destination whose catalog is of a newer generation than the store's (or of the same
// generation with other content): hosts on it would ignore the pushed catalog.
//
// Reads the store only and takes no lock: what a catalog names is immutable, so a publish
// running meanwhile changes nothing this push uploads (the next push takes its catalog).
// Runs in the tools process; the progress callback is called from the upload threads, one call
// at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "backend/object_writer.h"
#include "common/result.h"

namespace extrafs::store {

// What immutable objects are sent with: any cache may keep them for ever.
inline constexpr const char* kImmutableCacheControl = "public, max-age=31536000, immutable";
// What the catalog and its generations are sent with: caches keep them briefly. Hosts ask a
// proxy to revalidate them once per refresh interval anyway (Cache-Control: max-age=REFRESH in
// their requests); this bounds what a cache that ignores that (a CDN) serves stale.
inline constexpr const char* kCatalogCacheControl = "public, max-age=10";

struct PushProgress {
  uint64_t objects_done = 0, objects_total = 0;  // objects of step 1 checked or uploaded
  uint64_t bytes_done = 0, bytes_total = 0;      // bytes of them uploaded, of those to upload
};

struct PushRequest {
  std::string store;                             // the local store directory
  backend::ObjectWriter* destination = nullptr;  // where to (the caller owns it)
  bool prune = false;
  int jobs = 8;                                       // uploads in flight at once
  std::function<void(const PushProgress&)> progress;  // may be empty
};

struct PushReport {
  uint64_t objects_named = 0;     // objects the catalog names (step 1)
  uint64_t objects_uploaded = 0;  // of them uploaded now
  uint64_t objects_present = 0;   // of them the destination had
  uint64_t bytes_uploaded = 0;
  uint64_t generation = 0;        // of the catalog pushed (0: a catalog without generations)
  bool catalog_uploaded = false;  // false: the destination had this very catalog already
  uint64_t objects_deleted = 0;   // by prune
  uint64_t bytes_deleted = 0;
};

// Errors: ENOENT (no catalog), EBADMSG (an index that does not match its catalog), EEXIST (the
// destination's catalog is newer), the destination's errors (EACCES, ...); one line each.
Result<PushReport> push_store(const PushRequest& request);

}  // namespace extrafs::store
