// `extrafs rm`: takes images out of a store. It changes what a host sees, never what a host may
// still be reading: it edits the store's plain docker metadata (repositories.json, the image
// configs in imagedb, the layerdb entries of the layers it drops; no mount reads those), and
// writes a new image/ index and a new catalog generation without the layers that only the
// removed images used. Every index, blob, object, plain layer tree and older catalog stays on
// disk for hosts that hold them, until `extrafs gc` (gc.h) finds that no catalog of the grace
// period names them.
//
// A layer rm drops gets a mark, STORE/extrafs/removed/<cache-id> (an empty file), before any
// metadata changes. The mark tells the other writers that the layer's cache-id is taken until gc
// deletes the layer's files and then the mark (publish never writes a new layer under it;
// `extrafs index` never puts its plain tree back in the catalog) and tells gc that a plain overlay2/<cache-id>/ tree is
// garbage, not a copy waiting to be indexed. Written first, it also lets a killed rm be finished: every rm drops the
// marked layers that no image uses, whatever images it was told to remove (`extrafs rm --all-untagged` does it with
// nothing untagged), and removes the marks of layers back in the catalog.
//
// Order (each step durable before the next): marks; repositories.json; image configs; layerdb
// entries; the catalog (image/ index, catalog.d/<generation>, catalog). Holds the writers' lock
// (store_lock.h). Runs in the tools process, single-threaded.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace extrafs::store {

struct RemoveRequest {
  std::string store;                // --from
  std::vector<std::string> images;  // IMAGE...: name:tag (name alone means name:latest) or image id
  bool all_untagged = false;        // --all-untagged (instead of images)
};

struct RemovedImage {
  std::string id;                 // sha256:<hex>
  std::vector<std::string> refs;  // its tags (and digest references) that were removed with it
};

struct RemoveReport {
  std::vector<RemovedImage> images;         // removed from the store
  std::vector<std::string> untagged;        // tags removed from images that another tag keeps
  std::vector<std::string> layers_dropped;  // cache-ids taken out of the catalog
  uint64_t bytes_dropped = 0;               // their content bytes (the catalog's "bytes")
  bool catalog_written = false;
  uint64_t generation = 0;  // of the catalog now current
};

// Whether `arg` has the form of an IMAGE argument of `extrafs rm`: a docker reference
// (check_reference, after "name" becomes "name:latest"), "sha256:" followed by 12 to 64
// lowercase hex digits, or 12 to 64 lowercase hex digits (an image id or a unique prefix of one,
// as `extrafs ls` shows them). EINVAL with a one-line message quoting it (escaped).
Status check_image_argument(std::string_view arg);

// Removes the images `req` names from the store at `req.store` (see above). A name or id the
// store does not have, or an id prefix that several images share, is ENOENT naming it, and
// nothing is changed; so is an image that stays whose layers cannot be told (its config or
// layerdb entries missing or damaged: rm would not know which layers it may drop). A store
// without a catalog is ENOENT. Other errors: the errno of the failed step, naming the file.
Result<RemoveReport> remove_images(const RemoveRequest& req);

// The cache-ids that carry the mark of a removed layer in the store whose root is open as
// `store_fd` (STORE/extrafs/removed/<cache-id>; none if the directory is missing). An error
// naming it if it cannot be listed (a symlink, say): then no writer can tell which cache-ids
// are taken, and fails.
Result<std::set<std::string>> removed_layers(int store_fd, const std::string& store);

}  // namespace extrafs::store
