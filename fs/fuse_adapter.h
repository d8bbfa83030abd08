// The FUSE edge: the only code that includes fuse_lowlevel.h. Wires the low-level operations to
// FsCore, turns Result errors into errno replies, and runs the multi-threaded session loop.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "fs/fs_core.h"

namespace extrafs::fs {

struct FuseConfig {
  std::string mountpoint;
  std::string fsname;  // shown in /proc/mounts (the SOURCE)
  bool allow_other = false;
  unsigned threads = 0;                 // max worker threads (0 = libfuse default)
  std::vector<std::string> extra_opts;  // further -o options passed to the kernel/libfuse
  // Called once the mount is made, before it serves, with its device number ("MAJOR:MINOR", as
  // in /proc/self/mountinfo and st_dev of its files; "" if it cannot be found): what names the
  // mount for the daemon's statistics channel (tools/mount_stats.h). An error unmounts again and
  // fails the mount with its message.
  std::function<Status(const std::string& dev)> after_mount;
};

// Mounts, calls config.after_mount, then `on_mounted("")` once the mount serves (or
// `on_mounted(reason)` if mounting failed, then returns 1), and serves until unmounted or
// SIGINT/SIGTERM/SIGHUP; then unmounts. Returns 0 after a clean shutdown.
int run_fuse(FsCore& core, const FuseConfig& config, const std::function<void(const std::string&)>& on_mounted);

}  // namespace extrafs::fs
