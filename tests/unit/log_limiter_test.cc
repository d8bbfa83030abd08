#include "common/log_limiter.h"

#include <catch2/catch.hpp>
#include <chrono>

using extrafs::LogLimiter;
using std::chrono::seconds;

TEST_CASE("a log limiter lets the first occurrence through, then one per interval with the count since", "[loglimit]") {
  LogLimiter limit(seconds(60));
  const auto t0 = LogLimiter::Clock::time_point{} + seconds(1000);
  auto first = limit.note(t0);
  REQUIRE(first);
  CHECK(first->first);
  CHECK(first->since == 1);
  CHECK(first->total == 1);
  for (int i = 1; i <= 4; ++i) CHECK_FALSE(limit.note(t0 + seconds(i)));
  CHECK_FALSE(limit.note(t0 + seconds(59)));  // within the interval of the last line
  auto next = limit.note(t0 + seconds(60));
  REQUIRE(next);
  CHECK_FALSE(next->first);
  CHECK(next->since == 6);  // the 4 + 1 held back, and this one
  CHECK(next->total == 7);
  CHECK_FALSE(limit.note(t0 + seconds(100)));  // the interval runs from the last line
  auto last = limit.note(t0 + seconds(121));
  REQUIRE(last);
  CHECK(last->since == 2);
  CHECK(last->total == 9);
}

TEST_CASE("a limiter's line says how often later lines come and how many it stands for", "[log]") {
  CHECK(LogLimiter(seconds(60)).cadence() == "at most once a minute");
  CHECK(LogLimiter(seconds(5)).cadence() == "at most once every 5 s");
  LogLimiter limit(seconds(60));
  const auto t0 = LogLimiter::Clock::time_point{} + seconds(1000);
  CHECK(limit.note(t0)->counts("failure") == "1 failure since the last report, 1 in all");
  CHECK_FALSE(limit.note(t0 + seconds(1)));
  CHECK(limit.note(t0 + seconds(61))->counts("failure") == "2 failures since the last report, 3 in all");
}
