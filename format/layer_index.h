// LayerIndex: a validated, read-only, in-memory view of one index file (see index_format.h).
// IndexBuilder: builds one from a tree description and serialises it.
//
// A LayerIndex is immutable after parse(); any number of threads may read it concurrently.
// parse() checks everything a reader later relies on (bounds, names, tree shape, chunk tables,
// checksums), so accessors never fail and never read out of bounds.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/hash.h"
#include "common/result.h"
#include "format/index_format.h"

namespace extrafs::format {

class LayerIndex {
 public:
  // Validates `bytes` and takes ownership. Errors are EBADMSG (malformed or checksum mismatch)
  // or ENOTSUP (unknown version), with a message naming what is wrong.
  static Result<std::shared_ptr<const LayerIndex>> parse(std::string bytes);

  uint32_t chunk_size() const { return header_.chunk_size; }
  uint32_t entry_count() const { return static_cast<uint32_t>(header_.entry_count); }
  uint64_t file_size() const { return bytes_.size(); }
  // xxh3-128 of the whole file: the identity the catalog records.
  const Digest128& digest() const { return digest_; }

  const EntryRecord& entry(uint32_t i) const { return entries_[i]; }
  // The entry holding attributes/xattrs/chunks for `i` (itself unless `i` is a secondary hard link).
  const EntryRecord& attr_entry(uint32_t i) const { return entries_[entries_[i].primary]; }
  std::string_view name(uint32_t i) const { return str(entries_[i].name_off, entries_[i].name_len); }
  std::string_view target(uint32_t i) const {
    const auto& e = attr_entry(i);
    return str(e.target_off, e.target_len);
  }
  bool is_dir(uint32_t i) const { return S_ISDIR(entries_[i].mode); }

  // Child of directory `dir` named `name`, by binary search.
  std::optional<uint32_t> lookup(uint32_t dir, std::string_view name) const;

  std::span<const XattrRecord> xattrs(uint32_t i) const {
    const auto& e = attr_entry(i);
    return {xattrs_ + e.xattr_first, e.xattr_count};
  }
  std::string_view xattr_name(const XattrRecord& x) const { return str(x.name_off, x.name_len); }
  std::string_view xattr_value(const XattrRecord& x) const { return str(x.value_off, x.value_len); }

  std::span<const ChunkRecord> chunks(uint32_t i) const {
    const auto& e = attr_entry(i);
    return {chunks_ + e.chunk_first, static_cast<size_t>(e.chunk_count)};
  }
  std::span<const ChunkRecord> all_chunks() const { return {chunks_, static_cast<size_t>(header_.chunk_count)}; }
  uint32_t object_count() const { return static_cast<uint32_t>(header_.object_count); }
  std::string_view object_path(uint32_t obj) const { return str(objects_[obj].path_off, objects_[obj].path_len); }
  // The number of the object whose path is `path`, if the index names it.
  std::optional<uint32_t> find_object(std::string_view path) const {
    for (uint32_t o = 0; o < object_count(); ++o)
      if (object_path(o) == path) return o;
    return std::nullopt;
  }

  // Sum of the sizes of regular files, each hard-link group counted once.
  uint64_t content_bytes() const { return content_bytes_; }
  // Relative path of entry `i` from the root ("" for the root), for messages and traces.
  std::string path_of(uint32_t i) const;

 private:
  LayerIndex() = default;
  Status validate();
  std::string_view str(uint64_t off, uint64_t len) const {
    return std::string_view(strings_ + off, static_cast<size_t>(len));
  }

  std::string bytes_;
  IndexHeader header_{};
  Digest128 digest_;
  const EntryRecord* entries_ = nullptr;
  const ChunkRecord* chunks_ = nullptr;
  const XattrRecord* xattrs_ = nullptr;
  const ObjectRecord* objects_ = nullptr;
  const char* strings_ = nullptr;
  uint64_t content_bytes_ = 0;
};

// One entry as the builder sees it. Parent/child structure is given by `parent` (index into the
// builder's entry list, which must list a directory before its children; entry 0 is the root).
struct BuildEntry {
  std::string name;
  uint32_t parent = 0;
  struct stat st {};                // mode, uid, gid, nlink, size, blocks, times, rdev are used
  std::optional<uint32_t> link_of;  // hard link: builder index of the first entry of the group
  std::string target;               // symlink target
  std::vector<std::pair<std::string, std::string>> xattrs;
  std::vector<ChunkRecord> chunks;  // regular files (object field = builder object id)
};

class IndexBuilder {
 public:
  explicit IndexBuilder(uint32_t chunk_size = kDefaultChunkSize) : chunk_size_(chunk_size) {}

  uint32_t chunk_size() const { return chunk_size_; }
  // Returns the object id for `path` (deduplicated).
  uint32_t add_object(const std::string& path);
  // Appends an entry and returns its builder index.
  uint32_t add(BuildEntry e);
  BuildEntry& at(uint32_t i) { return entries_[i]; }
  size_t size() const { return entries_.size(); }

  // Sorts into the on-disk order and serialises. EINVAL if the tree is inconsistent.
  Result<std::string> serialize() const;

 private:
  uint32_t chunk_size_;
  std::vector<BuildEntry> entries_;
  std::vector<std::string> objects_;
  std::unordered_map<std::string, uint32_t> object_ids_;
};

}  // namespace extrafs::format
