// The live set of a store: what hosts may still read, so what `extrafs gc` must keep. (`extrafs
// push --prune` follows it at one remove: it deletes from a bucket only what the local store no
// longer has, so what gc kept locally for the grace period stays in the bucket too.)
//
// Which catalogs count. A mounted host follows the store's catalog within a second or two, so a
// catalog generation matters for as long as it was the newest one less than the grace period
// ago: generation g is *kept* if no newer generation is on disk, or if the next newer one on
// disk was written (its mtime) less than `grace` before `now`. So the grace period is the
// operator's promise to hosts that cannot reach the store for a while (or keep running a
// container of a removed image): what a catalog named stays at least `grace` after a newer
// catalog dropped it. The current catalog (STORE/extrafs/catalog) is always kept, whatever its
// generation, and so is a store's only catalog when it has no generations.
//
// What they name: every layer (its index, its blob or its plain overlay2/<cache-id>/ tree), every
// image/ index, and every content object those indexes name (extrafs/objects/<digest>: the
// image/ tree's chunks, and the chunks of layers published as one object per chunk).
//
// Single-threaded; reads the store only (never writes), beneath the store's directory and never
// through a symlink (open_beneath).
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "format/catalog.h"

namespace extrafs::store {

// One file of STORE/extrafs/catalog.d: its generation and when it was written (mtime, seconds).
struct GenerationFile {
  uint64_t generation = 0;
  int64_t mtime = 0;
};

// The generations of `files` that are kept at `now` (seconds since the epoch) with a grace
// period of `grace` seconds (see above), ascending. Pure: the rule alone.
std::vector<uint64_t> kept_generations(std::vector<GenerationFile> files, uint64_t grace, int64_t now);

struct LiveSet {
  format::Catalog current;              // STORE/extrafs/catalog
  std::vector<GenerationFile> on_disk;  // every generation in catalog.d, ascending
  std::vector<uint64_t> generations;    // the kept ones, ascending
  std::set<std::string> layers;         // cache-ids a kept catalog names
  std::set<std::string> links;          // their links ("" left out)
  std::set<std::string> image_indexes;  // hex digests of the image/ indexes kept catalogs name
  // What the generations that are not kept name and the kept ones do not: what the store no
  // longer needs for sure (gc deletes it at once; other unnamed files only once they are old).
  std::set<std::string> dropped_layers;
  std::set<std::string> dropped_image_indexes;
  // Generations that are not kept and could not be read (what they named is not known).
  std::vector<std::string> unreadable;

  // Filled by add_live_objects(): hex digests of the content objects a kept index names, and
  // whether that set is complete (the layer indexes were read too).
  std::set<std::string> objects;
  bool objects_known = false;

  bool keeps_generation(uint64_t g) const;
  // Whether the file at `rel` (relative to the store root) is one the store must keep:
  // "extrafs/catalog", kept generations, the index and blob of live layers, overlay2/<id>/... of
  // live layers and overlay2/l/<link> of their links, live image/ indexes, and (once
  // add_live_objects() ran) live objects. Anything else gc does not manage (image/, the lock, the
  // marks of removed layers, unknown names) is held too.
  bool holds(std::string_view rel) const;
};

// The live set of the store whose root is open as `store_fd` (named `store` in messages) at
// `now` with `grace` seconds. Errors name the file: no catalog (ENOENT), a current catalog or a
// kept generation that cannot be read or parsed (nothing may be deleted while what a kept
// catalog names is unknown).
Result<LiveSet> compute_live_set(int store_fd, const std::string& store, uint64_t grace, int64_t now);

// Reads the kept image/ indexes (and, with `layer_indexes`, the kept layer indexes, which makes
// live->objects complete) and adds the content objects they name to live->objects. An index that
// cannot be read is an error naming it: then the objects are not known, and none may be deleted.
Status add_live_objects(int store_fd, const std::string& store, bool layer_indexes, LiveSet* live);

// The hex digests of the content objects (extrafs/objects/<hex>) that the index at `rel` names.
Result<std::vector<std::string>> index_objects(int store_fd, const std::string& store, const std::string& rel);

}  // namespace extrafs::store
