// FsCore: the whole read-only filesystem without FUSE. It presents the store as the
// overlay2-shaped tree of docs/DESIGN.md section 3:
//
//   /image/...                          the store's image/ tree (docker metadata)
//   /overlay2/<cache-id>/diff/...       each layer's files
//   /overlay2/<cache-id>/link, lower    the layer's docker link id and lower chain
//   /overlay2/l/<link> -> ../<cache-id>/diff
//
// Every metadata answer comes from the catalog and the layer indexes in memory, read through a
// cache::MetaSource. Only the catalog and the image/ tree's index are read at open; a layer's
// index is read on the first operation under its diff/ (a host reads only the indexes of the
// layers it uses), and a layer whose index cannot be read answers EIO there until a later access
// reads it, while every other node keeps working. File content is read chunk by chunk through
// the cache::ChunkFetcher. FsCore never sees where the store lives.
//
// Node ids are derived from (slot, entry): slot 0 holds the fixed directories, each layer and each
// version of the image/ tree gets its own slot in the order it was first seen, so ids are stable
// for the life of the mount. A hard link group shares one id. New layers in the catalog appear
// without a remount (a background thread checks the catalog once a second).
//
// Removed layers: a layer a newer catalog no longer names (`extrafs rm`, or a store made again
// from scratch) stays served from what this host has, its index in memory or kept and its cached
// chunks, until the mount ends; it is marked removed in statistics(). A read of it that fails (its
// data collected by `extrafs gc`) answers EIO and counts in removed_layer_errors, logged once per
// layer. A catalog with another store id than the one loaded (the store was made again) is loaded
// whatever its generation; a store id this mount moved away from is never loaded again.
//
// FsCore keeps the file system operations, each of which starts with one resolve(ino), and
// composes the parts that do the rest (each header says what it owns, which threads call it and
// its locks):
//   StoreView        fs/store_view.h         the catalog, its refresh thread, the slots, removed layers
//   IndexLoader      fs/index_loader.h       reading indexes; lazy layer indexes and their retry
//   WholeFileCopier  fs/whole_file_copier.h  passthrough's whole-file copies and their thread
//   Readahead        fs/readahead.h          sequential streaks, the readahead window
//   OrderedPrefetch  fs/ordered_prefetch.h   the prefixes of layers published with --order
//
// Errors are returned as Result with a positive errno; nothing here throws or touches FUSE.
// Thread-safety: every method may be called concurrently from the FUSE worker threads. FsCore's
// own lock is record_mu_; no FsCore lock is held while a part is called, and no part calls back
// into FsCore. The order in which the locks of the fs/ side may be nested (left before right,
// never the reverse):
//   StoreView::refresh_mu_ -> StoreView::mu_ -> InodeTable::slots_mu_
//   StoreView::change_mu_ -> (set_on_listing_change's callback: the kernel's invalidations);
//                            never together with refresh_mu_
//   PassthroughShim314::mu_ -> WholeFileCopier::mu_      (set_passthrough at INIT)
//   FsCore::record_mu_ -> (on_first_open: the trace write)
// LazyIndex::mu_, Readahead::mu_, OrderedPrefetch::mu_ and the InodeTable shards are leaves.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "cache/chunk_fetcher.h"
#include "cache/meta_source.h"
#include "cache/whole_files.h"
#include "common/posix_file.h"
#include "common/result.h"
#include "format/catalog.h"
#include "format/layer_index.h"
#include "fs/index_loader.h"
#include "fs/inode_table.h"
#include "fs/ordered_prefetch.h"
#include "fs/readahead.h"
#include "fs/store_view.h"
#include "fs/whole_file_copier.h"

namespace extrafs::fs {

inline constexpr uint64_t kRootIno = 1;
inline constexpr double kLongTimeout = 86400.0;  // immutable content
inline constexpr double kShortTimeout = 1.0;     // names that can appear (new layers, new images)

struct NodeAttr {
  struct stat st {};
  double attr_timeout = kLongTimeout;
  double entry_timeout = kLongTimeout;
  // False in a readdir item whose attributes are not known yet (a layer's diff/ whose index is
  // not loaded): only st_ino and the type in st_mode are set, and the kernel gets no node for it.
  bool known = true;
};

struct DirItem {
  std::string_view name;
  uint64_t ino = 0;
  uint32_t mode = 0;         // S_IF* type bits, for d_type
  uint64_t next_offset = 0;  // offset to pass to continue after this item
};

struct FsCoreOptions {
  // Called once per file of a layer, on its first open, with the layer's cache-id, the file's
  // index entry and its path in the layer (empty = off). Called from FUSE worker threads, one
  // call at a time and in first-open order (under FsCore's lock), so it must not block for long.
  // Writing traces is the store's job (store/trace.h).
  std::function<void(std::string_view cache_id, uint32_t entry, std::string_view path)> on_first_open;
  // A background thread re-reads the catalog this often (0 = never; call refresh() instead).
  // File system calls never wait for it, so a dead server cannot stall a lookup.
  double refresh_interval_s = 1.0;
  // Whether a refresh first looks up the next catalog generation (catalog.d/<N+1>): the way past
  // an NFS server's attribute cache, which can hide a replaced catalog for a minute. HTTP sources
  // need it not (the catalog's ETag changes with it, and proxies revalidate it as asked), and
  // there it would cost the origin a request per host and interval: squid does not cache the
  // 404 of a generation not written yet, even one sent with a max-age (measured, squid 5.7).
  bool probe_generations = true;
  // A layer index that failed to load answers EIO without a new attempt for this long; the first
  // access after that tries again (see IndexLoader).
  double index_retry_s = 2.0;
  // The clock of index_retry_s (null: std::chrono::steady_clock::now). Unit tests pass their own.
  IndexLoader::Clock now;
  // Local whole-file copies for the kernel to read by itself (null = none), used once the kernel
  // agreed to passthrough (set_passthrough): a file of at least whole_file_min bytes gets one,
  // made in the background, when a read reaches its end and every one of its chunks is cached;
  // open() then hands it out once the copier thread (fs/whole_file_copier.h) has hashed it (a few seconds after
  // writing it, or after the first open of a copy an earlier mount left), so that no open waits
  // for a hash.
  cache::WholeFiles* whole_files = nullptr;
  uint64_t whole_file_min = uint64_t{8} << 20;
};

// Per layer, for the statistics.
struct LayerStatistics {
  std::string cache_id;
  uint64_t bytes_total = 0;   // its files' content (the catalog's number until its index is here)
  uint64_t bytes_cached = 0;  // of that, held on this host
  bool index_loaded = false;  // its index is in memory or kept on this host
  bool removed = false;       // the newest catalog loaded does not name it
};

// What FsCore::statistics() gathers: its own counters, the fetcher's, the whole-file copies'.
struct FsStatistics {
  cache::FetcherStats fetcher;
  uint64_t cache_bytes = 0;                          // ChunkFetcher::cached_bytes
  std::optional<cache::WholeFileStats> whole_files;  // with whole-file copies
  uint64_t bytes_served = 0;
  uint64_t open_requests = 0;
  uint64_t opendir_requests = 0;
  bool passthrough = false;
  uint64_t passthrough_opens = 0;
  uint64_t removed_layer_errors = 0;
  uint64_t inodes = 0;                  // nodes the kernel holds
  std::string source;                   // MetaSource::describe
  std::vector<LayerStatistics> layers;  // in the order first seen
};

class FsCore {
 public:
  // Loads the catalog and the image/ tree's index through `meta` and serves file content through
  // `fetcher` (both must outlive the core; one ChunkFetcher may be both). Fails with a one-line
  // message if the store has no catalog or its image/ index is missing or corrupt. Layer indexes
  // are loaded later, on first use.
  static Result<std::unique_ptr<FsCore>> open(cache::ChunkFetcher& fetcher, cache::MetaSource& meta,
                                              FsCoreOptions options);
  ~FsCore();
  // The file system is no longer served (its FUSE session ended): the refresh and copier threads
  // stop, and the store calls in progress are cut short (ChunkFetcher::interrupt), so that a
  // refresh waiting on a store that does not answer does not hold up the daemon's exit for up
  // to the timeout of each call it makes. Nothing is read from the store afterwards.
  void stop();

  Result<NodeAttr> lookup(uint64_t parent, std::string_view name);
  // How long the kernel may cache "no such name" in `parent`.
  double negative_timeout(uint64_t parent) const;
  Result<NodeAttr> getattr(uint64_t ino);
  Result<std::string> readlink(uint64_t ino);
  // Emits the entries of directory `ino` starting at `offset` (0 = the start) until `emit`
  // returns false. No "." or "..". An item whose attributes would need a layer index not yet
  // loaded (a layer's diff/) comes with NodeAttr::known false.
  Status readdir(uint64_t ino, uint64_t offset, const std::function<bool(const DirItem&, const NodeAttr&)>& emit);
  Result<std::string> getxattr(uint64_t ino, std::string_view name);
  Result<std::vector<std::string>> listxattr(uint64_t ino);
  // Checks that `ino` may be opened with `flags` (EROFS for any write access, EISDIR, ...) and
  // records the first open (on_first_open). Returns the file's local whole-file copy, open
  // read-only and checked (see cache::WholeFiles), when passthrough is on and it has one; else an
  // invalid Fd. The adapter counts `passthrough_opens` once the kernel took it.
  Result<Fd> open(uint64_t ino, int flags);
  // Whether open() does anything the kernel cannot do alone: only when first opens are recorded
  // (on_first_open). Otherwise the FUSE adapter lets the kernel open files without asking.
  bool wants_opens() const { return static_cast<bool>(options_.on_first_open); }
  void count_passthrough_open() { passthrough_opens_.fetch_add(1, std::memory_order_relaxed); }
  // Called by the adapter once, when the kernel's INIT is answered (before the first request
  // after it): `on` if the kernel agreed to passthrough. Only then are copies made, checked and
  // handed out; otherwise the copies the cache holds are removed in the background (nothing
  // would read them, and they would take room from the chunks).
  void set_passthrough(bool on);
  // Reads up to out.size() bytes at `offset`; short only at end of file. If any chunk the
  // request touches cannot be served, the whole request fails (EIO) and nothing is returned: a
  // short count would read as end of file to the kernel, which then shrinks the file's size.
  Result<size_t> read(uint64_t ino, uint64_t offset, std::span<std::byte> out);
  // One part of a read's answer: `bytes`, inside memory that `keep` holds alive (null: static).
  struct ReadPiece {
    std::shared_ptr<const void> keep;
    std::span<const std::byte> bytes;
  };
  // read() without the copy: the answer (up to `size` bytes at `offset`) as pieces that point
  // into the chunks themselves, for the adapter to hand to the kernel as they are. `pieces` is
  // replaced; on error it is left empty. Returns the total length.
  Result<size_t> read_pieces(uint64_t ino, uint64_t offset, size_t size, std::vector<ReadPiece>& pieces);
  struct statvfs statfs();

  InodeTable& inodes() { return inodes_; }
  // Called by the adapter when the kernel forgets nodes, so superseded image/ trees are released.
  void forget(uint64_t ino, uint64_t n);
  // Loads newer catalogs now (StoreView::refresh): what the refresh thread does every
  // refresh_interval_s, for a caller that set it to 0.
  Status refresh();
  // The mount's numbers, for the statistics (fs/stats_json.h makes `extrafs stats --json` of
  // them). Never reads the store: per layer what the loaded or locally kept index says.
  FsStatistics statistics();
  // The whole content of the regular file at `path` ('/'-separated components from the root of
  // the mount, e.g. "image/overlay2/repositories.json"), for the daemon's own use (the image
  // names of its statistics): from the caches, else the store, through
  // ChunkFetcher::get_own, so that it counts in own_bytes_fetched and in none of the readers'
  // counters. ENOENT/ENOTDIR/EISDIR as a lookup or read would give, EIO if a chunk cannot be
  // read, EFBIG past `max` bytes; every message names `path`.
  Result<std::string> read_path(std::string_view path, uint64_t max);
  // The digest of the index of the image/ tree served now (nullopt: the store has none): names
  // one version of that tree, for what is worked out once per version (the image names of the
  // statistics). From memory.
  std::optional<Digest128> image_tree() const;
  uint64_t bytes_served() const { return bytes_served_; }
  // Counts an OPEN request from the kernel (`open_requests` in stats).
  void count_open_request() { open_requests_.fetch_add(1, std::memory_order_relaxed); }
  // Counts an OPENDIR request (`opendir_requests`).
  void count_opendir_request() { opendir_requests_.fetch_add(1, std::memory_order_relaxed); }
  // Called (from the refresh thread, with no lock held but StoreView::change_mu_) with the directories
  // whose listings may have changed, each time a newer catalog was loaded: the adapter tells the
  // kernel to drop what it cached of them. Returns once no call of the previous `f` is running;
  // never waits for the store (a refresh waiting on it does not hold what this takes).
  void set_on_listing_change(std::function<void(std::span<const uint64_t>)> f);
  size_t layer_count();

 private:
  FsCore(cache::ChunkFetcher& fetcher, cache::MetaSource& meta, FsCoreOptions options);
  // The index of slot `s`: the image/ tree's, or the layer's, read on first use
  // (IndexLoader::get).
  Result<std::shared_ptr<const format::LayerIndex>> index_of(const Slot& s);
  // The index of `s` if loaded already (null otherwise); never reads anything.
  static std::shared_ptr<const format::LayerIndex> loaded_index(const Slot& s);
  // For statistics: the loaded index, or the kept copy in the block cache (then installed),
  // never the store; null if neither.
  std::shared_ptr<const format::LayerIndex> local_index(const Slot& s);
  // What a node id names, found once at the start of every operation (squashfuse's
  // sqfs_ll_iget is the model): its slot and, for an entry of an index, the index (held, so
  // that a newer image/ tree cannot release it mid-operation) and the entry.
  struct Node {
    uint64_t ino = 0;
    uint32_t slot_no = 0;              // 0: one of the fixed directories (root, overlay2, l)
    uint32_t local = 0;                // which node of the slot (see fs_core.cc: kLayerDir ... kEntryBase)
    std::shared_ptr<const Slot> slot;  // null for the fixed directories
    std::shared_ptr<const format::LayerIndex> index;  // set only for an entry of an index
    uint32_t entry = 0;                               // that entry
  };
  // The one resolution of `ino`: ENOENT for an id that names nothing (a fixed id that is not a
  // directory, a layer's link or lower it has not, an entry beyond its index), ESTALE for a slot
  // released (a superseded image/ tree), EIO while the layer's index cannot be loaded (see
  // index_of). Loads the layer's index on first use.
  Result<Node> resolve(uint64_t ino);
  // The attributes of a resolved node.
  NodeAttr node_attr(const Node& n) const;
  NodeAttr entry_attr(uint32_t slot, const format::LayerIndex& idx, uint32_t entry) const;
  NodeAttr synthetic_attr(uint64_t ino, uint32_t mode, uint64_t size, uint32_t nlink) const;
  void record_access(uint32_t slot_no, const Slot& s, const format::LayerIndex& idx, uint32_t entry)
      EXCLUDES(record_mu_);

  cache::ChunkFetcher& fetcher_;
  cache::MetaSource& meta_;
  FsCoreOptions options_;
  IndexLoader indexes_;
  InodeTable inodes_;
  struct timespec start_time_ {};

  // The catalog and the slots, kept current by its refresh thread. Declared after indexes_ and
  // inodes_, which it uses, and reset first in the destructor.
  std::unique_ptr<StoreView> view_;

  std::atomic<uint64_t> bytes_served_{0};
  std::atomic<uint64_t> open_requests_{0};
  std::atomic<uint64_t> opendir_requests_{0};
  std::atomic<uint64_t> passthrough_opens_{0};
  std::atomic<bool> passthrough_{false};

  Readahead readahead_;
  // Whole-file copies for passthrough (null without options_.whole_files).
  std::unique_ptr<WholeFileCopier> copier_;

  Mutex record_mu_;
  std::unordered_set<uint64_t> recorded_ GUARDED_BY(record_mu_);

  // Layers published with --order: their prefix is fetched on the first lookup of diff/ or of
  // anything under it, or the first read under it.
  OrderedPrefetch ordered_{fetcher_};
};

}  // namespace extrafs::fs
