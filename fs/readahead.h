// Readahead: how many chunks after a read to fetch ahead, from each node's sequential streak. A
// reader that keeps reading where it stopped gets a window that grows with its streak (up to 8
// chunks); a reader that jumps gets none. Tracked per node, not per open file: without OPEN
// requests (fuse_adapter.cc) the daemon does not know which open a read belongs to.
//
// Thread-safety: window() may be called from any thread (the FUSE workers' reads). Lock: `mu_`,
// a leaf.
#pragma once

#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace extrafs::fs {

class Readahead {
 public:
  // A read of node `ino` covers [offset, end): the number of chunks after the one it ends in to
  // fetch ahead.
  unsigned window(uint64_t ino, uint64_t offset, uint64_t end);

 private:
  struct Stream {
    uint64_t next = 0;    // offset a sequential reader would read next
    unsigned streak = 0;  // consecutive sequential reads
  };
  std::mutex mu_;  // guards streams_
  std::unordered_map<uint64_t, Stream> streams_;
};

}  // namespace extrafs::fs
