// Which images use which layer of a running mount, as its daemon knows them: what `extrafs stats
// --prometheus` labels each layer with. Worked out inside the daemon from its own image/ tree
// (fs::FsCore::read_path: the caches first, else the store; counted as the daemon's own reads),
// never through the mount: by a thread of its own, at once for each new image/ tree (at mount,
// and after each publish), and kept in memory. So `extrafs stats` never waits on the store: it
// gets the names read while the store answered, and a request waits (briefly) only for a tree
// the thread has not read yet. Names that could not be read (the store away) are tried again
// every 10 s, and said so in the answer ("images_unknown") rather than left empty silently.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "fs/fs_core.h"

namespace extrafs::tools {

// cache-id -> the image references ("name:tag", sorted) whose image uses that layer.
using LayerImages = std::map<std::string, std::vector<std::string>>;

class MountImages {
 public:
  // `core` must outlive this object; `mountpoint` names things in messages.
  MountImages(fs::FsCore& core, std::string mountpoint);
  ~MountImages();  // waits for a reading in progress (each read is bounded by the mount's timeout)
  MountImages(const MountImages&) = delete;
  MountImages& operator=(const MountImages&) = delete;

  // Adds "images" (an array of references, maybe empty) to every element of stats["layers"],
  // and "images_unknown" (why) when the names of the current image/ tree are not all known.
  // Waits at most `wait`, and only while the current tree has not been read at all.
  // Thread-safe.
  void annotate(nlohmann::json& stats, std::chrono::milliseconds wait);

 private:
  struct Names {
    uint64_t tree = 0;    // the image/ tree they come from (its root's node id); 0: none yet
    LayerImages layers;
    std::string missing;  // why some or all names are missing ("" = complete)
  };
  // The node id of the current image/ tree's root (0: the store has no image/ tree).
  uint64_t current_tree();
  Names read_names(uint64_t tree);
  void loop();

  fs::FsCore& core_;
  const std::string mountpoint_;
  std::mutex mu_;  // guards the fields below
  std::condition_variable cv_;
  Names names_;
  bool poke_ = false;  // a request waits for a tree the thread has not read: look now
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace extrafs::tools
