// WholeFiles: local copies of whole files, for the kernel to read by itself (FUSE passthrough).
//
// A file that a reader read from its first byte to its last gets a copy in DIR/files/<key>, built
// in the background from its chunks (each verified against its digest on the way, as every chunk
// is), where <key> names the file's content: the xxh3-128 of its size and chunk table
// (fs::whole_file_key). Opening a file that has a copy hands the kernel the copy (the mount then
// reads it as it reads any local file: its page cache, its readahead, no daemon in between).
//
// Trust: a copy is hashed chunk by chunk against the index's digests on its first open by this
// instance (the daemon's copier opens each copy it wrote once its identity settles, so readers
// do not wait for that), and again whenever the file changes (inode, size, mtime or ctime differ
// from when it was hashed), as chunk files are; the identity is kept beside the copy, so a later
// instance trusts it too. A copy that does not match is removed and the open is served the
// usual way. Written to a temporary beside it, fsync'ed and renamed into place: a copy under its
// final name is complete.
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
  uint64_t files = 0;         // copies held
  uint64_t bytes = 0;         // their total size
  uint64_t capacity = 0;      // the bound
  uint64_t written = 0;       // copies made by this instance
  uint64_t corrupt_dropped = 0;  // copies that did not match on open and were removed
};

class WholeFiles {
 public:
  virtual ~WholeFiles() = default;

  // Opens (creating DIR/files if needed) the copies kept in `dir`, the block cache's
  // directory, bounded to `capacity` bytes. `usage`, if set, is told the bytes the copies take
  // (written and being written) whenever that changes (the block cache counts them against its
  // own bound, BlockCache::set_external); called with an internal lock held.
  static Result<std::unique_ptr<WholeFiles>> open(const std::string& dir, uint64_t capacity,
                                                  std::function<void(uint64_t)> usage = {});

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

  // The copy under `key`, open read-only, checked against `chunks` (each `chunk_size` bytes but
  // the last) unless this instance checked the same unchanged file before. ENOENT when there is
  // none; a copy that does not match is removed and reported as ENOENT too.
  virtual Result<Fd> open_verified(const Digest128& key, uint64_t size, uint64_t chunk_size,
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
