// The `extrafs stats --json` object (tools/mount_stats.h serves it to `extrafs stats`), made
// from the numbers FsCore::statistics() gathers. Its keys are a contract with the tools that
// read it (extrafs stats, ls, the Prometheus exposition, the tests): add keys, never rename.
//
// Thread-safety: a pure function.
#pragma once

#include <nlohmann/json.hpp>

#include "fs/fs_core.h"

namespace extrafs::fs {

nlohmann::json stats_json(const FsStatistics& s);

}  // namespace extrafs::fs
