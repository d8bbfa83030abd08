// BlobWriter: packs the chunks of one layer into its blob (STORE/extrafs/layers/<cache-id>.blob),
// each chunk lz4-compressed only when that makes it smaller. Used by `extrafs publish` as the
// chunk sink of the directory walker and of the layer-tar converter.
//
// The blob is written to a temporary file (a named one beside its final path, or an unnamed
// O_TMPFILE one for scratch blobs); finish() flushes and fsyncs it; publishing renames it into
// place only once the layer's index is written too. Single-threaded; owns its file descriptor.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "format/layer_index.h"
#include "store/indexer.h"

namespace extrafs::store {

// Compresses `raw` with lz4 into *out; false (and *out unspecified) unless that is smaller.
bool lz4_if_smaller(std::string_view raw, std::string* out);

// How many bytes at the start of object `blob` (as chunk records name it) hold the content of
// the files `paths` (relative to the layer root; those that are not regular files of `idx` are
// ignored): the end of the run of their chunks that starts at offset 0 with no gap. What
// `publish --order` records as the layer's ordered prefix (format/catalog.h); 0 if the blob does not
// start with them.
uint64_t ordered_prefix(const format::LayerIndex& idx, const std::vector<std::string>& paths, std::string_view blob);

class BlobWriter : public ChunkPacker {
 public:
  // A blob at `path` (created exclusively, mode 0644; the caller renames or removes it).
  // `object_path`: the path chunk records name (relative to the store root).
  static Result<std::unique_ptr<BlobWriter>> create(const std::string& path, std::string object_path);
  // An unnamed scratch blob in directory `dir` (vanishes when closed).
  static Result<std::unique_ptr<BlobWriter>> create_scratch(const std::string& dir);
  ~BlobWriter() override;
  BlobWriter(const BlobWriter&) = delete;
  BlobWriter& operator=(const BlobWriter&) = delete;

  // ChunkPacker: stores the (not all-zero) chunk `raw` at the end of the blob.
  Status pack(format::IndexBuilder& builder, std::string_view raw, format::ChunkRecord* rec) override;
  // Appends raw bytes as they are (scratch spools).
  Status put_raw(std::string_view raw) {
    offset_ += raw.size();
    return write(raw);
  }
  // Appends all of `other` (finished) and returns the offset at which its bytes now start here.
  Result<uint64_t> append(BlobWriter& other);
  // Flushes and fsyncs. Nothing may be written afterwards.
  Status finish();

  const std::string& object_path() const { return object_; }
  uint64_t size() const { return offset_; }          // bytes in the blob
  uint64_t raw_bytes() const { return raw_bytes_; }  // raw bytes of the chunks stored
  int fd() const { return fd_; }

 private:
  BlobWriter(int fd, std::string path, std::string object_path)
      : fd_(fd), path_(std::move(path)), object_(std::move(object_path)) {}
  Status write(std::string_view data);
  Status flush();

  int fd_;
  std::string path_;    // for messages
  std::string object_;  // "" for scratch blobs (object 0 is used)
  uint64_t offset_ = 0;
  uint64_t raw_bytes_ = 0;
  std::string buf_;  // write buffer
  std::string lz4_;  // compression scratch
};

}  // namespace extrafs::store
