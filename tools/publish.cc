#include "tools/publish.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "common/str_util.h"
#include "fs/catalog.h"
#include "fs/indexer.h"
#include "fs/layer_index.h"
#include "tools/docker_meta.h"
#include "tools/publish_blob.h"
#include "tools/publish_tar.h"

namespace extrafs::tools {

namespace {

Error bad_input(const std::string& msg) { return make_error(EINVAL, msg); }

bool is_dir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool exists(const std::string& p) {
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0;
}
std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}
std::string hex_of(const std::string& digest) { return digest.substr(digest.find(':') + 1); }

// Writes `data` to a new file `path` and fsyncs it (it is renamed into place later).
Status write_synced(const std::string& path, std::string_view data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Error::from_errno(errno, "create " + path);
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      return Error::from_errno(e, "write " + path);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    return Error::from_errno(e, "fsync " + path);
  }
  ::close(fd);
  return ok_status();
}

Status fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Error::from_errno(errno, dir);
  int r = ::fsync(fd);
  int e = errno;
  ::close(fd);
  if (r != 0) return Error::from_errno(e, "fsync " + dir);
  return ok_status();
}

std::string random_chars(size_t n, std::string_view alphabet) {
  std::string out;
  while (out.size() < n) {
    unsigned char b[64];
    ssize_t got = ::getrandom(b, sizeof b, 0);
    EXTRAFS_INVARIANT(got > 0, "getrandom failed");
    for (ssize_t i = 0; i < got && out.size() < n; ++i) {
      // Rejection sampling keeps every character equally likely.
      unsigned limit = 256 - 256 % alphabet.size();
      if (b[i] < limit) out += alphabet[b[i] % alphabet.size()];
    }
  }
  return out;
}

// Removes leftovers of publishes that were killed: "*.tmp-<pid>" / "*.tmp.<pid>" files and
// ".tmp-*-<pid>" / ".old-*-<pid>" directories whose process is gone.
void remove_stale(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> victims;
  while (struct dirent* de = ::readdir(d)) {
    std::string n = de->d_name;
    size_t pos = n.find(".tmp-");
    if (pos == std::string::npos) pos = n.find(".tmp.");
    if (pos == std::string::npos) pos = n.rfind(".old-", 0) == 0 ? 0 : std::string::npos;
    if (pos == std::string::npos) continue;
    size_t dash = n.find_last_of("-.");
    auto pid = parse_uint(n.substr(dash + 1));
    if (!pid || *pid == 0 || *pid > 0x7fffffff) continue;
    if (static_cast<pid_t>(*pid) == ::getpid()) continue;
    if (::kill(static_cast<pid_t>(*pid), 0) == 0 || errno == EPERM) continue;
    victims.push_back(dir + "/" + n);
  }
  ::closedir(d);
  for (const auto& v : victims) {
    std::error_code ec;
    std::filesystem::remove_all(v, ec);
  }
}

struct LayerPlan {
  std::string diff_id, chain_id, parent_chain;
  std::string src_cache_id;   // --data-root: the data-root's cache-id
  std::string src_layerdb;    // --data-root: its layerdb directory
  bool has_tar_split = false;
  uint64_t src_size = 0;      // --data-root: its layerdb size
  std::string archive_layer;  // --archive: path of the layer tar in the archive
  uint64_t size_hint = 0;     // for progress

  bool present = false;       // already in the store
  std::string cache_id, link;
  std::optional<std::string> lower;

  // Staged (written to temporaries, not yet renamed into place).
  std::string blob_tmp, index_tmp;
  fs::CatalogLayer catalog;
  uint64_t docker_size = 0;
};

struct ImagePlan {
  std::string id;      // sha256:...
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
    if (!req_.data_root.empty()) EXTRAFS_CHECK_STATUS(plan_data_root());
    else EXTRAFS_CHECK_STATUS(plan_archive());
    EXTRAFS_CHECK_STATUS(open_store());
    EXTRAFS_CHECK_STATUS(decide());
    for (size_t i = 0; i < layers_.size(); ++i)
      if (!layers_[i].present) EXTRAFS_CHECK_STATUS(stage(layers_[i]));
    EXTRAFS_CHECK_STATUS(commit());
    return report_;
  }

 private:
  const PublishRequest& req_;
  std::vector<LayerPlan> layers_;           // base first, deduplicated by chain ID
  std::vector<ImagePlan> images_;
  std::optional<SaveArchive> archive_;
  std::vector<std::pair<std::string, std::string>> order_;  // (cache-id, path)
  std::string store_;
  std::vector<std::string> created_dirs_;   // removed again if the publish fails
  int lock_fd_ = -1;
  bool committed_ = false;
  nlohmann::json repositories_;
  fs::StoreCatalog sc_;
  PublishReport report_;
  PublishProgress progress_;

  std::string layers_dir() const { return store_ + "/extrafs/layers"; }
  std::string layerdb_dir() const { return store_ + "/image/overlay2/layerdb/sha256"; }

  void tick(uint64_t bytes) {
    progress_.bytes_done += bytes;
    if (req_.progress) req_.progress(progress_);
  }

  Status read_order() {
    if (req_.order_file.empty()) return ok_status();
    auto text = read_text_file(req_.order_file);
    if (!text.ok()) return bad_input("--order: " + text.error().message);
    EXTRAFS_TRY(order, parse_order_trace(*text));
    order_ = std::move(order);
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
    if (!is_dir(root + "/image/overlay2"))
      return bad_input("data-root " + root + " has no image/overlay2 (not a dockerd data-root with the overlay2 driver)");
    auto meta = DockerMeta::load(root);
    if (!meta.ok()) return bad_input(meta.error().message);
    for (const auto& ref : req_.images) {
      auto img = meta->image(ref);
      if (!img.ok()) return bad_input(img.error().message);
      ImagePlan ip{img->id, img->config, {}};
      if (ref.rfind("sha256:", 0) == 0) ip.tags = img->tags;
      else ip.tags.push_back(normalize_ref(ref));
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
        if (!is_dir(root + "/overlay2/" + l.cache_id + "/diff"))
          return bad_input("layer " + l.cache_id + " of " + ref + " has no " + root + "/overlay2/" + l.cache_id + "/diff");
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

  Status mkdir_tracked(const std::string& path) {
    // Creates the missing components of `path`, remembering them.
    std::vector<std::string> missing;
    std::string cur = path;
    while (!cur.empty() && cur != "/" && !exists(cur)) {
      missing.push_back(cur);
      auto s = cur.rfind('/');
      if (s == std::string::npos) break;
      cur = cur.substr(0, s);
    }
    for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
      if (::mkdir(it->c_str(), 0755) != 0 && errno != EEXIST) return Error::from_errno(errno, "create " + *it);
      created_dirs_.push_back(*it);
    }
    if (!is_dir(path)) return make_error(ENOTDIR, path + " is not a directory");
    return ok_status();
  }

  Status open_store() {
    store_ = req_.store;
    while (store_.size() > 1 && store_.back() == '/') store_.pop_back();
    if (exists(store_) && !is_dir(store_)) return make_error(ENOTDIR, "store " + store_ + " is not a directory");
    EXTRAFS_CHECK_STATUS(mkdir_tracked(layers_dir()));
    lock_fd_ = ::open((store_ + "/extrafs/.publish.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd_ < 0) return Error::from_errno(errno, "store " + store_ + ": lock file");
    if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0)
      return make_error(EBUSY, "store " + store_ + " is being written by another extrafs publish");
    remove_stale(layers_dir());
    if (is_dir(layerdb_dir())) remove_stale(layerdb_dir());
    EXTRAFS_TRY(sc, fs::load_store_catalog(store_));
    sc_ = std::move(sc);
    const std::string repo_path = store_ + "/image/overlay2/repositories.json";
    repositories_ = nlohmann::json::object();
    if (exists(repo_path)) {
      EXTRAFS_TRY(text, read_text_file(repo_path));
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
      if (auto cid = read_text_file(db + "/cache-id"); cid.ok()) known = trim(*cid);
      const fs::CatalogLayer* cat = known.empty() ? nullptr : sc_.catalog.find(known);
      if (cat && exists(store_ + "/" + fs::layer_index_path(known))) {
        l.present = true;
        l.cache_id = known;
        l.link = cat->link;
        l.lower = cat->lower;
        report_.layers_present++;
      } else {
        // A layer an interrupted publish left half-done keeps its cache-id (it is overwritten).
        if (!known.empty() && known.find('/') == std::string::npos && known[0] != '.' && !sc_.catalog.find(known)) l.cache_id = known;
        else if (!l.src_cache_id.empty() && !sc_.catalog.find(l.src_cache_id)) l.cache_id = l.src_cache_id;
        else l.cache_id = random_cache_id();
        if (auto link = read_text_file(store_ + "/overlay2/" + l.cache_id + "/link"); link.ok() && !trim(*link).empty())
          l.link = trim(*link);
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
    l.blob_tmp = layers_dir() + "/." + l.cache_id + ".blob.tmp-" + pid;
    EXTRAFS_TRY(blob, BlobWriter::create(l.blob_tmp, "extrafs/layers/" + l.cache_id + ".blob"));
    std::string index;
    if (!req_.data_root.empty()) {
      fs::WalkOptions opts;
      opts.first = order_for({l.src_cache_id, l.cache_id});
      opts.on_file = [this](uint64_t n) { tick(n); };
      const std::string diff = req_.data_root + "/overlay2/" + l.src_cache_id + "/diff";
      auto bytes = fs::index_directory(diff, *blob, opts);
      if (!bytes.ok()) return make_error(bytes.code(), "layer " + l.src_cache_id + ": " + bytes.error().message);
      index = std::move(bytes).value();
      l.docker_size = l.src_size;
    } else {
      LayerTarOptions opts;
      opts.first = order_for({l.cache_id});
      opts.scratch_dir = layers_dir();
      opts.on_bytes = [this](uint64_t n) { tick(n); };
      LayerTarResult res;
      auto diff_id = archive_->read_layer(l.archive_layer, [&](struct archive* a) -> Status {
        EXTRAFS_TRY(r, convert_layer_tar(a, *blob, opts));
        res = std::move(r);
        return ok_status();
      });
      if (!diff_id.ok()) return make_error(diff_id.code() == EBADMSG ? EINVAL : diff_id.code(), diff_id.error().message);
      if (*diff_id != l.diff_id)
        return bad_input(fmt::format("{}: layer {} has diffID {} but the image config says {}", req_.archive, l.archive_layer,
                                     *diff_id, l.diff_id));
      index = std::move(res.index);
      l.docker_size = res.docker_size;
    }
    EXTRAFS_CHECK_STATUS(blob->finish());
    auto parsed = fs::LayerIndex::parse(index);
    if (!parsed.ok()) return make_error(EIO, "index of layer " + l.cache_id + " does not verify: " + parsed.error().message);
    l.index_tmp = layers_dir() + "/." + l.cache_id + ".index.tmp-" + pid;
    EXTRAFS_CHECK_STATUS(write_synced(l.index_tmp, index));
    l.catalog.cache_id = l.cache_id;
    l.catalog.index_digest = (*parsed)->digest();
    l.catalog.link = l.link;
    l.catalog.lower = l.lower;
    l.catalog.bytes = (*parsed)->content_bytes();
    report_.raw_bytes += blob->raw_bytes();
    report_.stored_bytes += blob->size();
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
      EXTRAFS_TRY(ts, read_text_file(l.src_layerdb + "/tar-split.json.gz"));
      EXTRAFS_CHECK_STATUS(write_synced(tmp + "/tar-split.json.gz", ts));
    }
    EXTRAFS_CHECK_STATUS(fsync_dir(tmp));
    if (exists(fin)) {
      const std::string old = layerdb_dir() + "/.old-" + hex + "-" + pid;
      if (::rename(fin.c_str(), old.c_str()) != 0) return Error::from_errno(errno, "rename " + fin);
      std::filesystem::remove_all(old, ec);
    }
    if (::rename(tmp.c_str(), fin.c_str()) != 0) return Error::from_errno(errno, "rename " + tmp);
    return ok_status();
  }

  Status commit() {
    EXTRAFS_CHECK_STATUS(mkdir_tracked(layerdb_dir()));
    EXTRAFS_CHECK_STATUS(mkdir_tracked(store_ + "/image/overlay2/imagedb/content/sha256"));
    EXTRAFS_CHECK_STATUS(mkdir_tracked(store_ + "/overlay2"));
    committed_ = true;  // from here on, what is renamed into place stays
    bool changed = false;
    for (auto& l : layers_) {
      if (l.present) continue;
      const std::string base = layers_dir() + "/" + l.cache_id;
      if (::rename(l.blob_tmp.c_str(), (base + ".blob").c_str()) != 0) return Error::from_errno(errno, "rename " + l.blob_tmp);
      l.blob_tmp.clear();
      if (::rename(l.index_tmp.c_str(), (base + ".index").c_str()) != 0) return Error::from_errno(errno, "rename " + l.index_tmp);
      l.index_tmp.clear();
      const std::string ov = store_ + "/overlay2/" + l.cache_id;
      if (::mkdir(ov.c_str(), 0755) != 0 && errno != EEXIST) return Error::from_errno(errno, "create " + ov);
      EXTRAFS_CHECK_STATUS(fs::write_file_atomic(ov + "/link", l.link));
      if (l.lower) EXTRAFS_CHECK_STATUS(fs::write_file_atomic(ov + "/lower", *l.lower));
      else if (exists(ov + "/lower")) ::unlink((ov + "/lower").c_str());
      EXTRAFS_CHECK_STATUS(write_layerdb(l));
      fs::merge_catalog_layer(&sc_.catalog, l.catalog);
      report_.layers_written++;
      changed = true;
    }
    for (const auto& img : images_) {
      const std::string path = store_ + "/image/overlay2/imagedb/content/sha256/" + hex_of(img.id);
      auto have = read_text_file(path);
      if (!have.ok() || *have != img.config) {
        EXTRAFS_CHECK_STATUS(fs::write_file_atomic(path, img.config));
        changed = true;
      }
      for (const auto& tag : img.tags) {
        auto [name, t] = split_ref(tag);
        repositories_["Repositories"][name][name + ":" + t] = img.id;
        report_.tags.push_back(name + ":" + t);
      }
    }
    if (!repositories_.contains("Repositories")) repositories_["Repositories"] = nlohmann::json::object();
    const std::string repo_path = store_ + "/image/overlay2/repositories.json";
    std::string repo_text = repositories_.dump();
    auto old_repo = read_text_file(repo_path);
    if (!old_repo.ok() || *old_repo != repo_text) {
      EXTRAFS_CHECK_STATUS(fs::write_file_atomic(repo_path, repo_text));
      changed = true;
    }
    // Nothing new: leave the catalog and the image/ index alone (re-indexing image/ would pick up
    // atimes that readers of the store changed, and rewrite both for nothing).
    if (!changed && sc_.catalog.image_index &&
        exists(store_ + "/" + fs::image_index_path(*sc_.catalog.image_index)))
      return ok_status();
    // Everything the catalog will name is on disk (and its renames durable) before the catalog.
    EXTRAFS_CHECK_STATUS(fsync_dir(layers_dir()));
    EXTRAFS_TRY(commit, fs::commit_store_catalog(store_, &sc_));
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
      if (lock_fd_ >= 0 && !created_dirs_.empty()) ::unlink((store_ + "/extrafs/.publish.lock").c_str());
      for (auto it = created_dirs_.rbegin(); it != created_dirs_.rend(); ++it) ::rmdir(it->c_str());
    }
    if (lock_fd_ >= 0) ::close(lock_fd_);
    lock_fd_ = -1;
  }
};

}  // namespace

std::string random_link_id() { return random_chars(26, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"); }
std::string random_cache_id() { return random_chars(64, "0123456789abcdef"); }

Result<std::vector<std::pair<std::string, std::string>>> parse_order_trace(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> out;
  std::set<std::pair<std::string, std::string>> seen;
  size_t start = 0, line_no = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    start = end + 1;
    line_no++;
    if (line.empty()) continue;
    size_t s1 = line.find(' ');
    size_t s2 = s1 == std::string::npos ? s1 : line.find(' ', s1 + 1);
    if (s2 == std::string::npos || s1 == 0 || !parse_uint(line.substr(s1 + 1, s2 - s1 - 1)))
      return make_error(EINVAL, fmt::format("trace line {}: expected '<cache-id> <entry> <path>'", line_no));
    std::string path;
    for (size_t i = s2 + 1; i < line.size(); ++i) {
      if (line[i] == '\\' && i + 1 < line.size()) {
        char c = line[++i];
        if (c == 'n') path += '\n';
        else if (c == '\\') path += '\\';
        else return make_error(EINVAL, fmt::format("trace line {}: bad escape \\{}", line_no, c));
      } else {
        path += line[i];
      }
    }
    while (!path.empty() && path.front() == '/') path.erase(0, 1);
    if (path.empty()) continue;
    std::pair<std::string, std::string> item{line.substr(0, s1), path};
    if (seen.insert(item).second) out.push_back(std::move(item));
  }
  return out;
}

Result<PublishReport> publish(const PublishRequest& req) {
  if (req.data_root.empty() == req.archive.empty()) return bad_input("give either --data-root or --archive");
  if (req.store.empty()) return bad_input("--to STORE is required");
  Publisher p(req);
  return p.run();
}

}  // namespace extrafs::tools
