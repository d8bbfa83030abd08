#include "fs/fs_core.h"

#include "common/str_util.h"
#include "fs/chunk_ref.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <set>
#include <cstring>

namespace extrafs::fs {

namespace {

constexpr uint64_t kOverlayIno = 2;  // /overlay2
constexpr uint64_t kLinksIno = 3;    // /overlay2/l
// Local ids inside a layer slot.
constexpr uint32_t kLayerDir = 0;     // /overlay2/<id>
constexpr uint32_t kLinkFile = 1;     // /overlay2/<id>/link
constexpr uint32_t kLowerFile = 2;    // /overlay2/<id>/lower
constexpr uint32_t kLinkSymlink = 3;  // /overlay2/l/<link>
constexpr uint32_t kEntryBase = 16;   // index entry e has local id kEntryBase + e

Error noent() { return make_error(ENOENT, "no such entry"); }

// Chunks offered to the fetcher to read along with a missing one (see ChunkFetcher::get).
constexpr size_t kMaxFollowing = 8;

// What a hole reads as (never written: the kernel backs it with its zero page).
const std::byte kZeros[1 << 20] = {};

// The check read_meta runs on a catalog: it parses it and keeps the result in `out`, so that a
// catalog (up to kMaxCatalogSize of JSON) is parsed once, not once to check and once to use.
std::function<Status(const std::string&)> parse_catalog_into(std::optional<Catalog>* out) {
  return [out](const std::string& text) -> Status {
    auto c = Catalog::parse(text);
    if (!c.ok()) return c.error();
    *out = std::move(c).value();
    return ok_status();
  };
}

std::string link_target(const std::string& cache_id) { return "../" + cache_id + "/diff"; }


}  // namespace

FsCore::FsCore(cache::ChunkFetcher& fetcher, cache::MetaSource& meta, FsCoreOptions options)
    : fetcher_(fetcher), meta_(meta), options_(std::move(options)), indexes_(meta, options_.index_retry_s, options_.now) {
  clock_gettime(CLOCK_REALTIME, &start_time_);
  slots_.push_back(nullptr);
}

void FsCore::stop() {
  {
    std::lock_guard lock(stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (copier_) copier_->stop();
  fetcher_.interrupt();
}

FsCore::~FsCore() {
  {
    std::lock_guard lock(stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (refresher_.joinable()) refresher_.join();
  copier_.reset();
}

void FsCore::refresh_loop() {
  auto interval = std::chrono::duration<double>(options_.refresh_interval_s);
  std::unique_lock lock(stop_mu_);
  while (!stop_cv_.wait_for(lock, interval, [&] { return stopping_; })) {
    lock.unlock();
    if (auto st = refresh(); !st.ok()) spdlog::debug("catalog refresh: {}", st.error().message);
    lock.lock();
  }
}

Result<std::unique_ptr<FsCore>> FsCore::open(cache::ChunkFetcher& fetcher, cache::MetaSource& meta,
                                             FsCoreOptions options) {
  std::unique_ptr<FsCore> core(new FsCore(fetcher, meta, std::move(options)));
  core->catalog_cache_name_ = catalog_cache_name(meta.describe());
  // The version is taken before the read: a catalog replaced in between is simply loaded again
  // by the next refresh.
  auto version = meta.meta_version(kCatalogPath);
  std::optional<Catalog> catalog;
  auto got = meta.read_meta(kCatalogPath, core->catalog_cache_name_, kMaxCatalogSize, parse_catalog_into(&catalog));
  const bool from_store = got.ok();
  if (!from_store) {
    // The store unreachable, or its catalog refused: the copy kept by an earlier mount serves
    // meanwhile, if it is good.
    auto kept = meta.kept_meta(core->catalog_cache_name_);
    if (kept.ok() && parse_catalog_into(&catalog)(*kept).ok()) {
      spdlog::warn("{}: {}; serving the cached copy", kCatalogPath, got.error().message);
    } else {
      return store_catalog(got, meta.describe()).error();
    }
  }
  EXTRAFS_CHECK_STATUS(core->load(*catalog, /*initial=*/true));
  // A kept copy is not the store's version: leaving it unseen makes the first refresh that can
  // read the store load it.
  if (from_store && version.ok()) core->catalog_version_ = *version;
  core->generation_ = catalog->generation;
  core->store_id_ = catalog->store_id;
  if (core->options_.refresh_interval_s > 0) core->refresher_ = std::thread([c = core.get()] { c->refresh_loop(); });
  if (core->options_.whole_files)
    core->copier_ = std::make_unique<WholeFileCopier>(fetcher, *core->options_.whole_files, core->options_.whole_file_min);
  return core;
}

// Adds every layer of `catalog` not yet known (their indexes are read on first use, see
// index_of) and loads its image/ index if new, then installs them. Initially a bad image/ index
// fails the load. Later (a refresh) the layers are installed anyway and the image/ problem is
// reported as the error, so that the caller tries the catalog again.
Status FsCore::load(const Catalog& catalog, bool initial) {
  std::optional<Error> problem;
  std::vector<std::shared_ptr<Slot>> new_layers;
  std::shared_ptr<Slot> new_image;
  // A layer whose lower chain names links the catalog does not serve is not served itself: its
  // `lower` would lead overlayfs elsewhere.
  std::set<std::string> refused;
  for (auto& [id, why] : unchained_layers(catalog)) {
    spdlog::warn("not serving layer {}: {}", id, why);
    refused.insert(id);
  }
  {
    std::shared_lock lock(mu_);
    for (const auto& l : catalog.layers) {
      if (by_cache_id_.count(l.cache_id) || refused.count(l.cache_id)) continue;
      auto s = std::make_shared<Slot>();
      s->layer = l;
      s->lazy = std::make_shared<LazyIndex>(l.cache_id, l.index_digest);
      new_layers.push_back(std::move(s));
    }
    if (catalog.image_index && (image_slot_ == 0 || !(slots_[image_slot_]->index->digest() == *catalog.image_index))) {
      new_image = std::make_shared<Slot>();
      new_image->is_image = true;
    }
  }
  if (new_image) {
    auto idx = indexes_.load(image_index_path(*catalog.image_index), "image-" + catalog.image_index->hex(),
                             *catalog.image_index, "the image/ tree");
    if (!idx.ok()) {
      if (initial) return idx.error();
      problem = make_error(EIO, "keeping the previous image/ tree: " + idx.error().message);
      new_image.reset();
    } else {
      new_image->index = *idx;
    }
  }
  std::unique_lock lock(mu_);
  for (auto& s : new_layers) {
    if (by_cache_id_.count(s->layer.cache_id)) continue;
    uint32_t n = static_cast<uint32_t>(slots_.size());
    by_cache_id_[s->layer.cache_id] = n;
    if (!s->layer.link.empty()) by_link_.emplace(s->layer.link, n);
    layer_slots_.push_back(n);
    slots_.push_back(std::move(s));
  }
  if (new_image) {
    uint32_t old = image_slot_;
    image_slot_ = static_cast<uint32_t>(slots_.size());
    slots_.push_back(std::move(new_image));
    // The superseded tree stays while the kernel still refers to any of its nodes.
    if (old && inodes_.slot_nodes(old) == 0) slots_[old] = nullptr;
  }
  // A layer this catalog does not name, or names with another index (a store made again), keeps
  // its slot: the kernel, overlayfs and open files may refer to it, and this host may have all of
  // it that a container needs.
  std::unordered_map<std::string_view, const Digest128*> named;
  for (const auto& l : catalog.layers) named.emplace(l.cache_id, &l.index_digest);
  for (uint32_t n : layer_slots_) {
    const CatalogLayer& l = slots_[n]->layer;
    auto it = named.find(l.cache_id);
    if (it == named.end() || !(*it->second == l.index_digest)) {
      if (removed_.insert(n).second)
        spdlog::info("layer {} {}; served from what this host has until unmounted", l.cache_id,
                     it == named.end() ? "is no longer in the store's catalog" : "has another index in the store now");
    } else if (removed_.erase(n)) {
      removed_logged_.erase(n);
      spdlog::info("layer {} is in the store's catalog again", l.cache_id);
    }
  }
  catalog_ = catalog;
  if (problem) return *problem;
  return ok_status();
}

Status FsCore::follow_generations() {
  // Bounded per tick; a store that far ahead is caught up with on the next ticks.
  constexpr int kMaxSteps = 64;
  for (int step = 0; step < kMaxSteps && !stopping(); ++step) {
    const uint64_t next = generation_ + 1;
    const std::string path = catalog_generation_path(next);
    if (!meta_.meta_version(path).ok()) return ok_status();  // not published (yet)
    Status st = [&]() -> Status {
      // A generation that was refused (not a regular file, too large, corrupt) is not read again
      // until it changes: read_meta remembers it.
      std::optional<Catalog> catalog;
      EXTRAFS_CHECK_STATUS(meta_.read_meta(path, catalog_cache_name_, kMaxCatalogSize, parse_catalog_into(&catalog)));
      if (catalog->generation != next)
        return make_error(EBADMSG, fmt::format("{} holds generation {}", path, catalog->generation));
      if (!is_news(*catalog))
        return make_error(ESTALE, fmt::format("{} is of store {}, which this mount left", path, catalog->store_id));
      EXTRAFS_CHECK_STATUS(load(*catalog, /*initial=*/false));
      loaded_catalog(*catalog);
      return ok_status();
    }();
    if (!st.ok()) {
      if (failed_generation_ != next) spdlog::warn("catalog generation {} not loaded, will retry: {}", next, st.error().message);
      failed_generation_ = next;
      return st;
    }
    spdlog::info("catalog generation {} loaded: {} layers", next, layer_count());
  }
  return ok_status();
}

bool FsCore::stopping() {
  std::lock_guard lock(stop_mu_);
  return stopping_;
}

bool FsCore::same_store(const Catalog& c) const {
  // A catalog written before store ids gets one at its next write, a later generation.
  return c.store_id == store_id_ || (store_id_.empty() && (generation_ == 0 || c.generation > generation_));
}

bool FsCore::is_news(const Catalog& c) const {
  if (!same_store(c)) return !left_store_ids_.count(c.store_id);
  return generation_ == 0 || c.generation > generation_;
}

void FsCore::loaded_catalog(const Catalog& c) {
  if (c.store_id != store_id_) {
    // Its generations count from 1 again: the one loaded says nothing about them.
    if (!same_store(c))
      spdlog::warn("the store was made again (store id {} instead of {}): its catalog generation {} loaded as new; "
                   "layers it no longer has are served from what this host has",
                   c.store_id.empty() ? "none" : c.store_id, store_id_.empty() ? "none" : store_id_, c.generation);
    // Either way a catalog without the new id is an old one from now on (a server may still
    // serve the replaced file).
    left_store_ids_.insert(store_id_);
    store_id_ = c.store_id;
  }
  generation_ = c.generation;
}

Status FsCore::refresh() {
  Status st = ok_status();
  bool newer = false;
  {
    std::lock_guard guard(refresh_mu_);
    const uint64_t generation = generation_;
    const cache::MetaVersion version = catalog_version_;
    st = refresh_locked();
    newer = generation_ != generation || catalog_version_ != version;
  }
  // Something newer was loaded: the directories that list layers may list others now. Told
  // without refresh_mu_, which is held while the store is waited on: the adapter's
  // set_on_listing_change() at unmount never waits for the store.
  if (newer) {
    std::lock_guard lock(listing_mu_);
    static constexpr uint64_t kListings[] = {kRootIno, kOverlayIno, kLinksIno};
    if (on_listing_change_) on_listing_change_(kListings);
  }
  return st;
}

Status FsCore::refresh_locked() {
  Status followed = generation_ > 0 && options_.probe_generations ? follow_generations() : ok_status();
  // Taken before the read: if the catalog is replaced again meanwhile, the next refresh sees a
  // version it has not loaded and reads it (again).
  auto current = meta_.meta_version(kCatalogPath);
  if (!current.ok()) {
    if (!followed.ok()) return followed;
    return current.error();
  }
  const cache::MetaVersion version = *current;
  if (version == catalog_version_) return followed;
  bool loaded = false;
  auto reload = [&]() -> Status {
    std::optional<Catalog> parsed;
    EXTRAFS_CHECK_STATUS(meta_.read_meta(kCatalogPath, catalog_cache_name_, kMaxCatalogSize, parse_catalog_into(&parsed)));
    const Catalog& catalog = *parsed;
    // Loaded already through its generation, or older (an NFS server may still serve a replaced
    // catalog), or of a store this mount left: loading it would bring back an earlier image/ tree.
    if (!is_news(catalog)) return ok_status();
    EXTRAFS_CHECK_STATUS(load(catalog, /*initial=*/false));
    loaded_catalog(catalog);
    loaded = true;
    return ok_status();
  };
  if (auto st = reload(); !st.ok()) {
    // The version stays unseen, so the next refresh tries again; said once per version, not on
    // every tick.
    if (failed_version_ != version) spdlog::warn("catalog refresh failed, will retry: {}", st.error().message);
    failed_version_ = version;
    return st;
  }
  catalog_version_ = version;
  failed_version_.reset();
  if (loaded) spdlog::info("catalog reloaded: {} layers", layer_count());
  return followed;
}

size_t FsCore::layer_count() {
  std::shared_lock lock(mu_);
  return layer_slots_.size();
}

std::shared_ptr<const FsCore::Slot> FsCore::slot(uint32_t n) const {
  std::shared_lock lock(mu_);
  if (n == 0 || n >= slots_.size()) return nullptr;
  return slots_[n];
}

std::shared_ptr<const LayerIndex> FsCore::loaded_index(const Slot& s) {
  return s.is_image ? s.index : s.lazy->loaded();
}

Result<std::shared_ptr<const LayerIndex>> FsCore::index_of(const Slot& s) {
  if (s.is_image) return s.index;
  return indexes_.get(*s.lazy);
}

std::shared_ptr<const LayerIndex> FsCore::local_index(const Slot& s) {
  return s.is_image ? s.index : indexes_.local(*s.lazy);
}

void FsCore::forget(uint64_t ino, uint64_t n) {
  if (inodes_.forget(ino, n) != 0) return;
  uint32_t s = ino_slot(ino);
  if (s == 0 || inodes_.slot_nodes(s) != 0) return;
  std::unique_lock lock(mu_);
  if (s < slots_.size() && slots_[s] && slots_[s]->is_image && s != image_slot_) slots_[s] = nullptr;
}

NodeAttr FsCore::synthetic_attr(uint64_t ino, uint32_t mode, uint64_t size, uint32_t nlink) const {
  NodeAttr a;
  a.st.st_ino = ino;
  a.st.st_mode = mode;
  a.st.st_nlink = nlink;
  a.st.st_size = static_cast<off_t>(size);
  a.st.st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
  a.st.st_blksize = 4096;
  a.st.st_atim = a.st.st_mtim = a.st.st_ctim = start_time_;
  return a;
}

NodeAttr FsCore::entry_attr(uint32_t slot_no, const LayerIndex& idx, uint32_t entry) const {
  const EntryRecord& e = idx.attr_entry(entry);
  NodeAttr a;
  a.st.st_ino = make_ino(slot_no, kEntryBase + idx.entry(entry).primary);
  a.st.st_mode = e.mode;
  a.st.st_nlink = e.nlink;
  a.st.st_uid = e.uid;
  a.st.st_gid = e.gid;
  a.st.st_rdev = e.rdev;
  a.st.st_size = static_cast<off_t>(e.size);
  a.st.st_blocks = static_cast<blkcnt_t>(e.blocks);
  a.st.st_blksize = 4096;
  a.st.st_atim = {e.atime_sec, e.atime_nsec};
  a.st.st_mtim = {e.mtime_sec, e.mtime_nsec};
  a.st.st_ctim = {e.ctime_sec, e.ctime_nsec};
  return a;
}

Result<FsCore::Node> FsCore::resolve(uint64_t ino) {
  Node n;
  n.ino = ino;
  n.slot_no = ino_slot(ino);
  n.local = ino_local(ino);
  if (n.slot_no == 0) {
    if (ino != kRootIno && ino != kOverlayIno && ino != kLinksIno) return noent();
    return n;
  }
  n.slot = slot(n.slot_no);
  if (!n.slot) return make_error(ESTALE, "stale node");
  if (n.local >= kEntryBase) {
    EXTRAFS_TRY(idx, index_of(*n.slot));
    const uint64_t e = n.local - kEntryBase;
    if (e >= idx->entry_count()) return noent();
    n.index = std::move(idx);
    n.entry = static_cast<uint32_t>(e);
    return n;
  }
  if (n.slot->is_image) return noent();
  const CatalogLayer& l = n.slot->layer;
  switch (n.local) {
    case kLayerDir:
      return n;
    case kLinkFile:
    case kLinkSymlink:
      if (l.link.empty()) return noent();
      return n;
    case kLowerFile:
      if (!l.lower) return noent();
      return n;
    default:
      return noent();
  }
}

NodeAttr FsCore::node_attr(const Node& n) const {
  if (n.index) return entry_attr(n.slot_no, *n.index, n.entry);
  if (n.slot_no == 0) {
    NodeAttr a;
    {
      std::shared_lock lock(mu_);
      if (n.ino == kRootIno) {
        a = synthetic_attr(n.ino, S_IFDIR | 0755, 4096, image_slot_ ? 4 : 3);
      } else if (n.ino == kOverlayIno) {
        a = synthetic_attr(n.ino, S_IFDIR | 0710, 4096, static_cast<uint32_t>(3 + layer_slots_.size()));
      } else {
        a = synthetic_attr(n.ino, S_IFDIR | 0700, 4096, 2);  // kLinksIno
      }
    }
    a.attr_timeout = kShortTimeout;  // a new catalog changes their link counts
    return a;
  }
  const CatalogLayer& l = n.slot->layer;
  switch (n.local) {
    case kLayerDir:
      return synthetic_attr(n.ino, S_IFDIR | 0710, 4096, 3);
    case kLinkFile:
      return synthetic_attr(n.ino, S_IFREG | 0644, l.link.size(), 1);
    case kLowerFile:
      return synthetic_attr(n.ino, S_IFREG | 0644, l.lower->size(), 1);
    default:  // kLinkSymlink (resolve() lets no other through)
      return synthetic_attr(n.ino, S_IFLNK | 0777, link_target(l.cache_id).size(), 1);
  }
}

Result<NodeAttr> FsCore::getattr(uint64_t ino) {
  EXTRAFS_TRY(n, resolve(ino));
  return node_attr(n);
}

double FsCore::negative_timeout(uint64_t parent) const {
  return ino_slot(parent) == 0 ? kShortTimeout : kLongTimeout;
}

Result<NodeAttr> FsCore::lookup(uint64_t parent, std::string_view name) {
  EXTRAFS_TRY(dir, resolve(parent));
  if (dir.index) {
    const LayerIndex& idx = *dir.index;
    if (!idx.is_dir(dir.entry)) return make_error(ENOTDIR, "not a directory");
    if (!dir.slot->is_image) ordered_.touch(dir.slot->layer, idx);
    auto child = idx.lookup(dir.entry, name);
    if (!child) return noent();
    return entry_attr(dir.slot_no, idx, *child);
  }
  // A synthetic directory: find the child's id, then resolve it as any node.
  uint64_t child = 0;
  if (dir.slot_no == 0) {
    std::shared_lock lock(mu_);
    if (parent == kRootIno) {
      if (name == "overlay2") child = kOverlayIno;
      else if (name == "image" && image_slot_) child = make_ino(image_slot_, kEntryBase);
    } else if (parent == kOverlayIno) {
      if (name == "l") {
        child = kLinksIno;
      } else if (auto it = by_cache_id_.find(std::string(name)); it != by_cache_id_.end()) {
        child = make_ino(it->second, kLayerDir);
      }
    } else if (auto it = by_link_.find(std::string(name)); it != by_link_.end()) {  // kLinksIno
      child = make_ino(it->second, kLinkSymlink);
    }
  } else {
    if (dir.local != kLayerDir) return make_error(ENOTDIR, "not a directory");
    if (name == "diff") child = make_ino(dir.slot_no, kEntryBase);
    else if (name == "link") child = make_ino(dir.slot_no, kLinkFile);
    else if (name == "lower") child = make_ino(dir.slot_no, kLowerFile);
  }
  if (!child) return noent();
  EXTRAFS_TRY(n, resolve(child));
  NodeAttr a = node_attr(n);
  if (n.index && n.slot->is_image) {
    a.entry_timeout = kShortTimeout;  // /image: a newer image/ tree may replace it
  } else if (n.index) {
    // The first look at a layer's diff/ (attach checks each layer's; overlayfs resolves its
    // lower directories) starts fetching its ordered prefix: the start-up's files are on
    // their way before the container asks for them.
    ordered_.touch(n.slot->layer, *n.index);
  }
  return a;
}

Result<std::string> FsCore::readlink(uint64_t ino) {
  EXTRAFS_TRY(n, resolve(ino));
  if (n.index) {
    if (!S_ISLNK(n.index->attr_entry(n.entry).mode)) return make_error(EINVAL, "not a symlink");
    return std::string(n.index->target(n.entry));
  }
  if (n.slot_no != 0 && n.local == kLinkSymlink) return link_target(n.slot->layer.cache_id);
  return make_error(EINVAL, "not a symlink");
}

Status FsCore::readdir(uint64_t ino, uint64_t offset, const std::function<bool(const DirItem&, const NodeAttr&)>& emit) {
  EXTRAFS_TRY(dir, resolve(ino));
  if (dir.index) {
    const LayerIndex& idx = *dir.index;
    if (!idx.is_dir(dir.entry)) return make_error(ENOTDIR, "not a directory");
    const EntryRecord& d = idx.entry(dir.entry);
    for (uint64_t i = offset; i < d.child_count; ++i) {
      uint32_t c = static_cast<uint32_t>(d.child_first + i);
      NodeAttr a = entry_attr(dir.slot_no, idx, c);
      DirItem item{idx.name(c), a.st.st_ino, a.st.st_mode & S_IFMT, i + 1};
      if (!emit(item, a)) break;
    }
    return ok_status();
  }
  // Fixed and per-layer directories: build the list, then emit from `offset`.
  std::vector<std::pair<std::string, uint64_t>> items;
  if (dir.slot_no == 0) {
    std::shared_lock lock(mu_);
    if (ino == kRootIno) {
      if (image_slot_) items.emplace_back("image", make_ino(image_slot_, kEntryBase));
      items.emplace_back("overlay2", kOverlayIno);
    } else if (ino == kOverlayIno) {
      items.emplace_back("l", kLinksIno);
      for (uint32_t n : layer_slots_) items.emplace_back(slots_[n]->layer.cache_id, make_ino(n, kLayerDir));
    } else {  // kLinksIno
      for (uint32_t n : layer_slots_)
        if (!slots_[n]->layer.link.empty()) items.emplace_back(slots_[n]->layer.link, make_ino(n, kLinkSymlink));
    }
  } else {
    if (dir.local != kLayerDir) return make_error(ENOTDIR, "not a directory");
    const CatalogLayer& l = dir.slot->layer;
    items.emplace_back("diff", make_ino(dir.slot_no, kEntryBase));
    if (!l.link.empty()) items.emplace_back("link", make_ino(dir.slot_no, kLinkFile));
    if (l.lower) items.emplace_back("lower", make_ino(dir.slot_no, kLowerFile));
  }
  for (uint64_t i = offset; i < items.size(); ++i) {
    // A layer's diff/ whose index is not loaded is listed without attributes (the kernel
    // looks it up when it is used), so that listing a layer directory reads no index.
    if (dir.slot_no != 0 && ino_local(items[i].second) == kEntryBase && !loaded_index(*dir.slot)) {
      NodeAttr a;
      a.st.st_ino = items[i].second;
      a.st.st_mode = S_IFDIR;
      a.known = false;
      DirItem item{items[i].first, items[i].second, S_IFDIR, i + 1};
      if (!emit(item, a)) break;
      continue;
    }
    auto a = getattr(items[i].second);
    if (!a.ok()) continue;
    DirItem item{items[i].first, items[i].second, a->st.st_mode & S_IFMT, i + 1};
    if (!emit(item, *a)) break;
  }
  return ok_status();
}

Result<std::string> FsCore::getxattr(uint64_t ino, std::string_view name) {
  EXTRAFS_TRY(n, resolve(ino));
  if (n.index)
    for (const auto& x : n.index->xattrs(n.entry))
      if (n.index->xattr_name(x) == name) return std::string(n.index->xattr_value(x));
  return make_error(ENODATA, "no such attribute");
}

Result<std::vector<std::string>> FsCore::listxattr(uint64_t ino) {
  EXTRAFS_TRY(n, resolve(ino));
  std::vector<std::string> out;
  if (n.index)
    for (const auto& x : n.index->xattrs(n.entry)) out.emplace_back(n.index->xattr_name(x));
  return out;
}

Result<Fd> FsCore::open(uint64_t ino, int flags) {
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_TRUNC | O_CREAT | O_APPEND)))
    return make_error(EROFS, "read-only file system");
  EXTRAFS_TRY(n, resolve(ino));
  const uint32_t mode = node_attr(n).st.st_mode;
  if (S_ISDIR(mode)) return make_error(EISDIR, "is a directory");
  if (!S_ISREG(mode)) return make_error(EACCES, "not a regular file");
  if (!n.index) return Fd();  // a layer's link or lower file
  if (options_.on_first_open && !n.slot->is_image) record_access(n.slot_no, *n.slot, *n.index, n.entry);
  return copier_ ? copier_->open(n.index, n.entry) : Fd();
}

void FsCore::record_access(uint32_t slot_no, const Slot& s, const LayerIndex& idx, uint32_t entry) {
  uint64_t key = make_ino(slot_no, entry);
  std::lock_guard lock(record_mu_);  // also keeps the callback's lines in first-open order
  if (!recorded_.insert(key).second) return;
  options_.on_first_open(s.layer.cache_id, entry, idx.path_of(entry));
}

Result<size_t> FsCore::read(uint64_t ino, uint64_t offset, std::span<std::byte> out) {
  thread_local std::vector<ReadPiece> pieces;
  EXTRAFS_TRY(n, read_pieces(ino, offset, out.size(), pieces));
  size_t done = 0;
  for (const auto& p : pieces) {
    std::memcpy(out.data() + done, p.bytes.data(), p.bytes.size());
    done += p.bytes.size();
  }
  pieces.clear();  // let go of the chunks
  return n;
}

Result<size_t> FsCore::read_pieces(uint64_t ino, uint64_t offset, size_t size, std::vector<ReadPiece>& pieces) {
  pieces.clear();
  auto node = resolve(ino);
  if (!node.ok()) return read_failed(ino_slot(ino), node.error());  // a layer's index that cannot be loaded
  const Node& n = *node;
  if (!n.index) {
    std::string_view content;
    if (n.slot_no != 0 && n.local == kLinkFile) content = n.slot->layer.link;
    else if (n.slot_no != 0 && n.local == kLowerFile) content = *n.slot->layer.lower;
    else return make_error(EISDIR, "not a file");
    if (offset >= content.size()) return size_t{0};
    size_t len = std::min<size_t>(size, content.size() - offset);
    pieces.push_back({n.slot, std::as_bytes(std::span(content.data() + offset, len))});
    bytes_served_ += len;
    return len;
  }
  const LayerIndex& idx = *n.index;
  const uint32_t e = n.entry;
  const EntryRecord& rec = idx.attr_entry(e);
  if (!S_ISREG(rec.mode)) return make_error(EISDIR, "not a regular file");
  if (!n.slot->is_image) ordered_.touch(n.slot->layer, idx);
  if (offset >= rec.size) return size_t{0};
  size_t want = static_cast<size_t>(std::min<uint64_t>(size, rec.size - offset));
  auto chunks = idx.chunks(e);
  const uint64_t cs = idx.chunk_size();
  // Readahead: a reader that keeps reading where it stopped gets the next chunks fetched, a
  // window that grows with the streak.
  const unsigned window = readahead_.window(ino, offset, offset + want);
  const uint64_t last_wanted = std::min<uint64_t>((offset + want - 1) / cs + window, chunks.size() - 1);
  size_t done = 0;
  while (done < want) {
    uint64_t pos = offset + done;
    uint64_t ci = pos / cs;
    uint64_t in_chunk = pos - ci * cs;
    const ChunkRecord& c = chunks[ci];
    size_t len = static_cast<size_t>(std::min<uint64_t>(want - done, c.raw_len - in_chunk));
    if (c.flags & kChunkZero) {
      len = std::min(len, sizeof(kZeros));
      pieces.push_back({nullptr, std::span(kZeros, len)});
    } else {
      // The rest of this read and the readahead window go along: a chunk that must come from
      // the backend brings the ones right after it in the same read.
      std::array<cache::ChunkRef, kMaxFollowing> following;
      size_t nf = 0;
      for (uint64_t fi = ci + 1; fi <= last_wanted && nf < kMaxFollowing; ++fi) {
        if (chunks[fi].flags & kChunkZero) break;
        following[nf++] = chunk_ref(idx, chunks[fi]);
      }
      auto data = fetcher_.get(chunk_ref(idx, c), std::span(following.data(), nf));
      if (!data.ok()) {
        // The whole request fails, even when earlier chunks of it were served: the kernel takes
        // a short read as end of file and shrinks the cached inode size to it, so one bad chunk
        // would shorten the file for every reader until the inode is forgotten. Whatever went
        // wrong below (timeout, missing object, bytes that never verify), the reader sees EIO;
        // the cause is logged and counted by the fetcher.
        pieces.clear();
        return read_failed(n.slot_no, make_error(EIO, data.error().message));
      }
      pieces.push_back({*data, std::span((*data)->data() + in_chunk, len)});
    }
    done += len;
  }
  bytes_served_ += done;
  // A read that reaches the end of a large file: if this host now holds all of it (checked by
  // the copier), a local copy lets the next opens skip the daemon.
  if (offset + done == rec.size && copier_) copier_->want_copy(n.index, e);
  // The window's chunks that the reads above did not bring are fetched in the background.
  if (window > 0) {
    uint64_t last = (offset + done - 1) / cs;
    for (uint64_t ci = last + 1; ci <= last + window && ci < chunks.size(); ++ci) {
      const ChunkRecord& c = chunks[ci];
      if (c.flags & kChunkZero) continue;
      fetcher_.prefetch(chunk_ref(idx, c));
    }
  }
  return done;
}

Error FsCore::read_failed(uint32_t sn, Error e) {
  bool logged;
  {
    std::shared_lock lock(mu_);
    if (!removed_.count(sn)) return e;
    logged = removed_logged_.count(sn) != 0;
  }
  removed_layer_errors_.fetch_add(1, std::memory_order_relaxed);
  if (logged) return e;
  std::unique_lock lock(mu_);
  if (removed_logged_.insert(sn).second)
    spdlog::warn("layer {}, removed from the store, cannot be read whole any more: {}; the parts this host has not "
                 "cached answer EIO (counted in removed_layer_errors, logged once per layer)",
                 slots_[sn]->layer.cache_id, e.message);
  return e;
}

struct statvfs FsCore::statfs() {
  struct statvfs sv {};
  uint64_t bytes = 0, files = 0;
  {
    std::shared_lock lock(mu_);
    // The catalog knows every layer's size; entries are counted for the indexes loaded so far.
    for (uint32_t n : layer_slots_) {
      bytes += slots_[n]->layer.bytes;
      if (auto idx = loaded_index(*slots_[n])) files += idx->entry_count();
    }
  }
  sv.f_bsize = 4096;
  sv.f_frsize = 4096;
  sv.f_blocks = (bytes + 4095) / 4096;
  sv.f_files = files;
  sv.f_namemax = kMaxNameLen;
  sv.f_flag = ST_RDONLY;
  return sv;
}

Result<std::string> FsCore::read_path(std::string_view path, uint64_t max) {
  const std::string shown(path);
  std::vector<std::string_view> parts;
  if (!split_path(path, &parts)) return make_error(EINVAL, shown + ": '..' in the path");
  uint64_t ino = kRootIno;
  for (std::string_view name : parts) {
    auto a = lookup(ino, name);
    if (!a.ok()) return make_error(a.code(), shown + ": " + a.error().message);
    ino = a->st.st_ino;
  }
  auto node = resolve(ino);
  if (!node.ok()) return make_error(node.code(), shown + ": " + node.error().message);
  if (!node->index) return make_error(EISDIR, shown + ": not a file of an index");
  const std::shared_ptr<const LayerIndex>& idx = node->index;
  const uint32_t e = node->entry;
  const EntryRecord& rec = idx->attr_entry(e);
  if (!S_ISREG(rec.mode)) return make_error(EISDIR, shown + ": not a regular file");
  if (rec.size > max) return make_error(EFBIG, fmt::format("{}: {} bytes, more than the {} expected", shown, rec.size, max));
  std::string out;
  out.reserve(rec.size);
  // The daemon's own reads (ChunkFetcher::get_own): not a reader's hits, misses or fetches, and
  // not bytes_served.
  for (const ChunkRecord& c : idx->chunks(e)) {
    if (c.flags & kChunkZero) {
      out.append(c.raw_len, '\0');
      continue;
    }
    auto data = fetcher_.get_own(chunk_ref(*idx, c));
    if (!data.ok()) return make_error(EIO, shown + ": " + data.error().message);
    out.append(reinterpret_cast<const char*>((*data)->data()), c.raw_len);
  }
  if (out.size() != rec.size) return make_error(EIO, shown + ": its chunks do not add up to its size");
  return out;
}

std::optional<Digest128> FsCore::image_tree() const {
  std::shared_lock lock(mu_);
  if (!image_slot_ || !slots_[image_slot_] || !slots_[image_slot_]->index) return std::nullopt;
  return slots_[image_slot_]->index->digest();
}

nlohmann::json FsCore::stats() {
  // Fetched chunks reach the disk cache from a background writer; waiting for it (at most the
  // writer's short queue) makes cache_bytes, bytes_cached and `extrafs cache stat` agree with
  // what has been read.
  fetcher_.flush_cache_writes();
  auto f = fetcher_.stats();
  nlohmann::json j;
  j["pid"] = static_cast<uint64_t>(::getpid());  // the daemon's (extrafs unmount waits for it to exit)
  j["bytes_fetched"] = f.bytes_fetched;
  j["meta_bytes_fetched"] = f.meta_bytes_fetched;
  j["own_bytes_fetched"] = f.own_bytes_fetched;
  j["bytes_served"] = bytes_served_.load();
  j["open_requests"] = open_requests_.load();
  j["opendir_requests"] = opendir_requests_.load();
  j["passthrough"] = passthrough_.load();
  j["passthrough_opens"] = passthrough_opens_.load();
  if (options_.whole_files) {
    auto w = options_.whole_files->stats();
    j["whole_files"] = w.files;
    j["whole_file_bytes"] = w.bytes;
    j["whole_files_written"] = w.written;
    j["whole_files_checked"] = w.checked;
    j["whole_files_corrupt_dropped"] = w.corrupt_dropped;
  }
  j["chunks_fetched"] = f.chunks_fetched;
  j["cache_hits"] = f.cache_hits;
  j["cache_misses"] = f.cache_misses;
  j["merged_waits"] = f.merged_waits;
  j["backend_errors"] = f.backend_errors;
  j["corrupt_fetches"] = f.corrupt_fetches;
  j["prefetches"] = f.prefetches;
  j["cache_write_errors"] = f.cache_write_errors;
  j["removed_layer_errors"] = removed_layer_errors_.load();
  j["cache_bytes"] = fetcher_.cached_bytes();
  // Backend chunk reads by duration: cumulative counts per upper bound "le" (seconds).
  nlohmann::json le = nlohmann::json::array(), buckets = nlohmann::json::array();
  for (size_t i = 0; i < cache::kFetchBucketCount; ++i) {
    le.push_back(cache::kFetchBuckets[i]);
    buckets.push_back(f.fetch_buckets[i]);
  }
  j["fetch_seconds"] = {{"le", std::move(le)}, {"buckets", std::move(buckets)}, {"sum", f.fetch_seconds},
                        {"count", f.fetch_count}};
  j["inodes"] = inodes_.size();
  j["source"] = meta_.describe();
  std::vector<std::pair<std::shared_ptr<const Slot>, bool>> layers;  // with whether it is removed
  {
    std::shared_lock lock(mu_);
    for (uint32_t n : layer_slots_) layers.emplace_back(slots_[n], removed_.count(n) != 0);
  }
  nlohmann::json arr = nlohmann::json::array();
  uint64_t loaded = 0;
  for (const auto& [s, removed] : layers) {
    // A layer whose index this host never read (nor kept) has had nothing read through it.
    auto idx = local_index(*s);
    if (!idx) {
      arr.push_back({{"cache_id", s->layer.cache_id}, {"bytes_total", s->layer.bytes}, {"bytes_cached", uint64_t{0}},
                     {"index_loaded", false}, {"removed", removed}});
      continue;
    }
    ++loaded;
    uint64_t cached = 0;
    for (const auto& c : idx->all_chunks()) {
      if (c.flags & kChunkZero) {
        cached += c.raw_len;
        continue;
      }
      if (fetcher_.is_cached(chunk_digest(c))) cached += c.raw_len;
    }
    // Chunks of a hard-link group are listed once (on its primary entry), as bytes_total counts it.
    arr.push_back({{"cache_id", s->layer.cache_id},
                   {"bytes_total", idx->content_bytes()},
                   {"bytes_cached", std::min(cached, idx->content_bytes())},
                   {"index_loaded", true},
                   {"removed", removed}});
  }
  j["layers"] = std::move(arr);
  j["layer_indexes_loaded"] = loaded;
  return j;
}

void FsCore::set_passthrough(bool on) {
  passthrough_.store(on, std::memory_order_relaxed);
  if (copier_) copier_->set_passthrough(on);
}

}  // namespace extrafs::fs
