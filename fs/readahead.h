// Readahead: what to fetch ahead of a reader, from the streams it shows.
//   - Within a file: how many chunks after a read to fetch ahead, from each node's sequential
//     streak. A reader that keeps reading where it stopped gets a window that grows with its
//     streak (up to 8 chunks); a reader that jumps gets none. Tracked per node, not per open
//     file: without OPEN requests (fuse_adapter.cc) the daemon does not know which open a read
//     belongs to.
//   - Across files: which of the next entries of a directory to fetch ahead of a reader that reads
//     the directory's files through, one after the next (a walk in readdir order, as
//     `find | xargs cat`, `tar c` or a copy do). Tracked per directory. Each file of such a walk
//     then costs no round trip of its own: the caller fetches the window's small files together
//     (adjacent ones in the store come in one backend read).
//   - Neighbours in the store: a small file read from the backend brings along, in the same
//     backend read, the small files of its directory stored right after it (a publish stores a
//     directory's files side by side, in name order). A reader that opens a few files of a big
//     directory in no walk (a program importing its modules: `__init__` then `aliases`) then
//     finds the next ones here without a round trip of their own. No state: the bounds below
//     (kNeighbourFiles, kNeighbourBytes) cap what one read may bring, and the fetcher takes only
//     the neighbours that are neither held nor being fetched, up to the first one that is.
// Readahead only decides; FsCore (fs_core.cc) turns the answer into ChunkFetcher::prefetch calls
// (walks, file readahead) and into the chunks a fetch reads along (ChunkFetcher::get's
// `following`: the rest of a read, its readahead window, a small file's neighbours).
//
// Thread-safety: every method may be called from any thread (the FUSE workers' reads). Locks:
// `mu_` and `walks_mu_`, each a leaf.
#pragma once

#include <cstdint>
#include <unordered_map>

#include "common/thread_annotations.h"

namespace extrafs::fs {

class Readahead {
 public:
  // Bounds of a walk's window: up to 2^(streak-1) files ahead, at most kMaxWalkFiles files and
  // kMaxWalkBytes bytes; a file larger than kWalkFileMax ends the window (its own reads have
  // their readahead). The caller applies the byte and size bounds (it knows the entries).
  static constexpr uint32_t kMaxWalkFiles = 32;
  static constexpr uint64_t kMaxWalkBytes = 512 << 10;
  static constexpr uint64_t kWalkFileMax = 128 << 10;
  // A walk skips at most kWalkGap - 1 entries between two files (directories, links, files it
  // does not read).
  static constexpr uint32_t kWalkGap = 4;
  // Neighbours a small file (at most kWalkFileMax bytes) read from the backend brings along:
  // the regular files after it in its directory whose chunks continue its own in the same
  // object without a gap, at most kNeighbourFiles files and kNeighbourBytes bytes of content
  // (so a 2 KiB read of a big directory costs at most 128 KiB more in the same backend read,
  // and a bigger file is never brought), looked for among the next kNeighbourScan entries
  // (directories, links and empty files between them are passed over).
  static constexpr uint32_t kNeighbourFiles = 16;
  static constexpr uint64_t kNeighbourBytes = 128 << 10;
  static constexpr uint32_t kNeighbourScan = 64;

  // A read of node `ino` covers [offset, end): the number of chunks after the one it ends in to
  // fetch ahead.
  unsigned window(uint64_t ino, uint64_t offset, uint64_t end) EXCLUDES(mu_);

  // Entries of a directory ahead of a walk: [first, to) is the window (what the byte bound is
  // counted over), [from, to) the part of it not handed out before (each entry is handed out
  // once per walk). Empty (from == to) when there is nothing to fetch now.
  struct WalkWindow {
    uint32_t first = 0, from = 0, to = 0;
  };
  // A read reached the end of entry `entry`, a file of the directory with node id `dir` whose
  // entries end before `dir_end`. From the walk's second file on, returns the next entries to
  // fetch: a window that doubles with the walk from 2 to kMaxWalkFiles files, never past
  // `dir_end`, handed out again in batches once less than half of it is left ahead (a batch of
  // adjacent files is one backend read, a file at a time would be one read each).
  WalkWindow walk(uint64_t dir, uint32_t entry, uint64_t dir_end) EXCLUDES(walks_mu_);

 private:
  struct Stream {
    uint64_t next = 0;    // offset a sequential reader would read next
    unsigned streak = 0;  // consecutive sequential reads
  };
  Mutex mu_;
  std::unordered_map<uint64_t, Stream> streams_ GUARDED_BY(mu_);

  struct Walk {
    uint32_t last = 0;       // the entry last read through
    uint32_t queued_to = 0;  // entries before this one were handed out already
    unsigned streak = 0;     // files read through in order
  };
  Mutex walks_mu_;
  std::unordered_map<uint64_t, Walk> walks_ GUARDED_BY(walks_mu_);
};

}  // namespace extrafs::fs
