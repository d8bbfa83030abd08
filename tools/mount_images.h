// Which images use which layer of a running mount, as its daemon knows them: what `extrafs stats
// --prometheus` labels each layer with. Worked out inside the daemon from its own image/ tree
// (fs::FsCore::read_path: the caches first, else the store; counted as the daemon's own reads),
// never through the mount: by a thread of its own, at once for each new image/ tree (at mount,
// and after each publish), kept in memory, and kept in the block cache's metadata area under the
// digest of the tree's index, so that a remount finds them there without reading anything (also
// while the store is down). So `extrafs stats` never waits on the store: it gets the names read
// while the store answered, and a request waits (briefly) only for a tree the thread has not
// read yet. Names that could not be read (the store away) are tried again every 10 s, and said
// so in the answer ("images_unknown") rather than left empty silently.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cache/block_cache.h"
#include "fs/fs_core.h"

namespace extrafs::tools {

// cache-id -> the image references ("name:tag", sorted) whose image uses that layer.
using LayerImages = std::map<std::string, std::vector<std::string>>;

class MountImages {
 public:
  // `core` and `disk` (may be null: nothing kept) must outlive this object; `mountpoint` names
  // things in messages.
  MountImages(fs::FsCore& core, cache::BlockCache* disk, std::string mountpoint);
  ~MountImages();  // waits for a reading in progress (each read is bounded by the mount's timeout)
  MountImages(const MountImages&) = delete;
  MountImages& operator=(const MountImages&) = delete;

  // Adds "images" (an array of references, maybe empty) to every element of stats["layers"],
  // "former_images" to a layer no image of the current tree uses that an earlier tree of this
  // mount named (a removed image's layer, still served),
  // and "images_unknown" (why) when the names of the current image/ tree are not all known.
  // Waits at most `wait`, and only while the current tree has not been read at all.
  // Thread-safe.
  void annotate(nlohmann::json& stats, std::chrono::milliseconds wait);

 private:
  struct Names {
    std::string tree;  // hex digest of the image/ index they come from ("": none yet)
    LayerImages layers;
    std::string missing;  // why some or all names are missing ("" = complete)
  };
  // The current image/ tree ("" if the store has none), from memory.
  std::string current_tree() const;
  // The names of `tree`: those kept in the block cache, else read from the tree (and then kept).
  Names names_of(const std::string& tree);
  Names read_names(const std::string& tree);
  void loop();

  fs::FsCore& core_;
  cache::BlockCache* const disk_;
  const std::string mountpoint_;
  std::mutex mu_;  // guards the fields below
  std::condition_variable cv_;
  Names names_;
  LayerImages former_;  // layers earlier trees named and the current one does not: their names
  bool poke_ = false;   // a request waits for a tree the thread has not read: look now
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace extrafs::tools
