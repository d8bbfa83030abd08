// WholeFiles: local copies of whole files, for the kernel to read by itself (FUSE passthrough).
//
// A file that a reader read from its first byte to its last gets a copy in DIR/files/<key>, built
// in the background from its chunks (each verified against its digest on the way, as every chunk
// is), where <key> names the file's content: the xxh3-128 of its size and chunk table
// (fs::whole_file_key). Opening a file that has a copy hands the kernel the copy (the mount then
// reads it as it reads any local file: its page cache, its readahead, no daemon in between).
//
// Trust: the same as chunk files get. Anything kept on disk from one mount to the next (a copy,
// and anything kept beside it) may have been replaced meanwhile, so every mount hashes a copy,
// chunk by chunk against the layer index's digests (check()), before it first hands it out, and
// hands it out afterwards only while the copy's identity (inode, size, mtime, ctime) is the one it
// had when hashed: a replaced or rewritten copy is hashed again. Hashing never happens in an open:
// an open of a copy this instance has not checked gets EAGAIN, the caller has it checked in the
// background and serves that open the usual way. A copy that does not match is removed. Written
// to a temporary beside it, fsync'ed and renamed into place: a copy under its final name is
// complete. (fs-verity, which would let the kernel check every page it reads, is not used: the
// kernels this was built and tested on lack CONFIG_FS_VERITY.)
//
// Copies exist for FUSE passthrough only: nothing is counted or evicted until load() (the mount
// uses copies), and a mount that cannot use them removes them (discard()) rather than keep bytes
// that no one reads.
//
// Bounded by `capacity` bytes (copies' sizes); the least recently opened copies go first. Copies
// are extra: the chunks they were built from stay in the block cache.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "common/hash.h"
#include "common/posix_file.h"
#include "common/result.h"

namespace extrafs::cache {

// One chunk of a file as the copy must hold it: `raw_len` bytes hashing to `digest`, or zeros.
struct ExpectedChunk {
  Digest128 digest;
  uint32_t raw_len = 0;
  bool zero = false;
};

struct WholeFileStats {
  uint64_t files = 0;            // copies held
  uint64_t bytes = 0;            // their total size
  uint64_t capacity = 0;         // the bound
  uint64_t written = 0;          // copies made by this instance
  uint64_t checked = 0;          // copies hashed and found right by this instance
  uint64_t corrupt_dropped = 0;  // copies that did not match their chunks and were removed
};

class WholeFiles {
 public:
  virtual ~WholeFiles() = default;

  // Opens (creating DIR/files if needed) the copies kept in `dir`, the block cache's
  // directory, bounded to `capacity` bytes; what DIR/files holds is not looked at before load().
  // `usage`, if set, is told the bytes the copies take (written and being written) whenever that
  // changes (the block cache counts them against its own bound, BlockCache::set_external);
  // called with an internal lock held.
  static Result<std::unique_ptr<WholeFiles>> open(const std::string& dir, uint64_t capacity,
                                                  std::function<void(uint64_t)> usage = {});

  // Takes in the copies DIR/files holds: removes temporaries and whatever is not a copy, reports
  // their bytes to `usage` and evicts the oldest beyond the bound. Once, before anything below
  // but discard(), when the mount knows it will hand copies out.
  virtual Status load() = 0;
  // Removes every copy instead (a mount that cannot use them: they would take room in the cache
  // and never be read); returns the bytes freed. Nothing is reported to `usage` (but 0 if
  // load() ran).
  virtual Result<uint64_t> discard() = 0;

  virtual bool has(const Digest128& key) = 0;

  // A copy being written: bytes go in at any offset, commit() makes it visible under its key.
  class Writer {
   public:
    virtual ~Writer() = default;
    virtual Status write(uint64_t offset, std::span<const std::byte> bytes) = 0;
    virtual Status commit() = 0;  // fsync, rename into place, account; the writer is spent
  };
  // Starts a copy of `size` bytes under `key` (room made by evicting older copies); EFBIG when
  // the file alone is larger than the bound.
  virtual Result<std::unique_ptr<Writer>> begin(const Digest128& key, uint64_t size) = 0;

  // The copy under `key`, open read-only, if this instance checked it (check()) and it is the
  // same file, unchanged, since. Never reads it. ENOENT when there is none (a copy that is not a
  // regular file of `size` bytes is removed); EAGAIN when there is one that check() must look
  // at first.
  virtual Result<Fd> open_checked(const Digest128& key, uint64_t size) = 0;

  // Hashes the copy under `key` against `chunks` (each `chunk_size` bytes but the last); reads
  // the whole copy, so not from a reader's thread. Ok once open_checked() hands it out. EAGAIN if
  // it matched but changed while hashed or within the last 2 s (its identity cannot be trusted
  // yet: check it again later). ENOENT if there is none, or it did not match (it is removed and
  // counted).
  virtual Status check(const Digest128& key, uint64_t size, uint64_t chunk_size,
                       std::span<const ExpectedChunk> chunks) = 0;

  virtual WholeFileStats stats() = 0;
};

// What DIR/files holds, read without opening it (so it works while a daemon uses it): for
// `extrafs cache stat`. Zeros if there is no DIR/files.
struct WholeFilesInspection {
  uint64_t files = 0;  // copies
  uint64_t bytes = 0;  // their sizes
};
WholeFilesInspection inspect_whole_files(const std::string& dir);

// Removes every copy in DIR/files (what `extrafs cache gc` and `verify` do: copies are rebuilt
// from the chunks when a file is next read whole); returns the bytes freed.
Result<uint64_t> remove_whole_files(const std::string& dir);

}  // namespace extrafs::cache
