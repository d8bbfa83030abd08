// The daemon's side of `publish --order`: a layer's ordered prefix fetched in the background on
// first access (fs/ordered_prefetch.h), through a real FsCore and ChunkFetcher on a memory store.
#include <catch2/catch.hpp>

#include <cstring>
#include <thread>

#include "cache/chunk_fetcher.h"
#include "fs/fs_core.h"
#include "fs/index_chunks.h"
#include "fs/ordered_prefetch.h"
#include "test_util.h"

using namespace extrafs;
using namespace extrafs::format;
using namespace extrafs::fs;
using namespace extrafs::testing;

namespace {

const std::string kOrd(64, '3');

// One layer whose files are packed into one blob in this order: bin/python, usr/lib/a,
// usr/lib/b (the "traced" files, the prefix), then data/big.
struct BlobStore {
  backend::MemoryBackend mem;
  Catalog catalog;
  std::string blob;
  std::map<std::string, std::string> files;  // path -> content
  uint64_t prefix = 0;

  explicit BlobStore(std::optional<uint64_t> ordered_prefix) {
    IndexBuilder b(4096);
    uint32_t root = add_root(b);
    uint32_t bin = add_dir(b, root, "bin");
    uint32_t usr = add_dir(b, root, "usr");
    uint32_t lib = add_dir(b, usr, "lib");
    uint32_t data = add_dir(b, root, "data");
    const uint32_t obj = b.add_object(layer_blob_path(kOrd));
    auto add = [&](uint32_t parent, const std::string& name, const std::string& path, std::string content) {
      BuildEntry e;
      e.name = name;
      e.parent = parent;
      e.st = make_stat(S_IFREG | 0644, content.size());
      for (uint64_t off = 0; off < content.size(); off += 4096) {
        ChunkRecord c{};
        c.object = obj;
        c.offset = blob.size() + off;
        c.raw_len = c.stored_len = static_cast<uint32_t>(std::min<uint64_t>(4096, content.size() - off));
        Digest128 d = xxh3_128(content.data() + off, c.raw_len);
        std::memcpy(c.digest, d.bytes.data(), 16);
        e.chunks.push_back(c);
      }
      b.add(std::move(e));
      blob += content;
      files[path] = std::move(content);
    };
    add(bin, "python", "bin/python", pseudo_random(4096, 41));
    add(lib, "a", "usr/lib/a", pseudo_random(2 * 4096, 42));
    add(lib, "b", "usr/lib/b", pseudo_random(4096 + 100, 43));
    prefix = blob.size();
    add(data, "big", "data/big", pseudo_random(4 * 4096, 44));
    mem.put(layer_blob_path(kOrd), blob);
    auto bytes = b.serialize();
    REQUIRE(bytes.ok());
    auto idx = LayerIndex::parse(*bytes);
    REQUIRE(idx.ok());
    mem.put(layer_index_path(kOrd), *bytes);
    CatalogLayer l;
    l.cache_id = kOrd;
    l.index_digest = (*idx)->digest();
    l.link = "ORDLINK";
    l.bytes = (*idx)->content_bytes();
    l.ordered_prefix = ordered_prefix.value_or(0);
    catalog.layers.push_back(l);
    mem.put(kCatalogPath, catalog.serialize());
  }
};

uint64_t walk(FsCore& core, const std::string& path) {
  uint64_t ino = kRootIno;
  std::vector<std::string> names{"overlay2", kOrd, "diff"};
  for (size_t start = 0; start < path.size();) {
    size_t end = std::min(path.find('/', start), path.size());
    names.push_back(path.substr(start, end - start));
    start = end + 1;
  }
  for (const auto& name : names) {
    auto a = core.lookup(ino, name);
    REQUIRE(a.ok());
    ino = a->st.st_ino;
  }
  return ino;
}

std::string read_all(FsCore& core, const std::string& path) {
  uint64_t ino = walk(core, path);
  std::string out(core.getattr(ino)->st.st_size, '\0');
  auto n = core.read(ino, 0, std::as_writable_bytes(std::span(out.data(), out.size())));
  REQUIRE(n.ok());
  REQUIRE(*n == out.size());
  return out;
}

bool all_cached(cache::ChunkFetcher& f, const std::string& content) {
  for (uint64_t off = 0; off < content.size(); off += 4096)
    if (!f.is_cached(xxh3_128(content.data() + off, std::min<uint64_t>(4096, content.size() - off)))) return false;
  return true;
}

// Whether the prefetches a touch started (synchronously queued) brought all of `content`.
bool wait_cached(cache::ChunkFetcher& f, const std::string& content) {
  f.wait_prefetch_idle();
  return all_cached(f, content);
}

}  // namespace

TEST_CASE("the first read under a layer with an ordered prefix brings the other traced files, not the rest",
          "[ordered]") {
  BlobStore s(std::nullopt);
  s.catalog.layers[0].ordered_prefix = s.prefix;
  s.mem.put(kCatalogPath, s.catalog.serialize());
  cache::ChunkFetcher fetcher(s.mem, {});
  auto core_r = FsCore::open(fetcher, fetcher, {});
  REQUIRE(core_r.ok());
  FsCore& core = **core_r;
  CHECK(fetcher.stats().prefetches == 0);  // mounting alone fetches nothing

  CHECK(read_all(core, "bin/python") == s.files["bin/python"]);
  REQUIRE(wait_cached(fetcher, s.files["usr/lib/a"]));
  REQUIRE(wait_cached(fetcher, s.files["usr/lib/b"]));
  CHECK(fetcher.stats().prefetches >= 4);  // a: 2 chunks, b: 2 chunks (python's may be the reader's)
  CHECK_FALSE(all_cached(fetcher, s.files["data/big"]));
  // The prefix came in few reads (5 chunks of 4 KiB: one run), never more bytes than it holds.
  CHECK(fetcher.stats().bytes_fetched <= s.prefix);
  CHECK(fetcher.stats().fetch_count <= 2);

  // Reading the traced files fetches nothing more, and every byte is the source's.
  const uint64_t fetched = fetcher.stats().chunks_fetched;
  CHECK(read_all(core, "usr/lib/a") == s.files["usr/lib/a"]);
  CHECK(read_all(core, "usr/lib/b") == s.files["usr/lib/b"]);
  CHECK(fetcher.stats().chunks_fetched == fetched);
  CHECK(read_all(core, "data/big") == s.files["data/big"]);
  CHECK(fetcher.stats().chunks_fetched > fetched);
}

TEST_CASE("the first look at a layer's diff/ queues its prefix once per mount", "[ordered]") {
  BlobStore s(std::nullopt);
  s.catalog.layers[0].ordered_prefix = s.prefix;
  s.mem.put(kCatalogPath, s.catalog.serialize());
  cache::ChunkFetcher fetcher(s.mem, {});
  CapturedLog log;
  auto core_r = FsCore::open(fetcher, fetcher, {});
  REQUIRE(core_r.ok());
  FsCore& core = **core_r;
  // The layer's directory and its link file: no.
  auto overlay = core.lookup(kRootIno, "overlay2");
  REQUIRE(overlay.ok());
  auto top = core.lookup(overlay->st.st_ino, kOrd);
  REQUIRE(top.ok());
  REQUIRE(core.lookup(top->st.st_ino, "link").ok());
  fetcher.wait_prefetch_idle();  // a touch queues synchronously: anything it started is done now
  CHECK(fetcher.stats().prefetches == 0);
  // diff/ itself (what attach checks and overlayfs resolves): yes, before anything under it.
  walk(core, "");
  REQUIRE(wait_cached(fetcher, s.files["usr/lib/b"]));
  walk(core, "usr/lib");
  read_all(core, "bin/python");
  CHECK(log.lines_with("chunks of its ordered prefix queued for prefetch").size() == 1);
}

TEST_CASE("a layer without an ordered prefix behaves as before: nothing is fetched ahead", "[ordered]") {
  BlobStore s(std::nullopt);
  cache::ChunkFetcher fetcher(s.mem, {});
  auto core_r = FsCore::open(fetcher, fetcher, {});
  REQUIRE(core_r.ok());
  FsCore& core = **core_r;
  CHECK(read_all(core, "bin/python") == s.files["bin/python"]);
  fetcher.wait_prefetch_idle();
  CHECK(fetcher.stats().prefetches == 0);
  CHECK_FALSE(all_cached(fetcher, s.files["usr/lib/a"]));
}

TEST_CASE("a hostile ordered prefix is clamped to the blob and the memory budget with one line", "[ordered]") {
  BlobStore s(UINT64_MAX);
  cache::FetcherOptions o;
  o.memory_bytes = 6 * 4096;  // a budget of 3 chunks
  cache::ChunkFetcher fetcher(s.mem, o);
  CapturedLog log;
  auto core_r = FsCore::open(fetcher, fetcher, {});
  REQUIRE(core_r.ok());
  FsCore& core = **core_r;
  walk(core, "bin");
  fetcher.wait_prefetch_idle();
  CHECK(fetcher.stats().prefetches == 3);
  CHECK(log.lines_with("is beyond the " + std::to_string(s.blob.size()) + " bytes of chunks in its blob; clamped")
            .size() == 1);
  CHECK(log.lines_with("3 of the 9 chunks of its ordered prefix queued").size() == 1);
  for (const auto& [path, content] : s.files) CHECK(read_all(core, path) == content);

  // Directly: the chunks of a prefix are the blob's chunks that end within it, in blob order.
  auto idx = LayerIndex::parse(*s.mem.read_all(layer_index_path(kOrd), 1 << 20));
  REQUIRE(idx.ok());
  CatalogLayer l = s.catalog.layers[0];
  std::string note;
  l.ordered_prefix = s.prefix;
  auto chunks = ordered_prefix_chunks(l, **idx, &note);
  CHECK(note.empty());
  REQUIRE(chunks.size() == 5);
  for (size_t i = 0; i < chunks.size(); ++i) {
    CHECK(chunks[i].object == layer_blob_path(kOrd));
    CHECK(chunks[i].ref.offset == i * 4096);
  }
  l.ordered_prefix = s.prefix - 1;  // b's last chunk no longer fits
  CHECK(ordered_prefix_chunks(l, **idx, &note).size() == 4);
  l.cache_id = std::string(64, '9');  // an index that names no blob of that layer
  CHECK(ordered_prefix_chunks(l, **idx, &note).empty());
  CHECK(note.find("names no blob") != std::string::npos);
}
