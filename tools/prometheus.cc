#include "tools/prometheus.h"

#include <fmt/format.h>

#include "common/str_util.h"

namespace extrafs::tools {

namespace {

// The counters of the statistics object, in output order: JSON field, help text.
struct Family {
  const char* field;
  const char* help;
};
constexpr Family kCounters[] = {
    {"bytes_fetched", "Bytes read from the backend (as stored: compressed chunks count their stored size)."},
    {"meta_bytes_fetched", "Bytes of metadata (catalog, layer and image/ indexes) read from the backend."},
    {"own_bytes_fetched",
     "Bytes the daemon read from the backend for itself (the docker metadata behind the image labels)."},
    {"bytes_served", "Bytes returned to readers of the mount."},
    {"open_requests",
     "OPEN requests from the kernel (without passthrough, after the first none: the kernel then opens files without "
     "asking)."},
    {"opendir_requests",
     "OPENDIR requests from the kernel (after the first none: the kernel then opens directories without asking)."},
    {"passthrough_opens", "Opens handed a local whole-file copy that the kernel reads by itself (FUSE passthrough)."},
    {"chunks_fetched", "Chunks read from the backend."},
    {"cache_hits", "Chunk requests served from the memory or disk cache."},
    {"cache_misses", "Chunk requests that had to go to the backend."},
    {"merged_waits", "Chunk requests that waited for another reader's fetch of the same chunk."},
    {"prefetches", "Chunks brought in ahead of readers (readahead)."},
    {"backend_errors", "Backend reads that failed (timeout, I/O error, missing object)."},
    {"removed_layer_errors",
     "Reads that failed because the store no longer has the data (a layer removed by extrafs rm and collected by "
     "extrafs gc, or gone from a store made again)."},
    {"corrupt_fetches", "Fetched chunks that failed decompression or digest verification."},
    {"cache_write_errors", "Chunks or metadata the disk cache failed to store (for example a full disk)."},
};
constexpr Family kGauges[] = {
    {"cache_bytes", "Bytes of chunk data held in the local cache."},
    {"inodes", "Nodes the kernel currently holds references to."},
    {"layer_indexes_loaded", "Layers whose index is loaded (read on a layer's first use)."},
    {"whole_files", "Local whole-file copies held for FUSE passthrough."},
    {"whole_file_bytes", "Bytes of the local whole-file copies (counted against cache_size with the chunks)."},
};

bool is_count(const nlohmann::json& j, const char* k) { return j.contains(k) && j[k].is_number_unsigned(); }

void header(std::string& out, const std::string& name, const char* type, const char* help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, prometheus_help(help), name, type);
}

}  // namespace

std::string prometheus_label_value(std::string_view v) {
  std::string out;
  for (char c : escape_control(v)) {
    if (c == '\\' || c == '"') out += '\\';
    out += c;
  }
  return out;
}

std::string prometheus_help(std::string_view v) {
  std::string out;
  for (char c : escape_control(v)) {
    if (c == '\\') out += '\\';
    out += c;
  }
  return out;
}

std::string prometheus_comment(std::string_view v) { return escape_control(v); }

std::string render_prometheus(const nlohmann::json& stats) {
  std::string out;
  if (stats.contains("images_unknown") && stats["images_unknown"].is_string())
    out += "# extrafs: image names not all known: " + prometheus_comment(stats["images_unknown"].get<std::string>()) +
           "\n";
  for (const auto& f : kCounters) {
    if (!is_count(stats, f.field)) continue;
    std::string name = fmt::format("extrafs_{}_total", f.field);
    header(out, name, "counter", f.help);
    out += fmt::format("{} {}\n", name, stats[f.field].get<uint64_t>());
  }
  for (const auto& f : kGauges) {
    if (!is_count(stats, f.field)) continue;
    std::string name = fmt::format("extrafs_{}", f.field);
    header(out, name, "gauge", f.help);
    out += fmt::format("{} {}\n", name, stats[f.field].get<uint64_t>());
  }
  if (stats.contains("fetch_seconds") && stats["fetch_seconds"].is_object()) {
    const auto& h = stats["fetch_seconds"];
    if (h.contains("le") && h.contains("buckets") && h["le"].is_array() && h["buckets"].is_array() &&
        h["le"].size() == h["buckets"].size() && is_count(h, "count") && h.contains("sum") && h["sum"].is_number()) {
      header(out, "extrafs_fetch_seconds", "histogram", "Time taken by backend reads of chunks, in seconds.");
      for (size_t i = 0; i < h["le"].size(); ++i)
        out += fmt::format("extrafs_fetch_seconds_bucket{{le=\"{}\"}} {}\n", h["le"][i].get<double>(),
                           h["buckets"][i].get<uint64_t>());
      out += fmt::format("extrafs_fetch_seconds_bucket{{le=\"+Inf\"}} {}\n", h["count"].get<uint64_t>());
      out += fmt::format("extrafs_fetch_seconds_sum {}\n", h["sum"].get<double>());
      out += fmt::format("extrafs_fetch_seconds_count {}\n", h["count"].get<uint64_t>());
    }
  }
  if (stats.contains("layers") && stats["layers"].is_array()) {
    std::string size, cached;
    for (const auto& l : stats["layers"]) {
      if (!l.is_object() || !l.contains("cache_id") || !l["cache_id"].is_string()) continue;
      std::string id = l["cache_id"].get<std::string>();
      std::string image;
      if (l.contains("images") && l["images"].is_array()) {
        for (const auto& r : l["images"])
          if (r.is_string()) image += (image.empty() ? "" : ",") + r.get<std::string>();
      }
      std::string labels =
          fmt::format("{{cache_id=\"{}\",image=\"{}\"}}", prometheus_label_value(id), prometheus_label_value(image));
      if (is_count(l, "bytes_total"))
        size += fmt::format("extrafs_layer_size_bytes{} {}\n", labels, l["bytes_total"].get<uint64_t>());
      if (is_count(l, "bytes_cached"))
        cached += fmt::format("extrafs_layer_cached_bytes{} {}\n", labels, l["bytes_cached"].get<uint64_t>());
    }
    header(out, "extrafs_layer_size_bytes", "gauge", "Bytes of the layer's file content.");
    out += size;
    header(out, "extrafs_layer_cached_bytes", "gauge", "Bytes of the layer's file content held in the local cache.");
    out += cached;
  }
  return out;
}

}  // namespace extrafs::tools
