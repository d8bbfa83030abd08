#include "common/str_util.h"

#include <charconv>
#include <cstdio>

namespace extrafs {

std::optional<uint64_t> parse_uint(std::string_view s) {
  // from_chars takes no sign, space or base prefix; the whole string must be the number.
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<uint64_t> parse_duration(std::string_view s) {
  if (s == "0") return 0;
  if (s.size() < 2) return std::nullopt;
  uint64_t unit = 0;
  switch (s.back()) {
    case 's':
      unit = 1;
      break;
    case 'm':
      unit = 60;
      break;
    case 'h':
      unit = 3600;
      break;
    case 'd':
      unit = 86400;
      break;
    default:
      return std::nullopt;
  }
  auto n = parse_uint(s.substr(0, s.size() - 1));
  if (!n || *n > UINT64_MAX / unit) return std::nullopt;
  return *n * unit;
}

std::optional<uint64_t> parse_size(std::string_view s) {
  // NUMBER[.FRACTION][UNIT[B|iB]]: the digits end at the first non-digit.
  size_t i = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  auto whole = parse_uint(s.substr(0, i));
  if (!whole) return std::nullopt;
  std::string_view frac;
  if (i < s.size() && s[i] == '.') {
    size_t j = i + 1;
    while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
    frac = s.substr(i + 1, j - i - 1);
    if (frac.empty() || frac.size() > 18) return std::nullopt;
    i = j;
  }
  std::string_view unit = s.substr(i);
  uint64_t mult = 1;
  if (!unit.empty()) {
    switch (unit.front()) {
      case 'k':
      case 'K':
        mult = 1ull << 10;
        break;
      case 'm':
      case 'M':
        mult = 1ull << 20;
        break;
      case 'g':
      case 'G':
        mult = 1ull << 30;
        break;
      case 't':
      case 'T':
        mult = 1ull << 40;
        break;
      case 'b':
      case 'B':
        mult = 1;
        break;
      default:
        return std::nullopt;
    }
    std::string_view rest = unit.substr(1);
    if (mult == 1 ? !rest.empty() : !(rest.empty() || rest == "B" || rest == "iB")) return std::nullopt;
  }
  if (*whole != 0 && mult > UINT64_MAX / *whole) return std::nullopt;
  uint64_t bytes = *whole * mult;
  if (!frac.empty()) {
    // Exact: the fraction must come to a whole number of bytes (1.5G does, 1.1G does not).
    uint64_t digits = *parse_uint(frac), scale = 1;
    for (size_t k = 0; k < frac.size(); ++k) scale *= 10;
    unsigned __int128 part = static_cast<unsigned __int128>(digits) * mult;
    if (part % scale != 0) return std::nullopt;
    uint64_t extra = static_cast<uint64_t>(part / scale);
    if (extra > UINT64_MAX - bytes) return std::nullopt;
    bytes += extra;
  }
  return bytes;
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
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else
    std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[u]);
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

bool split_path(std::string_view path, std::vector<std::string_view>* out) {
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    std::string_view part = path.substr(i, j - i);
    if (part == "..") return false;
    if (!part.empty() && part != ".") out->push_back(part);
    i = j + 1;
  }
  return true;
}

namespace {

// The length of the well-formed UTF-8 sequence at the start of `s` (RFC 3629: no overlong forms,
// no surrogates, nothing above U+10FFFF), or 0 if it does not start with one.
size_t utf8_sequence(std::string_view s) {
  auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  auto cont = [&](size_t i) { return i < s.size() && (b(i) & 0xc0) == 0x80; };
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    if (!cont(1) || !cont(2)) return 0;
    if ((c == 0xe0 && b(1) < 0xa0) || (c == 0xed && b(1) > 0x9f)) return 0;
    return 3;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if ((c == 0xf0 && b(1) < 0x90) || (c == 0xf4 && b(1) > 0x8f)) return 0;
    return 4;
  }
  return 0;
}

void append_hex_byte(std::string& out, unsigned char c) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "\\x%02x", c);
  out += buf;
}

}  // namespace

std::string escape_control(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = utf8_sequence(s.substr(i));
    if (n == 1) {
      if (c >= 0x20 && c != 0x7f)
        out += static_cast<char>(c);
      else if (c == '\n')
        out += "\\n";
      else if (c == '\r')
        out += "\\r";
      else if (c == '\t')
        out += "\\t";
      else
        append_hex_byte(out, c);
      ++i;
    } else if (n == 0) {
      append_hex_byte(out, c);  // not UTF-8: shown byte by byte
      ++i;
    } else if (n == 2 && c == 0xc2 && static_cast<unsigned char>(s[i + 1]) < 0xa0) {
      // A C1 control (U+0080..U+009F): many terminals act on it like on a C0 one.
      append_hex_byte(out, c);
      append_hex_byte(out, static_cast<unsigned char>(s[i + 1]));
      i += 2;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

}  // namespace extrafs
