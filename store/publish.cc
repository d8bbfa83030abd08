#include "store/publish.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "common/posix_file.h"
#include "common/str_util.h"
#include "format/catalog.h"
#include "format/layer_index.h"
#include "store/catalog_writer.h"
#include "store/docker_meta.h"
#include "store/indexer.h"
#include "store/layout.h"
#include "store/publish_blob.h"
#include "store/publish_tar.h"
#include "store/remove_images.h"
#include "store/save_archive.h"
#include "store/store_lock.h"
#include "store/trace.h"

namespace extrafs::store {

namespace {

Error bad_input(const std::string& msg) { return make_error(EINVAL, msg); }

std::string hex_of(const std::string& digest) { return digest.substr(digest.find(':') + 1); }

// Writes `data` to a new file `path` and fsyncs it (it is renamed into place later). A leftover of
// a killed publish with the same pid is replaced.
Status write_synced(const std::string& path, std::string_view data) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return Error::from_errno(errno, "create " + path);
  return write_new_file(path, data, 0644);
}

// Renames `from` to `to` and makes the rename durable.
Status rename_durably(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) return Error::from_errno(errno, "rename " + from);
  return fsync_dir(parent_dir(to));
}

struct LayerPlan {
  std::string diff_id, chain_id, parent_chain;
  std::string src_cache_id;  // --data-root: the data-root's cache-id
  std::string src_layerdb;   // --data-root: its layerdb directory
  bool has_tar_split = false;
  uint64_t src_size = 0;      // --data-root: its layerdb size
  std::string archive_layer;  // --archive: path of the layer tar in the archive
  uint64_t size_hint = 0;     // for progress

  bool present = false;  // already in the store
  std::string cache_id, link;
  std::optional<std::string> lower;

  // Staged (written to temporaries, not yet renamed into place).
  std::string blob_tmp, index_tmp;
  format::CatalogLayer catalog;
  uint64_t docker_size = 0;
};

struct ImagePlan {
  std::string id;  // sha256:...
  std::string config;
  std::vector<std::string> tags;
};

// Split "name:tag" at the tag's colon.
std::pair<std::string, std::string> split_ref(const std::string& ref) {
  auto slash = ref.rfind('/');
  auto colon = ref.rfind(':');
  if (colon == std::string::npos || (slash != std::string::npos && colon < slash)) return {ref, "latest"};
  return {ref.substr(0, colon), ref.substr(colon + 1)};
}

class Publisher {
 public:
  explicit Publisher(const PublishRequest& req) : req_(req) {}
  ~Publisher() { abandon(); }

  Result<PublishReport> run() {
    EXTRAFS_CHECK_STATUS(read_order());
    if (!req_.data_root.empty())
      EXTRAFS_CHECK_STATUS(plan_data_root());
    else
      EXTRAFS_CHECK_STATUS(plan_archive());
    EXTRAFS_CHECK_STATUS(open_store());
    EXTRAFS_CHECK_STATUS(decide());
    for (size_t i = 0; i < layers_.size(); ++i)
      if (!layers_[i].present) EXTRAFS_CHECK_STATUS(stage(layers_[i]));
    EXTRAFS_CHECK_STATUS(commit());
    return report_;
  }

 private:
  const PublishRequest& req_;
  std::vector<LayerPlan> layers_;  // base first, deduplicated by chain ID
  std::vector<ImagePlan> images_;
  std::optional<SaveArchive> archive_;
  std::vector<std::pair<std::string, std::string>> order_;  // (cache-id, path)
  std::string store_;
  std::vector<std::string> created_dirs_;  // removed again if the publish fails
  StoreWriteLock lock_;
  Fd data_root_fd_;  // --data-root, once planned: its layers are opened beneath it
  Fd store_fd_;      // the store, once open: what publish reads and writes is beneath it
  bool committed_ = false;
  nlohmann::json repositories_;
  StoreCatalog sc_;
  std::set<std::string> removed_;  // cache-ids `extrafs rm` took out of the catalog (remove_images.h)
  PublishReport report_;
  PublishProgress progress_;
  std::unique_ptr<ObjectSink> objects_;  // --chunk-objects: the chunks of every layer written

  StoreLayout layout_{""};

  std::string layers_dir() const { return layout_.layers_dir(); }
  std::string layerdb_dir() const { return layout_.layerdb_dir(); }

  void tick(uint64_t bytes) {
    progress_.bytes_done += bytes;
    if (req_.progress) req_.progress(progress_);
  }

  Status read_order() {
    if (req_.order_file.empty()) return ok_status();
    auto text = read_file(req_.order_file);
    if (!text.ok()) return bad_input("--order: " + text.error().message);
    EXTRAFS_TRY(order, parse_trace(*text));
    for (auto& e : order) order_.emplace_back(std::move(e.cache_id), std::move(e.path));
    return ok_status();
  }

  // The paths to pack first for a layer: the trace's lines for one of `ids`, or, if the trace
  // names none of them (it was recorded on a store with other cache-ids), all its paths.
  std::vector<std::string> order_for(std::initializer_list<std::string> ids) const {
    std::vector<std::string> out;
    std::set<std::string> seen;
    for (const auto& [cid, p] : order_)
      if (std::find(ids.begin(), ids.end(), cid) != ids.end() && seen.insert(p).second) out.push_back(p);
    if (!out.empty()) return out;
    for (const auto& [cid, p] : order_)
      if (seen.insert(p).second) out.push_back(p);
    return out;
  }

  void add_layer(LayerPlan l) {
    for (const auto& x : layers_)
      if (x.chain_id == l.chain_id) return;
    layers_.push_back(std::move(l));
  }

  Status plan_data_root() {
    const std::string& root = req_.data_root;
    if (!is_dir(root)) return bad_input("data-root " + root + " does not exist or is not a directory");
    data_root_fd_.reset(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!data_root_fd_.valid()) return bad_input("data-root " + root + ": " + std::strerror(errno));
    if (!is_dir(root + "/image/overlay2"))
      return bad_input("data-root " + root +
                       " has no image/overlay2 (not a dockerd data-root with the overlay2 driver)");
    auto meta = DockerMeta::load(root);
    if (!meta.ok()) return bad_input(meta.error().message);
    for (const auto& ref : req_.images) {
      auto img = meta->image(ref);
      if (!img.ok()) return bad_input(img.error().message);
      ImagePlan ip{img->id, img->config, {}};
      if (ref.rfind("sha256:", 0) == 0)
        ip.tags = img->tags;
      else
        ip.tags.push_back(normalize_ref(ref));
      for (const auto& t : ip.tags)
        if (auto st = check_reference(t); !st.ok()) return bad_input(st.error().message);
      std::string parent;
      for (const auto& l : img->layers) {
        LayerPlan p;
        p.diff_id = l.diff_id;
        p.chain_id = l.chain_id;
        p.parent_chain = parent;
        p.src_cache_id = l.cache_id;
        p.src_layerdb = root + "/image/overlay2/layerdb/sha256/" + hex_of(l.chain_id);
        p.has_tar_split = l.has_tar_split;
        p.src_size = l.size;
        p.size_hint = l.size;
        // A diff reached through a symlink (the layer directory or diff itself) is refused: it
        // would pack whatever it points at.
        if (auto st = check_dir_beneath(data_root_fd_.get(), "overlay2/" + l.cache_id + "/diff", root); !st.ok())
          return bad_input("layer " + l.cache_id + " of " + ref + ": " + st.error().message);
        parent = l.chain_id;
        add_layer(std::move(p));
      }
      images_.push_back(std::move(ip));
    }
    return ok_status();
  }

  Status plan_archive() {
    auto sa = SaveArchive::open(req_.archive);
    if (!sa.ok()) return make_error(sa.code() == EBADMSG ? EINVAL : sa.code(), sa.error().message);
    archive_ = std::move(sa).value();
    for (const auto& img : archive_->images()) {
      ImagePlan ip{img.id, img.config, img.tags};
      for (const auto& t : ip.tags)
        if (auto st = check_reference(normalize_ref(t)); !st.ok())
          return bad_input(req_.archive + ": " + st.error().message);
      auto chains = chain_ids(img.diff_ids);
      for (size_t i = 0; i < img.layers.size(); ++i) {
        LayerPlan p;
        p.diff_id = img.diff_ids[i];
        p.chain_id = chains[i];
        p.parent_chain = i ? chains[i - 1] : "";
        p.archive_layer = img.layers[i];
        p.size_hint = archive_->layer_size(img.layers[i]);
        add_layer(std::move(p));
      }
      images_.push_back(std::move(ip));
    }
    return ok_status();
  }

  // mkdir -p, remembering what it created (removed again if the publish fails).
  Status mkdir_tracked(const std::string& path) { return make_dirs(path, 0755, &created_dirs_); }

  Status open_store() {
    layout_ = StoreLayout(req_.store);
    store_ = layout_.root();
    if (path_exists(store_) && !is_dir(store_)) return make_error(ENOTDIR, "store " + store_ + " is not a directory");
    EXTRAFS_CHECK_STATUS(mkdir_tracked(layers_dir()));
    store_fd_.reset(::open(store_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!store_fd_.valid()) return Error::from_errno(errno, "store " + store_);
    // Every directory publish writes into must be the store's own, not a symlink out of it.
    for (const char* dir : {"extrafs/layers", "image", "image/overlay2", "image/overlay2/layerdb",
                            "image/overlay2/layerdb/sha256", "image/overlay2/imagedb", "image/overlay2/imagedb/content",
                            "image/overlay2/imagedb/content/sha256", "overlay2"}) {
      auto st = check_dir_beneath(store_fd_.get(), dir, store_);
      if (!st.ok() && st.code() != ENOENT) return st.error();
    }
    // The lock also removes what killed writers left behind.
    EXTRAFS_TRY(lock, StoreWriteLock::take(store_fd_.get(), store_));
    lock_ = std::move(lock);
    EXTRAFS_TRY(sc, load_store_catalog(store_));
    sc_ = std::move(sc);
    EXTRAFS_TRY(removed, removed_layers(store_fd_.get(), store_));
    removed_ = std::move(removed);
    const std::string repo_path = layout_.repositories();
    repositories_ = nlohmann::json::object();
    if (path_exists(repo_path)) {
      EXTRAFS_TRY(text,
                  read_file_beneath(store_fd_.get(), "image/overlay2/repositories.json", store_, kMaxRepositoriesSize));
      repositories_ = nlohmann::json::parse(text, nullptr, false);
      if (repositories_.is_discarded() || !repositories_.is_object() ||
          (repositories_.contains("Repositories") && !repositories_["Repositories"].is_object()))
        return make_error(EBADMSG, repo_path + " is not valid JSON");
    }
    return ok_status();
  }

  // Which layers the store already has, and the cache-id, link and lower of the others.
  Status decide() {
    std::map<std::string, const LayerPlan*> by_chain;
    for (auto& l : layers_) {
      const std::string db = layerdb_dir() + "/" + hex_of(l.chain_id);
      std::string known;
      if (auto cid = read_file(db + "/cache-id"); cid.ok()) known = trim_trailing(*cid);
      const format::CatalogLayer* cat = known.empty() ? nullptr : sc_.catalog.find(known);
      if (cat && path_exists(layout_.layer_index(known))) {
        l.present = true;
        l.cache_id = known;
        l.link = cat->link;
        l.lower = cat->lower;
        report_.layers_present++;
      } else {
        // A layer an interrupted publish left half-done keeps its cache-id (it is overwritten).
        // A cache-id `extrafs rm` took out of the catalog is never used again: hosts may still
        // serve that layer from its index, which must keep naming the same bytes.
        auto free_id = [&](const std::string& id) { return !sc_.catalog.find(id) && !removed_.count(id); };
        if (is_cache_id(known) && free_id(known))
          l.cache_id = known;
        else if (!l.src_cache_id.empty() && free_id(l.src_cache_id))
          l.cache_id = l.src_cache_id;
        else
          l.cache_id = random_cache_id();
        // A link file already in the store is kept only if the catalog reader would accept it.
        format::CatalogLayer probe;
        probe.cache_id = l.cache_id;
        if (auto link =
                read_file_beneath(store_fd_.get(), "overlay2/" + l.cache_id + "/link", store_, kMaxLineFileSize);
            link.ok())
          probe.link = trim_trailing(*link);
        if (!probe.link.empty() && format::check_catalog_layer(probe).ok())
          l.link = probe.link;
        else
          l.link = random_link_id();
        if (!l.parent_chain.empty()) {
          const LayerPlan* p = by_chain.at(l.parent_chain);
          l.lower = "l/" + p->link + (p->lower ? ":" + *p->lower : "");
        }
        progress_.layers++;
        progress_.bytes_total += l.size_hint;
      }
      by_chain[l.chain_id] = &l;
    }
    return ok_status();
  }

  Status stage(LayerPlan& l) {
    progress_.layer++;
    tick(0);
    const std::string pid = std::to_string(::getpid());
    // The chunks go into the layer's blob, or (--chunk-objects) each into its own object.
    std::unique_ptr<BlobWriter> blob;
    if (req_.chunk_objects) {
      if (!objects_) objects_ = std::make_unique<ObjectSink>(store_, /*compress=*/true);
    } else {
      l.blob_tmp = layers_dir() + "/." + l.cache_id + ".blob.tmp-" + pid;
      EXTRAFS_TRY(b, BlobWriter::create(l.blob_tmp, blob_object_path(l.cache_id)));
      blob = std::move(b);
    }
    ChunkPacker& out = blob ? static_cast<ChunkPacker&>(*blob) : *objects_;
    const uint64_t objects_before = objects_ ? objects_->objects_written() : 0;
    const uint64_t stored_before = objects_ ? objects_->stored_bytes() : 0;
    const uint64_t raw_before = objects_ ? objects_->raw_bytes() : 0;
    std::string index;
    std::vector<std::string> first;
    if (!req_.data_root.empty()) {
      WalkOptions opts;
      if (blob) opts.first = first = order_for({l.src_cache_id, l.cache_id});
      opts.on_file = [this](uint64_t n) { tick(n); };
      const std::string diff_rel = "overlay2/" + l.src_cache_id + "/diff";
      auto diff = open_beneath(data_root_fd_.get(), diff_rel, O_RDONLY | O_DIRECTORY, req_.data_root);
      if (!diff.ok()) return make_error(diff.code(), "layer " + l.src_cache_id + ": " + diff.error().message);
      auto bytes = index_directory_at(diff->get(), req_.data_root + "/" + diff_rel, out, opts);
      if (!bytes.ok()) return make_error(bytes.code(), "layer " + l.src_cache_id + ": " + bytes.error().message);
      index = std::move(bytes).value();
      l.docker_size = l.src_size;
    } else {
      LayerTarOptions opts;
      if (blob) opts.first = first = order_for({l.cache_id});
      opts.scratch_dir = layers_dir();
      opts.on_bytes = [this](uint64_t n) { tick(n); };
      LayerTarResult res;
      auto diff_id = archive_->read_layer(l.archive_layer, [&](struct archive* a) -> Status {
        EXTRAFS_TRY(r, convert_layer_tar(a, out, opts));
        res = std::move(r);
        return ok_status();
      });
      if (!diff_id.ok())
        return make_error(diff_id.code() == EBADMSG ? EINVAL : diff_id.code(), diff_id.error().message);
      if (*diff_id != l.diff_id)
        return bad_input(fmt::format("{}: layer {} has diffID {} but the image config says {}", req_.archive,
                                     l.archive_layer, *diff_id, l.diff_id));
      index = std::move(res.index);
      l.docker_size = res.docker_size;
    }
    if (blob) EXTRAFS_CHECK_STATUS(blob->finish());
    auto parsed = format::LayerIndex::parse(index);
    if (!parsed.ok())
      return make_error(EIO, "index of layer " + l.cache_id + " does not verify: " + parsed.error().message);
    l.index_tmp = layers_dir() + "/." + l.cache_id + ".index.tmp-" + pid;
    EXTRAFS_CHECK_STATUS(write_synced(l.index_tmp, index));
    l.catalog.cache_id = l.cache_id;
    l.catalog.index_digest = (*parsed)->digest();
    l.catalog.link = l.link;
    l.catalog.lower = l.lower;
    l.catalog.bytes = (*parsed)->content_bytes();
    l.catalog.ordered_prefix = blob ? ordered_prefix(**parsed, first, blob->object_path()) : 0;
    EXTRAFS_CHECK_STATUS(format::check_catalog_layer(l.catalog));
    if (blob) {
      report_.raw_bytes += blob->raw_bytes();
      report_.stored_bytes += blob->size();
    } else {
      report_.raw_bytes += objects_->raw_bytes() - raw_before;
      report_.stored_bytes += objects_->stored_bytes() - stored_before;
      report_.objects_written += objects_->objects_written() - objects_before;
    }
    report_.ordered_bytes += l.catalog.ordered_prefix;
    return ok_status();
  }

  Status write_layerdb(const LayerPlan& l) {
    const std::string hex = hex_of(l.chain_id);
    const std::string pid = std::to_string(::getpid());
    const std::string tmp = layerdb_dir() + "/.tmp-" + hex + "-" + pid;
    const std::string fin = layerdb_dir() + "/" + hex;
    std::error_code ec;
    std::filesystem::remove_all(tmp, ec);
    if (::mkdir(tmp.c_str(), 0755) != 0) return Error::from_errno(errno, "create " + tmp);
    EXTRAFS_CHECK_STATUS(write_synced(tmp + "/diff", l.diff_id));
    EXTRAFS_CHECK_STATUS(write_synced(tmp + "/size", std::to_string(l.docker_size)));
    EXTRAFS_CHECK_STATUS(write_synced(tmp + "/cache-id", l.cache_id));
    if (!l.parent_chain.empty()) EXTRAFS_CHECK_STATUS(write_synced(tmp + "/parent", l.parent_chain));
    if (l.has_tar_split) {
      EXTRAFS_TRY(ts, read_file(l.src_layerdb + "/tar-split.json.gz", kMaxTarSplitSize));
      EXTRAFS_CHECK_STATUS(write_synced(tmp + "/tar-split.json.gz", ts));
    }
    EXTRAFS_CHECK_STATUS(fsync_dir(tmp));
    if (path_exists(fin)) {
      const std::string old = layerdb_dir() + "/.old-" + hex + "-" + pid;
      if (::rename(fin.c_str(), old.c_str()) != 0) return Error::from_errno(errno, "rename " + fin);
      std::filesystem::remove_all(old, ec);
    }
    return rename_durably(tmp, fin);
  }

  Status commit() {
    EXTRAFS_CHECK_STATUS(mkdir_tracked(layerdb_dir()));
    EXTRAFS_CHECK_STATUS(mkdir_tracked(layout_.config_dir()));
    EXTRAFS_CHECK_STATUS(mkdir_tracked(layout_.overlay2_dir()));
    committed_ = true;  // from here on, what is renamed into place stays
    // The chunk objects are durable and in place before any index naming them.
    if (objects_) EXTRAFS_CHECK_STATUS(objects_->finish());
    bool changed = false;
    for (auto& l : layers_) {
      if (l.present) continue;
      // The index's rename_durably below fsyncs the same directory, for both renames.
      if (!l.blob_tmp.empty() && ::rename(l.blob_tmp.c_str(), layout_.layer_blob(l.cache_id).c_str()) != 0)
        return Error::from_errno(errno, "rename " + l.blob_tmp);
      l.blob_tmp.clear();
      EXTRAFS_CHECK_STATUS(rename_durably(l.index_tmp, layout_.layer_index(l.cache_id)));
      l.index_tmp.clear();
      const std::string ov = layout_.overlay_dir(l.cache_id);
      if (::mkdir(ov.c_str(), 0755) == 0)
        EXTRAFS_CHECK_STATUS(fsync_dir(layout_.overlay2_dir()));
      else if (errno != EEXIST)
        return Error::from_errno(errno, "create " + ov);
      EXTRAFS_CHECK_STATUS(check_dir_beneath(store_fd_.get(), "overlay2/" + l.cache_id, store_));
      EXTRAFS_CHECK_STATUS(write_file_atomic(ov + "/link", l.link));
      if (l.lower)
        EXTRAFS_CHECK_STATUS(write_file_atomic(ov + "/lower", *l.lower));
      else if (path_exists(ov + "/lower"))
        ::unlink((ov + "/lower").c_str());
      EXTRAFS_CHECK_STATUS(write_layerdb(l));
      merge_catalog_layer(&sc_.catalog, l.catalog);
      report_.layers_written++;
      changed = true;
    }
    for (const auto& img : images_) {
      const std::string path = layout_.config_dir() + "/" + hex_of(img.id);
      auto have = read_file(path);
      if (!have.ok() || *have != img.config) {
        EXTRAFS_CHECK_STATUS(write_file_atomic(path, img.config));
        changed = true;
      }
      for (const auto& tag : img.tags) {
        auto [name, t] = split_ref(tag);
        repositories_["Repositories"][name][name + ":" + t] = img.id;
        report_.tags.push_back(name + ":" + t);
      }
    }
    if (!repositories_.contains("Repositories")) repositories_["Repositories"] = nlohmann::json::object();
    const std::string repo_path = layout_.repositories();
    std::string repo_text = repositories_.dump();
    auto old_repo = read_file(repo_path);
    if (!old_repo.ok() || *old_repo != repo_text) {
      EXTRAFS_CHECK_STATUS(write_file_atomic(repo_path, repo_text));
      changed = true;
    }
    // Nothing new: leave the catalog and the image/ index alone (re-indexing image/ would pick up
    // atimes that readers of the store changed, and rewrite both for nothing).
    if (!changed && sc_.catalog.image_index && path_exists(layout_.image_index(*sc_.catalog.image_index)))
      return ok_status();
    // Everything the catalog will name is on disk, and every rename above durable (each was
    // followed by an fsync of its directory), before the catalog.
    // The daemon refuses a layer whose lower chain it cannot follow; publish never writes one.
    if (auto broken = format::unchained_layers(sc_.catalog); !broken.empty())
      return make_error(EBADMSG, "store " + store_ + ": layer " + broken.front().first + ": " + broken.front().second);
    EXTRAFS_TRY(commit, commit_store_catalog(store_, &sc_));
    report_.catalog_written = commit.catalog_written;
    return ok_status();
  }

  // Removes what a failed publish staged (a killed one leaves temporaries that the next publish removes).
  void abandon() {
    for (auto& l : layers_) {
      if (!l.blob_tmp.empty()) ::unlink(l.blob_tmp.c_str());
      if (!l.index_tmp.empty()) ::unlink(l.index_tmp.c_str());
    }
    if (!committed_) {
      if (lock_.held() && !created_dirs_.empty()) ::unlink(layout_.publish_lock().c_str());
      for (auto it = created_dirs_.rbegin(); it != created_dirs_.rend(); ++it) ::rmdir(it->c_str());
    }
    lock_.release();
  }
};

}  // namespace

Result<PublishReport> publish(const PublishRequest& req) {
  if (req.data_root.empty() == req.archive.empty()) return bad_input("give either --data-root or --archive");
  if (req.store.empty()) return bad_input("--to STORE is required");
  Publisher p(req);
  return p.run();
}

}  // namespace extrafs::store
