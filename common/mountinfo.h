// The mount table of this process's namespace (/proc/self/mountinfo): which paths are mount
// points and of what type. Used by mount/unmount (is the mount point busy), docker attach/detach
// (is this an extrafs mount; is a layer's diff served by one), ls and prefetch. Thread-safe.
#pragma once

#include <string>
#include <vector>

namespace extrafs {

// One line of /proc/self/mountinfo: where, what type ("fuse.extrafs", "overlay", ...), and the
// device number of its file system as "MAJOR:MINOR" (st_dev of its files; names its
// /sys/class/bdi/ entry).
struct MountEntry {
  std::string point;
  std::string fstype;
  std::string dev;
};
// The mounts of this process's namespace, in mount order (later entries cover earlier ones).
std::vector<MountEntry> read_mounts();

// Whether `path` (absolute, resolved) is currently a mount point; `fstype` (may be null)
// receives the type of the top mount there.
bool is_mount_point(const std::string& path, std::string* fstype);

// The type of the file system `path` (absolute, not resolved through symlinks beyond what the
// caller did) lies on: that of the longest mount point that is a prefix of it.
std::string fstype_of(const std::string& path);

}  // namespace extrafs
