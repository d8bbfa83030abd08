#include "common/str_util.h"

#include <cmath>
#include <cstdio>

namespace extrafs {

std::optional<uint64_t> parse_uint(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

std::optional<uint64_t> parse_size(std::string_view s) {
  if (s.empty()) return std::nullopt;
  size_t i = 0;
  while (i < s.size() && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.')) ++i;
  std::string_view num = s.substr(0, i), unit = s.substr(i);
  if (num.empty() || num.front() == '.' || num.back() == '.') return std::nullopt;
  uint64_t mult = 1;
  if (!unit.empty()) {
    char u = unit.front();
    switch (u) {
      case 'k': case 'K': mult = 1ull << 10; break;
      case 'm': case 'M': mult = 1ull << 20; break;
      case 'g': case 'G': mult = 1ull << 30; break;
      case 't': case 'T': mult = 1ull << 40; break;
      case 'b': case 'B': mult = 1; break;
      default: return std::nullopt;
    }
    std::string_view rest = unit.substr(1);
    if (u == 'b' || u == 'B') {
      if (!rest.empty()) return std::nullopt;
    } else if (!(rest.empty() || rest == "B" || rest == "iB" || rest == "b")) {
      return std::nullopt;
    }
  }
  if (num.find('.') != std::string_view::npos) {
    double v = 0;
    if (std::sscanf(std::string(num).c_str(), "%lf", &v) != 1 || !std::isfinite(v)) return std::nullopt;
    double bytes = v * static_cast<double>(mult);
    if (bytes >= 1.8e19) return std::nullopt;
    return static_cast<uint64_t>(bytes);
  }
  auto v = parse_uint(num);
  if (!v || (*v != 0 && mult > UINT64_MAX / *v)) return std::nullopt;
  return *v * mult;
}

std::string format_size(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[u]);
  return buf;
}

std::vector<std::string> split_options(std::string_view s) {
  std::vector<std::string> out;
  std::string cur;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      cur += s[++i];
    } else if (s[i] == ',') {
      out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += s[i];
    }
  }
  out.push_back(std::move(cur));
  return out;
}

bool is_hex64(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

bool is_cache_id(std::string_view s) {
  constexpr std::string_view kInit = "-init";
  if (s.size() == 64 + kInit.size() && s.substr(64) == kInit) s = s.substr(0, 64);
  return is_hex64(s);
}

std::string trim_trailing(std::string_view s) {
  size_t n = s.size();
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n')) --n;
  return std::string(s.substr(0, n));
}

}  // namespace extrafs
