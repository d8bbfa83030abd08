// LogLimiter: for an event that may repeat many times a second (a full cache disk fails every
// write), decides when a log line about it is due: at the first occurrence, then at most once per
// interval, the line saying how many occurred since the one before. It only counts and decides;
// the caller writes the line (so its wording stays with the caller).
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "common/thread_annotations.h"

namespace extrafs {

class LogLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  explicit LogLimiter(Clock::duration interval) : interval_(interval) {}
  LogLimiter(const LogLimiter&) = delete;
  LogLimiter& operator=(const LogLimiter&) = delete;

  struct Due {
    bool first = false;  // the first occurrence: nothing was logged before
    uint64_t since = 0;  // occurrences since the last line, this one included
    uint64_t total = 0;  // occurrences in all
    // "N failures since the last report, M in all" (noun "failure").
    std::string counts(std::string_view noun) const {
      return fmt::format("{} {}{} since the last report, {} in all", since, noun, since == 1 ? "" : "s", total);
    }
  };
  // "at most once a minute" or "at most once every N s": for the first line, which tells the
  // reader that later ones are held back, and for how long.
  std::string cadence() const {
    const auto s = std::chrono::duration_cast<std::chrono::seconds>(interval_).count();
    if (s == 60) return "at most once a minute";
    return fmt::format("at most once every {} s", s);
  }

  // Counts one occurrence at `now`: what the line should say if one is due now, else nullopt.
  std::optional<Due> note(Clock::time_point now = Clock::now()) EXCLUDES(mu_) {
    MutexLock lock(&mu_);
    ++total_;
    if (logged_ != 0 && now - logged_at_ < interval_) return std::nullopt;
    Due due{logged_ == 0, total_ - logged_, total_};
    logged_ = total_;
    logged_at_ = now;
    return due;
  }

 private:
  const Clock::duration interval_;
  Mutex mu_;
  uint64_t total_ GUARDED_BY(mu_) = 0;
  uint64_t logged_ GUARDED_BY(mu_) = 0;  // total_ when the last line was due
  Clock::time_point logged_at_ GUARDED_BY(mu_){};
};

}  // namespace extrafs
