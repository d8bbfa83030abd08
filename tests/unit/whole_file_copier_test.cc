#include <catch2/catch.hpp>

#include <chrono>
#include <future>
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

// A one-layer index holding one file of `size` random bytes, its content put in `mem`.
struct OneFile {
  std::shared_ptr<const LayerIndex> idx;
  uint32_t entry = 0;
  explicit OneFile(backend::MemoryBackend& mem, size_t size) {
    IndexBuilder b(4096);
    const uint32_t root = add_root(b);
    entry = add_file(b, &mem, root, "f", pseudo_random(size, 11), "obj");
    auto bytes = b.serialize();
    REQUIRE(bytes.ok());
    auto parsed = LayerIndex::parse(*bytes);
    REQUIRE(parsed.ok());
    idx = std::move(parsed).value();
  }
};

// Fetcher options with no prefetch workers: nothing is fetched but what a test asks for.
cache::FetcherOptions no_prefetch() {
  cache::FetcherOptions fo;
  fo.prefetch_threads = 0;
  return fo;
}

// The whole-file copies kept in `t` (not taken in yet: the copier does that).
std::unique_ptr<cache::WholeFiles> open_whole_files(const TempDir& t) {
  auto files = cache::WholeFiles::open(t.path, 1 << 20);
  REQUIRE(files.ok());
  return std::move(files).value();
}

// WholeFiles whose load() waits until `loaded` is set (the copier taking copies in, slowly);
// everything else is the real one's.
class SlowLoad : public cache::WholeFiles {
 public:
  explicit SlowLoad(std::unique_ptr<cache::WholeFiles> real) : real_(std::move(real)) {}
  std::promise<void> loaded;
  Status load() override {
    loaded_future_.wait();
    return real_->load();
  }
  Result<uint64_t> discard() override { return real_->discard(); }
  bool has(const Digest128& key) override { return real_->has(key); }
  Result<std::unique_ptr<Writer>> begin(const Digest128& key, uint64_t size) override {
    return real_->begin(key, size);
  }
  Result<Fd> open_checked(const Digest128& key, uint64_t size) override { return real_->open_checked(key, size); }
  Status check(const Digest128& key, uint64_t size, uint64_t chunk_size,
               std::span<const cache::ExpectedChunk> chunks) override {
    return real_->check(key, size, chunk_size, chunks);
  }
  cache::WholeFileStats stats() override { return real_->stats(); }

 private:
  std::unique_ptr<cache::WholeFiles> real_;
  std::shared_future<void> loaded_future_ = loaded.get_future().share();
};

}  // namespace

TEST_CASE("a whole-file copy waits for a chunk still being fetched instead of giving up", "[copier]") {
  // The kernel sends the READs of one file in parallel: the READ that reaches the end can be
  // answered (and ask for the copy) while an earlier one is still fetching its chunk. The copy
  // must still be made, from that fetch, without another read of the store.
  backend::MemoryBackend mem;
  backend::FaultBackend store(mem);
  OneFile file(mem, 3 * 4096 + 5);
  const auto& idx = file.idx;
  const uint32_t e = file.entry;

  cache::ChunkFetcher fetcher(store, no_prefetch());
  TempDir t;
  auto files = open_whole_files(t);
  WholeFileCopier copier(fetcher, *files, /*min_size=*/1);
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
  CHECK(eventually([&] { return files->has(key); }, 5s));
  CHECK(store.reads() == 4);  // one per chunk: the copy read nothing from the store
}

TEST_CASE("a file read whole while the copier takes the copies in still gets its copy", "[copier]") {
  // The kernel agreed to passthrough; the copier is still taking in what the cache holds (on()
  // is false) when a read reaches the end of a file: the copy is queued for after that, not
  // dropped.
  backend::MemoryBackend mem;
  OneFile file(mem, 2 * 4096 + 3);
  cache::ChunkFetcher fetcher(mem, no_prefetch());
  TempDir t;
  SlowLoad files(open_whole_files(t));
  WholeFileCopier copier(fetcher, files, /*min_size=*/1);
  copier.set_passthrough(true);
  for (const ChunkRecord& c : file.idx->chunks(file.entry)) REQUIRE(fetcher.get(chunk_ref(*file.idx, c)).ok());
  CHECK_FALSE(copier.on());
  copier.want_copy(file.idx, file.entry);
  files.loaded.set_value();
  REQUIRE(eventually([&] { return copier.on(); }, 5s));
  CHECK(eventually([&] { return files.has(whole_file_key(*file.idx, file.entry)); }, 5s));
}
