// Backend: where the store's bytes live. Reads objects addressed by a path relative to the store
// root ("extrafs/catalog", "overlay2/<id>/diff/usr/bin/sh", "extrafs/layers/<id>.blob").
//
// Implementations: LocalBackend (a directory), NfsBackend (libnfs), HttpBackend (libcurl: http,
// https, s3); for tests only,
// MemoryBackend and FaultBackend in backend/testing/.
// Thread-safety: every method may be called from any thread concurrently.
// A Backend knows nothing of chunks, FUSE or docker.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend/http_source.h"
#include "common/result.h"

namespace extrafs::backend {

struct ObjectInfo {
  uint64_t size = 0;
  bool is_dir = false;
  int64_t mtime_ns = 0;
  // What else tells one version of the object from the next where the mtime is coarse (an HTTP
  // ETag's hash; Last-Modified has whole seconds): 0 when the source has nothing of the kind.
  uint64_t version_tag = 0;
  // The S_IFMT type bits of an object that is neither a regular file nor a directory (a FIFO, a
  // socket, a device, a symlink), 0 otherwise. A backend never opens or reads such an object:
  // opening a FIFO would block, opening a device could act on it.
  uint32_t special = 0;
  // What changes whenever the object does, even if size and mtime stay the same (a file replaced
  // by rename, a write that set the mtime back): its inode (file id) and change time where the
  // store has them, 0 where it does not.
  uint64_t file_id = 0;
  int64_t ctime_ns = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // Reads up to buf.size() bytes of `path` at `offset`; returns the number read, which is smaller
  // than asked only at end of file. Errors: ENOENT, EIO, ETIMEDOUT (the timeout bound elapsed),
  // EISDIR or EINVAL when `path` is not a regular file (checked before it is opened), ...
  virtual Result<size_t> read(std::string_view path, uint64_t offset, std::span<std::byte> buf) = 0;

  // Size, type and mtime of `path`.
  virtual Result<ObjectInfo> stat(std::string_view path) = 0;

  // Names in directory `path` (without "." and ".."), unsorted.
  virtual Result<std::vector<std::string>> list(std::string_view path) = 0;

  // Human-readable description of the source, e.g. "/srv/store" or "nfs://127.0.0.1/export".
  virtual std::string describe() const = 0;

  // Reads a whole (small) object. Refuses an object larger than `limit` (EFBIG) and one that is
  // not a regular file (EISDIR, EINVAL), from its attributes, before reading anything.
  Result<std::string> read_all(std::string_view path, uint64_t limit) { return read_object(path, limit, nullptr); }
  // read_all() that also gives the attributes of the version it read in `*info` (if `info` is
  // not null), set as soon as they are known: also when they made it refuse the object. The
  // default is a stat() and a read(); a backend that can do it in one request does.
  virtual Result<std::string> read_object(std::string_view path, uint64_t limit, std::optional<ObjectInfo>* info);
  // Whether `info` (what stat() said of `path`) describes what read_all() reads: ok, or the
  // refusal read_all() gives.
  static Status check_object(std::string_view path, const ObjectInfo& info, uint64_t limit);

  // The owner is shutting down: every call in progress returns at once (its waits, retries and
  // transfers cut short) and every later call fails at once, both with ECANCELED. Irreversible.
  // Without it a shutdown waits for calls bounded only by the timeout (30 s by default, longer
  // for a call that makes several), e.g. a catalog probe of a store that does not answer. The
  // default does nothing: a local directory has no waits to cut short.
  virtual void interrupt() {}
};

// How to open a SOURCE (see open_backend).
struct BackendOptions {
  // Bounds any one read (retries included) before it fails with ETIMEDOUT/EIO.
  int timeout_ms = 30000;
  // An unreachable NFS server still yields a backend that connects on first use (for a daemon
  // that can serve its cache meanwhile); otherwise it is an error. http(s) and s3 backends
  // never touch the network when opened, so this changes nothing for them.
  bool allow_offline = false;
  // proxy=, cacert=, s3_*= and the paths to revalidate: for http(s) and s3 sources only.
  HttpOptions http;
};

// Opens the backend named by a mount SOURCE: an absolute directory path, an nfs:// URL, or
// http://, https:// or s3:// URLs (one or several mirrors separated by ';').
Result<std::unique_ptr<Backend>> open_backend(const std::string& source, const BackendOptions& options);
// The same with default options but these.
Result<std::unique_ptr<Backend>> open_backend(const std::string& source, int timeout_ms, bool allow_offline = false);

// Whether `source` is a SOURCE form open_backend knows: an absolute path, nfs://, http://,
// https:// or s3://. Says nothing of whether it is well-formed.
bool is_source(const std::string& source);

}  // namespace extrafs::backend
