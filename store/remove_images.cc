#include "store/remove_images.h"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>

#include "common/posix_file.h"
#include "common/str_util.h"
#include "format/catalog.h"
#include "store/catalog_writer.h"
#include "store/docker_meta.h"
#include "store/layout.h"
#include "store/store_lock.h"

namespace extrafs::store {

namespace {

constexpr const char* kRepositories = "image/overlay2/repositories.json";
constexpr const char* kConfigs = "image/overlay2/imagedb/content/sha256";
constexpr const char* kImageMetadata = "image/overlay2/imagedb/metadata/sha256";
constexpr const char* kLayerdb = "image/overlay2/layerdb/sha256";
constexpr size_t kMinIdPrefix = 12;

bool lower_hex(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}
bool id_form(std::string_view hex) { return hex.size() >= kMinIdPrefix && hex.size() <= 64 && lower_hex(hex); }
// A reference docker lists as a tag ("name:tag"), not a digest reference ("name@sha256:...").
bool is_tag(const std::string& ref) { return ref.find('@') == std::string::npos; }
std::string short_id(const std::string& id) { return id.substr(7, 12); }

class Remover {
 public:
  explicit Remover(const RemoveRequest& req) : req_(req), layout_(req.store) {}

  Result<RemoveReport> run() {
    EXTRAFS_CHECK_STATUS(open_store());
    EXTRAFS_CHECK_STATUS(read_metadata());
    EXTRAFS_CHECK_STATUS(resolve());
    EXTRAFS_CHECK_STATUS(plan_layers());
    EXTRAFS_CHECK_STATUS(write());
    return report_;
  }

 private:
  const RemoveRequest& req_;
  StoreLayout layout_;
  std::string store_;
  Fd store_fd_;
  StoreWriteLock lock_;
  StoreCatalog sc_;
  nlohmann::json repositories_;
  std::map<std::string, std::string> refs_;  // every reference in repositories.json -> image id
  std::set<std::string> configs_;            // image ids with a config in imagedb
  std::set<std::string> remove_ids_;         // images to remove
  std::set<std::string> remove_refs_;        // references to remove
  std::set<std::string> marks_;              // layers carrying a removal mark
  std::set<std::string> drop_;               // layers to take out of the catalog
  RemoveReport report_;

  Status open_store() {
    store_ = layout_.root();
    EXTRAFS_TRY(locked, lock_existing_store(store_));
    store_fd_ = std::move(locked.fd);
    lock_ = std::move(locked.lock);
    EXTRAFS_TRY(sc, load_store_catalog(store_));
    if (sc.text.empty())
      return make_error(ENOENT, "store " + store_ + " has no extrafs catalog (nothing was published or indexed there)");
    sc_ = std::move(sc);
    EXTRAFS_TRY(marks, removed_layers(store_fd_.get(), store_));
    marks_ = std::move(marks);
    return ok_status();
  }

  Status read_metadata() {
    repositories_ = nlohmann::json::object();
    auto text = read_file_beneath(store_fd_.get(), kRepositories, store_, kMaxRepositoriesSize);
    if (text.ok()) {
      repositories_ = nlohmann::json::parse(*text, nullptr, false);
      if (repositories_.is_discarded() || !repositories_.is_object() ||
          (repositories_.contains("Repositories") && !repositories_["Repositories"].is_object()))
        return make_error(EBADMSG, layout_.repositories() + " is not valid JSON");
    } else if (text.code() != ENOENT) {
      return text.error();
    }
    if (repositories_.contains("Repositories"))
      for (const auto& [repo, refs] : repositories_["Repositories"].items()) {
        if (!refs.is_object())
          return make_error(EBADMSG, layout_.repositories() + ": bad entry for " + escape_control(repo));
        for (const auto& [ref, id] : refs.items())
          if (id.is_string()) refs_[ref] = id.get<std::string>();
      }
    auto names = list_dir_beneath(store_fd_.get(), kConfigs, store_);
    if (!names.ok() && names.code() != ENOENT) return names.error();
    if (names.ok())
      for (const auto& n : *names)
        if (is_hex64(n)) configs_.insert("sha256:" + n);
    return ok_status();
  }

  std::set<std::string> all_ids() const {
    std::set<std::string> ids = configs_;
    for (const auto& [ref, id] : refs_) ids.insert(id);
    return ids;
  }

  void remove_image(const std::string& id) {
    remove_ids_.insert(id);
    for (const auto& [ref, to] : refs_)
      if (to == id) remove_refs_.insert(ref);
  }

  Status resolve() {
    if (req_.all_untagged) {
      for (const auto& id : all_ids()) {
        bool tagged = false;
        for (const auto& [ref, to] : refs_) tagged |= to == id && is_tag(ref);
        if (!tagged) remove_image(id);
      }
      return ok_status();
    }
    std::vector<std::string> tags;
    for (const auto& arg : req_.images) {
      std::string_view hex = arg;
      bool by_id = hex.substr(0, 7) == "sha256:";
      if (by_id) hex.remove_prefix(7);
      // A bare run of hex digits is an id, unless a tag of that name exists.
      if (!by_id && id_form(hex) && !refs_.count(normalize_ref(arg))) by_id = true;
      if (!by_id) {
        const std::string ref = normalize_ref(arg);
        if (!refs_.count(ref)) return make_error(ENOENT, "no image " + escape_control(ref) + " in store " + store_);
        tags.push_back(ref);
        continue;
      }
      std::vector<std::string> matches;
      for (const auto& id : all_ids())
        if (std::string_view(id).substr(7, hex.size()) == hex) matches.push_back(id);
      if (matches.empty()) return make_error(ENOENT, "no image with id " + escape_control(arg) + " in store " + store_);
      if (matches.size() > 1)
        return make_error(ENOENT, fmt::format("image id {} is ambiguous in store {}: {} images start with it",
                                              escape_control(arg), store_, matches.size()));
      remove_image(matches.front());
    }
    // A tag goes; its image goes with its last tag (as with `docker rmi`).
    for (const auto& t : tags) remove_refs_.insert(t);
    for (const auto& t : tags) {
      const std::string& id = refs_.at(t);
      if (remove_ids_.count(id)) continue;
      bool kept = false;
      for (const auto& [ref, to] : refs_) kept |= to == id && is_tag(ref) && !remove_refs_.count(ref);
      if (!kept)
        remove_image(id);
      else
        report_.untagged.push_back(t);
    }
    return ok_status();
  }

  // The cache-ids of the layers of image `id`, from its config and the layerdb.
  Result<std::vector<std::string>> image_layers(const std::string& id) const {
    const std::string cfg_rel = std::string(kConfigs) + "/" + id.substr(7);
    EXTRAFS_TRY(cfg, read_file_beneath(store_fd_.get(), cfg_rel, store_, kMaxImageConfigSize));
    if (sha256_digest(cfg) != id) return make_error(EBADMSG, store_ + "/" + cfg_rel + " does not match its digest");
    auto diffs = parse_diff_ids(cfg);
    if (!diffs.ok()) return make_error(diffs.code(), store_ + "/" + cfg_rel + " " + diffs.error().message);
    std::vector<std::string> out;
    for (const auto& chain : chain_ids(*diffs)) {
      const std::string rel = std::string(kLayerdb) + "/" + chain.substr(7) + "/cache-id";
      EXTRAFS_TRY(text, read_file_beneath(store_fd_.get(), rel, store_, kMaxLineFileSize));
      std::string cid = trim_trailing(text);
      if (!is_cache_id(cid)) return make_error(EBADMSG, store_ + "/" + rel + " is not a valid cache id");
      out.push_back(std::move(cid));
    }
    return out;
  }

  std::string describe(const std::string& id) const {
    std::string tags;
    for (const auto& [ref, to] : refs_)
      if (to == id && is_tag(ref)) tags += (tags.empty() ? " (" : ", ") + escape_control(ref);
    return "image " + short_id(id) + (tags.empty() ? "" : tags + ")");
  }

  Status plan_layers() {
    std::set<std::string> used, freed;
    for (const auto& id : all_ids()) {
      if (remove_ids_.count(id)) {
        if (auto layers = image_layers(id); layers.ok()) freed.insert(layers->begin(), layers->end());
        continue;
      }
      auto layers = image_layers(id);
      if (!layers.ok())
        return make_error(ENOENT,
                          fmt::format("{} stays in store {} but rm cannot tell which layers it uses ({}); remove it "
                                      "too (by its id) or repair it",
                                      describe(id), store_, layers.error().message));
      used.insert(layers->begin(), layers->end());
    }
    for (const auto& l : sc_.catalog.layers)
      if (!used.count(l.cache_id) && (freed.count(l.cache_id) || marks_.count(l.cache_id))) {
        drop_.insert(l.cache_id);
        report_.layers_dropped.push_back(l.cache_id);
        report_.bytes_dropped += l.bytes;
      }
    for (const auto& id : remove_ids_) {
      RemovedImage r{id, {}};
      for (const auto& [ref, to] : refs_)
        if (to == id) r.refs.push_back(ref);
      report_.images.push_back(std::move(r));
    }
    return ok_status();
  }

  Status write_marks() {
    if (drop_.empty()) return ok_status();
    EXTRAFS_CHECK_STATUS(make_dirs(layout_.removed_dir()));
    EXTRAFS_CHECK_STATUS(check_dir_beneath(store_fd_.get(), kRemovedDir, store_));
    for (const auto& id : drop_) {
      if (marks_.count(id)) continue;
      Status st = write_new_file(layout_.removed_marker(id), "", 0644);
      if (!st.ok() && st.code() != EEXIST) return st;
    }
    return fsync_dir(layout_.removed_dir());
  }

  Status write_repositories() {
    if (remove_refs_.empty()) return ok_status();
    auto& repos = repositories_["Repositories"];
    for (const auto& ref : remove_refs_) {
      for (auto it = repos.begin(); it != repos.end(); ++it) {
        if (!it->is_object() || !it->contains(ref)) continue;
        it->erase(ref);
        if (it->empty()) repos.erase(it);
        break;
      }
    }
    EXTRAFS_CHECK_STATUS(check_dir_beneath(store_fd_.get(), "image/overlay2", store_));
    return write_file_atomic(layout_.repositories(), repositories_.dump());
  }

  Status remove_configs() {
    bool any = false;
    for (const auto& id : remove_ids_) {
      const std::string hex = id.substr(7);
      if (!configs_.count(id)) continue;
      EXTRAFS_CHECK_STATUS(remove_beneath(store_fd_.get(), std::string(kConfigs) + "/" + hex, store_));
      // docker's own bookkeeping of the image (parent, lastUpdated), in stores copied from a data-root
      EXTRAFS_CHECK_STATUS(remove_beneath(store_fd_.get(), std::string(kImageMetadata) + "/" + hex, store_));
      any = true;
    }
    if (!any) return ok_status();
    EXTRAFS_CHECK_STATUS(fsync_dir(store_ + "/" + kConfigs));
    if (is_dir(store_ + "/" + kImageMetadata)) EXTRAFS_CHECK_STATUS(fsync_dir(store_ + "/" + kImageMetadata));
    return ok_status();
  }

  // The layerdb entries whose cache-id is a dropped layer (a layer's entry names its cache-id).
  Status remove_layerdb() {
    if (drop_.empty()) return ok_status();
    auto names = list_dir_beneath(store_fd_.get(), kLayerdb, store_);
    if (!names.ok()) return names.code() == ENOENT ? ok_status() : Status(names.error());
    bool any = false;
    const std::string pid = std::to_string(::getpid());
    for (const auto& n : *names) {
      if (!is_hex64(n)) continue;
      auto cid =
          read_file_beneath(store_fd_.get(), std::string(kLayerdb) + "/" + n + "/cache-id", store_, kMaxLineFileSize);
      if (!cid.ok() || !drop_.count(trim_trailing(*cid))) continue;
      // Out of the way in one rename, then removed (a killed rm leaves an ".old-" directory that
      // the next writer removes).
      const std::string old = ".old-" + n + "-" + pid;
      EXTRAFS_TRY(dir, open_beneath(store_fd_.get(), kLayerdb, O_RDONLY | O_DIRECTORY, store_));
      if (::renameat(dir.get(), n.c_str(), dir.get(), old.c_str()) != 0)
        return Error::from_errno(errno, store_ + "/" + kLayerdb + "/" + n);
      EXTRAFS_CHECK_STATUS(remove_beneath(store_fd_.get(), std::string(kLayerdb) + "/" + old, store_));
      any = true;
    }
    if (any) EXTRAFS_CHECK_STATUS(fsync_dir(store_ + "/" + kLayerdb));
    return ok_status();
  }

  // Marks of layers the catalog names (a killed rm's, whose images were published again since).
  Status remove_stale_marks() {
    for (const auto& l : sc_.catalog.layers)
      if (marks_.count(l.cache_id))
        EXTRAFS_CHECK_STATUS(remove_beneath(store_fd_.get(), removed_marker_path(l.cache_id), store_));
    return ok_status();
  }

  Status write() {
    report_.generation = sc_.catalog.generation;
    if (remove_refs_.empty() && remove_ids_.empty() && drop_.empty()) return remove_stale_marks();
    EXTRAFS_CHECK_STATUS(write_marks());
    EXTRAFS_CHECK_STATUS(write_repositories());
    EXTRAFS_CHECK_STATUS(remove_configs());
    EXTRAFS_CHECK_STATUS(remove_layerdb());
    std::erase_if(sc_.catalog.layers, [&](const format::CatalogLayer& l) { return drop_.count(l.cache_id) > 0; });
    // Every layer of an image that stays is in the catalog still, so no lower chain is cut.
    if (auto broken = format::unchained_layers(sc_.catalog); !broken.empty())
      return make_error(EBADMSG, "store " + store_ + ": layer " + broken.front().first + ": " + broken.front().second);
    EXTRAFS_TRY(commit, commit_store_catalog(store_, &sc_));
    report_.catalog_written = commit.catalog_written;
    report_.generation = sc_.catalog.generation;
    return remove_stale_marks();
  }
};

}  // namespace

Status check_image_argument(std::string_view arg) {
  std::string_view hex = arg;
  if (hex.substr(0, 7) == "sha256:") {
    hex.remove_prefix(7);
    if (id_form(hex)) return ok_status();
    return make_error(EINVAL,
                      "'" + escape_control(arg) + "' is not an image id (sha256: and 12 to 64 lowercase hex digits)");
  }
  if (id_form(hex)) return ok_status();
  return check_reference(normalize_ref(std::string(arg)));
}

Result<RemoveReport> remove_images(const RemoveRequest& req) {
  if (req.store.empty()) return make_error(EINVAL, "--from STORE is required");
  if (req.all_untagged == !req.images.empty()) return make_error(EINVAL, "give either IMAGE... or --all-untagged");
  for (const auto& i : req.images) EXTRAFS_CHECK_STATUS(check_image_argument(i));
  Remover r(req);
  return r.run();
}

Result<std::set<std::string>> removed_layers(int store_fd, const std::string& store) {
  std::set<std::string> out;
  auto names = list_dir_beneath(store_fd, kRemovedDir, store);
  if (!names.ok()) {
    if (names.code() == ENOENT) return out;
    return names.error();
  }
  for (const auto& n : *names)
    if (is_cache_id(n)) out.insert(n);
  return out;
}

}  // namespace extrafs::store
