// The on-disk layer index, version 1. One file per layer (STORE/extrafs/layers/<cache-id>.index)
// and one for the store's image/ tree. Everything is little-endian, fixed-size records, then one
// string area. Layout:
//
//   IndexHeader (136 bytes; header_size says so, and a reader refuses any other value)
//   EntryRecord[entry_count]   breadth-first order; entry 0 is the root directory; the children
//                              of a directory are contiguous and sorted by name (bytewise)
//   ChunkRecord[chunk_count]
//   XattrRecord[xattr_count]
//   ObjectRecord[object_count] paths (relative to the store root) that chunks point into
//   strings[strings_size]      names, symlink targets, xattr names and values, object paths
//
// The header carries the xxh3-128 of everything after it and an xxh3-64 of itself. A regular
// file's content is split into chunks of `chunk_size` bytes (the last one shorter); chunk i of a
// file covers [i*chunk_size, ...). A chunk is read from (object, offset, stored_len), decompressed
// with lz4 if kChunkLz4, and must then hash to `digest`. kChunkZero marks a hole: raw_len zeros,
// no object read.
#pragma once

#include <bit>
#include <cstdint>

namespace extrafs::format {

static_assert(std::endian::native == std::endian::little, "the index format is little-endian");

inline constexpr char kIndexMagic[8] = {'E', 'X', 'F', 'S', 'I', 'D', 'X', '\0'};
inline constexpr uint32_t kIndexVersion = 1;
inline constexpr uint32_t kDefaultChunkSize = 1u << 20;
inline constexpr uint32_t kMinChunkSize = 4096;
inline constexpr uint32_t kMaxChunkSize = 16u << 20;
inline constexpr uint32_t kMaxNameLen = 255;
inline constexpr uint32_t kMaxTargetLen = 4095;
inline constexpr uint32_t kMaxXattrNameLen = 255;
inline constexpr uint32_t kMaxXattrValueLen = 65536;
inline constexpr uint32_t kNoParent = 0;
// The largest index anyone reads (a layer's or the image/ tree's); a larger one is refused from
// its size before a byte is read. An entry takes 152 bytes, its name and 40 bytes per chunk of
// content (about 280 bytes a file in real layers: a layer of 250,000 files has a 69 MB index), so
// 1 GiB holds a layer of about 4 million files, beyond any image docker can run well.
inline constexpr uint64_t kMaxIndexSize = uint64_t{1} << 30;

enum ChunkFlags : uint32_t {
  kChunkLz4 = 1u << 0,
  kChunkZero = 1u << 1,
};
inline constexpr uint32_t kKnownChunkFlags = kChunkLz4 | kChunkZero;

struct IndexHeader {
  char magic[8];
  uint32_t version;
  uint32_t header_size;  // sizeof(IndexHeader)
  uint32_t chunk_size;
  uint32_t flags;  // reserved, 0
  uint64_t file_size;
  uint64_t entry_count, entry_offset;
  uint64_t chunk_count, chunk_offset;
  uint64_t xattr_count, xattr_offset;
  uint64_t object_count, object_offset;
  uint64_t strings_size, strings_offset;
  uint8_t body_digest[16];   // xxh3-128 (canonical) of bytes [header_size, file_size)
  uint64_t header_checksum;  // xxh3-64 of this header with this field set to 0
};
static_assert(sizeof(IndexHeader) == 136);

struct EntryRecord {
  uint32_t parent;  // entry index of the parent directory (0 for the root itself)
  uint32_t name_len;
  uint64_t name_off;  // into strings
  uint32_t mode;      // full st_mode: type and permission bits incl. setuid/setgid/sticky
  uint32_t uid;
  uint32_t gid;
  uint32_t nlink;
  uint64_t size;
  uint64_t blocks;    // st_blocks (512-byte units), so sparse files look sparse
  int64_t atime_sec;  // times as seconds and nanoseconds, so any time a file system can hold
  int64_t mtime_sec;  // fits (a single nanosecond count overflows before 1678 and after 2262)
  int64_t ctime_sec;
  uint32_t atime_nsec;
  uint32_t mtime_nsec;
  uint32_t ctime_nsec;
  uint32_t reserved;  // 0
  uint64_t rdev;
  uint32_t primary;  // hard links: index of the entry holding attributes, xattrs and chunks
  uint32_t xattr_count;
  uint64_t xattr_first;
  uint64_t child_first;  // directories: index of the first child
  uint32_t child_count;
  uint32_t target_len;  // symlinks
  uint64_t target_off;
  uint64_t chunk_first;  // regular files
  uint64_t chunk_count;
};
static_assert(sizeof(EntryRecord) == 152);

struct ChunkRecord {
  uint32_t object;  // index into the object table (ignored for kChunkZero)
  uint32_t flags;
  uint64_t offset;      // byte offset of the stored bytes inside the object
  uint32_t stored_len;  // bytes to read from the object
  uint32_t raw_len;     // bytes after decompression
  uint8_t digest[16];   // xxh3-128 (canonical) of the raw bytes
};
static_assert(sizeof(ChunkRecord) == 40);

struct XattrRecord {
  uint32_t name_len;
  uint32_t value_len;
  uint64_t name_off;
  uint64_t value_off;
};
static_assert(sizeof(XattrRecord) == 24);

struct ObjectRecord {
  uint64_t path_off;
  uint32_t path_len;
  uint32_t reserved;
};
static_assert(sizeof(ObjectRecord) == 16);

}  // namespace extrafs::format
