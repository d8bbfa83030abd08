#include "fs/readahead.h"

#include <algorithm>

namespace extrafs::fs {

unsigned Readahead::window(uint64_t ino, uint64_t offset, uint64_t end) {
  constexpr size_t kMaxStreams = 4096;
  std::lock_guard lock(mu_);
  if (streams_.size() >= kMaxStreams && !streams_.count(ino)) streams_.clear();
  Stream& s = streams_[ino];
  s.streak = (offset == s.next && offset != 0) ? s.streak + 1 : (offset == 0 ? 1 : 0);
  s.next = end;
  if (s.streak < 2) return 0;
  return std::min(s.streak - 1, 8u);
}

}  // namespace extrafs::fs
