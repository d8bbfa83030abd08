// libFuzzer target: the http(s)/s3 SOURCE and proxy= parsers must turn any string into a result
// or a one-line error, never crash. The input is "SOURCE\nPROXY". What they accept is sane: every
// mirror's base URL is http(s)://, has no query, fragment, control byte or trailing '/'; every
// proxy is "" (DIRECT) or http://HOST:PORT.
#include <cstddef>
#include <cstdint>
#include <string>

#include "backend/http_source.h"
#include "common/str_util.h"

namespace {

void check_message(const std::string& msg) {
  if (msg.empty()) __builtin_trap();
  for (char c : extrafs::escape_control(msg)) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace extrafs::backend;
  std::string in(reinterpret_cast<const char*>(data), size);
  size_t nl = in.find('\n');
  HttpOptions o;
  std::string source = in.substr(0, nl);
  if (nl != std::string::npos) o.proxy = in.substr(nl + 1);
  if (source.rfind("s3://", 0) == 0) o.s3_endpoint = "http://127.0.0.1:7480";
  auto r = resolve_http_source(source, o);
  if (!r.ok()) {
    check_message(r.error().message);
    return 0;
  }
  if (r->mirrors.empty() || r->mirrors.size() != r->mirror_names.size() || r->proxy_groups.empty()) __builtin_trap();
  for (const auto& m : r->mirrors) {
    if (m.rfind("http://", 0) != 0 && m.rfind("https://", 0) != 0) __builtin_trap();
    if (m.back() == '/' || m.find('?') != std::string::npos || m.find('#') != std::string::npos) __builtin_trap();
    for (char c : m)
      if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) __builtin_trap();
  }
  for (const auto& g : r->proxy_groups) {
    if (g.empty()) __builtin_trap();
    for (const auto& p : g)
      if (!p.empty() && p.rfind("http://", 0) != 0) __builtin_trap();
  }
  return 0;
}
