// `extrafs docker attach`: registering images served by an extrafs mount into a stock dockerd
// data-root (overlay2 graph driver). DESIGN.md "Docker pairing" describes what is written:
//
//   DATAROOT/image/overlay2/layerdb/sha256/<chainID>/{diff,size,cache-id,parent[,tar-split.json.gz]}
//       copied from the mount's layerdb, built in layerdb/tmp/ and renamed into place
//   DATAROOT/overlay2/<cache-id>/{diff -> MNT/overlay2/<cache-id>/diff, link, lower, work/, committed}
//   DATAROOT/overlay2/l/<link> -> ../<cache-id>/diff
//   DATAROOT/image/overlay2/imagedb/content/sha256/<id>           the image config
//   DATAROOT/image/overlay2/repositories.json                      the tag merged in
//
// Order matters for a crash at any point: the l/ symlink, then the overlay2 directory (renamed
// into place), then the layerdb entry (renamed into place), base layer first; then the config,
// then repositories.json; every rename is followed by an fsync of its directory. dockerd never
// sees a layerdb entry without its overlay2 directory, nor a tag without its config. Re-running
// attach finishes a half-done attach.
//
// The caller checks first that no dockerd runs on the data-root (store/dockerd_probe.h). Not
// thread-safe; attach and detach take the data-root's lock (store/data_root.h).
#pragma once

#include <string>
#include <vector>

#include "common/result.h"

namespace extrafs::store {

// Checks that `mountpoint` (resolved) is an extrafs mount; returns the resolved path.
Result<std::string> resolve_extrafs_mount(const std::string& mountpoint);

struct AttachResult {
  std::string ref;          // "name:tag"
  std::string image_id;     // "sha256:<hex>"
  int layers = 0;
  int layers_created = 0;   // new overlay2 dirs + layerdb entries
  int layers_present = 0;   // already in the data-root (attached before, or dockerd's own)
  int layers_repaired = 0;  // a half-done attach finished, or a dangling diff symlink retargeted
  bool config_written = false;
  bool tag_written = false;
  std::string previous_id;  // the image the tag pointed at before, if another one
};

// Attaches every image of `refs` (each "name:tag") served by the extrafs mount `mountpoint`
// into `data_root` (created if missing). All images are resolved before anything is written.
// The caller has checked the dockerd and the driver.
Result<std::vector<AttachResult>> attach_images(const std::string& mountpoint, const std::string& data_root,
                                                const std::vector<std::string>& refs);

// The "name:tag" references of every image the extrafs mount `mountpoint` serves that `data_root`
// does not have yet (its repositories.json lacks the tag, or has it for another image), sorted.
// For `extrafs docker attach --all`.
Result<std::vector<std::string>> unattached_refs(const std::string& mountpoint, const std::string& data_root);

}  // namespace extrafs::store
