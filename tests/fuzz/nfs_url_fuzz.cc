// libFuzzer target: parse_nfs_url must turn any string into a parsed URL or an error message,
// never crash; its error, escaped as the tools print it, is one printable line; what it accepts is normalized (a host,
// an absolute path without '..' or doubled
// '/', version 3 or 4, ports in range) and parses again to the same result once printed.
#include <cstddef>
#include <cstdint>
#include <string>

#include "backend/nfs_backend.h"
#include "common/str_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using extrafs::backend::parse_nfs_url;
  auto r = parse_nfs_url(std::string(reinterpret_cast<const char*>(data), size));
  if (!r.ok()) {
    if (r.error().message.empty()) __builtin_trap();
    for (char c : extrafs::escape_control(r.error().message)) {
      auto u = static_cast<unsigned char>(c);
      if (u < 0x20 || u == 0x7f) __builtin_trap();
    }
    return 0;
  }
  const auto& u = *r;
  if (u.host.empty() || u.path.empty() || u.path[0] != '/') __builtin_trap();
  if (u.path.find("//") != std::string::npos || u.path.back() == '/') __builtin_trap();
  if (u.path.find("/../") != std::string::npos || u.path.ends_with("/..")) __builtin_trap();
  if (u.version != 3 && u.version != 4) __builtin_trap();
  if (u.nfsport < 0 || u.nfsport > 65535 || u.mountport < 0 || u.mountport > 65535) __builtin_trap();
  std::string host = u.host.find(':') != std::string::npos ? "[" + u.host + "]" : u.host;
  std::string printed = "nfs://" + host + (u.nfsport ? ":" + std::to_string(u.nfsport) : "") + u.path +
                        "?version=" + std::to_string(u.version) +
                        (u.mountport ? "&mountport=" + std::to_string(u.mountport) : "");
  auto again = parse_nfs_url(printed);
  if (!again.ok() || again->host != u.host || again->path != u.path || again->version != u.version ||
      again->mountport != u.mountport || again->nfsport != u.nfsport)
    __builtin_trap();
  return 0;
}
