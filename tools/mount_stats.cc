#include "tools/mount_stats.h"

#include <sys/xattr.h>

#include "fs/fs_core.h"

namespace extrafs::tools {

Result<nlohmann::json> read_mount_stats(const std::string& mountpoint) {
  std::string buf(1 << 16, '\0');
  for (int attempt = 0; attempt < 5; ++attempt) {
    ssize_t n = ::getxattr(mountpoint.c_str(), fs::kStatsXattr, buf.data(), buf.size());
    if (n >= 0) {
      auto j = nlohmann::json::parse(buf.substr(0, static_cast<size_t>(n)), nullptr, false);
      if (j.is_discarded() || !j.is_object()) return make_error(EBADMSG, mountpoint + " returned unreadable statistics");
      return j;
    }
    if (errno == ERANGE) {
      buf.resize(buf.size() * 4);  // the per-layer list grows with the store
      continue;
    }
    if (errno == ENODATA || errno == ENOTSUP || errno == EOPNOTSUPP)
      return make_error(errno, mountpoint + " is not an extrafs mount");
    return Error::from_errno(errno, mountpoint);
  }
  return make_error(E2BIG, mountpoint + ": statistics too large");
}

}  // namespace extrafs::tools
