#include "store/trace.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstring>
#include <set>

#include "common/str_util.h"

namespace extrafs::store {

std::string format_trace_line(std::string_view cache_id, uint64_t entry, std::string_view path) {
  std::string escaped;
  escaped.reserve(path.size());
  for (char c : path) {
    if (c == '\n')
      escaped += "\\n";
    else if (c == '\\')
      escaped += "\\\\";
    else
      escaped += c;
  }
  return fmt::format("{} {} {}\n", cache_id, entry, escaped);
}

Result<std::vector<TraceEntry>> parse_trace(std::string_view text) {
  std::vector<TraceEntry> out;
  std::set<std::pair<std::string, std::string>> seen;
  size_t start = 0, line_no = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    line_no++;
    if (line.empty()) continue;
    size_t s1 = line.find(' ');
    size_t s2 = s1 == std::string_view::npos ? s1 : line.find(' ', s1 + 1);
    auto entry = s2 == std::string_view::npos ? std::nullopt : parse_uint(line.substr(s1 + 1, s2 - s1 - 1));
    if (s1 == 0 || !entry)
      return make_error(EINVAL, fmt::format("trace line {}: expected '<cache-id> <entry> <path>'", line_no));
    std::string path;
    for (size_t i = s2 + 1; i < line.size(); ++i) {
      if (line[i] == '\\' && i + 1 < line.size()) {
        char c = line[++i];
        if (c == 'n')
          path += '\n';
        else if (c == '\\')
          path += '\\';
        else
          return make_error(EINVAL, fmt::format("trace line {}: bad escape \\{}", line_no, c));
      } else {
        path += line[i];
      }
    }
    while (!path.empty() && path.front() == '/') path.erase(0, 1);
    if (path.empty()) continue;
    TraceEntry e{std::string(line.substr(0, s1)), *entry, std::move(path)};
    if (seen.emplace(e.cache_id, e.path).second) out.push_back(std::move(e));
  }
  return out;
}

Result<std::vector<TraceEntry>> read_trace_file(const std::string& path) {
  EXTRAFS_TRY(text, read_file(path));
  auto parsed = parse_trace(text);
  if (!parsed.ok()) return make_error(parsed.code(), path + ": " + parsed.error().message);
  return parsed;
}

Result<std::unique_ptr<TraceWriter>> TraceWriter::create(const std::string& dir) {
  struct timespec now {};
  clock_gettime(CLOCK_REALTIME, &now);
  std::string path = fmt::format("{}/trace-{}-{}.txt", dir, now.tv_sec, ::getpid());
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (!fd.valid()) return Error::from_errno(errno, "record trace " + path);
  return std::unique_ptr<TraceWriter>(new TraceWriter(std::move(fd), std::move(path)));
}

void TraceWriter::record(std::string_view cache_id, uint64_t entry, std::string_view path) {
  std::string line = format_trace_line(cache_id, entry, path);
  if (int e = write_all(fd_.get(), line.data(), line.size())) spdlog::warn("trace write failed: {}", std::strerror(e));
}

}  // namespace extrafs::store
