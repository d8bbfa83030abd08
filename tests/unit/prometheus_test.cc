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
    "layers": [{"cache_id": "aa", "bytes_total": 100, "bytes_cached": 50, "images": ["a:1", "we\"ird\\:2"]},
               {"cache_id": "bb", "bytes_total": 9, "bytes_cached": 9}]})");
  std::string out = render_prometheus(j);
  INFO(out);
  for (const char* line :
       {"# HELP extrafs_bytes_fetched_total ", "# TYPE extrafs_bytes_fetched_total counter\n",
        "\nextrafs_bytes_fetched_total 10\n", "\nextrafs_cache_write_errors_total 3\n",
        "# TYPE extrafs_meta_bytes_fetched_total counter\nextrafs_meta_bytes_fetched_total 5\n",
        "# TYPE extrafs_layer_indexes_loaded gauge\nextrafs_layer_indexes_loaded 1\n",
        "# TYPE extrafs_cache_bytes gauge\nextrafs_cache_bytes 7\n", "# TYPE extrafs_fetch_seconds histogram\n",
        "extrafs_fetch_seconds_bucket{le=\"0.001\"} 1\n", "extrafs_fetch_seconds_bucket{le=\"0.5\"} 2\n",
        "extrafs_fetch_seconds_bucket{le=\"+Inf\"} 4\n", "extrafs_fetch_seconds_sum 0.25\n",
        "extrafs_fetch_seconds_count 4\n",
        "extrafs_layer_size_bytes{cache_id=\"aa\",image=\"a:1,we\\\"ird\\\\:2\"} 100\n",
        "extrafs_layer_cached_bytes{cache_id=\"bb\",image=\"\"} 9\n"}) {
    CHECK(out.find(line) != std::string::npos);
  }
  // Fields the daemon did not send are left out, not shown as 0.
  CHECK(out.find("extrafs_chunks_fetched_total") == std::string::npos);
  CHECK(out.find("source") == std::string::npos);
}

TEST_CASE("label values, HELP texts and comments from a store cannot forge a line or a sample", "[prometheus]") {
  CHECK(prometheus_label_value("a:1") == "a:1");
  CHECK(prometheus_label_value("we\"ird\\") == "we\\\"ird\\\\");
  // A newline or CR never reaches the output: made visible first, then its backslash escaped.
  CHECK(prometheus_label_value("x:1\nextrafs_forged_total 1") == "x:1\\\\nextrafs_forged_total 1");
  CHECK(prometheus_label_value(std::string("a\rb\x1b[2J\xff", 8)) == "a\\\\rb\\\\x1b[2J\\\\xff");
  CHECK(prometheus_help("line\nextrafs_forged_total 1 \\") == "line\\\\nextrafs_forged_total 1 \\\\");
  CHECK(prometheus_comment("why\n# TYPE extrafs_x counter") == "why\\n# TYPE extrafs_x counter");

  // Whole output: whatever the strings, every line is a comment or a sample of an extrafs family.
  auto j = nlohmann::json::parse(R"({"bytes_fetched": 1,
    "images_unknown": "a\nextrafs_forged_total 1\r\u001b[2J",
    "layers": [{"cache_id": "c\nextrafs_forged_total 2", "bytes_total": 1, "bytes_cached": 0,
                "images": ["x:1\nextrafs_forged_total 3", "y:1\"} 4\nextrafs_forged_total{a=\"", "\u009b2J:1"]}]})");
  std::string out = render_prometheus(j);
  INFO(out);
  size_t start = 0;
  int samples = 0;
  while (start < out.size()) {
    size_t end = out.find('\n', start);
    REQUIRE(end != std::string::npos);
    std::string line = out.substr(start, end - start);
    start = end + 1;
    CHECK((line.rfind("# ", 0) == 0 || line.rfind("extrafs_", 0) == 0));
    CHECK(line.rfind("extrafs_forged", 0) != 0);
    for (unsigned char c : line) CHECK((c >= 0x20 && c != 0x7f && c != 0xc2 && c != 0x9b));
    if (line.rfind("extrafs_layer_", 0) == 0) ++samples;
  }
  CHECK(samples == 2);  // one size and one cached sample for the one layer
}
