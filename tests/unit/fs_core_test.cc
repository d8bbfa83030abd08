#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>

#include <atomic>
#include <future>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backend/testing/fault_backend.h"
#include "cache/block_cache.h"
#include "cache/chunk_fetcher.h"
#include "fs/fs_core.h"
#include "fs/stats_json.h"
#include "test_util.h"

using namespace extrafs;
using namespace extrafs::format;
using namespace extrafs::fs;
using namespace extrafs::testing;

namespace {

const std::string kBase(64, '1');
const std::string kTop(64, '2');

// Writes a layer index and returns its catalog record.
CatalogLayer put_layer(backend::MemoryBackend& mem, const std::string& id, IndexBuilder& b, const std::string& link,
                       std::optional<std::string> lower) {
  auto bytes = b.serialize();
  REQUIRE(bytes.ok());
  auto idx = LayerIndex::parse(*bytes);
  REQUIRE(idx.ok());
  mem.put(layer_index_path(id), *bytes);
  CatalogLayer l;
  l.cache_id = id;
  l.index_digest = (*idx)->digest();
  l.link = link;
  l.lower = lower;
  l.bytes = (*idx)->content_bytes();
  return l;
}

struct Store {
  backend::MemoryBackend mem;
  Catalog catalog;
  std::string big = pseudo_random(3 * 4096 + 17, 7);

  Store() {
    IndexBuilder base(4096);
    uint32_t root = add_root(base);
    uint32_t bin = add_dir(base, root, "bin");
    uint32_t bb = add_file(base, &mem, bin, "busybox", big, "overlay2/" + kBase + "/diff/bin/busybox");
    BuildEntry ln;
    ln.name = "sh-hard";
    ln.parent = bin;
    ln.st = make_stat(S_IFREG | 0755, big.size(), 2);
    ln.link_of = bb;
    base.add(ln);
    base.at(bb).st.st_nlink = 2;
    BuildEntry sym;
    sym.name = "sh";
    sym.parent = bin;
    sym.st = make_stat(S_IFLNK | 0777, 7);
    sym.target = "busybox";
    base.add(sym);
    catalog.layers.push_back(put_layer(mem, kBase, base, "BASELINK", std::nullopt));

    IndexBuilder top(4096);
    uint32_t troot = add_root(top);
    uint32_t etc = add_dir(top, troot, "etc");
    top.at(etc).xattrs = {{"trusted.overlay.opaque", "y"}};
    BuildEntry wh;
    wh.name = "bin";
    wh.parent = troot;
    wh.st = make_stat(S_IFCHR, 0);
    top.add(wh);
    add_file(top, &mem, etc, "hostname", "box\n", "overlay2/" + kTop + "/diff/etc/hostname");
    catalog.layers.push_back(put_layer(mem, kTop, top, "TOPLINK", "l/BASELINK"));

    IndexBuilder img(4096);
    uint32_t iroot = add_root(img);
    uint32_t ov = add_dir(img, iroot, "overlay2");
    add_file(img, &mem, ov, "repositories.json", "{}", "image/overlay2/repositories.json");
    auto ibytes = img.serialize();
    REQUIRE(ibytes.ok());
    auto iidx = LayerIndex::parse(*ibytes);
    REQUIRE(iidx.ok());
    catalog.image_index = (*iidx)->digest();
    mem.put(image_index_path(*catalog.image_index), *ibytes);
    mem.put(kCatalogPath, catalog.serialize());
  }
};

// Options of a core that loads newer catalogs only when told (refresh()): no background thread.
FsCoreOptions manual() {
  FsCoreOptions o;
  o.refresh_interval_s = 0;
  return o;
}

// The core the tests open: a ChunkFetcher of its own over backend `b` (which must outlive it)
// and an FsCore on it, refreshed only when told unless `opts` says otherwise.
struct Mount {
  cache::ChunkFetcher fetcher;
  std::unique_ptr<FsCore> core;
  explicit Mount(backend::Backend& b, FsCoreOptions opts = manual(), cache::FetcherOptions fo = {}) : fetcher(b, fo) {
    open(std::move(opts));
  }
  // Opened on catalog `first`, put as the store's extrafs/catalog.
  Mount(Store& s, const Catalog& first) : fetcher(s.mem, {}) {
    s.mem.put(kCatalogPath, first.serialize());
    open(manual());
  }

 private:
  void open(FsCoreOptions opts) {
    auto r = FsCore::open(fetcher, fetcher, std::move(opts));
    REQUIRE(r.ok());
    core = std::move(r).value();
  }
};

using extrafs::testing::ManualClock;

// The `extrafs stats --json` object of `core`.
nlohmann::json stats(FsCore& core) { return stats_json(core.statistics()); }

uint64_t walk(FsCore& core, std::initializer_list<std::string_view> path) {
  uint64_t ino = kRootIno;
  for (auto name : path) {
    auto a = core.lookup(ino, name);
    REQUIRE(a.ok());
    ino = a->st.st_ino;
  }
  return ino;
}

std::vector<std::pair<std::string, uint32_t>> list(FsCore& core, uint64_t ino) {
  std::vector<std::pair<std::string, uint32_t>> out;
  REQUIRE(core.readdir(ino, 0,
                       [&](const DirItem& d, const NodeAttr&) {
                         out.emplace_back(std::string(d.name), d.mode);
                         return true;
                       })
              .ok());
  return out;
}

// A layer of one-chunk files stored side by side in one object ("blob"), in the order they are
// added, as a publish lays out a directory's files.
struct BlobLayer {
  IndexBuilder b;
  uint32_t root, obj;
  std::string blob;
  std::vector<std::string> contents;  // by file number: the order added

  explicit BlobLayer(uint32_t chunk_size) : b(chunk_size), root(add_root(b)), obj(b.add_object("blob")) {}
  // Adds a file of `size` bytes (at most the chunk size) named `name` to directory `dir`.
  void add(uint32_t dir, const std::string& name, size_t size) {
    std::string content = pseudo_random(size, static_cast<uint32_t>(contents.size() + 100));
    BuildEntry e;
    e.name = name;
    e.parent = dir;
    e.st = make_stat(S_IFREG | 0644, size);
    ChunkRecord c{};
    c.object = obj;
    c.offset = blob.size();
    c.raw_len = c.stored_len = static_cast<uint32_t>(size);
    Digest128 d = xxh3_128(content.data(), size);
    std::memcpy(c.digest, d.bytes.data(), 16);
    e.chunks.push_back(c);
    b.add(std::move(e));
    blob += content;
    contents.push_back(std::move(content));
  }
  Digest128 digest(size_t k) const { return xxh3_128(contents[k].data(), contents[k].size()); }
  // Puts the blob and the layer, as layer `id`, into `s`'s store and catalog.
  void put(Store& s, const std::string& id) {
    s.mem.put("blob", blob);
    s.catalog.layers.push_back(put_layer(s.mem, id, b, "BLOBLINK", std::nullopt));
    s.mem.put(kCatalogPath, s.catalog.serialize());
  }
};

}  // namespace

TEST_CASE("FsCore shows the overlay2-shaped tree", "[fscore]") {
  Store s;
  Mount m(s.mem);
  FsCore& core = *m.core;

  CHECK(list(core, kRootIno) ==
        std::vector<std::pair<std::string, uint32_t>>{{"image", S_IFDIR}, {"overlay2", S_IFDIR}});
  auto ov = list(core, walk(core, {"overlay2"}));
  REQUIRE(ov.size() == 3);
  CHECK(ov[0].first == "l");
  CHECK(ov[1].first == kBase);
  auto top = list(core, walk(core, {"overlay2", kTop}));
  CHECK(top == std::vector<std::pair<std::string, uint32_t>>{{"diff", S_IFDIR}, {"link", S_IFREG}, {"lower", S_IFREG}});
  CHECK(list(core, walk(core, {"overlay2", kBase})).size() == 2);  // no lower for a base layer

  std::vector<std::byte> buf(100);
  uint64_t lower = walk(core, {"overlay2", kTop, "lower"});
  auto n = core.read(lower, 0, buf);
  REQUIRE(n.ok());
  CHECK(std::string(reinterpret_cast<char*>(buf.data()), *n) == "l/BASELINK");
  auto target = core.readlink(walk(core, {"overlay2", "l", "TOPLINK"}));
  REQUIRE(target.ok());
  CHECK(*target == "../" + kTop + "/diff");
  CHECK(core.lookup(walk(core, {"overlay2"}), "nope").code() == ENOENT);
  CHECK(core.lookup(kRootIno, "nope").code() == ENOENT);
  CHECK(core.negative_timeout(kRootIno) < core.negative_timeout(walk(core, {"overlay2", kTop, "diff"})));

  uint64_t repo = walk(core, {"image", "overlay2", "repositories.json"});
  n = core.read(repo, 0, buf);
  REQUIRE(n.ok());
  CHECK(std::string(reinterpret_cast<char*>(buf.data()), *n) == "{}");
}

TEST_CASE("FsCore answers metadata from the index: types, links, xattrs, whiteouts", "[fscore]") {
  Store s;
  Mount m(s.mem);
  FsCore& core = *m.core;
  uint64_t reads_before = s.mem.reads();

  uint64_t bb = walk(core, {"overlay2", kBase, "diff", "bin", "busybox"});
  CHECK(s.mem.reads() == reads_before + 1);  // the base layer's index, on first use
  uint64_t hard = walk(core, {"overlay2", kBase, "diff", "bin", "sh-hard"});
  CHECK(bb == hard);  // one inode for the hard-link group
  auto a = core.getattr(bb);
  REQUIRE(a.ok());
  CHECK(a->st.st_nlink == 2);
  CHECK(a->st.st_size == static_cast<off_t>(s.big.size()));
  CHECK(a->st.st_mtim.tv_nsec == 123456789);
  CHECK(core.getattr(bb)->st.st_ino == bb);  // stable
  auto sh = core.readlink(walk(core, {"overlay2", kBase, "diff", "bin", "sh"}));
  REQUIRE(sh.ok());
  CHECK(*sh == "busybox");
  CHECK(core.readlink(bb).code() == EINVAL);

  uint64_t wh = walk(core, {"overlay2", kTop, "diff", "bin"});
  CHECK(S_ISCHR(core.getattr(wh)->st.st_mode));
  CHECK(core.getattr(wh)->st.st_rdev == 0);
  auto diff_items = list(core, walk(core, {"overlay2", kTop, "diff"}));
  CHECK(diff_items == std::vector<std::pair<std::string, uint32_t>>{{"bin", S_IFCHR}, {"etc", S_IFDIR}});

  uint64_t etc = walk(core, {"overlay2", kTop, "diff", "etc"});
  auto x = core.getxattr(etc, "trusted.overlay.opaque");
  REQUIRE(x.ok());
  CHECK(*x == "y");
  CHECK(core.getxattr(etc, "user.none").code() == ENODATA);
  CHECK(*core.listxattr(etc) == std::vector<std::string>{"trusted.overlay.opaque"});
  CHECK(core.lookup(bb, "x").code() == ENOTDIR);
  // Beyond the two layer indexes, read once each, no metadata call touched the backend.
  CHECK(s.mem.reads() == reads_before + 2);
}

TEST_CASE("FsCore reads content across chunk boundaries and refuses writes", "[fscore]") {
  Store s;
  Mount m(s.mem);
  FsCore& core = *m.core;
  uint64_t bb = walk(core, {"overlay2", kBase, "diff", "bin", "busybox"});
  CHECK(core.open(bb, O_RDONLY).ok());
  CHECK(core.open(bb, O_RDWR).code() == EROFS);
  CHECK(core.open(bb, O_WRONLY).code() == EROFS);
  CHECK(core.open(walk(core, {"overlay2"}), O_RDONLY).code() == EISDIR);

  for (uint64_t off : {0ull, 1ull, 4095ull, 4096ull, 8000ull, 12288ull, 12300ull}) {
    for (size_t len : {1ul, 100ul, 4096ul, 9000ul, 20000ul}) {
      std::vector<std::byte> buf(len);
      auto n = core.read(bb, off, buf);
      REQUIRE(n.ok());
      size_t want = off >= s.big.size() ? 0 : std::min<size_t>(len, s.big.size() - off);
      REQUIRE(*n == want);
      CHECK(std::memcmp(buf.data(), s.big.data() + off, want) == 0);
    }
  }
  std::vector<std::byte> buf(10);
  CHECK(*core.read(bb, 1 << 20, buf) == 0);
  CHECK(core.bytes_served() > 0);
}

TEST_CASE("FsCore refuses a store without a catalog; a bad layer index fails only that layer", "[fscore]") {
  {
    backend::MemoryBackend empty;
    empty.put("x", "y");
    cache::ChunkFetcher fetcher(empty, {});
    auto r = FsCore::open(fetcher, fetcher, {});
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("no extrafs catalog") != std::string::npos);
  }
  {
    Store s;
    s.mem.put(layer_index_path(kTop), "garbage");
    cache::ChunkFetcher fetcher(s.mem, {});
    auto r = FsCore::open(fetcher, fetcher, {});
    REQUIRE(r.ok());  // the mount needs only the catalog (and the image/ index)
    FsCore& core = **r;
    uint64_t layer = walk(core, {"overlay2", kTop});
    CHECK(walk(core, {"overlay2", kTop, "lower"}) != 0);  // catalog-only nodes still answer
    auto diff = core.lookup(layer, "diff");
    REQUIRE_FALSE(diff.ok());
    CHECK(diff.code() == EIO);
    CHECK(diff.error().message.find(kTop) != std::string::npos);
    CHECK(walk(core, {"overlay2", kBase, "diff", "bin", "busybox"}) != 0);  // the other layer is fine
  }
  {
    Store s;
    Catalog c = s.catalog;
    std::swap(c.layers[0].index_digest, c.layers[1].index_digest);
    s.mem.put(kCatalogPath, c.serialize());
    cache::ChunkFetcher fetcher(s.mem, {});
    auto r = FsCore::open(fetcher, fetcher, {});
    REQUIRE(r.ok());
    for (const auto& id : {kBase, kTop}) {
      auto diff = (*r)->lookup(walk(**r, {"overlay2", id}), "diff");
      REQUIRE_FALSE(diff.ok());
      CHECK(diff.code() == EIO);
      CHECK(diff.error().message.find("does not match") != std::string::npos);
    }
  }
  {
    Store s;
    s.mem.put(image_index_path(*s.catalog.image_index), "garbage");
    cache::ChunkFetcher fetcher(s.mem, {});
    auto r = FsCore::open(fetcher, fetcher, {});
    REQUIRE_FALSE(r.ok());  // the image/ tree is loaded at open
    CHECK(r.error().message.find("image/") != std::string::npos);
  }
}

TEST_CASE("FsCore picks up layers added to the catalog without a remount", "[fscore]") {
  Store s;
  FsCoreOptions opts = manual();
  // The memory backend reports mtime 0 for everything, so the refresh is keyed on size.
  Catalog first = s.catalog;
  first.layers.pop_back();
  s.mem.put(kCatalogPath, first.serialize());
  Mount m(s.mem, opts);
  FsCore& core = *m.core;
  uint64_t ov = walk(core, {"overlay2"});
  CHECK(core.lookup(ov, kTop).code() == ENOENT);
  uint64_t base_dir = walk(core, {"overlay2", kBase});
  s.mem.put(kCatalogPath, s.catalog.serialize());
  REQUIRE(core.refresh().ok());
  auto a = core.lookup(ov, kTop);
  REQUIRE(a.ok());
  CHECK(walk(core, {"overlay2", kBase}) == base_dir);  // existing ids unchanged
  CHECK(core.layer_count() == 2);
}

TEST_CASE("a catalog refresh that falls back to the cached copy is retried", "[fscore]") {
  Store s;
  TempDir dir;
  auto disk = cache::BlockCache::open(dir.path + "/cache", 64ull << 20);
  REQUIRE(disk.ok());
  backend::FaultBackend faulty(s.mem);
  cache::FetcherOptions fo;
  fo.disk = disk->get();
  FsCoreOptions opts = manual();
  Catalog first = s.catalog;
  first.layers.pop_back();
  s.mem.put(kCatalogPath, first.serialize());
  Mount m(faulty, opts, fo);
  FsCore& core = *m.core;
  // The new catalog cannot be read this time: the fetcher serves its kept copy (the old one),
  // which must not count as having loaded the new version.
  s.mem.put(kCatalogPath, s.catalog.serialize());
  faulty.fail_next_reads(1);
  CHECK_FALSE(core.refresh().ok());
  CHECK(core.layer_count() == 1);
  REQUIRE(core.refresh().ok());
  CHECK(core.layer_count() == 2);
}

TEST_CASE("a layer whose index is not readable yet is served once it is, after a back-off", "[fscore]") {
  Store s;
  FsCoreOptions opts = manual();
  opts.index_retry_s = 0.3;
  ManualClock clock;
  opts.now = clock.clock();
  Catalog first = s.catalog;
  first.layers.pop_back();
  s.mem.put(kCatalogPath, first.serialize());
  Mount m(s.mem, opts);
  FsCore& core = *m.core;
  // The catalog names the new layer before its index is complete (a publish still copying it).
  auto index = s.mem.read_all(layer_index_path(kTop), kMaxIndexSize);
  REQUIRE(index.ok());
  s.mem.put(layer_index_path(kTop), index->substr(0, index->size() / 2));
  s.mem.put(kCatalogPath, s.catalog.serialize());
  REQUIRE(core.refresh().ok());  // the catalog is loaded; the index is read on first use
  CHECK(core.layer_count() == 2);
  uint64_t layer = walk(core, {"overlay2", kTop});
  uint64_t reads = s.mem.reads();
  CHECK(core.lookup(layer, "diff").code() == EIO);
  CHECK(s.mem.reads() == reads + 1);
  s.mem.put(layer_index_path(kTop), *index);
  // Within the back-off the failure is answered without a new read.
  CHECK(core.lookup(layer, "diff").code() == EIO);
  CHECK(s.mem.reads() == reads + 1);
  clock.advance(std::chrono::milliseconds(299));
  CHECK(core.lookup(layer, "diff").code() == EIO);
  CHECK(s.mem.reads() == reads + 1);
  clock.advance(std::chrono::milliseconds(1));
  CHECK(walk(core, {"overlay2", kTop, "diff", "etc", "hostname"}) != 0);
}

TEST_CASE("a host reads only the indexes of the layers it uses, and counts metadata bytes", "[fscore]") {
  Store s;
  Mount m(s.mem);
  FsCore& core = *m.core;
  cache::ChunkFetcher& fetcher = m.fetcher;
  auto size_of = [&](const std::string& path) { return s.mem.read_all(path, kMaxIndexSize)->size(); };
  const uint64_t at_open = size_of(kCatalogPath) + size_of(image_index_path(*s.catalog.image_index));
  CHECK(fetcher.stats().meta_bytes_fetched == at_open);
  CHECK(fetcher.stats().bytes_fetched == 0);

  // Catalog-only nodes: the top-level directories, l/, link, lower, the layer directories.
  uint64_t reads = s.mem.reads();
  list(core, walk(core, {"overlay2"}));
  list(core, walk(core, {"overlay2", "l"}));
  CHECK(core.readlink(walk(core, {"overlay2", "l", "TOPLINK"})).ok());
  for (const auto& id : {kBase, kTop}) {
    uint64_t dir = walk(core, {"overlay2", id});
    bool saw_diff = false;
    REQUIRE(core.readdir(dir, 0,
                         [&](const DirItem& d, const NodeAttr& a) {
                           if (d.name == "diff") {
                             saw_diff = true;
                             CHECK(d.mode == S_IFDIR);
                             CHECK_FALSE(a.known);  // listed without attributes: no index read
                             CHECK(a.st.st_ino == d.ino);
                           }
                           return true;
                         })
                .ok());
    CHECK(saw_diff);
    std::vector<std::byte> buf(64);
    CHECK(core.read(walk(core, {"overlay2", id, "link"}), 0, buf).ok());
  }
  CHECK(core.statfs().f_blocks > 0);
  auto j = stats(core);
  CHECK(j["layer_indexes_loaded"] == 0);
  CHECK(j["layers"][0]["bytes_total"] == s.catalog.layers[0].bytes);
  CHECK(j["layers"][0]["index_loaded"] == false);
  CHECK(s.mem.reads() == reads);
  CHECK(fetcher.stats().meta_bytes_fetched == at_open);

  // The first operation under one layer's diff/ reads that layer's index, and only it.
  walk(core, {"overlay2", kTop, "diff", "etc", "hostname"});
  CHECK(fetcher.stats().meta_bytes_fetched == at_open + size_of(layer_index_path(kTop)));
  j = stats(core);
  CHECK(j["meta_bytes_fetched"] == at_open + size_of(layer_index_path(kTop)));
  CHECK(j["layer_indexes_loaded"] == 1);
  CHECK(j["layers"][1]["index_loaded"] == true);
  CHECK(j["layers"][0]["index_loaded"] == false);
}

TEST_CASE("a kept index copy is used without the store; stats load it from there", "[fscore]") {
  Store s;
  TempDir dir;
  auto disk = cache::BlockCache::open(dir.path + "/cache", 64ull << 20);
  REQUIRE(disk.ok());
  cache::FetcherOptions fopts;
  fopts.disk = disk->get();
  {
    cache::ChunkFetcher fetcher(s.mem, fopts);
    auto core = FsCore::open(fetcher, fetcher, {});
    REQUIRE(core.ok());
    walk(**core, {"overlay2", kBase, "diff", "bin"});  // keeps the base index in the cache
  }
  Mount m(s.mem, manual(), fopts);
  FsCore& core = *m.core;
  cache::ChunkFetcher& fetcher = m.fetcher;
  const uint64_t at_open = fetcher.stats().meta_bytes_fetched;
  auto j = stats(core);
  CHECK(j["layers"][0]["index_loaded"] == true);   // from the kept copy
  CHECK(j["layers"][1]["index_loaded"] == false);  // never used: not read for statistics
  walk(core, {"overlay2", kBase, "diff", "bin", "busybox"});
  CHECK(fetcher.stats().meta_bytes_fetched == at_open);
  // A kept copy whose digest is not the catalog's is not used.
  s.mem.put(layer_index_path(kTop), "garbage");
  CHECK(core.lookup(walk(core, {"overlay2", kTop}), "diff").code() == EIO);
}

TEST_CASE("many threads' first access to a layer cause one index read; other layers do not wait", "[fscore]") {
  Store s;
  backend::FaultBackend faulty(s.mem);
  cache::FetcherOptions fopts;
  fopts.prefetch_threads = 0;
  Mount m(faulty, manual(), fopts);
  FsCore& core = *m.core;
  walk(core, {"overlay2", kBase, "diff"});  // base loaded before the slow reads start
  const uint64_t top = walk(core, {"overlay2", kTop});
  const uint64_t reads = faulty.reads();
  faulty.hold_reads();  // a store that does not answer until told
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&] {
      auto d = core.lookup(top, "diff");
      if (!d.ok()) return;
      auto etc = core.lookup(d->st.st_ino, "etc");
      if (etc.ok() && core.lookup(etc->st.st_ino, "hostname").ok()) ok++;
    });
  }
  // While the top index is being read (held), the base layer answers.
  REQUIRE(faulty.wait_held(1, std::chrono::seconds(10)));
  auto base = std::async(std::launch::async, [&] {
    auto d = core.lookup(walk(core, {"overlay2", kBase}), "diff");
    auto bin = d.ok() ? core.lookup(d->st.st_ino, "bin") : d;
    return bin.ok() && core.lookup(bin->st.st_ino, "busybox").ok();
  });
  const bool answered = base.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
  faulty.release_reads();
  CHECK(answered);
  CHECK(base.get());
  for (auto& t : threads) t.join();
  CHECK(ok == 16);
  CHECK(faulty.reads() == reads + 1);
}

namespace {
// Writes an image/ index whose repositories.json holds `repos` (content in `object`); returns its digest.
Digest128 put_image(backend::MemoryBackend& mem, const std::string& repos, const std::string& object) {
  IndexBuilder img(4096);
  uint32_t iroot = add_root(img);
  uint32_t ov = add_dir(img, iroot, "overlay2");
  add_file(img, &mem, ov, "repositories.json", repos, object);
  auto bytes = img.serialize();
  REQUIRE(bytes.ok());
  auto idx = LayerIndex::parse(*bytes);
  REQUIRE(idx.ok());
  mem.put(image_index_path((*idx)->digest()), *bytes);
  return (*idx)->digest();
}

std::string read_whole(FsCore& core, uint64_t ino) {
  std::string out(1 << 16, '\0');
  auto n = core.read(ino, 0, std::as_writable_bytes(std::span<char>(out)));
  REQUIRE(n.ok());
  out.resize(*n);
  return out;
}

// What the mount serves as image/overlay2/repositories.json: which image/ tree it loaded.
std::string repositories(FsCore& core) {
  return read_whole(core, walk(core, {"image", "overlay2", "repositories.json"}));
}

// `base` as generation `generation` of the store `id` ("": none), serving `repos` as its
// repositories.json.
Catalog catalog_of(backend::MemoryBackend& mem, Catalog base, uint64_t generation, const std::string& id,
                   const std::string& repos) {
  base.generation = generation;
  base.store_id = id;
  base.image_index = put_image(mem, repos, "extrafs/objects/" + std::to_string(generation) + id);
  return base;
}

// Puts catalog `c` at `path` (extrafs/catalog or a generation's name), refreshes `core`, and
// returns the repositories.json it serves then.
std::string put_and_refresh(backend::MemoryBackend& mem, FsCore& core, const std::string& path, const Catalog& c) {
  mem.put(path, c.serialize());
  REQUIRE(core.refresh().ok());
  return repositories(core);
}
}  // namespace

TEST_CASE("the next catalog generation is found while the catalog itself looks unchanged", "[fscore]") {
  Store s;
  FsCoreOptions opts = manual();
  Catalog first = s.catalog;
  first.layers.pop_back();
  first.generation = 1;
  s.mem.put(kCatalogPath, first.serialize());
  s.mem.put(catalog_generation_path(1), first.serialize());
  Mount m(s.mem, opts);
  FsCore& core = *m.core;
  REQUIRE(core.refresh().ok());  // nothing new
  CHECK(core.layer_count() == 1);
  // Generation 2 is published while the store still shows the old extrafs/catalog (as an NFS
  // server does that trusts its cached attributes): the new name alone must tell.
  Catalog second = s.catalog;
  second.generation = 2;
  second.image_index = put_image(s.mem, R"({"two":1})", "extrafs/objects/two");
  s.mem.put(catalog_generation_path(2), second.serialize());
  REQUIRE(core.refresh().ok());
  CHECK(core.layer_count() == 2);
  CHECK(repositories(core) == R"({"two":1})");
  // An older catalog then showing as extrafs/catalog (a server still serving the replaced file)
  // must not bring back the older image/ tree.
  Catalog stale = s.catalog;
  stale.generation = 1;
  s.mem.put(kCatalogPath, stale.serialize());
  REQUIRE(core.refresh().ok());
  CHECK(repositories(core) == R"({"two":1})");
  // A later generation that comes only as extrafs/catalog (a mount more generations behind than
  // the store keeps): still loaded. (Two digits: the memory backend's version is the size.)
  Catalog third = second;
  third.generation = 10;
  third.image_index = put_image(s.mem, R"({"three":1})", "extrafs/objects/three");
  s.mem.put(kCatalogPath, third.serialize());
  REQUIRE(core.refresh().ok());
  CHECK(repositories(core) == R"({"three":1})");
}

TEST_CASE("without generation probes (http sources) a refresh follows the catalog alone", "[fscore]") {
  Store s;
  FsCoreOptions opts = manual();
  opts.probe_generations = false;
  Catalog first = s.catalog;
  first.layers.pop_back();
  first.generation = 1;
  s.mem.put(kCatalogPath, first.serialize());
  Mount m(s.mem, opts);
  FsCore& core = *m.core;
  Catalog second = s.catalog;
  second.generation = 2;
  s.mem.put(catalog_generation_path(2), second.serialize());
  REQUIRE(core.refresh().ok());
  CHECK(core.layer_count() == 1);  // catalog.d/2 was not looked up
  s.mem.put(kCatalogPath, second.serialize());
  REQUIRE(core.refresh().ok());
  CHECK(core.layer_count() == 2);
}

TEST_CASE("the background refresher adds new layers by itself", "[fscore]") {
  Store s;
  Catalog first = s.catalog;
  first.layers.pop_back();
  s.mem.put(kCatalogPath, first.serialize());
  FsCoreOptions opts;
  opts.refresh_interval_s = 0.02;
  Mount m(s.mem, opts);
  FsCore& core = *m.core;
  CHECK(core.layer_count() == 1);
  // The thread tells the adapter (here: this promise) once it loaded a newer catalog.
  std::promise<void> told;
  std::atomic<bool> once{false};
  core.set_on_listing_change([&](std::span<const uint64_t>) {
    if (!once.exchange(true)) told.set_value();
  });
  s.mem.put(kCatalogPath, s.catalog.serialize());
  REQUIRE(told.get_future().wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  core.set_on_listing_change({});
  CHECK(core.layer_count() == 2);
}

TEST_CASE("stats are reported as one JSON object with per-layer numbers", "[fscore]") {
  Store s;
  Mount m(s.mem);
  FsCore& core = *m.core;
  uint64_t bb = walk(core, {"overlay2", kBase, "diff", "bin", "busybox"});
  std::vector<std::byte> buf(100);
  REQUIRE(core.read(bb, 0, buf).ok());
  auto j = stats(core).dump();
  for (const char* k :
       {"\"bytes_fetched\":4096", "\"bytes_served\":100", "\"chunks_fetched\":1", "\"cache_misses\":1",
        "\"bytes_cached\":4096", "\"backend_errors\":0", "\"cache_write_errors\":0", "\"cache_bytes\":4096"}) {
    INFO(j);
    CHECK(j.find(k) != std::string::npos);
  }
  // They travel on the daemon's socket (tools/mount_stats.h), not in an xattr of the root, which
  // the kernel caps at 64 KiB.
  CHECK(core.getxattr(kRootIno, "user.extrafs.stats").code() == ENODATA);
}

TEST_CASE("the daemon reads a file of its image/ tree for itself without counting it as a reader's", "[fscore]") {
  Store s;
  Mount m(s.mem);
  FsCore& core = *m.core;
  cache::ChunkFetcher& fetcher = m.fetcher;
  auto repos = core.read_path("image/overlay2/repositories.json", 1 << 20);
  REQUIRE(repos.ok());
  CHECK(*repos == "{}");
  auto bb = core.read_path("overlay2/" + kBase + "/diff/bin/busybox", 1 << 20);
  REQUIRE(bb.ok());
  CHECK(*bb == s.big);
  auto st = fetcher.stats();
  CHECK(st.own_bytes_fetched == 2 + s.big.size());
  CHECK(st.bytes_fetched == 0);
  CHECK(st.chunks_fetched == 0);
  CHECK(st.cache_hits == 0);
  CHECK(st.cache_misses == 0);
  CHECK(stats(core)["bytes_served"] == 0);
  // Nothing of it was kept: a reader then fetches the chunk itself, counted as its own.
  std::vector<std::byte> buf(100);
  REQUIRE(core.read(walk(core, {"overlay2", kBase, "diff", "bin", "busybox"}), 0, buf).ok());
  st = fetcher.stats();
  CHECK(st.cache_misses == 1);
  CHECK(st.chunks_fetched == 1);
  CHECK(st.cache_hits == 0);
  CHECK(stats(core)["bytes_served"] == 100);
  // What a reader brought is used by the daemon's reads as it is, fetched again nothing.
  REQUIRE(core.read_path("overlay2/" + kBase + "/diff/bin/busybox", 1 << 20).ok());
  CHECK(fetcher.stats().own_bytes_fetched == 2 + 2 * s.big.size() - 4096);
  CHECK(fetcher.stats().cache_hits == 0);

  CHECK(core.read_path("image/overlay2/nothing", 1 << 20).code() == ENOENT);
  CHECK(core.image_tree() == s.catalog.image_index);
  CHECK(core.read_path("image/overlay2", 1 << 20).code() == EISDIR);
  CHECK(core.read_path("image/../overlay2", 1 << 20).code() == EINVAL);
  auto big = core.read_path("overlay2/" + kBase + "/diff/bin/busybox", 100);
  CHECK(big.code() == EFBIG);
  CHECK(big.error().message.find("busybox") != std::string::npos);
}

TEST_CASE("a sequential reader gets the next chunks fetched ahead, a random one does not", "[fscore]") {
  Store s;
  Mount m(s.mem);
  FsCore& core = *m.core;
  cache::ChunkFetcher& fetcher = m.fetcher;
  uint64_t bb = walk(core, {"overlay2", kBase, "diff", "bin", "busybox"});
  std::vector<std::byte> buf(1024);
  // Random: the same offset again and again never looks sequential.
  for (int i = 0; i < 5; ++i) REQUIRE(core.read(bb, 100, buf).ok());
  CHECK(fetcher.stats().prefetches == 0);
  // Sequential: 1 KiB reads from the start; the file has four 4 KiB chunks.
  for (uint64_t off = 0; off < 3 * 1024; off += 1024) REQUIRE(core.read(bb, off, buf).ok());
  Digest128 second = xxh3_128(s.big.data() + 4096, 4096);
  fetcher.wait_prefetch_idle();  // the reads above queued their readahead before returning
  CHECK(fetcher.stats().prefetches >= 1);
  REQUIRE(fetcher.is_cached(second));
  // Whatever was prefetched is served without another fetch of it.
  uint64_t fetched = fetcher.stats().chunks_fetched;
  std::vector<std::byte> chunk(4096);
  REQUIRE(core.read(bb, 4096, chunk).ok());
  CHECK(std::memcmp(chunk.data(), s.big.data() + 4096, 4096) == 0);
  CHECK(fetcher.stats().chunks_fetched == fetched);
}

TEST_CASE("a reader walking a directory gets its next files fetched ahead, together; others do not", "[fscore]") {
  Store s;
  // A layer of small files stored side by side in one blob, as a publish lays out a directory:
  // d/f00..f39, then e/f0..f4.
  const std::string kSmall(64, '3');
  BlobLayer l(4096);
  uint32_t d = add_dir(l.b, l.root, "d");
  uint32_t e = add_dir(l.b, l.root, "e");
  for (int i = 0; i < 40; ++i) l.add(d, fmt::format("f{:02}", i), 1000 + 50 * i);
  for (int i = 0; i < 5; ++i) l.add(e, fmt::format("f{}", i), 2000);
  l.put(s, kSmall);
  const std::vector<std::string>& contents = l.contents;

  Mount m(s.mem);
  FsCore& core = *m.core;
  cache::ChunkFetcher& fetcher = m.fetcher;
  auto read_whole = [&](std::string_view dir, std::string name, size_t k) {
    uint64_t ino = walk(core, {"overlay2", kSmall, "diff", dir, name});
    std::vector<std::byte> buf(contents[k].size());
    auto n = core.read(ino, 0, buf);
    REQUIRE(n.ok());
    REQUIRE(*n == buf.size());
    CHECK(std::memcmp(buf.data(), contents[k].data(), buf.size()) == 0);
  };
  // Not walks: the start of a file alone, twice in order.
  std::vector<std::byte> part(10);
  REQUIRE(core.read(walk(core, {"overlay2", kSmall, "diff", "d", "f20"}), 0, part).ok());
  REQUIRE(core.read(walk(core, {"overlay2", kSmall, "diff", "d", "f21"}), 0, part).ok());
  fetcher.wait_prefetch_idle();
  CHECK(fetcher.stats().prefetches == 0);

  // A walk of d: from its third file on, each next file is in memory before the reader asks,
  // brought in a few backend reads of adjacent files.
  const uint64_t reads0 = s.mem.reads(), fetched0 = fetcher.stats().chunks_fetched;
  for (int i = 0; i < 40; ++i) {
    fetcher.wait_prefetch_idle();
    INFO("file " << i);
    if (i >= 2) REQUIRE(fetcher.is_cached(l.digest(i)));
    read_whole("d", fmt::format("f{:02}", i), i);
  }
  // Each of d's files but f20..f36 (the first partial read brought them: f20's neighbours in
  // the store, see the next test) fetched once: f00 with its 16 neighbours f01..f16 by the
  // reader, then f17..f19 (the rest of the walk's window of 16 files from f05), f37 (its
  // window of 32 from f06) and f38, f39 (refilled once half of it was left) by the walk: 4
  // backend reads for 23 files.
  fetcher.wait_prefetch_idle();
  CHECK(fetcher.stats().chunks_fetched - fetched0 == 23);
  CHECK(s.mem.reads() - reads0 == 4);
  CHECK(fetcher.stats().prefetches == 6);
  // The window ends with the directory: nothing of e was fetched.
  for (size_t k = 40; k < 45; ++k) CHECK_FALSE(fetcher.is_cached(l.digest(k)));

  // Not a walk either: e's files in reverse order.
  const uint64_t prefetched = fetcher.stats().prefetches;
  for (int i = 4; i >= 0; --i) read_whole("e", fmt::format("f{}", i), 40 + i);
  fetcher.wait_prefetch_idle();
  CHECK(fetcher.stats().prefetches == prefetched);
}

TEST_CASE("a small file read from the store brings the small files stored after it in its directory along",
          "[fscore]") {
  Store s;
  // Directories whose files are stored side by side in one blob, in name order:
  //   a/f00..f39 (1-3 KiB: the file bound of a neighbour read decides),
  //   b/g0..g5 (40 KiB each: the byte bound decides),
  //   h/h0, h1, h1sub/ (a directory), h2..h5,
  //   k/k0 (200 KiB: too big to bring or be brought), k1, k2, k3 (200 KiB), k4,
  //   s/a, s/m00..m69 (directories), s/z (more entries away than a neighbour is looked for),
  //   c/c0, c1 (stored bytes corrupt), c2.
  const std::string kId(64, '4');
  BlobLayer l(1 << 20);
  uint32_t a = add_dir(l.b, l.root, "a"), b = add_dir(l.b, l.root, "b"), h = add_dir(l.b, l.root, "h"),
           k = add_dir(l.b, l.root, "k");
  for (int i = 0; i < 40; ++i) l.add(a, fmt::format("f{:02}", i), 1000 + 50 * i);  // files 0..39
  for (int i = 0; i < 6; ++i) l.add(b, fmt::format("g{}", i), 40 << 10);           // 40..45
  l.add(h, "h0", 2000);                                                            // 46
  l.add(h, "h1", 2000);                                                            // 47
  add_dir(l.b, h, "h1sub");
  for (int i = 2; i < 6; ++i) l.add(h, fmt::format("h{}", i), 2000);  // 48..51
  l.add(k, "k0", 200 << 10);                                          // 52
  l.add(k, "k1", 2000);                                               // 53
  l.add(k, "k2", 2000);                                               // 54
  l.add(k, "k3", 200 << 10);                                          // 55
  l.add(k, "k4", 2000);                                               // 56
  uint32_t sd = add_dir(l.b, l.root, "s");
  l.add(sd, "a", 2000);  // 57
  for (int i = 0; i < 70; ++i) add_dir(l.b, sd, fmt::format("m{:02}", i));
  l.add(sd, "z", 2000);  // 58
  uint32_t cd = add_dir(l.b, l.root, "c");
  l.add(cd, "c0", 2000);  // 59
  l.add(cd, "c1", 2000);  // 60
  l.add(cd, "c2", 2000);  // 61
  l.blob[l.blob.size() - 3000] ^= 1;
  l.put(s, kId);

  Mount m(s.mem);
  FsCore& core = *m.core;
  cache::ChunkFetcher& fetcher = m.fetcher;
  // Reads file number `f` (in directory `dir`) whole; returns the backend reads and chunks
  // fetched that took. Nothing here is a walk or a sequential stream: no prefetch.
  auto read = [&](std::string_view dir, const std::string& name, size_t f) {
    uint64_t ino = walk(core, {"overlay2", kId, "diff", dir, name});  // the first one reads the index
    const uint64_t reads0 = s.mem.reads(), chunks0 = fetcher.stats().chunks_fetched;
    std::vector<std::byte> buf(l.contents[f].size());
    auto n = core.read(ino, 0, buf);
    REQUIRE(n.ok());
    REQUIRE(*n == buf.size());
    CHECK(std::memcmp(buf.data(), l.contents[f].data(), buf.size()) == 0);
    return std::pair{s.mem.reads() - reads0, fetcher.stats().chunks_fetched - chunks0};
  };
  // Which of files [from, to) are held: '1' or '0' each, a space after every ten.
  auto held = [&](size_t from, size_t to) {
    std::string out;
    for (size_t f = from; f < to; ++f) {
      if (f > from && (f - from) % 10 == 0) out += ' ';
      out += fetcher.is_cached(l.digest(f)) ? '1' : '0';
    }
    return out;
  };

  // The file bound: a/f10 brings f11..f26 in its own backend read; f27 stays in the store.
  CHECK(read("a", "f10", 10) == std::pair<uint64_t, uint64_t>{1, 17});
  CHECK(held(0, 40) == "0000000000 1111111111 1111111000 0000000000");
  // What it brought is served without the store.
  CHECK(read("a", "f26", 26) == std::pair<uint64_t, uint64_t>{0, 0});
  // Held files end a neighbour read: f05 brings f06..f09, not f10 (held) nor what is after it.
  CHECK(read("a", "f05", 5) == std::pair<uint64_t, uint64_t>{1, 5});
  CHECK(held(0, 40) == "0000011111 1111111111 1111111000 0000000000");
  // The last of a directory brings nothing of the next one.
  CHECK(read("a", "f39", 39) == std::pair<uint64_t, uint64_t>{1, 1});
  CHECK(held(40, 41) == "0");

  // The byte bound: 3 neighbours of 40 KiB fit in 128 KiB, a fourth would not.
  const uint64_t bytes0 = fetcher.stats().bytes_fetched;
  CHECK(read("b", "g0", 40) == std::pair<uint64_t, uint64_t>{1, 4});
  CHECK(held(40, 46) == "111100");
  CHECK(fetcher.stats().bytes_fetched - bytes0 == 4 * (40 << 10));

  // A directory between files is passed over; the neighbours end with the directory.
  CHECK(read("h", "h0", 46) == std::pair<uint64_t, uint64_t>{1, 6});
  CHECK(held(46, 53) == "1111110");

  // Big files neither bring their neighbours nor are brought: k0 comes alone; k1 brings k2 and
  // stops before k3.
  CHECK(read("k", "k0", 52) == std::pair<uint64_t, uint64_t>{1, 1});
  CHECK(held(53, 57) == "0000");
  CHECK(read("k", "k1", 53) == std::pair<uint64_t, uint64_t>{1, 2});
  CHECK(held(52, 57) == "11100");

  // Neighbours are looked for among the next 64 entries only.
  CHECK(read("s", "a", 57) == std::pair<uint64_t, uint64_t>{1, 1});
  CHECK(held(58, 59) == "0");

  // A corrupt neighbour: the reader still gets its file, after one more backend read of the
  // neighbour alone (it might have been caught mid-replacement); it is not kept, the one after
  // it is. Its own reader gets EIO.
  CHECK(read("c", "c0", 59) == std::pair<uint64_t, uint64_t>{2, 4});
  CHECK(held(59, 62) == "101");
  std::vector<std::byte> buf(2000);
  auto bad = core.read(walk(core, {"overlay2", kId, "diff", "c", "c1"}), 0, buf);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.code() == EIO);
  fetcher.wait_prefetch_idle();
  CHECK(fetcher.stats().prefetches == 0);
}

TEST_CASE("a chunk that cannot be served fails the whole read, never a short one", "[fscore]") {
  Store s;
  backend::FaultBackend faulty(s.mem);
  cache::FetcherOptions fopts;
  fopts.prefetch_threads = 0;  // no readahead: every backend read below is one the test asked for
  ManualClock clock;
  fopts.now = clock.clock();
  Mount m(faulty, manual(), fopts);
  FsCore& core = *m.core;
  uint64_t bb = walk(core, {"overlay2", kBase, "diff", "bin", "busybox"});
  const off_t size = static_cast<off_t>(s.big.size());
  REQUIRE(core.getattr(bb)->st.st_size == size);

  // Chunk 0 is served and kept; chunk 1 then fails on the backend.
  std::vector<std::byte> first(4096);
  REQUIRE(*core.read(bb, 0, first) == 4096);
  uint64_t served = core.bytes_served();
  // Two chunks: a request that also covered chunk 2 would read chunks 1 and 2 with one backend
  // read (see the fetcher's coalescing tests), and the faults below are meant for chunk 1 alone.
  std::vector<std::byte> buf(2 * 4096);

  SECTION("backend failure") { faulty.fail_next_reads(1, EIO); }
  SECTION("backend timeout") { faulty.fail_next_reads(1, ETIMEDOUT); }
  SECTION("bytes that never verify") { faulty.corrupt_next_reads(2); }  // the fetcher retries once

  auto n = core.read(bb, 0, buf);  // chunks 0 (cached), 1 (bad)
  REQUIRE_FALSE(n.ok());
  CHECK(n.code() == EIO);
  auto mid = core.read(bb, 100, std::span(buf).first(5000));  // from inside chunk 0 into chunk 1
  REQUIRE_FALSE(mid.ok());
  CHECK(mid.code() == EIO);
  CHECK(core.bytes_served() == served);  // nothing of a failed request counts as served
  CHECK(core.getattr(bb)->st.st_size == size);

  // The good chunks still read right, alone.
  std::vector<std::byte> third(4096);
  auto t = core.read(bb, 2 * 4096, third);
  REQUIRE(t.ok());
  REQUIRE(*t == 4096);
  CHECK(std::memcmp(third.data(), s.big.data() + 2 * 4096, 4096) == 0);
  auto z = core.read(bb, 0, first);
  REQUIRE(z.ok());
  CHECK(std::memcmp(first.data(), s.big.data(), 4096) == 0);

  // Once the fault is gone (and the fetcher's short memory of the failure has passed), the whole
  // file reads in full.
  clock.advance(std::chrono::milliseconds(600));
  std::vector<std::byte> all(s.big.size() + 100);
  auto whole = core.read(bb, 0, all);
  REQUIRE(whole.ok());
  CHECK(*whole == s.big.size());
  CHECK(std::memcmp(all.data(), s.big.data(), s.big.size()) == 0);
}

TEST_CASE("FsCore does not serve a layer whose lower names a link no served layer has", "[fscore]") {
  Store s;
  s.catalog.layers[1].lower = "l/NOSUCHLINK";
  s.mem.put(kCatalogPath, s.catalog.serialize());
  Mount m(s.mem);
  FsCore& core = *m.core;
  uint64_t ov = walk(core, {"overlay2"});
  CHECK(list(core, ov).size() == 2);  // l/ and the base layer only
  CHECK(core.lookup(ov, kBase).ok());
  CHECK(core.lookup(ov, kTop).code() == ENOENT);
}

namespace {

// Writes every object of `mem` below `dir`, so that a LocalBackend on `dir` serves the same store.
void write_out(backend::MemoryBackend& mem, const std::string& dir, const std::string& rel = "") {
  auto names = mem.list(rel);
  REQUIRE(names.ok());
  for (const auto& n : *names) {
    const std::string child = rel.empty() ? n : rel + "/" + n;
    auto info = mem.stat(child);
    REQUIRE(info.ok());
    if (info->is_dir) {
      REQUIRE(make_dirs(dir + "/" + child).ok());
      write_out(mem, dir, child);
    } else {
      auto bytes = mem.read_all(child, kMaxIndexSize);
      REQUIRE(bytes.ok());
      REQUIRE(write_new_file(dir + "/" + child, *bytes).ok());
    }
  }
}

// The Store of the tests above, its catalog of generation 1 (base layer only), on local disk,
// served by a core that refreshes only when asked.
struct LocalStore {
  Store s;
  TempDir dir;
  std::unique_ptr<backend::Backend> backend;
  std::unique_ptr<cache::ChunkFetcher> fetcher;
  std::unique_ptr<FsCore> core;
  LocalStore() {
    Catalog first = s.catalog;
    first.layers.pop_back();
    first.generation = 1;
    s.mem.put(kCatalogPath, first.serialize());
    s.mem.put(catalog_generation_path(1), first.serialize());
    write_out(s.mem, dir.path);
    auto b = backend::open_backend(dir.path, 5000);
    REQUIRE(b.ok());
    backend = std::move(b).value();
    fetcher = std::make_unique<cache::ChunkFetcher>(*backend, cache::FetcherOptions{});
    FsCoreOptions opts = manual();
    auto c = FsCore::open(*fetcher, *fetcher, opts);
    REQUIRE(c.ok());
    core = std::move(c).value();
  }
  std::string path(const std::string& rel) const { return dir.path + "/" + rel; }
};

}  // namespace

TEST_CASE("a FIFO as the next catalog generation is refused at once, not waited on", "[fscore]") {
  LocalStore ls;
  FsCore& core = *ls.core;
  const std::string fifo = ls.path(catalog_generation_path(2));
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  for (int i = 0; i < 2; ++i) {
    std::optional<Status> st;
    CHECK_FALSE(blocked_on_fifo(fifo, [&] { st = core.refresh(); }));
    REQUIRE(st);
    CHECK(st->code() == EINVAL);
  }
  CHECK(core.layer_count() == 1);
}

TEST_CASE("a sparse huge catalog generation is refused from its size, never read", "[fscore]") {
  LocalStore ls;
  FsCore& core = *ls.core;
  const uint64_t before = ls.fetcher->stats().meta_bytes_fetched;
  {
    Fd fd(::open(ls.path(catalog_generation_path(2)).c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
    REQUIRE(fd.valid());
    REQUIRE(::ftruncate(fd.get(), off_t{256} << 20) == 0);  // 4 x the cap, all holes
  }
  for (int i = 0; i < 3; ++i) CHECK(core.refresh().code() == EFBIG);
  CHECK(ls.fetcher->stats().meta_bytes_fetched == before);
}

TEST_CASE("a corrupt catalog generation is read once, not on every refresh, until it changes", "[fscore]") {
  Store s;
  Catalog first = s.catalog;
  first.layers.pop_back();
  first.generation = 1;
  s.mem.put(kCatalogPath, first.serialize());
  FsCoreOptions opts = manual();
  Mount m(s.mem, opts);
  FsCore& core = *m.core;
  s.mem.put(catalog_generation_path(2), "{ not a catalog");
  const uint64_t reads = s.mem.reads();
  for (int i = 0; i < 3; ++i) CHECK_FALSE(core.refresh().ok());
  CHECK(s.mem.reads() == reads + 1);
  Catalog second = s.catalog;
  second.generation = 2;
  s.mem.put(catalog_generation_path(2), second.serialize());
  REQUIRE(core.refresh().ok());
  CHECK(core.layer_count() == 2);
}

TEST_CASE("a corrupt layer index is read once, not on every access, until it changes", "[fscore]") {
  Store s;
  auto good = s.mem.read_all(layer_index_path(kTop), kMaxIndexSize);
  REQUIRE(good.ok());
  std::string bad = *good;
  bad[bad.size() / 2] ^= 1;
  s.mem.put(layer_index_path(kTop), bad);
  FsCoreOptions opts = manual();
  opts.index_retry_s = 0.05;
  ManualClock clock;
  opts.now = clock.clock();
  Mount m(s.mem, opts);
  FsCore& core = *m.core;
  uint64_t layer = walk(core, {"overlay2", kTop});
  const uint64_t reads = s.mem.reads();
  for (int i = 0; i < 3; ++i) {
    CHECK(core.lookup(layer, "diff").code() == EIO);
    clock.advance(std::chrono::milliseconds(50));  // past the back-off
  }
  CHECK(s.mem.reads() == reads + 1);
  s.mem.put(layer_index_path(kTop), *good);
  CHECK(walk(core, {"overlay2", kTop, "diff", "etc", "hostname"}) != 0);
}

TEST_CASE("unmount's set_on_listing_change does not wait for a refresh blocked on the store", "[fscore]") {
  Store s;
  backend::FaultBackend slow(s.mem);
  FsCoreOptions opts = manual();
  Catalog first = s.catalog;
  first.layers.pop_back();
  s.mem.put(kCatalogPath, first.serialize());
  Mount m(slow, opts);
  FsCore& core = *m.core;
  std::atomic<int> told{0};
  core.set_on_listing_change([&](std::span<const uint64_t>) { told++; });
  s.mem.put(kCatalogPath, s.catalog.serialize());
  slow.hold_reads();  // a server that does not answer until told
  std::atomic<bool> refreshed{false};
  std::thread refresher([&] { refreshed = core.refresh().ok(); });
  REQUIRE(slow.wait_held(1, std::chrono::seconds(10)));  // the refresh waits on the store now
  auto cleared = std::async(std::launch::async, [&] { core.set_on_listing_change({}); });
  const bool at_once = cleared.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
  slow.release_reads();
  CHECK(at_once);
  cleared.get();
  refresher.join();
  CHECK(refreshed);
  CHECK(core.layer_count() == 2);
  CHECK(told == 0);  // cleared before the refresh finished: not called any more
}

TEST_CASE("a catalog of a store made again is loaded whatever its generation; the store left never again", "[fscore]") {
  Store s;
  CapturedLog log;
  Catalog old = catalog_of(s.mem, s.catalog, 5, std::string(32, 'a'), R"({"old":1})");
  Mount mc(s, old);
  FsCore& core = *mc.core;
  // The store made again from scratch: another id, generations from 1, only the base layer.
  Catalog rebuilt = s.catalog;
  rebuilt.layers.pop_back();
  rebuilt = catalog_of(s.mem, rebuilt, 1, std::string(32, 'b'), R"({"new":1})");
  s.mem.put(kCatalogPath, rebuilt.serialize());
  CHECK(put_and_refresh(s.mem, core, catalog_generation_path(1), rebuilt) == R"({"new":1})");
  auto said = log.lines_with("the store was made again");
  REQUIRE(said.size() == 1);
  CHECK(said[0].find(std::string(32, 'a')) != std::string::npos);
  CHECK(said[0].find(std::string(32, 'b')) != std::string::npos);
  // The layer it no longer has stays (served from what this host has), marked removed.
  auto layers = stats(core)["layers"];
  REQUIRE(layers.size() == 2);
  CHECK(layers[0]["removed"] == false);
  CHECK(layers[1]["cache_id"] == kTop);
  CHECK(layers[1]["removed"] == true);
  // Its next generation is followed.
  Catalog next = catalog_of(s.mem, rebuilt, 2, rebuilt.store_id, R"({"n2":1})");
  CHECK(put_and_refresh(s.mem, core, catalog_generation_path(2), next) == R"({"n2":1})");
  // The store left, showing again (a server still serving a replaced file) with any generation,
  // is not loaded. (A generation of another length: the memory backend's version is the size.)
  Catalog stale = old;
  stale.generation = 12;
  CHECK(put_and_refresh(s.mem, core, kCatalogPath, stale) == R"({"n2":1})");
}

TEST_CASE("a failed read of a layer the store removed counts in removed_layer_errors", "[fscore]") {
  Store s;
  CapturedLog log;
  s.catalog.generation = 1;
  Mount mc(s, s.catalog);
  FsCore& core = *mc.core;
  const uint64_t hostname = walk(core, {"overlay2", kTop, "diff", "etc", "hostname"});
  const uint64_t busybox = walk(core, {"overlay2", kBase, "diff", "bin", "busybox"});
  std::string buf(16, '\0');
  auto out = std::as_writable_bytes(std::span<char>(buf));
  // A store's own read failure is not one of these.
  s.mem.put("overlay2/" + kBase + "/diff/bin/busybox", "");
  CHECK(!core.read(busybox, 0, out).ok());
  CHECK(stats(core)["removed_layer_errors"] == 0);
  // The top layer is removed (a newer catalog without it) and its data then collected.
  Catalog next = s.catalog;
  next.layers.pop_back();
  next.generation = 2;
  s.mem.put(catalog_generation_path(2), next.serialize());
  REQUIRE(core.refresh().ok());
  s.mem.put("overlay2/" + kTop + "/diff/etc/hostname", "");
  for (int i = 0; i < 2; ++i) {
    auto r = core.read(hostname, 0, out);
    REQUIRE(!r.ok());
    CHECK(r.code() == EIO);
  }
  auto j = stats(core);
  CHECK(j["removed_layer_errors"] == 2);
  CHECK(log.lines_with("removed from the store, cannot be read whole").size() == 1);  // once per layer
  CHECK(j["layers"][1]["removed"] == true);
  CHECK(j["layers"][0]["removed"] == false);
  // The layer back in a later catalog: served as any other again.
  Catalog again = s.catalog;
  again.generation = 3;
  s.mem.put(catalog_generation_path(3), again.serialize());
  REQUIRE(core.refresh().ok());
  CHECK(!core.read(hostname, 0, out).ok());
  CHECK(stats(core)["removed_layer_errors"] == 2);
  CHECK(stats(core)["layers"][1]["removed"] == false);
}

TEST_CASE("a store written before store ids that gets one is the same store, and its old catalogs stay old",
          "[fscore]") {
  Store s;
  CapturedLog log;
  Catalog old = catalog_of(s.mem, s.catalog, 3, "", R"({"three":1})");
  Mount mc(s, old);
  FsCore& core = *mc.core;
  // The next write gives the store its id.
  Catalog next = catalog_of(s.mem, old, 4, std::string(32, 'c'), R"({"four":1})");
  CHECK(put_and_refresh(s.mem, core, catalog_generation_path(4), next) == R"({"four":1})");
  CHECK(stats(core)["layers"][1]["removed"] == false);
  CHECK(log.lines_with("made again").empty());
  // An older generation of it, with its id, is old; so is the replaced catalog without one.
  Catalog older = next;
  older.generation = 2;
  CHECK(put_and_refresh(s.mem, core, kCatalogPath, older) == R"({"four":1})");
  Catalog stale = old;
  stale.generation = 35;  // another length than the last one: the memory backend's version is the size
  CHECK(put_and_refresh(s.mem, core, kCatalogPath, stale) == R"({"four":1})");
}

TEST_CASE("an id the mount never gave out gets one answer from every operation", "[fscore]") {
  Store s;
  Mount m(s.mem);
  FsCore& core = *m.core;
  const uint64_t busybox = walk(core, {"overlay2", kBase, "diff", "bin", "busybox"});
  const uint32_t base = ino_slot(busybox);
  std::vector<std::byte> buf(16);
  // Each op starts with the one resolution of its node id, so all of them agree on what an id
  // names: nothing (a fixed id that is no directory, an entry beyond the index) or a slot never
  // handed out.
  for (auto [ino, code] : {std::pair{make_ino(0, 99), ENOENT}, std::pair{make_ino(base, 1u << 30), ENOENT},
                           std::pair{make_ino(1000, 0), ESTALE}}) {
    INFO(ino);
    CHECK(core.getattr(ino).code() == code);
    CHECK(core.lookup(ino, "x").code() == code);
    CHECK(core.readlink(ino).code() == code);
    CHECK(core.readdir(ino, 0, [](const DirItem&, const NodeAttr&) { return true; }).code() == code);
    CHECK(core.getxattr(ino, "user.x").code() == code);
    CHECK(core.listxattr(ino).code() == code);
    CHECK(core.open(ino, O_RDONLY).code() == code);
    CHECK(core.read(ino, 0, buf).code() == code);
  }
}
