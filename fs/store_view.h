// StoreView: what the mount knows of the store's catalog, kept current. It owns the catalog's
// load at mount and its refresh (catalog generations, store ids, removed layers; see
// refresh()), the table of slots the node ids are made of (one per layer and per version of the
// image/ tree, in the order first seen, never reused: ids stay stable for the life of the mount),
// the refresh thread, and the callback told when a newer catalog was loaded.
//
// Removed layers: a layer a newer catalog no longer names (`extrafs rm`, or a store made again
// from scratch) keeps its slot until the mount ends, marked removed (layers()); a read of it that
// fails is counted and logged once per layer (read_failed()). A catalog with another store id
// than the one loaded is loaded whatever its generation; a store id this view moved away from is
// never loaded again.
//
// Threads: slot lookups (slot(), image_slot(), layer_by_*(), layers()) from every FUSE worker;
// refresh() from the refresh thread (or a test, with refresh_interval_s 0); set_on_change() from
// the FUSE adapter (at mount and at unmount).
// Locks, in the order they may be nested (never the reverse):
//   refresh_mu_ -> mu_ -> InodeTable::slots_mu_ (load() asks whether the kernel still refers to
//   a superseded image/ tree)
//   change_mu_ is held only while the change callback runs, never together with refresh_mu_,
//   which is held while the store is waited on: set_on_change() never waits for the store.
// mu_ is never held across I/O (the image/ index is read before it is taken).
// The MetaSource, the IndexLoader and the InodeTable must outlive the view.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cache/meta_source.h"
#include "common/result.h"
#include "common/thread_annotations.h"
#include "format/catalog.h"
#include "fs/index_loader.h"
#include "fs/inode_table.h"

namespace extrafs::fs {

// One slot of node ids: a layer (its catalog record and its index, read on first use) or one
// version of the image/ tree (its index, read with the catalog that named it). Immutable once
// installed, except for what LazyIndex guards itself.
struct Slot {
  bool is_image = false;
  format::CatalogLayer layer;                       // layers only
  std::shared_ptr<const format::LayerIndex> index;  // image/ slots only
  std::shared_ptr<LazyIndex> lazy;                  // layers only
};

struct StoreViewOptions {
  // The refresh thread calls refresh() this often (0 = no thread: call refresh() instead).
  double refresh_interval_s = 1.0;
  // See FsCoreOptions::probe_generations.
  bool probe_generations = true;
};

class StoreView {
 public:
  // Loads the catalog through `meta` (else the copy an earlier mount kept, with a warning) and
  // the image/ tree's index; fails with a one-line message if there is neither catalog nor kept
  // copy, or the image/ index is missing or corrupt. Layer indexes are not read. Starts the
  // refresh thread.
  static Result<std::unique_ptr<StoreView>> open(cache::MetaSource& meta, IndexLoader& indexes, InodeTable& inodes,
                                                 StoreViewOptions options);
  ~StoreView();  // stop(), then joins the refresh thread
  StoreView(const StoreView&) = delete;
  StoreView& operator=(const StoreView&) = delete;

  // The refresh thread ends after the refresh in progress (which may still wait on the store).
  void stop() EXCLUDES(stop_mu_);

  // Slot `n` (null if none or released).
  std::shared_ptr<const Slot> slot(uint32_t n) const EXCLUDES(mu_);
  // The slot of the image/ tree served now (0: the store has none).
  uint32_t image_slot() const EXCLUDES(mu_);
  // The slot of the layer with this cache-id, or with this link id (0: none).
  uint32_t layer_by_cache_id(std::string_view cache_id) const EXCLUDES(mu_);
  uint32_t layer_by_link(std::string_view link) const EXCLUDES(mu_);
  struct LayerSlot {
    uint32_t slot_no;
    std::shared_ptr<const Slot> slot;
    bool removed;  // the newest catalog loaded does not name it (or names another index)
  };
  // Every layer slot, in the order first seen.
  std::vector<LayerSlot> layers() const EXCLUDES(mu_);
  size_t layer_count() const EXCLUDES(mu_);
  // The digest of the image/ tree's index served now (nullopt: none).
  std::optional<Digest128> image_tree() const EXCLUDES(mu_);
  // The kernel no longer refers to any node of slot `n`: a superseded image/ tree is released.
  void release_if_superseded(uint32_t n) EXCLUDES(mu_);

  // A read of slot `sn` failed with `e`: if the store no longer names that layer, counted in
  // removed_layer_errors() and logged once per layer. Returns `e`.
  Error read_failed(uint32_t sn, Error e) EXCLUDES(mu_);
  uint64_t removed_layer_errors() const { return removed_layer_errors_.load(std::memory_order_relaxed); }

  // Loads newer catalogs: first each next generation (extrafs/catalog.d/<N+1>, looked up by a
  // name never looked up before, so an NFS server's attribute cache cannot hide it), then
  // extrafs/catalog if its version differs from the one last loaded (stores without
  // generations); a catalog of an older generation than the loaded one is never loaded, unless
  // it is of another store (see above). Adds new layers and the new image/ tree. A version or
  // generation counts as loaded only once it was read from the store (not a kept copy) and
  // every new layer and image/ index in it was added; otherwise the error is returned and the
  // next call tries again. New layers' indexes are not read here. One refresh at a time.
  Status refresh() EXCLUDES(refresh_mu_, change_mu_);
  // `f` is called (from the refresh, with no lock of this view held but change_mu_) each time a
  // newer catalog was loaded. Returns once no call of the previous `f` is running; never waits
  // for the store.
  void set_on_change(std::function<void()> f) EXCLUDES(change_mu_);

 private:
  StoreView(cache::MetaSource& meta, IndexLoader& indexes, InodeTable& inodes, StoreViewOptions options);
  // Adds every layer of `catalog` not yet known and its image/ tree if new, and marks the
  // layers it does not name removed. Initially a bad image/ index fails the load; later the
  // layers are installed anyway and the image/ problem is returned, so the caller tries the
  // catalog again. Reads the image/ index without mu_.
  Status load(const format::Catalog& catalog, bool initial) EXCLUDES(mu_);
  // Whether `c` is of the store loaded: the same store id, or the loaded catalog has none and
  // `c` is a later generation (the first write since store ids).
  bool same_store(const format::Catalog& c) const REQUIRES(refresh_mu_);
  // Whether `c` moves this view on: a catalog of another store than the one loaded (never one
  // it left), or a later generation of the same.
  bool is_news(const format::Catalog& c) const REQUIRES(refresh_mu_);
  // Records `c` as the catalog loaded (its generation and store id; a change of store id is
  // logged).
  void loaded_catalog(const format::Catalog& c) REQUIRES(refresh_mu_);
  // refresh() without its lock and its report.
  Status refresh_locked() REQUIRES(refresh_mu_);
  // Loads the catalog generations after generation_ that the store has.
  Status follow_generations() REQUIRES(refresh_mu_);
  void refresh_loop() EXCLUDES(stop_mu_);
  bool stopping() EXCLUDES(stop_mu_);

  cache::MetaSource& meta_;
  IndexLoader& indexes_;
  InodeTable& inodes_;
  const StoreViewOptions options_;
  const std::string catalog_cache_name_;

  mutable SharedMutex mu_;
  std::vector<std::shared_ptr<const Slot>> slots_ GUARDED_BY(mu_);  // [0] unused (the fixed directories)
  std::vector<uint32_t> layer_slots_ GUARDED_BY(mu_);               // in the order first seen
  std::unordered_map<std::string, uint32_t> by_cache_id_ GUARDED_BY(mu_);
  std::unordered_map<std::string, uint32_t> by_link_ GUARDED_BY(mu_);
  uint32_t image_slot_ GUARDED_BY(mu_) = 0;
  // Layer slots the newest catalog loaded does not name (or names with another index): served
  // from what this host has. removed_logged_: those whose failed read was logged already.
  std::unordered_set<uint32_t> removed_ GUARDED_BY(mu_);
  std::unordered_set<uint32_t> removed_logged_ GUARDED_BY(mu_);

  Mutex refresh_mu_ ACQUIRED_BEFORE(mu_);                                     // one refresh at a time
  cache::MetaVersion catalog_version_ GUARDED_BY(refresh_mu_){};              // the store's catalog as last loaded
  std::optional<cache::MetaVersion> failed_version_ GUARDED_BY(refresh_mu_);  // the version whose reload last failed
  uint64_t generation_ GUARDED_BY(refresh_mu_) = 0;         // of the newest catalog loaded whole (0: none has one)
  uint64_t failed_generation_ GUARDED_BY(refresh_mu_) = 0;  // the generation whose load last failed
  std::string store_id_ GUARDED_BY(refresh_mu_);            // of the catalog loaded ("": written without one)
  std::unordered_set<std::string> left_store_ids_ GUARDED_BY(refresh_mu_);  // stores this view moved away from

  Mutex change_mu_;  // held while on_change_ runs
  std::function<void()> on_change_ GUARDED_BY(change_mu_);

  std::atomic<uint64_t> removed_layer_errors_{0};

  Mutex stop_mu_;
  CondVar stop_cv_;
  bool stopping_ GUARDED_BY(stop_mu_) = false;
  std::thread refresher_;  // last: started once everything above is built
};

}  // namespace extrafs::fs
