// mount.extrafs SOURCE MOUNTPOINT [-sfnv] [-o OPTS] [-t TYPE]: the helper mount(8) runs for
// `mount -t extrafs` and fstab entries of type extrafs. Same checks and daemon as `extrafs mount`.
#include <cstdio>
#include <cstring>
#include <string>

#include "common/log.h"
#include "tools/mount_cmd.h"

int main(int argc, char** argv) {
  using extrafs::tools::MountRequest;
  MountRequest req;
  std::vector<std::string> positional;
  bool fake = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-o" || a == "-t") {
      if (i + 1 >= argc) {
        extrafs::print_error("mount.extrafs", a + " needs a value");
        return 2;
      }
      std::string v = argv[++i];
      if (a == "-o") {
        auto st = extrafs::tools::apply_mount_options(v, &req);
        if (!st.ok()) {
          extrafs::print_error("mount.extrafs", st.error().message);
          return 2;
        }
      }
    } else if (a.rfind("-o", 0) == 0 && a.size() > 2) {
      auto st = extrafs::tools::apply_mount_options(a.substr(2), &req);
      if (!st.ok()) {
        extrafs::print_error("mount.extrafs", st.error().message);
        return 2;
      }
    } else if (a == "-f") {
      fake = true;  // mount(8): do everything but the mount itself
    } else if (a == "-s" || a == "-n" || a == "-v") {
      // sloppy, no mtab, verbose: nothing to do
    } else if (!a.empty() && a[0] == '-') {
      extrafs::print_error("mount.extrafs", "unknown option '" + a + "'");
      return 2;
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 2) {
    extrafs::print_error("mount.extrafs", "usage: mount.extrafs SOURCE MOUNTPOINT [-o OPTIONS]");
    return 2;
  }
  req.source = positional[0];
  req.mountpoint = positional[1];
  if (fake) return 0;
  return extrafs::tools::run_mount(req);
}
