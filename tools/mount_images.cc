#include "tools/mount_images.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <span>

#include "common/str_util.h"
#include "store/docker_meta.h"

namespace extrafs::tools {

namespace {

// How often the thread looks for a new image/ tree (a lookup in memory), and how soon it tries
// again after names could not be read.
constexpr std::chrono::seconds kPoll{1};
constexpr std::chrono::seconds kRetry{10};

}  // namespace

MountImages::MountImages(fs::FsCore& core, cache::BlockCache* disk, std::string mountpoint)
    : core_(core), disk_(disk), mountpoint_(std::move(mountpoint)), thread_([this] { loop(); }) {}

MountImages::~MountImages() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::string MountImages::current_tree() const {
  auto d = core_.image_tree();
  return d ? d->hex() : std::string();
}

void MountImages::annotate(nlohmann::json& stats, std::chrono::milliseconds wait) {
  const std::string tree = current_tree();
  Names names;
  LayerImages former;
  if (!tree.empty()) {
    std::unique_lock lock(mu_);
    if (names_.tree != tree) {
      // A tree the thread has not finished reading yet (it looks once a second): tell it, and
      // give it a moment. Once a reading of this tree finished, nothing here waits, even if
      // names are missing (the store was away): the thread tries again by itself.
      poke_ = true;
      cv_.notify_all();
      cv_.wait_for(lock, wait, [&] { return names_.tree == tree || stop_; });
    }
    names = names_;
    former = former_;
  }
  if (names.tree != tree)
    names.missing = names.tree.empty() ? "the image names are still being read"
                                       : "the image names of the newest image/ tree are still being read; "
                                         "these are from the one before";
  if (stats.contains("layers") && stats["layers"].is_array()) {
    for (auto& l : stats["layers"]) {
      if (!l.is_object() || !l.contains("cache_id") || !l["cache_id"].is_string()) continue;
      const std::string cid = l["cache_id"].get<std::string>();
      auto it = names.layers.find(cid);
      l["images"] = it != names.layers.end() ? nlohmann::json(it->second) : nlohmann::json::array();
      if (auto f = former.find(cid); f != former.end() && it == names.layers.end()) l["former_images"] = f->second;
    }
  }
  if (!names.missing.empty()) stats["images_unknown"] = names.missing;
}

MountImages::Names MountImages::names_of(const std::string& tree) {
  const std::string kept_name = "image-names-" + tree;
  if (disk_) {
    if (auto kept = disk_->get_meta(kept_name); kept.ok()) {
      auto j = nlohmann::json::parse(kept->begin(), kept->end(), nullptr, false);
      if (j.is_object()) {
        Names n;
        n.tree = tree;
        bool good = true;
        for (const auto& [cid, refs] : j.items()) {
          if (!refs.is_array()) good = false;
          for (const auto& r : refs) {
            if (!r.is_string())
              good = false;
            else
              n.layers[cid].push_back(r.get<std::string>());
          }
        }
        if (good) return n;
      }
      spdlog::warn("{} in the cache is unreadable; reading the image names again", kept_name);
    }
  }
  Names n = read_names(tree);
  if (disk_ && n.missing.empty()) {
    const std::string text = nlohmann::json(n.layers).dump();
    if (auto st = disk_->put_meta(kept_name, std::as_bytes(std::span(text.data(), text.size()))); !st.ok())
      spdlog::warn("cannot keep the image names in the cache: {}", st.error().message);
  }
  return n;
}

MountImages::Names MountImages::read_names(const std::string& tree) {
  auto stopping = [&] {
    std::lock_guard lock(mu_);
    return stop_;
  };
  store::MetaFiles files;
  files.read = [&](const std::string& rel, uint64_t limit) -> Result<std::string> {
    if (stopping()) return make_error(ECANCELED, "the daemon is stopping");
    return core_.read_path(rel, limit);
  };
  files.exists = [&](const std::string& rel) {
    // Names only: no read, the lookups are answered from memory.
    std::vector<std::string_view> parts;
    if (!split_path(rel, &parts)) return false;
    uint64_t ino = fs::kRootIno;
    for (auto name : parts) {
      auto a = core_.lookup(ino, name);
      if (!a.ok()) return false;
      ino = a->st.st_ino;
    }
    return true;
  };
  Names n;
  n.tree = tree;
  auto meta = store::DockerMeta::load(std::move(files), mountpoint_);
  if (!meta.ok()) {
    n.missing = meta.error().message;
    return n;
  }
  std::map<std::string, std::vector<std::string>> refs_of;  // image id -> its tags
  for (const auto& [ref, id] : meta->refs()) refs_of[id].push_back(ref);
  size_t unreadable = 0;
  std::string first_error;
  for (const auto& [id, refs] : refs_of) {
    auto img = meta->image(id);
    if (!img.ok()) {
      if (unreadable++ == 0) first_error = img.error().message;
      continue;
    }
    for (const auto& l : img->layers) {
      auto& v = n.layers[l.cache_id];
      v.insert(v.end(), refs.begin(), refs.end());
    }
  }
  for (auto& [cid, v] : n.layers) {
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
  }
  if (unreadable)
    n.missing = fmt::format("{} of {} images could not be read, e.g.: {}", unreadable, refs_of.size(), first_error);
  return n;
}

void MountImages::loop() {
  std::unique_lock lock(mu_);
  std::chrono::steady_clock::time_point last_try{};
  while (!stop_) {
    lock.unlock();
    const std::string tree = current_tree();  // from memory: never waits on the store
    lock.lock();
    const auto now = std::chrono::steady_clock::now();
    const bool due = !tree.empty() && (names_.tree != tree || (!names_.missing.empty() && now - last_try >= kRetry));
    if (!due) {
      cv_.wait_for(lock, kPoll, [&] { return stop_ || poke_; });
      poke_ = false;
      continue;
    }
    last_try = now;
    lock.unlock();
    Names n = names_of(tree);
    lock.lock();
    if (stop_) break;
    if (!n.missing.empty()) {
      // What could not be read keeps the names known before (a layer keeps its images from one
      // tree to the next unless an image was removed), so that a store gone away costs no names.
      for (const auto& [cid, refs] : names_.layers) n.layers.try_emplace(cid, refs);
      if (n.missing != names_.missing)
        spdlog::warn("image names for extrafs stats: {}; tried again every {} s", n.missing, kRetry.count());
    } else if (!names_.missing.empty()) {
      spdlog::info("image names for extrafs stats: all read now");
    }
    // A layer no image of the new tree uses keeps the names it had, as "former_images": the mount
    // still serves it (fs_core.h, removed layers), and `extrafs ls` says which image it was.
    for (const auto& [cid, refs] : names_.layers)
      if (!n.layers.count(cid) && !refs.empty()) former_[cid] = refs;
    for (const auto& [cid, refs] : n.layers) former_.erase(cid);
    names_ = std::move(n);
    cv_.notify_all();
  }
}

}  // namespace extrafs::tools
