// InodeTable: the kernel's lookup counts. Node ids in extrafs are derived from (slot, entry), so
// they are stable for the life of the mount and need no allocation; this table only counts how
// many references the kernel holds to each node (lookup/readdirplus add, forget removes) and how
// many nodes of each slot are referenced, so that a superseded version of the image/ tree can be
// released once the kernel no longer refers to it.
//
// Thread-safety: all methods may be called concurrently. Never calls out while holding its lock.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace extrafs::fs {

class InodeTable {
 public:
  static uint32_t slot_of(uint64_t ino) { return static_cast<uint32_t>(ino >> 32); }

  // The kernel got one more reference to `ino`.
  void ref(uint64_t ino);
  // The kernel dropped `n` references; returns the count left (never below zero).
  uint64_t forget(uint64_t ino, uint64_t n);
  uint64_t count(uint64_t ino) const;
  // Number of referenced nodes in `slot`.
  uint64_t slot_nodes(uint32_t slot) const;
  uint64_t size() const;

 private:
  static constexpr size_t kShards = 16;
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<uint64_t, uint64_t> counts;
  };
  Shard& shard(uint64_t ino) const { return shards_[(ino * 0x9E3779B97F4A7C15ull) >> 60]; }

  mutable std::array<Shard, kShards> shards_;
  mutable std::mutex slots_mu_;
  std::unordered_map<uint32_t, uint64_t> slot_nodes_;
};

}  // namespace extrafs::fs
