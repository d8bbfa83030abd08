#include "store/gc.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>

#include "common/posix_file.h"
#include "common/str_util.h"
#include "format/catalog.h"
#include "store/layout.h"
#include "store/live_set.h"
#include "store/remove_images.h"
#include "store/store_lock.h"

namespace extrafs::store {

namespace {

struct Action {
  GcKind kind;
  std::string rel;  // relative to the store root
  TreeUsage usage;
};

// The directories whose entries a group of deletions removes: fsynced after the group.
const char* group_dir(GcKind k) {
  switch (k) {
    case GcKind::kGeneration:
      return "extrafs/catalog.d";
    case GcKind::kImageIndex:
      return "extrafs";
    case GcKind::kLayerIndex:
    case GcKind::kLayerBlob:
      return "extrafs/layers";
    case GcKind::kObject:
      return "extrafs/objects";
    case GcKind::kLink:
      return "overlay2/l";
    case GcKind::kLayerTree:
      return "overlay2";
    case GcKind::kMark:
      return kRemovedDir;
    case GcKind::kTemporary:
      return nullptr;  // many directories; nothing depends on them
  }
  return nullptr;
}

class Collector {
 public:
  explicit Collector(const GcRequest& req) : req_(req), layout_(req.store) {
    now_ = req.now ? req.now : static_cast<int64_t>(::time(nullptr));
  }

  Result<GcReport> run() {
    store_ = layout_.root();
    // A dry run changes nothing, not even what dead writers left.
    EXTRAFS_TRY(locked, lock_existing_store(store_, /*remove_dead=*/!req_.dry_run));
    store_fd_ = std::move(locked.fd);
    lock_ = std::move(locked.lock);
    EXTRAFS_TRY(live, compute_live_set(store_fd_.get(), store_, req_.grace, now_));
    live_ = std::move(live);
    for (const auto& u : live_.unreadable)
      report_.warnings.push_back("catalog generation not kept and unreadable (deleted): " + u);
    report_.kept_generations = live_.generations.size();
    report_.kept_layers = live_.layers.size();
    EXTRAFS_TRY(marks, removed_layers(store_fd_.get(), store_));
    for (const auto& id : marks) {
      struct stat st;
      if (::fstatat(store_fd_.get(), removed_marker_path(id).c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0)
        marks_[id] = st.st_mtim.tv_sec;
    }

    EXTRAFS_CHECK_STATUS(plan_generations());
    EXTRAFS_CHECK_STATUS(plan_image_indexes());
    EXTRAFS_CHECK_STATUS(plan_layer_files());
    EXTRAFS_CHECK_STATUS(plan_objects());
    EXTRAFS_CHECK_STATUS(plan_removed_layers());
    EXTRAFS_CHECK_STATUS(plan_temporaries());
    for (const auto& a : actions_) {
      auto& t = report_.freed[static_cast<size_t>(a.kind)];
      t.files += a.usage.files;
      t.bytes += a.usage.bytes;
      report_.total.files += a.usage.files;
      report_.total.bytes += a.usage.bytes;
    }
    if (!req_.dry_run) EXTRAFS_CHECK_STATUS(execute());
    return report_;
  }

 private:
  const GcRequest& req_;
  StoreLayout layout_;
  std::string store_;
  Fd store_fd_;
  StoreWriteLock lock_;
  int64_t now_ = 0;
  LiveSet live_;
  std::map<std::string, int64_t> marks_;       // layers rm removed -> when (the mark's mtime)
  std::vector<Action> actions_;                // in the order they run
  std::set<std::string> doomed_objects_;       // named by an image/ index gc deletes
  std::set<std::string> young_layer_indexes_;  // kept for now (too young): their objects stay
  std::set<std::string> young_image_indexes_;
  GcReport report_;

  struct Entry {
    std::string name;
    struct stat st;
  };
  // The regular files (or, with `any_type`, every entry) of the directory `rel`; none if it is
  // missing.
  Result<std::vector<Entry>> entries(const std::string& rel, bool any_type = false) {
    std::vector<Entry> out;
    auto dir = open_beneath(store_fd_.get(), rel, O_RDONLY | O_DIRECTORY, store_);
    if (!dir.ok()) {
      if (dir.code() == ENOENT) return out;
      return dir.error();
    }
    EXTRAFS_TRY(names, list_dir_beneath(dir->get(), "", store_ + "/" + rel));
    for (auto& n : names) {
      Entry e{std::move(n), {}};
      if (::fstatat(dir->get(), e.name.c_str(), &e.st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;
        return Error::from_errno(errno, store_ + "/" + rel + "/" + e.name);
      }
      if (any_type || S_ISREG(e.st.st_mode)) out.push_back(std::move(e));
    }
    return out;
  }

  bool old_enough(const struct stat& st) const { return st.st_mtim.tv_sec <= now_ - kUnnamedMinAge; }
  // Whether layer `id`, which no kept catalog names, was removed by rm (a mark) a whole grace
  // period ago: the catalog that rm replaced named it until then. (The kept generations say as
  // much when they are there; the mark says it also for a store whose catalogs before rm had no
  // generations.)
  bool removed_long_enough(const std::string& id) const {
    auto it = marks_.find(id);
    return it != marks_.end() && req_.grace <= static_cast<uint64_t>(now_) &&
           it->second <= now_ - static_cast<int64_t>(req_.grace);
  }

  void add(GcKind kind, std::string rel, const struct stat& st) {
    TreeUsage u;
    u.files = 1;
    u.bytes = S_ISREG(st.st_mode) ? static_cast<uint64_t>(st.st_size) : 0;
    actions_.push_back({kind, std::move(rel), u});
  }

  Status plan_generations() {
    for (const auto& f : live_.on_disk)
      if (!live_.keeps_generation(f.generation)) {
        const std::string rel = format::catalog_generation_path(f.generation);
        struct stat st {};
        if (::fstatat(store_fd_.get(), rel.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
        add(GcKind::kGeneration, rel, st);
      }
    return ok_status();
  }

  Status plan_image_indexes() {
    EXTRAFS_TRY(files, entries("extrafs"));
    for (const auto& e : files) {
      std::string_view n = e.name;
      if (n.substr(0, 6) != "image-" || n.size() != 6 + 32 + 6 || n.substr(38) != ".index") continue;
      const std::string hex(n.substr(6, 32));
      Digest128 d;
      if (!Digest128::from_hex(hex, &d) || d.hex() != hex || live_.image_indexes.count(hex)) continue;
      const std::string rel = "extrafs/" + e.name;
      if (!live_.dropped_image_indexes.count(hex) && !old_enough(e.st)) {
        report_.young++;
        young_image_indexes_.insert(rel);
        continue;
      }
      // What it named goes with it, however young (a damaged one names nothing known).
      if (auto objects = index_objects(store_fd_.get(), store_, rel); objects.ok())
        doomed_objects_.insert(objects->begin(), objects->end());
      add(GcKind::kImageIndex, rel, e.st);
    }
    return ok_status();
  }

  Status plan_layer_files() {
    EXTRAFS_TRY(files, entries("extrafs/layers"));
    std::vector<Action> indexes, blobs;
    for (const auto& e : files) {
      std::string_view n = e.name;
      bool index = n.size() > 6 && n.substr(n.size() - 6) == ".index";
      bool blob = n.size() > 5 && n.substr(n.size() - 5) == ".blob";
      if (!index && !blob) continue;
      const std::string id(n.substr(0, n.size() - (index ? 6 : 5)));
      if (!is_cache_id(id) || live_.layers.count(id)) continue;
      const std::string rel = "extrafs/layers/" + e.name;
      if (marks_.count(id)) {
        if (!removed_long_enough(id)) continue;
      } else if (!live_.dropped_layers.count(id) && !old_enough(e.st)) {
        report_.young++;
        if (index) young_layer_indexes_.insert(rel);
        continue;
      }
      add(index ? GcKind::kLayerIndex : GcKind::kLayerBlob, rel, e.st);
    }
    // Indexes before blobs: an index names its blob.
    std::stable_partition(actions_.begin(), actions_.end(),
                          [](const Action& a) { return a.kind != GcKind::kLayerBlob; });
    return ok_status();
  }

  Status plan_objects() {
    EXTRAFS_TRY(files, entries("extrafs/objects"));
    std::vector<const Entry*> candidates;
    // The kept image/ indexes first (small); the layer indexes only if something is left to judge.
    auto live_objects = [&](bool layers) -> Status {
      EXTRAFS_CHECK_STATUS(add_live_objects(store_fd_.get(), store_, layers, &live_));
      // An index kept for its youth names what it names only if it parses (writers rename
      // indexes into place whole; one that does not parse is no writer's and names nothing).
      for (const auto& rel : layers ? young_layer_indexes_ : young_image_indexes_)
        if (auto objects = index_objects(store_fd_.get(), store_, rel); objects.ok())
          live_.objects.insert(objects->begin(), objects->end());
      return ok_status();
    };
    auto judge = [&](bool layers) -> Status {
      if (auto st = live_objects(layers); !st.ok()) {
        report_.warnings.push_back("no content object deleted: " + st.error().message);
        candidates.clear();
        return ok_status();
      }
      std::erase_if(candidates, [&](const Entry* e) { return live_.objects.count(e->name) > 0; });
      return ok_status();
    };
    for (const auto& e : files) {
      Digest128 d;
      if (Digest128::from_hex(e.name, &d) && d.hex() == e.name) candidates.push_back(&e);
    }
    if (!candidates.empty()) EXTRAFS_CHECK_STATUS(judge(false));
    if (!candidates.empty()) EXTRAFS_CHECK_STATUS(judge(true));
    for (const Entry* e : candidates) {
      if (!doomed_objects_.count(e->name) && !old_enough(e->st)) {
        report_.young++;
        continue;
      }
      add(GcKind::kObject, "extrafs/objects/" + e->name, e->st);
    }
    return ok_status();
  }

  // The link of a removed layer in overlay2/l, if it is the symlink docker made for it.
  void plan_link(int overlay_fd, const std::string& id) {
    auto link = read_file_beneath(overlay_fd, id + "/link", store_ + "/overlay2", kMaxLineFileSize);
    if (!link.ok()) return;
    const std::string l = trim_trailing(*link);
    if (l.empty() || l.find('/') != std::string::npos || l == "." || l == ".." || live_.links.count(l)) return;
    auto dir = open_beneath(overlay_fd, "l", O_RDONLY | O_DIRECTORY, store_ + "/overlay2");
    if (!dir.ok()) return;
    struct stat st;
    char target[4096];
    if (::fstatat(dir->get(), l.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISLNK(st.st_mode)) return;
    ssize_t n = ::readlinkat(dir->get(), l.c_str(), target, sizeof target);
    if (n > 0 && std::string_view(target, static_cast<size_t>(n)) == "../" + id + "/diff")
      add(GcKind::kLink, "overlay2/l/" + l, st);
  }

  Status plan_removed_layers() {
    std::vector<std::string> gone;  // marks whose layer is out of every kept catalog
    for (const auto& [id, when] : marks_)
      if (!live_.layers.count(id) && removed_long_enough(id)) gone.push_back(id);
    if (gone.empty()) return ok_status();
    std::vector<std::string> marks;  // marks to delete: their layer directory is gone or goes now
    auto overlay = open_beneath(store_fd_.get(), "overlay2", O_RDONLY | O_DIRECTORY, store_);
    if (!overlay.ok() && overlay.code() != ENOENT) {
      report_.warnings.push_back("layer directories of removed layers left alone: " + overlay.error().message);
      return ok_status();
    }
    for (const auto& id : gone) {
      struct stat st;
      if (!overlay.ok() || ::fstatat(overlay->get(), id.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (overlay.ok() && errno != ENOENT) return Error::from_errno(errno, store_ + "/overlay2/" + id);
        marks.push_back(id);
        continue;
      }
      if (S_ISDIR(st.st_mode)) plan_link(overlay->get(), id);
      const std::string dir = "overlay2/" + id;
      auto usage = usage_beneath(store_fd_.get(), dir, store_);
      if (!usage.ok()) {
        report_.warnings.push_back("layer directory of a removed layer left alone: " + usage.error().message);
        continue;
      }
      actions_.push_back({GcKind::kLayerTree, dir, *usage});
      marks.push_back(id);
    }
    // The marks last: a tree half deleted by a killed gc keeps its mark, so `extrafs index`
    // never takes it for a new layer, and the next gc finishes it.
    for (const auto& id : marks) {
      const std::string rel = removed_marker_path(id);
      struct stat st {};
      if (::fstatat(store_fd_.get(), rel.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) add(GcKind::kMark, rel, st);
    }
    return ok_status();
  }

  Status plan_temporaries() {
    std::vector<std::string> dirs = writer_temporary_dirs();
    std::set<std::string> going;
    for (const auto& a : actions_)
      if (a.kind == GcKind::kLayerTree) going.insert(a.rel);
    // Each layer directory gets its link and lower through a temporary too.
    if (auto layers = entries("overlay2", /*any_type=*/true); layers.ok()) {
      for (const auto& e : *layers)
        if (S_ISDIR(e.st.st_mode) && is_cache_id(e.name) && !going.count("overlay2/" + e.name))
          dirs.push_back("overlay2/" + e.name);
    } else {
      report_.warnings.push_back("temporaries not looked for in " + layers.error().message);
    }
    for (const auto& dir : dirs) {
      auto found = entries(dir, /*any_type=*/true);
      if (!found.ok()) {
        report_.warnings.push_back("temporaries not looked for in " + found.error().message);
        continue;
      }
      for (const auto& e : *found) {
        if (!stale_temporary_pid(e.name) || !old_enough(e.st)) continue;
        const std::string rel = dir + "/" + e.name;
        EXTRAFS_TRY(usage, usage_beneath(store_fd_.get(), rel, store_));
        actions_.push_back({GcKind::kTemporary, rel, usage});
      }
    }
    return ok_status();
  }

  Status execute() {
    for (size_t i = 0; i < actions_.size(); ++i) {
      const Action& a = actions_[i];
      EXTRAFS_CHECK_STATUS(remove_beneath(store_fd_.get(), a.rel, store_));
      if (req_.after_delete) req_.after_delete(a.rel);
      // A group done: durable before anything it named goes (see gc.h).
      const bool last_of_group = i + 1 == actions_.size() || actions_[i + 1].kind != a.kind;
      if (last_of_group)
        if (const char* dir = group_dir(a.kind)) EXTRAFS_CHECK_STATUS(fsync_dir(store_ + "/" + dir));
    }
    return ok_status();
  }
};

}  // namespace

const char* gc_kind_name(GcKind kind) {
  switch (kind) {
    case GcKind::kGeneration:
      return "catalog generations";
    case GcKind::kImageIndex:
      return "image/ indexes";
    case GcKind::kLayerIndex:
      return "layer indexes";
    case GcKind::kLayerBlob:
      return "layer blobs";
    case GcKind::kObject:
      return "content objects";
    case GcKind::kLink:
      return "overlay2/l links";
    case GcKind::kLayerTree:
      return "overlay2 layer directories";
    case GcKind::kMark:
      return "removal marks";
    case GcKind::kTemporary:
      return "temporaries";
  }
  return "?";
}

Result<GcReport> collect_garbage(const GcRequest& req) {
  if (req.store.empty()) return make_error(EINVAL, "STORE is required");
  Collector c(req);
  return c.run();
}

}  // namespace extrafs::store
