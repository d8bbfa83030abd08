// `extrafs docker detach`: taking an image that `extrafs docker attach` registered out of a
// dockerd data-root again, and whatever of it nothing else uses. Order (a crash at any point
// leaves a data-root dockerd starts with): the tag (and the image's digest references) first, then
// the config, then the layers top first, each by renaming its layerdb entry away before its l/
// symlink and overlay2 directory go. A layer attach did not make (its diff is not a symlink into
// an extrafs mount, nor a dangling one) is never removed.
//
// In steps, as for attach (docker/attach.h): under the data-root lock, before anything about
// dockerd is decided (DataRootChange::plan), every image is looked up and checked and each layer
// is judged (whether attach made it: that may look into the mount its diff points at); with
// dockerd stopped (DataRootChange::apply), the removals, reading only the data-root.
// docker/dockerd_control.h runs them.
#pragma once

#include <string>
#include <vector>

#include "common/result.h"
#include "docker/data_root.h"
#include "docker/dockerd_control.h"

namespace extrafs::docker {

struct DetachResult {
  std::string ref;
  std::string image_id;
  bool config_removed = false;
  std::vector<std::string> removed_layers;  // cache ids
  std::vector<std::string> kept_layers;     // "cache-id (reason)"
  std::string note;                         // why the config was kept, if it was
};

struct DetachRequest {
  std::string data_root = kDefaultDataRoot;
  std::vector<std::string> refs;  // "name:tag" (checked by the caller: familiar_ref)
  bool restart = false;           // restart a running dockerd around the change
  RestartOptions restart_options;
};

struct DetachReport {
  std::vector<DetachResult> images;  // the images detached, in order (also those before a failure)
  RestartOutcome restart;            // what happened to dockerd (also when the detach failed)
};

// `extrafs docker detach`: takes each ref out of `data_root`: the tag; the config if no other tag
// and no container use it; every layer attach made (its diff is a symlink into an extrafs mount)
// that no other image, no container and no other layer's lower chain uses. Every ref is checked
// (in the data-root, made by attach) before anything is removed; through
// run_with_dockerd_stopped, so with `restart` a running dockerd is restarted around the removals.
Status docker_detach(const DetachRequest& req, DetachReport* report);

}  // namespace extrafs::docker
