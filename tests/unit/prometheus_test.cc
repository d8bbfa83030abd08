#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "tools/prometheus.h"

using namespace extrafs::tools;

TEST_CASE("the Prometheus text has HELP and TYPE per family, *_total counters, a histogram and layer labels",
          "[prometheus]") {
  auto j = nlohmann::json::parse(R"({
    "bytes_fetched": 10, "bytes_served": 20, "cache_write_errors": 3, "cache_bytes": 7, "source": "/s",
    "meta_bytes_fetched": 5, "layer_indexes_loaded": 1,
    "fetch_seconds": {"le": [0.001, 0.5], "buckets": [1, 2], "sum": 0.25, "count": 4},
    "layers": [{"cache_id": "aa", "bytes_total": 100, "bytes_cached": 50},
               {"cache_id": "bb", "bytes_total": 9, "bytes_cached": 9}]})");
  LayerImages images{{"aa", {"a:1", "we\"ird\\:2"}}};
  std::string out = render_prometheus(j, images);
  INFO(out);
  for (const char* line : {"# HELP extrafs_bytes_fetched_total ", "# TYPE extrafs_bytes_fetched_total counter\n",
                           "\nextrafs_bytes_fetched_total 10\n", "\nextrafs_cache_write_errors_total 3\n",
                           "# TYPE extrafs_meta_bytes_fetched_total counter\nextrafs_meta_bytes_fetched_total 5\n",
                           "# TYPE extrafs_layer_indexes_loaded gauge\nextrafs_layer_indexes_loaded 1\n",
                           "# TYPE extrafs_cache_bytes gauge\nextrafs_cache_bytes 7\n",
                           "# TYPE extrafs_fetch_seconds histogram\n", "extrafs_fetch_seconds_bucket{le=\"0.001\"} 1\n",
                           "extrafs_fetch_seconds_bucket{le=\"0.5\"} 2\n", "extrafs_fetch_seconds_bucket{le=\"+Inf\"} 4\n",
                           "extrafs_fetch_seconds_sum 0.25\n", "extrafs_fetch_seconds_count 4\n",
                           "extrafs_layer_size_bytes{cache_id=\"aa\",image=\"a:1,we\\\"ird\\\\:2\"} 100\n",
                           "extrafs_layer_cached_bytes{cache_id=\"bb\",image=\"\"} 9\n"}) {
    CHECK(out.find(line) != std::string::npos);
  }
  // Fields the daemon did not send are left out, not shown as 0.
  CHECK(out.find("extrafs_chunks_fetched_total") == std::string::npos);
  CHECK(out.find("source") == std::string::npos);
}
