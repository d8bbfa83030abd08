// LatencyHistogram: counts durations in buckets of fixed upper bounds, in seconds, and their
// total, for a Prometheus histogram (the fetcher's backend reads, extrafs_fetch_seconds). Counting
// is a relaxed atomic add: cheap on the read path, and a snapshot taken while others count may
// miss the last few, never count one twice.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace extrafs {

// `N` upper bounds, ascending; an implicit last bucket takes what is above them all.
template <size_t N>
class LatencyHistogram {
 public:
  explicit constexpr LatencyHistogram(const double (&bounds)[N]) : bounds_(bounds) {}
  LatencyHistogram(const LatencyHistogram&) = delete;
  LatencyHistogram& operator=(const LatencyHistogram&) = delete;

  void observe(std::chrono::steady_clock::duration d) {
    const uint64_t ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
    const double seconds = static_cast<double>(ns) / 1e9;
    size_t i = 0;
    while (i < N && seconds > bounds_[i]) ++i;
    counts_[i].fetch_add(1, std::memory_order_relaxed);
    ns_.fetch_add(ns, std::memory_order_relaxed);
  }

  struct Snapshot {
    // cumulative[i]: durations of at most bounds[i] seconds (as Prometheus wants them).
    std::array<uint64_t, N> cumulative{};
    uint64_t count = 0;  // all durations: the sum of the buckets, so equal to the +Inf bucket
    double seconds = 0;  // their total
  };
  Snapshot snapshot() const {
    Snapshot s;
    uint64_t running = 0;
    for (size_t i = 0; i <= N; ++i) {
      running += counts_[i].load(std::memory_order_relaxed);
      if (i < N) s.cumulative[i] = running;
    }
    s.count = running;
    s.seconds = static_cast<double>(ns_.load(std::memory_order_relaxed)) / 1e9;
    return s;
  }

 private:
  const double (&bounds_)[N];
  std::array<std::atomic<uint64_t>, N + 1> counts_{};  // per bucket, not cumulative
  std::atomic<uint64_t> ns_{0};
};

}  // namespace extrafs
