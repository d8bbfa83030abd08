// `extrafs docker detach`: taking an image that `extrafs docker attach` registered out of a
// dockerd data-root again, and whatever of it nothing else uses. Order (a crash at any point
// leaves a data-root dockerd starts with): the tag (and the image's digest references) first, then
// the config, then the layers top first, each by renaming its layerdb entry away before its l/
// symlink and overlay2 directory go. A layer attach did not make (its diff is not a symlink into
// an extrafs mount, nor a dangling one) is never removed.
//
// The caller checks first that no dockerd runs on the data-root (store/dockerd_probe.h). Not
// thread-safe; takes the data-root's lock (store/data_root.h).
#pragma once

#include <string>
#include <vector>

#include "common/result.h"

namespace extrafs::store {

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

}  // namespace extrafs::store
