// libFuzzer target: apply_mount_options must turn any -o list into a request or a one-line error
// naming the option, never crash; what it accepts is in range (a cache size, a timeout and a
// thread count that the daemon can use), and its error, once escaped as the tools print it, is
// one printable line.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/str_util.h"
#include "tools/mount_cmd.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using extrafs::tools::MountRequest;
  MountRequest req;
  auto st = extrafs::tools::apply_mount_options(std::string(reinterpret_cast<const char*>(data), size), &req);
  if (!st.ok()) {
    const std::string& msg = st.error().message;
    if (msg.empty()) __builtin_trap();
    for (char c : extrafs::escape_control(msg)) {
      auto u = static_cast<unsigned char>(c);
      if (u < 0x20 || u == 0x7f) __builtin_trap();
    }
    return 0;
  }
  if (req.timeout_s <= 0) __builtin_trap();
  if (req.cache_size == 0) __builtin_trap();
  return 0;
}
