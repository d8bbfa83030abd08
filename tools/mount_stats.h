// Reading a running mount's counters: the JSON object FsCore::stats_json() returns through the
// `user.extrafs.stats` xattr of the mount root (fs/fs_core.h). Used by `extrafs stats`, `ls` (the
// cached percentage of each layer) and `prefetch` (bytes fetched). Thread-safe.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace extrafs::tools {

// The statistics object of the extrafs mount at `mountpoint`. ENODATA/ENOTSUP ("is not an
// extrafs mount"), EBADMSG (unreadable), other errno values naming the mount point.
Result<nlohmann::json> read_mount_stats(const std::string& mountpoint);

}  // namespace extrafs::tools
