#include "fs/store_view.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <set>

namespace extrafs::fs {

using format::Catalog;
using format::catalog_cache_name;
using format::catalog_generation_path;
using format::CatalogLayer;
using format::image_index_path;
using format::kCatalogPath;
using format::kMaxCatalogSize;
using format::store_catalog;
using format::unchained_layers;

namespace {

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

}  // namespace

StoreView::StoreView(cache::MetaSource& meta, IndexLoader& indexes, InodeTable& inodes, StoreViewOptions options)
    : meta_(meta),
      indexes_(indexes),
      inodes_(inodes),
      options_(options),
      catalog_cache_name_(catalog_cache_name(meta.describe())) {
  slots_.push_back(nullptr);
}

StoreView::~StoreView() {
  stop();
  if (refresher_.joinable()) refresher_.join();
}

void StoreView::stop() {
  {
    MutexLock lock(&stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
}

Result<std::unique_ptr<StoreView>> StoreView::open(cache::MetaSource& meta, IndexLoader& indexes, InodeTable& inodes,
                                                   StoreViewOptions options) {
  std::unique_ptr<StoreView> view(new StoreView(meta, indexes, inodes, options));
  // The version is taken before the read: a catalog replaced in between is simply loaded again
  // by the next refresh.
  auto version = meta.meta_version(kCatalogPath);
  std::optional<Catalog> catalog;
  auto got = meta.read_meta(kCatalogPath, view->catalog_cache_name_, kMaxCatalogSize, parse_catalog_into(&catalog));
  const bool from_store = got.ok();
  if (!from_store) {
    // The store unreachable, or its catalog refused: the copy kept by an earlier mount serves
    // meanwhile, if it is good.
    auto kept = meta.kept_meta(view->catalog_cache_name_);
    if (kept.ok() && parse_catalog_into(&catalog)(*kept).ok()) {
      spdlog::warn("{}: {}; serving the cached copy", kCatalogPath, got.error().message);
    } else {
      return store_catalog(got, meta.describe()).error();
    }
  }
  EXTRAFS_CHECK_STATUS(view->load(*catalog, /*initial=*/true));
  {
    MutexLock lock(&view->refresh_mu_);
    // A kept copy is not the store's version: leaving it unseen makes the first refresh that can
    // read the store load it.
    if (from_store && version.ok()) view->catalog_version_ = *version;
    view->generation_ = catalog->generation;
    view->store_id_ = catalog->store_id;
  }
  if (options.refresh_interval_s > 0) view->refresher_ = std::thread([v = view.get()] { v->refresh_loop(); });
  return view;
}

void StoreView::refresh_loop() {
  auto interval = std::chrono::duration<double>(options_.refresh_interval_s);
  MutexLock lock(&stop_mu_);
  for (;;) {
    const auto deadline = std::chrono::steady_clock::now() + interval;
    bool in_time = true;
    while (!stopping_ && in_time) in_time = stop_cv_.wait_until(&stop_mu_, deadline);
    if (stopping_) return;
    lock.unlock();
    if (auto st = refresh(); !st.ok()) spdlog::debug("catalog refresh: {}", st.error().message);
    lock.lock();
  }
}

// Adds every layer of `catalog` not yet known (their indexes are read on first use, see
// index_of) and loads its image/ index if new, then installs them. Initially a bad image/ index
// fails the load. Later (a refresh) the layers are installed anyway and the image/ problem is
// reported as the error, so that the caller tries the catalog again.
Status StoreView::load(const Catalog& catalog, bool initial) {
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
    ReaderLock lock(&mu_);
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
  WriterLock lock(&mu_);
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
  if (problem) return *problem;
  return ok_status();
}

Status StoreView::follow_generations() {
  // Bounded per tick; a store that far ahead is caught up with on the next ticks.
  constexpr int kMaxSteps = 64;
  for (int step = 0; step < kMaxSteps && !stopping(); ++step) {
    const uint64_t next = generation_ + 1;
    const std::string path = catalog_generation_path(next);
    if (!meta_.meta_version(path).ok()) return ok_status();  // not published (yet)
    Status st = [&]() -> Status {
      refresh_mu_.assert_held();  // a lambda is checked as a function of its own
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
      if (failed_generation_ != next)
        spdlog::warn("catalog generation {} not loaded, will retry: {}", next, st.error().message);
      failed_generation_ = next;
      return st;
    }
    spdlog::info("catalog generation {} loaded: {} layers", next, layer_count());
  }
  return ok_status();
}

bool StoreView::stopping() {
  MutexLock lock(&stop_mu_);
  return stopping_;
}

bool StoreView::same_store(const Catalog& c) const {
  // A catalog written before store ids gets one at its next write, a later generation.
  return c.store_id == store_id_ || (store_id_.empty() && (generation_ == 0 || c.generation > generation_));
}

bool StoreView::is_news(const Catalog& c) const {
  if (!same_store(c)) return !left_store_ids_.count(c.store_id);
  return generation_ == 0 || c.generation > generation_;
}

void StoreView::loaded_catalog(const Catalog& c) {
  if (c.store_id != store_id_) {
    // Its generations count from 1 again: the one loaded says nothing about them.
    if (!same_store(c))
      spdlog::warn(
          "the store was made again (store id {} instead of {}): its catalog generation {} loaded as new; "
          "layers it no longer has are served from what this host has",
          c.store_id.empty() ? "none" : c.store_id, store_id_.empty() ? "none" : store_id_, c.generation);
    // Either way a catalog without the new id is an old one from now on (a server may still
    // serve the replaced file).
    left_store_ids_.insert(store_id_);
    store_id_ = c.store_id;
  }
  generation_ = c.generation;
}

Status StoreView::refresh() {
  Status st = ok_status();
  bool newer = false;
  {
    MutexLock guard(&refresh_mu_);
    const uint64_t generation = generation_;
    const cache::MetaVersion version = catalog_version_;
    st = refresh_locked();
    newer = generation_ != generation || catalog_version_ != version;
  }
  // Told without refresh_mu_, which is held while the store is waited on: set_on_change() at
  // unmount never waits for the store.
  if (newer) {
    MutexLock lock(&change_mu_);
    if (on_change_) on_change_();
  }
  return st;
}

Status StoreView::refresh_locked() {
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
    refresh_mu_.assert_held();  // a lambda is checked as a function of its own
    std::optional<Catalog> parsed;
    EXTRAFS_CHECK_STATUS(
        meta_.read_meta(kCatalogPath, catalog_cache_name_, kMaxCatalogSize, parse_catalog_into(&parsed)));
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

Error StoreView::read_failed(uint32_t sn, Error e) {
  bool logged;
  {
    ReaderLock lock(&mu_);
    if (!removed_.count(sn)) return e;
    logged = removed_logged_.count(sn) != 0;
  }
  removed_layer_errors_.fetch_add(1, std::memory_order_relaxed);
  if (logged) return e;
  WriterLock lock(&mu_);
  if (removed_logged_.insert(sn).second)
    spdlog::warn(
        "layer {}, removed from the store, cannot be read whole any more: {}; the parts this host has not "
        "cached answer EIO (counted in removed_layer_errors, logged once per layer)",
        slots_[sn]->layer.cache_id, e.message);
  return e;
}

std::optional<Digest128> StoreView::image_tree() const {
  ReaderLock lock(&mu_);
  if (!image_slot_ || !slots_[image_slot_] || !slots_[image_slot_]->index) return std::nullopt;
  return slots_[image_slot_]->index->digest();
}

std::shared_ptr<const Slot> StoreView::slot(uint32_t n) const {
  ReaderLock lock(&mu_);
  if (n == 0 || n >= slots_.size()) return nullptr;
  return slots_[n];
}

uint32_t StoreView::image_slot() const {
  ReaderLock lock(&mu_);
  return image_slot_;
}

uint32_t StoreView::layer_by_cache_id(std::string_view cache_id) const {
  ReaderLock lock(&mu_);
  auto it = by_cache_id_.find(std::string(cache_id));
  return it == by_cache_id_.end() ? 0 : it->second;
}

uint32_t StoreView::layer_by_link(std::string_view link) const {
  ReaderLock lock(&mu_);
  auto it = by_link_.find(std::string(link));
  return it == by_link_.end() ? 0 : it->second;
}

std::vector<StoreView::LayerSlot> StoreView::layers() const {
  ReaderLock lock(&mu_);
  std::vector<LayerSlot> out;
  out.reserve(layer_slots_.size());
  for (uint32_t n : layer_slots_) out.push_back({n, slots_[n], removed_.count(n) != 0});
  return out;
}

size_t StoreView::layer_count() const {
  ReaderLock lock(&mu_);
  return layer_slots_.size();
}

void StoreView::release_if_superseded(uint32_t n) {
  WriterLock lock(&mu_);
  if (n < slots_.size() && slots_[n] && slots_[n]->is_image && n != image_slot_ && inodes_.slot_nodes(n) == 0)
    slots_[n] = nullptr;
}

void StoreView::set_on_change(std::function<void()> f) {
  MutexLock lock(&change_mu_);
  on_change_ = std::move(f);
}

}  // namespace extrafs::fs
