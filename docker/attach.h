// `extrafs docker attach`: registering images served by an extrafs mount into a stock dockerd
// data-root (overlay2 graph driver). docs/DESIGN.md section 5 describes what is written:
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
// In steps, so that nothing is read from the mount while dockerd is stopped (a mount can be slow,
// hang, or serve a FIFO): (1) before the data-root lock, every image is resolved on the mount and
// its config and small layerdb files are read and checked; under the lock,
// (2) DataRootChange::plan: a dry run of the writes checks the data-root and tells whether
// anything is to be written at all (an image attached whole needs nothing, and no restart);
// (3) DataRootChange::prepare, before dockerd is stopped: the layerdb entries to create are
// staged in layerdb/tmp/extrafs-* with their tar-split copied from the mount; (4) with dockerd
// stopped, DataRootChange::apply: the writes, from the staged entries and the data-root alone.
// docker/dockerd_control.h runs (2) to (4).
#pragma once

#include <string>
#include <vector>

#include "common/result.h"
#include "docker/data_root.h"
#include "docker/dockerd_control.h"

namespace extrafs::docker {

// Checks that `mountpoint` (resolved) is an extrafs mount; returns the resolved path.
Result<std::string> resolve_extrafs_mount(const std::string& mountpoint);

struct AttachResult {
  std::string ref;       // "name:tag"
  std::string image_id;  // "sha256:<hex>"
  int layers = 0;
  int layers_created = 0;   // new overlay2 dirs + layerdb entries
  int layers_present = 0;   // already in the data-root (attached before, or dockerd's own)
  int layers_repaired = 0;  // a half-done attach finished, or a dangling diff symlink retargeted
  bool config_written = false;
  bool tag_written = false;
  std::string previous_id;  // the image the tag pointed at before, if another one
};

struct AttachRequest {
  std::string mount;  // the extrafs mount serving the images
  std::string data_root = kDefaultDataRoot;
  std::vector<std::string> refs;  // "name:tag" (checked by the caller: familiar_ref)
  bool all = false;               // instead of refs: every tag of the mount not attached yet
  bool restart = false;           // restart a running dockerd around the change
  RestartOptions restart_options;
};

struct AttachReport {
  std::vector<AttachResult> images;  // each image, attached now or found attached already
  bool nothing_to_attach = false;    // with `all`: every image of the mount is attached already
  RestartOutcome restart;            // what happened to dockerd (also when the attach failed)
};

// `extrafs docker attach`: checks the mount and the data-root's driver, reads the images from the
// mount, creates the data-root if missing (its parents 0755, itself 0710), and attaches them
// through run_with_dockerd_stopped (so with `restart` a running dockerd is restarted around the
// writes, and without it a running one is refused). All images are resolved before anything is
// written; an image already attached whole causes no write and no restart. `report` is filled
// as far as the run got, also on failure.
Status docker_attach(const AttachRequest& req, AttachReport* report);

}  // namespace extrafs::docker
