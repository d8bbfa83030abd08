#include "store/chunking.h"

#include <algorithm>
#include <cstring>

#include "common/hash.h"

namespace extrafs::store {

bool describe_chunk(std::string_view raw, format::ChunkRecord* rec) {
  rec->raw_len = static_cast<uint32_t>(raw.size());
  if (std::all_of(raw.begin(), raw.end(), [](char ch) { return ch == 0; })) {
    rec->flags = format::kChunkZero;
    rec->object = 0;
    rec->offset = 0;
    rec->stored_len = 0;
    std::memset(rec->digest, 0, sizeof rec->digest);
    return true;
  }
  Digest128 d = xxh3_128(raw.data(), raw.size());
  std::memcpy(rec->digest, d.bytes.data(), 16);
  return false;
}

Result<ChunkedContent> chunk_content(uint64_t size, uint32_t chunk_size, std::string& buf, const ChunkReader& read,
                                     const ChunkStore& store) {
  ChunkedContent out;
  buf.resize(chunk_size);
  out.chunks.reserve(size / chunk_size + 1);
  for (uint64_t off = 0; off < size; off += chunk_size) {
    const uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(chunk_size, size - off));
    format::ChunkRecord rec{};
    rec.raw_len = len;
    bool hole = false;
    EXTRAFS_CHECK_STATUS(read(off, len, buf.data(), &hole));
    if (hole) {
      rec.flags = format::kChunkZero;
    } else {
      std::string_view raw(buf.data(), len);
      if (!describe_chunk(raw, &rec)) {
        EXTRAFS_CHECK_STATUS(store(off, raw, &rec));
        out.stored_raw += len;
      }
    }
    out.chunks.push_back(rec);
  }
  return out;
}

}  // namespace extrafs::store
