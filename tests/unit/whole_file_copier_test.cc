#include <catch2/catch.hpp>

#include <chrono>
#include <thread>

#include "backend/testing/fault_backend.h"
#include "cache/chunk_fetcher.h"
#include "cache/whole_files.h"
#include "fs/index_chunks.h"
#include "fs/whole_file_copier.h"
#include "test_util.h"

using namespace extrafs;
using namespace extrafs::format;
using namespace extrafs::fs;
using namespace extrafs::testing;
using namespace std::chrono_literals;

namespace {

// Polls `pred` every 10 ms for at most `limit`; whether it held.
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

}  // namespace

TEST_CASE("a whole-file copy waits for a chunk still being fetched instead of giving up", "[copier]") {
  // The kernel sends the READs of one file in parallel: the READ that reaches the end can be
  // answered (and ask for the copy) while an earlier one is still fetching its chunk. The copy
  // must still be made, from that fetch, without another read of the store.
  backend::MemoryBackend mem;
  backend::FaultBackend store(mem);
  IndexBuilder b(4096);
  const uint32_t root = add_root(b);
  const std::string content = pseudo_random(3 * 4096 + 5, 11);
  const uint32_t e = add_file(b, &mem, root, "f", content, "obj");
  auto bytes = b.serialize();
  REQUIRE(bytes.ok());
  auto parsed = LayerIndex::parse(*bytes);
  REQUIRE(parsed.ok());
  std::shared_ptr<const LayerIndex> idx = std::move(parsed).value();

  cache::FetcherOptions fo;
  fo.prefetch_threads = 0;
  cache::ChunkFetcher fetcher(store, fo);
  TempDir t;
  auto files = cache::WholeFiles::open(t.path, 1 << 20);
  REQUIRE(files.ok());
  WholeFileCopier copier(fetcher, **files, /*min_size=*/1);
  copier.set_passthrough(true);
  REQUIRE(eventually([&] { return copier.on(); }, 5s));

  const auto chunks = idx->chunks(e);
  REQUIRE(chunks.size() == 4);
  for (size_t i = 0; i + 1 < chunks.size(); ++i) REQUIRE(fetcher.get(chunk_ref(*idx, chunks[i])).ok());
  store.hold_reads();
  std::thread reader([&] { CHECK(fetcher.get(chunk_ref(*idx, chunks[3])).ok()); });
  REQUIRE(store.wait_held(1, 5s));
  CHECK(fetcher.held(chunk_digest(chunks[3])));
  CHECK_FALSE(fetcher.is_cached(chunk_digest(chunks[3])));
  copier.want_copy(idx, e);
  // Time for the copier to take the job while the fetch is held (with the old rule, "every
  // chunk cached", it dropped the copy here for good).
  std::this_thread::sleep_for(200ms);
  store.release_reads();
  reader.join();
  const Digest128 key = whole_file_key(*idx, e);
  CHECK(eventually([&] { return (*files)->has(key); }, 5s));
  CHECK(store.reads() == 4);  // one per chunk: the copy read nothing from the store
}
