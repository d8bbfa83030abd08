// A dockerd data-root (overlay2 graph driver) as `extrafs docker attach|detach` writes it: its
// paths, the directories dockerd expects, repositories.json, image references, and the lock that
// keeps two attach/detach runs off one data-root. Not thread-safe; one process per data-root at
// a time (DataRootLock).
#pragma once

#include <sys/types.h>

#include <string>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace extrafs::docker {

inline constexpr const char* kDefaultDataRoot = "/var/lib/docker";
inline constexpr const char* kDaemonJson = "/etc/docker/daemon.json";
inline constexpr int kMaxLayers = 128;  // overlay2's maxDepth

// The paths of a data-root ROOT.
struct DataRootPaths {
  std::string root;         // ROOT
  std::string image;        // ROOT/image/overlay2
  std::string layerdb;      // .../layerdb
  std::string layerdb_sha;  // .../layerdb/sha256: one directory per chain ID
  std::string layerdb_tmp;  // .../layerdb/tmp: where entries are built before their rename
  std::string imagedb;      // .../imagedb
  std::string content;      // .../imagedb/content/sha256: image configs
  std::string overlay2;     // ROOT/overlay2: one directory per cache-id
  std::string links;        // ROOT/overlay2/l
  std::string repos;        // .../repositories.json
  explicit DataRootPaths(const std::string& root);
};

// Prefixes of what attach and detach build in a data-root before renaming it into place (or
// rename out of it before removing it). Runs hold the data-root lock, so one found by a run
// holding it is a temporary of a run that died.
inline constexpr const char* kLayerdbTmpPrefix = "extrafs-";   // in layerdb/tmp
inline constexpr const char* kOverlayTmpPrefix = ".extrafs-";  // in overlay2/

// Removes what runs that died left in layerdb/tmp and overlay2/. REQUIRES: the data-root lock.
void remove_dead_temporaries(const DataRootPaths& p);

// Creates the directories of `p` that are missing, with the modes dockerd 20.10 gives them.
Status ensure_data_root_layout(const DataRootPaths& p);

// mkdir `path` with exactly `mode` (chmod after, so the umask does not matter); an existing
// directory is fine (its mode is left alone).
Status mkdir_mode(const std::string& path, mode_t mode);

// repositories.json: {"Repositories": {"<repo>": {"<repo>:<tag>": "sha256:<id>", ...}}}. A
// missing file is an empty set; a malformed one EBADMSG ("refusing to replace it").
Result<nlohmann::json> load_repositories(const std::string& path);
// Replaces repositories.json atomically, keeping its mode (0600 for a new file).
Status save_repositories(const std::string& path, const nlohmann::json& j);

// "busybox" -> "busybox:latest", "docker.io/library/busybox:1" -> "busybox:1"; EINVAL (with a
// message) for something that is not a name:tag reference.
Result<std::string> familiar_ref(const std::string& ref);
// The repositories.json key of "name:tag": "name".
std::string repo_of(const std::string& ref);

// An flock on the data-root directory: one attach/detach at a time per data-root, held from
// before the dockerd check until the change is done and a restarted dockerd answers again
// (docker/dockerd_control.h). Waits up to `timeout_s` for another holder (which may be restarting
// dockerd), then EBUSY.
class DataRootLock {
 public:
  static Result<DataRootLock> take(const std::string& root, int timeout_s);
  DataRootLock() = default;
  DataRootLock(DataRootLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  DataRootLock& operator=(DataRootLock&&) = delete;
  ~DataRootLock();

 private:
  int fd_ = -1;
};

}  // namespace extrafs::docker
