// `extrafs stats MOUNTPOINT --prometheus`: a mount's statistics (the object `--json` prints, with
// each layer's image names, see mount_images.h) in the Prometheus text exposition format 0.0.4:
// `# HELP` and `# TYPE` for every family, counters named extrafs_*_total, the backend fetch
// latency as a histogram, per-layer gauges labelled by cache_id and image.
//
// Every string that reaches the output goes through one of the escapes below, built on the
// terminal escaping (escape_control): no value from a store, a daemon or a command line can end
// a line early, open a new sample, or put bytes in the output that are not UTF-8.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace extrafs::tools {

// A label value between the double quotes: control characters made visible (escape_control),
// then '\' and '"' escaped as the format asks.
std::string prometheus_label_value(std::string_view v);
// The text of a `# HELP` line: control characters made visible, then '\' escaped.
std::string prometheus_help(std::string_view v);
// The text of a free comment line ("# ..."): control characters made visible.
std::string prometheus_comment(std::string_view v);

// Renders `stats`. A layer's `image` label joins its "images" with ','; a layer without them gets
// image="". "images_unknown" in `stats` becomes a comment line saying why names are missing.
// Fields missing from `stats` (an older daemon) are left out rather than shown as 0.
std::string render_prometheus(const nlohmann::json& stats);

}  // namespace extrafs::tools
