#include "fs/inode_table.h"

#include <algorithm>

namespace extrafs::fs {

void InodeTable::ref(uint64_t ino) {
  bool first = false;
  {
    Shard& s = shard(ino);
    MutexLock lock(&s.mu);
    first = s.counts[ino]++ == 0;
  }
  if (first) {
    MutexLock lock(&slots_mu_);
    slot_nodes_[ino_slot(ino)]++;
  }
}

uint64_t InodeTable::forget(uint64_t ino, uint64_t n) {
  uint64_t left;
  {
    Shard& s = shard(ino);
    MutexLock lock(&s.mu);
    auto it = s.counts.find(ino);
    // Forgetting more than was looked up would be a kernel/daemon contract violation; the node
    // ids stay valid regardless, so clamp rather than take the mount down.
    if (it == s.counts.end()) return 0;
    left = it->second -= std::min(n, it->second);
    if (left == 0) s.counts.erase(it);
  }
  if (left == 0) {
    MutexLock lock(&slots_mu_);
    auto it = slot_nodes_.find(ino_slot(ino));
    if (it != slot_nodes_.end() && --it->second == 0) slot_nodes_.erase(it);
  }
  return left;
}

uint64_t InodeTable::count(uint64_t ino) const {
  Shard& s = shard(ino);
  MutexLock lock(&s.mu);
  auto it = s.counts.find(ino);
  return it == s.counts.end() ? 0 : it->second;
}

uint64_t InodeTable::slot_nodes(uint32_t slot) const {
  MutexLock lock(&slots_mu_);
  auto it = slot_nodes_.find(slot);
  return it == slot_nodes_.end() ? 0 : it->second;
}

uint64_t InodeTable::size() const {
  uint64_t total = 0;
  for (auto& s : shards_) {
    MutexLock lock(&s.mu);
    total += s.counts.size();
  }
  return total;
}

}  // namespace extrafs::fs
