// ObjectWriter: where `extrafs push` writes a store. A flat name space of objects addressed by a
// path relative to the destination's root ("extrafs/catalog"), each object written whole: a
// reader of the destination sees the old object or the new one, never a part of one. Not a
// Backend (hosts only read stores; this is the write side's client), but its S3 implementation
// lives beside HttpBackend and shares its source parsing, credentials and signing.
//
// Implementations: the S3 writer (make_s3_writer; backend/http_s3_writer.cc, one of the files
// allowed to use libcurl) and, for tests only, MemoryObjectWriter (backend/testing/).
// Thread-safety: every method may be called from any thread concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "backend/http_source.h"
#include "common/result.h"

namespace extrafs::backend {

// The body of a put: `size` bytes of the file open as `fd`, from offset 0 (read with pread, so
// the descriptor's offset is left alone and several puts may share it), or `bytes` if fd < 0.
struct PutBody {
  int fd = -1;
  uint64_t size = 0;
  std::string_view bytes;
};

struct ListedObject {
  std::string path;  // relative to the destination's root
  uint64_t size = 0;
};

class ObjectWriter {
 public:
  virtual ~ObjectWriter() = default;

  // The size of object `path`, nullopt if there is none.
  virtual Result<std::optional<uint64_t>> head(std::string_view path) = 0;

  // The whole object `path`, if at most `limit` bytes (EFBIG beyond); ENOENT if there is none.
  virtual Result<std::string> get(std::string_view path, uint64_t limit) = 0;

  // Writes object `path` whole, with `cache_control` as the Cache-Control its readers are sent.
  // `on_bytes` (may be empty) is told of body bytes as they are sent, from the calling thread (a
  // negative count takes back what a failed attempt had sent).
  virtual Status put(std::string_view path, const PutBody& body, std::string_view cache_control,
                     const std::function<void(int64_t)>& on_bytes) = 0;

  // Deletes object `path`; deleting what is not there is no error.
  virtual Status remove(std::string_view path) = 0;

  // Every object whose path starts with `prefix` (e.g. "extrafs/"), in no particular order.
  virtual Result<std::vector<ListedObject>> list(std::string_view prefix) = 0;

  // The destination as the user named it, e.g. "s3://bucket/prefix".
  virtual std::string describe() const = 0;
};

// Limits of S3 (AWS's; other services have the same or looser ones).
inline constexpr uint64_t kMaxSinglePut = uint64_t{5} << 30;  // the largest object one PUT may write
inline constexpr uint64_t kMinPartSize = uint64_t{5} << 20;   // the smallest part but the last
inline constexpr uint64_t kMaxParts = 10000;                  // parts of one multipart upload
inline constexpr uint64_t kDefaultPartSize = uint64_t{64} << 20;

struct S3WriterOptions {
  // s3_endpoint=, s3_region=, s3_credentials=, s3_profile= as for a mount (http_source.h).
  HttpOptions http;
  // Objects larger than this go up as multipart uploads, in parts of `part_size` bytes (more if
  // the object would need over kMaxParts); at most kMaxSinglePut.
  uint64_t multipart_threshold = kMaxSinglePut;
  uint64_t part_size = kDefaultPartSize;
};

// A writer for `destination`, one s3://BUCKET[/PREFIX] URL (no mirrors: push writes one bucket).
// Reads the credentials now (as a mount does: s3_credentials=FILE, else AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY, else anonymous); touches no network. EINVAL with one line for a bad
// destination or options.
Result<std::unique_ptr<ObjectWriter>> make_s3_writer(const std::string& destination, const S3WriterOptions& options);

}  // namespace extrafs::backend
