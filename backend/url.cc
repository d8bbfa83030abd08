#include "backend/url.h"

#include <vector>

#include "common/str_util.h"

namespace extrafs::backend {
namespace {

bool valid_hostname(std::string_view h) {
  if (h.empty() || h.size() > 253) return false;
  for (char c : h) {
    bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
    if (!ok) return false;
  }
  return h.front() != '.' && h.front() != '-';
}

bool valid_ipv6(std::string_view h) {
  if (h.empty()) return false;
  for (char c : h) {
    bool ok = (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || (c >= '0' && c <= '9') || c == ':' || c == '.';
    if (!ok) return false;
  }
  return h.find(':') != std::string_view::npos;
}

bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

Error bad(std::string msg) { return Error{EINVAL, std::move(msg)}; }

}  // namespace

bool parse_port(std::string_view s, int* out) {
  if (s.empty() || s.size() > 5) return false;
  int v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  if (v < 1 || v > 65535) return false;
  *out = v;
  return true;
}

Result<UrlAuthority> parse_url_authority(std::string_view authority, std::string_view what) {
  const std::string w(what);
  if (authority.empty()) return bad(w + " has no host");
  if (authority.find('@') != std::string_view::npos) return bad(w + " must not contain a user name ('@')");
  UrlAuthority out;
  std::string_view port_str;
  bool has_port = false;
  if (authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad(w + " has an unterminated '[' in its host");
    std::string_view host = authority.substr(1, close - 1);
    if (!valid_ipv6(host)) return bad("bad IPv6 host '" + std::string(host) + "' in " + w);
    out.host = host;
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("unexpected '" + std::string(after) + "' after the host in " + w);
      port_str = after.substr(1);
      has_port = true;
    }
  } else {
    size_t colon = authority.find(':');
    std::string_view host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      port_str = authority.substr(colon + 1);
      has_port = true;
    }
    if (host.empty()) return bad(w + " has no host");
    if (!valid_hostname(host)) return bad("bad host '" + std::string(host) + "' in " + w);
    out.host = host;
  }
  if (has_port && !parse_port(port_str, &out.port)) {
    return bad("bad port '" + std::string(port_str) + "' in " + w + " (expected 1-65535)");
  }
  return out;
}

std::string url_host(const std::string& host) { return host.find(':') != std::string::npos ? "[" + host + "]" : host; }

std::string percent_encode_segment(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    bool keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
                c == '_' || c == '~';
    if (keep) {
      out += ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

bool valid_url_path(std::string_view path) {
  for (size_t i = 0; i < path.size(); ++i) {
    auto c = static_cast<unsigned char>(path[i]);
    if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#' || c == '\\') return false;
    if (c == '%' && (i + 2 >= path.size() || !is_hex(path[i + 1]) || !is_hex(path[i + 2]))) return false;
  }
  return true;
}

Result<std::string> percent_encode_path(std::string_view path) {
  std::vector<std::string_view> parts;
  if (!split_path(path, &parts)) return make_error(EINVAL, "path '" + std::string(path) + "' contains '..'");
  std::string out;
  for (auto p : parts) {
    out += '/';
    out += percent_encode_segment(p);
  }
  return out;
}

}  // namespace extrafs::backend
