// Node ids and the kernel's lookup counts.
//
// A node id is (slot << 32) | local: the slot says which tree the node belongs to (0 for the fixed
// top-level directories, then one per layer and per version of the image/ tree, in the order
// FsCore first saw them) and `local` which node of that tree. Ids are therefore stable for the
// life of the mount and need no allocation. This header is the only place that knows the
// encoding; everything else goes through make_ino(), ino_slot() and ino_local().
//
// InodeTable only counts how many references the kernel holds to each node (lookup/readdirplus
// add, forget removes) and how many nodes of each slot are referenced, so that a superseded
// version of the image/ tree can be released once the kernel no longer refers to it.
//
// Thread-safety: the functions are pure; all InodeTable methods may be called concurrently. It
// never calls out while holding its lock.
#pragma once

#include <array>
#include <cstdint>
#include <unordered_map>

#include "common/thread_annotations.h"

namespace extrafs::fs {

constexpr uint64_t make_ino(uint32_t slot, uint32_t local) { return (static_cast<uint64_t>(slot) << 32) | local; }
constexpr uint32_t ino_slot(uint64_t ino) { return static_cast<uint32_t>(ino >> 32); }
constexpr uint32_t ino_local(uint64_t ino) { return static_cast<uint32_t>(ino & 0xffffffffu); }

class InodeTable {
 public:
  // The kernel got one more reference to `ino`.
  void ref(uint64_t ino) EXCLUDES(slots_mu_);
  // The kernel dropped `n` references; returns the count left (never below zero).
  uint64_t forget(uint64_t ino, uint64_t n) EXCLUDES(slots_mu_);
  uint64_t count(uint64_t ino) const;
  // Number of referenced nodes in `slot`.
  uint64_t slot_nodes(uint32_t slot) const EXCLUDES(slots_mu_);
  uint64_t size() const;

 private:
  static constexpr size_t kShards = 16;
  struct Shard {
    mutable Mutex mu;
    std::unordered_map<uint64_t, uint64_t> counts GUARDED_BY(mu);
  };
  Shard& shard(uint64_t ino) const { return shards_[(ino * 0x9E3779B97F4A7C15ull) >> 60]; }

  mutable std::array<Shard, kShards> shards_;
  mutable Mutex slots_mu_;
  std::unordered_map<uint32_t, uint64_t> slot_nodes_ GUARDED_BY(slots_mu_);
};

}  // namespace extrafs::fs
