#include "fs/readahead.h"

#include <algorithm>

namespace extrafs::fs {

namespace {
// Streams and walks remembered at most; beyond, the table starts afresh (a reader that loses its
// streak gets no readahead until it shows one again).
constexpr size_t kMaxTracked = 4096;
}  // namespace

unsigned Readahead::window(uint64_t ino, uint64_t offset, uint64_t end) {
  MutexLock lock(&mu_);
  if (streams_.size() >= kMaxTracked && !streams_.count(ino)) streams_.clear();
  Stream& s = streams_[ino];
  s.streak = (offset == s.next && offset != 0) ? s.streak + 1 : (offset == 0 ? 1 : 0);
  s.next = end;
  if (s.streak < 2) return 0;
  return std::min(s.streak - 1, 8u);
}

Readahead::WalkWindow Readahead::walk(uint64_t dir, uint32_t entry, uint64_t dir_end) {
  MutexLock lock(&walks_mu_);
  if (walks_.size() >= kMaxTracked && !walks_.count(dir)) walks_.clear();
  Walk& w = walks_[dir];
  w.streak = (w.streak > 0 && entry > w.last && entry - w.last <= kWalkGap) ? w.streak + 1 : 1;
  w.last = entry;
  if (w.streak == 1) w.queued_to = 0;  // a new walk starts its window afresh
  if (w.streak < 2) return {};
  const uint32_t files = std::min(1u << std::min(w.streak - 1, 5u), kMaxWalkFiles);
  const uint32_t first = entry + 1;
  if (w.queued_to > first && w.queued_to - first >= files / 2) return {};
  const uint32_t from = std::max(first, w.queued_to);
  const auto to = static_cast<uint32_t>(std::min<uint64_t>(uint64_t{first} + files, dir_end));
  if (from >= to) return {};
  w.queued_to = to;
  return {first, from, to};
}

}  // namespace extrafs::fs
