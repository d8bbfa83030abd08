// `extrafs stats MOUNTPOINT --prometheus`: a mount's statistics (the object `--json` prints) in
// the Prometheus text exposition format 0.0.4: `# HELP` and `# TYPE` for every family, counters
// named extrafs_*_total, the backend fetch latency as a histogram, per-layer gauges labelled by
// cache_id and image.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace extrafs::tools {

// cache-id -> the image references ("name:tag", sorted) whose image uses that layer.
using LayerImages = std::map<std::string, std::vector<std::string>>;

// Which images use which layer, from ROOT/image/overlay2 (a mount, a store or a data-root). A
// reference that does not resolve is left out; a missing or unreadable repositories.json gives
// an error.
Result<LayerImages> layer_images(const std::string& root);

// Renders `stats`; a layer not in `images` gets image="". Fields missing from `stats` (an older
// daemon) are left out rather than shown as 0.
std::string render_prometheus(const nlohmann::json& stats, const LayerImages& images);

}  // namespace extrafs::tools
