// First-access traces: which files a container start-up opened first, in order. Written by a
// mount started with `-o record=DIR` (one file DIR/trace-<unix time>-<pid>.txt per mount), read
// by `extrafs publish --order` (pack those files first) and `extrafs prefetch --trace`.
//
// Format: UTF-8/bytes text, one line per first open of a file:
//     <cache-id> <entry> <path>\n
// <entry> is the file's entry number in the layer index (decimal); <path> is relative to the
// layer root, without a leading '/', with '\n' written as "\n" and '\' as "\\". Spaces in the
// path are kept as they are (the path is the rest of the line). This file is the only place
// that knows the format.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/posix_file.h"
#include "common/result.h"

namespace extrafs::store {

struct TraceEntry {
  std::string cache_id;
  uint64_t entry = 0;
  std::string path;  // relative, unescaped
  bool operator==(const TraceEntry&) const = default;
};

// One line of the format, with its '\n'.
std::string format_trace_line(std::string_view cache_id, uint64_t entry, std::string_view path);

// Parses a whole trace. Empty lines are skipped, leading '/' of a path dropped, lines whose path
// is empty skipped, and repeated (cache-id, path) pairs kept once, at their first appearance.
// EINVAL naming the line for anything malformed (too few fields, an entry that is not a number,
// an unknown escape).
Result<std::vector<TraceEntry>> parse_trace(std::string_view text);
// Reads and parses the trace file `path`; errors name the file.
Result<std::vector<TraceEntry>> read_trace_file(const std::string& path);

// Appends lines to a new trace file in a record directory. Thread-safe: record() may be called
// from any FUSE worker thread (each line is one append write).
class TraceWriter {
 public:
  // Creates DIR/trace-<unix time>-<pid>.txt (appending if it exists).
  static Result<std::unique_ptr<TraceWriter>> create(const std::string& dir);
  const std::string& path() const { return path_; }
  // Appends one line; a failed write is logged, never returned (tracing must not fail an open).
  void record(std::string_view cache_id, uint64_t entry, std::string_view path);

 private:
  TraceWriter(Fd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  Fd fd_;
  std::string path_;
};

}  // namespace extrafs::store
