#include "common/mountinfo.h"

#include <fstream>

namespace extrafs {

namespace {

std::string unescape_mountinfo(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int v = 0;
      bool ok = true;
      for (int k = 1; k <= 3; ++k) {
        char c = s[i + k];
        if (c < '0' || c > '7') ok = false;
        v = v * 8 + (c - '0');
      }
      if (ok) {
        out += static_cast<char>(v);
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

}  // namespace

std::vector<MountEntry> read_mounts() {
  std::vector<MountEntry> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    // id parent major:minor root mountpoint options [optional...] - fstype source superopts
    std::vector<std::string> f;
    size_t pos = 0;
    while (pos <= line.size()) {
      size_t end = line.find(' ', pos);
      if (end == std::string::npos) end = line.size();
      f.push_back(line.substr(pos, end - pos));
      pos = end + 1;
    }
    if (f.size() < 5) continue;
    MountEntry m;
    m.point = unescape_mountinfo(f[4]);
    m.dev = f[2];
    for (size_t i = 5; i + 1 < f.size(); ++i)
      if (f[i] == "-") m.fstype = f[i + 1];
    out.push_back(std::move(m));
  }
  return out;
}

bool is_mount_point(const std::string& path, std::string* fstype) {
  bool found = false;
  for (const auto& m : read_mounts()) {
    if (m.point != path) continue;
    found = true;  // the last matching line is the top mount
    if (fstype) *fstype = m.fstype;
  }
  return found;
}

std::string fstype_of(const std::string& path) {
  std::string best, type;
  for (const auto& m : read_mounts()) {
    const bool under =
        m.point == "/" || path == m.point ||
        (path.size() > m.point.size() && path.compare(0, m.point.size(), m.point) == 0 && path[m.point.size()] == '/');
    if (under && m.point.size() >= best.size()) {
      best = m.point;
      type = m.fstype;
    }
  }
  return type;
}

}  // namespace extrafs
