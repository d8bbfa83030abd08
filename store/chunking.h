// Cutting a file's content into chunk records: the one loop every producer of an index uses
// (`extrafs index` over plain files, publish over a data-root's files, over a layer tar, and over
// the spool of files packed first). Chunks are `chunk_size` bytes (the last one shorter); an
// all-zero chunk, or one the reader reports as a hole, becomes a kChunkZero record with nothing
// stored; every other chunk goes to the caller's `store` function, which fills in object, offset,
// stored_len and flags (raw_len and digest are set). Single-threaded.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "format/index_format.h"

namespace extrafs::store {

// Fills the raw_len/digest of *rec for `raw`, or marks it kChunkZero (returns true) if it is all
// zeros. Shared by every producer of chunk records, so all of them treat zeros alike.
bool describe_chunk(std::string_view raw, format::ChunkRecord* rec);

// Reads `len` bytes of the file at `offset` into `dst` (exactly `len`: a short file is an
// error); or sets *hole, without reading, if the range is known to read as zeros.
using ChunkReader = std::function<Status(uint64_t offset, uint32_t len, char* dst, bool* hole)>;
// Stores the non-zero chunk `raw` that starts at `offset` of the file.
using ChunkStore = std::function<Status(uint64_t offset, std::string_view raw, format::ChunkRecord* rec)>;

struct ChunkedContent {
  std::vector<format::ChunkRecord> chunks;
  uint64_t stored_raw = 0;  // raw bytes of the chunks handed to `store`
};

// Chunks a file of `size` bytes. `buf` is scratch space (resized to chunk_size).
Result<ChunkedContent> chunk_content(uint64_t size, uint32_t chunk_size, std::string& buf, const ChunkReader& read,
                                     const ChunkStore& store);

}  // namespace extrafs::store
