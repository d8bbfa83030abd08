#include "common/latency_histogram.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <thread>
#include <vector>

using extrafs::LatencyHistogram;
using std::chrono::microseconds;
using std::chrono::milliseconds;

namespace {
constexpr double kBounds[] = {0.001, 0.01, 0.1};
}  // namespace

TEST_CASE("a latency histogram counts each duration in the first bucket whose bound it does not exceed",
          "[histogram]") {
  LatencyHistogram<3> h(kBounds);
  auto empty = h.snapshot();
  CHECK(empty.count == 0);
  CHECK(empty.cumulative == std::array<uint64_t, 3>{0, 0, 0});
  h.observe(microseconds(500));   // <= 1 ms
  h.observe(milliseconds(1));     // exactly on a bound: that bucket
  h.observe(milliseconds(5));     // <= 10 ms
  h.observe(milliseconds(2000));  // above every bound: only the total counts it
  auto s = h.snapshot();
  CHECK(s.cumulative == std::array<uint64_t, 3>{2, 3, 3});
  CHECK(s.count == 4);
  CHECK(s.seconds == Approx(2.0065));
}

TEST_CASE("a latency histogram loses no observation made from several threads", "[histogram]") {
  LatencyHistogram<3> h(kBounds);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&h] {
      for (int i = 0; i < 10000; ++i) h.observe(microseconds(i % 2 ? 50 : 50000));
    });
  for (auto& t : threads) t.join();
  auto s = h.snapshot();
  CHECK(s.count == 40000);
  CHECK(s.cumulative == std::array<uint64_t, 3>{20000, 20000, 40000});
  CHECK(s.seconds == Approx(20000 * 50e-6 + 20000 * 0.05));
}
