// `extrafs mount` and `mount.extrafs`: option parsing, checks, daemonising, and serving.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backend/http_source.h"
#include "common/result.h"

namespace extrafs::tools {

struct MountRequest {
  std::string source;
  std::string mountpoint;
  bool foreground = false;
  std::string cache_dir;  // "" = default, derived from the source
  uint64_t cache_size = 10ull << 30;
  int timeout_s = 30;
  unsigned threads = 0;
  bool allow_other = false;
  std::string record_dir;
  std::string log_level = "info";
  std::vector<std::string> fuse_opts;  // passed through to the kernel/libfuse
  int refresh_s = 0;                   // catalog probe interval; 0 = the source's default
  backend::HttpOptions http;           // proxy=, cacert=, s3_*= (http(s) and s3 sources only)
};

// The catalog probe interval when refresh= is not given: 1 s for local and NFS stores, 60 s for
// http(s) and s3 ones (a fleet behind one proxy must not ask the origin every second).
int default_refresh_s(const std::string& source);

// Applies one -o list ("a,b=c,...") to `req`. EINVAL with a one-line message naming the option.
Status apply_mount_options(const std::string& list, MountRequest* req);

// Checks, mounts and serves. Without `foreground`, returns once the mount serves (0) or failed
// (1, after printing one line). Returns the process exit code.
int run_mount(MountRequest req);

// `extrafs unmount MOUNTPOINT`.
int run_unmount(const std::string& mountpoint);

}  // namespace extrafs::tools
