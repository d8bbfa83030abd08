// Whether a dockerd uses a data-root, and whether it would use it with the overlay2 graph driver:
// the checks `extrafs docker attach|detach` make before they write. dockerd reads a data-root's
// metadata only at start-up and rewrites repositories.json from memory, so writing under a
// running one is lost (or worse). Reads /proc, the data-root and daemon.json; thread-safe.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "docker/data_root.h"

namespace extrafs::docker {

// The arguments of a /proc/PID/cmdline (NUL-separated).
std::vector<std::string> split_cmdline(const std::string& cmdline);

// Every value given to one of `flags` on dockerd's command line `args` (argv[0] first), in order:
// "--flag VALUE", "--flag=VALUE", and for one-letter flags also "-fVALUE".
std::vector<std::string> dockerd_flag_values(const std::vector<std::string>& args,
                                             const std::vector<std::string>& flags);

// The pid of the dockerd process (of this pid namespace) whose data-root is `data_root`, if one
// runs: found by its command line (and config file) or, for /var/lib/docker, the system pid files.
std::optional<long> find_dockerd(const std::string& data_root);

// OK if no dockerd (or its containerd) uses `data_root`: no dockerd process whose --data-root / -g
// / --graph (or daemon.json data-root, or the default /var/lib/docker) resolves to it, and none of
// the bolt databases dockerd and its containerd keep locked while they run is locked. Otherwise
// EBUSY with a one-line message naming the pid and how to stop it.
Status check_dockerd_stopped(const std::string& data_root);

// OK if a dockerd started on `data_root` would use the overlay2 graph driver with the classic
// (non-containerd) image store, as far as the data-root and `daemon_json` tell. Otherwise
// EINVAL with a one-line message naming what shows the other driver.
Status check_overlay2_data_root(const std::string& data_root, const std::string& daemon_json = kDaemonJson);

}  // namespace extrafs::docker
