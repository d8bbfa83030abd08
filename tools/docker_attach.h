// `extrafs docker attach|detach`: registering images served by an extrafs mount into a stock
// dockerd data-root (overlay2 graph driver), and taking them out again. DESIGN.md "Docker
// pairing" describes what is written:
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
// then repositories.json. dockerd never sees a layerdb entry without its overlay2 directory, nor
// a tag without its config. Re-running attach finishes a half-done attach.
//
// dockerd reads all of this only at start-up and rewrites repositories.json from memory, so both
// verbs refuse while the dockerd owning the data-root runs. Not thread-safe; one call at a time
// per data-root (attach and detach take an flock on the data-root directory).
#pragma once

#include <string>
#include <vector>

#include "common/result.h"

namespace extrafs::tools {

inline constexpr const char* kDefaultDataRoot = "/var/lib/docker";
inline constexpr const char* kDaemonJson = "/etc/docker/daemon.json";

// OK if no dockerd (or its containerd) uses `data_root`: no dockerd process whose --data-root / -g
// / --graph (or daemon.json data-root, or the default /var/lib/docker) resolves to it, and none of
// the bolt databases dockerd and its containerd keep locked while they run is locked. Otherwise
// EBUSY with a one-line message naming the pid and how to stop it.
Status check_dockerd_stopped(const std::string& data_root);

// OK if a dockerd started on `data_root` would use the overlay2 graph driver with the classic
// (non-containerd) image store, as far as the data-root and `daemon_json` tell. Otherwise
// EINVAL with a one-line message naming what shows the other driver.
Status check_overlay2_data_root(const std::string& data_root, const std::string& daemon_json = kDaemonJson);

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

struct DetachResult {
  std::string ref;
  std::string image_id;
  bool config_removed = false;
  std::vector<std::string> removed_layers;  // cache ids
  std::vector<std::string> kept_layers;     // "cache-id (reason)"
  std::string note;                          // why the config was kept, if it was
};

// Takes `ref` out of `data_root`: the tag; the config if no other tag and no container use it;
// every layer attach made (its diff is a symlink into an extrafs mount) that no other image, no
// container and no other layer's lower chain uses. The caller has checked the dockerd.
Result<DetachResult> detach_image(const std::string& data_root, const std::string& ref);

// "busybox" -> "busybox:latest", "docker.io/library/busybox:1" -> "busybox:1"; EINVAL (with a
// message) for something that is not a name:tag reference.
Result<std::string> familiar_ref(const std::string& ref);

}  // namespace extrafs::tools
