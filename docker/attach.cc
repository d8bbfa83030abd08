#include "docker/attach.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/mountinfo.h"
#include "common/posix_file.h"
#include "common/str_util.h"
#include "docker/dockerd_probe.h"
#include "store/docker_meta.h"
#include "store/layout.h"

namespace extrafs::docker {

using store::DockerImage;
using store::DockerLayer;
using store::DockerMeta;
using store::kMaxImageConfigSize;
using store::kMaxLineFileSize;
using store::kMaxTarSplitSize;

namespace {

// One layer of an image as the mount serves it, read before the data-root lock.
struct SourceLayer {
  DockerLayer layer;
  std::string parent_chain;                                // "" for the base
  std::vector<std::pair<std::string, std::string>> files;  // diff, size, cache-id[, parent]: checked
  std::string src;                                         // MNT/image/overlay2/layerdb/sha256/<hex>
  std::string target;                                      // MNT/overlay2/<cache-id>/diff
};

struct SourceImage {
  std::string ref;
  DockerImage img;
  std::vector<SourceLayer> layers;
};

// A layer as it is in the data-root.
struct LocalLayer {
  std::string cache_id;
  std::string link;
  std::string lower;
};

// One pass of attach_one over the data-root: the dry run of plan() (reads and checks, writes
// nothing) or the real one of apply().
struct Pass {
  bool dry = true;
  std::string mnt;
  std::map<std::string, const SourceLayer*>* to_stage;  // dry: layers whose layerdb entry is to be made
  std::map<std::string, std::string>* staged;           // chain ID -> its entry staged in layerdb/tmp
  std::set<std::string>* dangling;                      // diff symlink targets plan() found dangling
  bool writes = false;                                  // dry: something would be written
};

// The expected `lower` of a layer whose parent has link `plink` and lower `plower`.
std::string child_lower(const std::string& plink, const std::string& plower) {
  return "l/" + plink + (plower.empty() ? "" : ":" + plower);
}

// Makes overlay2/l/<new link> -> ../<cache_id>/diff; returns the link id.
Result<std::string> make_link(const DataRootPaths& p, const std::string& cache_id) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string id = store::random_link_id();
    const std::string l = p.links + "/" + id;
    if (::symlink(("../" + cache_id + "/diff").c_str(), l.c_str()) == 0) return id;
    if (errno != EEXIST) return Error::from_errno(errno, l);
  }
  return make_error(EEXIST, "could not find a free link name in " + p.links);
}

Status ensure_link_symlink(const DataRootPaths& p, const std::string& link, const std::string& cache_id, Pass& pass,
                           bool* changed) {
  const std::string l = p.links + "/" + link;
  const std::string want = "../" + cache_id + "/diff";
  auto cur = read_link(l);
  if (cur && *cur == want) return ok_status();
  if (path_exists(l)) return make_error(EEXIST, l + " exists and does not point at " + want);
  *changed = true;
  if (pass.dry) {
    pass.writes = true;
    return ok_status();
  }
  if (::symlink(want.c_str(), l.c_str()) != 0) return Error::from_errno(errno, l);
  return ok_status();
}

// Reads the small layerdb files of `layer` from the mount and checks them against the image.
Result<SourceLayer> read_source_layer(const std::string& mnt, const DockerLayer& layer,
                                      const std::string& parent_chain) {
  SourceLayer s;
  s.layer = layer;
  s.parent_chain = parent_chain;
  s.src = mnt + "/image/overlay2/layerdb/sha256/" + layer.chain_id.substr(7);
  s.target = mnt + "/overlay2/" + layer.cache_id + "/diff";
  for (const char* name : {"diff", "size", "cache-id", "parent"}) {
    const std::string f = s.src + "/" + name;
    auto data = read_file(f, kMaxLineFileSize);
    if (!data.ok()) {
      if (data.code() == ENOENT && std::string(name) == "parent" && parent_chain.empty()) continue;
      return data.error();
    }
    s.files.emplace_back(name, std::move(*data));
  }
  for (const auto& [name, data] : s.files) {
    const std::string v = trim_trailing(data);
    if (name == "diff" && v != layer.diff_id)
      return make_error(EBADMSG,
                        s.src + "/diff says " + escape_control(v) + ", the image config says " + layer.diff_id);
    if (name == "cache-id" && v != layer.cache_id) return make_error(EBADMSG, s.src + "/cache-id does not match");
    if (name == "parent" && v != parent_chain)
      return make_error(EBADMSG, s.src + "/parent says " + escape_control(v) + ", expected " +
                                     (parent_chain.empty() ? "none" : parent_chain));
    if (name == "size" && !parse_uint(v)) return make_error(EBADMSG, s.src + "/size is not a number");
  }
  if (!is_dir(s.target))
    return make_error(ENOENT, s.target + " is missing: the store does not serve layer " + layer.cache_id);
  return s;
}

// Resolves `ref` to an image the mount serves and reads what attach needs of it.
Result<SourceImage> read_source_image(const DockerMeta& meta, const std::string& mnt, const std::string& ref) {
  auto img = meta.image(ref);
  if (!img.ok()) {
    if (img.code() == ENOENT && !meta.refs().count(ref))
      return make_error(ENOENT, "no image " + ref + " in " + mnt + " (see 'extrafs ls " + mnt + "')");
    return img.error();
  }
  if (img->layers.empty()) return make_error(EBADMSG, ref + " has no layers");
  if (img->layers.size() > static_cast<size_t>(kMaxLayers))
    return make_error(E2BIG,
                      ref + " has " + std::to_string(img->layers.size()) + " layers; overlay2 takes at most 128");
  SourceImage s;
  s.ref = ref;
  std::string parent;
  for (const auto& l : img->layers) {
    EXTRAFS_TRY(layer, read_source_layer(mnt, l, parent));
    s.layers.push_back(std::move(layer));
    parent = l.chain_id;
  }
  s.img = std::move(*img);
  return s;
}

// Copies the layerdb entry of `l` from the mount into a new directory in layerdb/tmp (its
// tar-split too), for install_layerdb_entry to rename into place later. Returns the directory.
Result<std::string> stage_layerdb_entry(const DataRootPaths& p, const SourceLayer& l) {
  std::vector<std::pair<std::string, std::string>> files = l.files;
  const std::string ts = l.src + "/tar-split.json.gz";
  auto tar_split = read_file(ts, kMaxTarSplitSize);
  if (tar_split.ok())
    files.emplace_back("tar-split.json.gz", std::move(*tar_split));
  else if (tar_split.code() != ENOENT)
    return tar_split.error();
  std::string tmpl = p.layerdb_tmp + "/" + kLayerdbTmpPrefix + "XXXXXX";
  if (!::mkdtemp(tmpl.data())) return Error::from_errno(errno, p.layerdb_tmp);
  const std::string tmp = tmpl;
  auto fail = [&](Error e) -> Error {
    (void)remove_tree(tmp);
    return e;
  };
  if (::chmod(tmp.c_str(), 0700) != 0) return fail(Error::from_errno(errno, tmp));
  for (const auto& [name, data] : files)
    if (auto st = write_new_file(tmp + "/" + name, data, 0644); !st.ok()) return fail(st.error());
  if (auto st = fsync_dir(tmp); !st.ok()) return fail(st.error());
  return tmp;
}

Status install_layerdb_entry(const DataRootPaths& p, const std::string& staged, const std::string& chain_id) {
  const std::string dst = p.layerdb_sha + "/" + chain_id.substr(7);
  if (::rename(staged.c_str(), dst.c_str()) != 0) return Error::from_errno(errno, "renaming into " + dst);
  return fsync_dir(p.layerdb_sha);
}

// The layerdb entry of `l` must be created: noted in the dry pass (prepare() stages it), renamed
// into place in the real one. Without a staged entry (the data-root lost the layer between the
// passes) the real pass cannot read the mount to make one: EAGAIN.
Status layerdb_entry(const DataRootPaths& p, const SourceLayer& l, Pass& pass) {
  const std::string& chain = l.layer.chain_id;
  if (pass.dry) {
    pass.writes = true;
    pass.to_stage->emplace(chain, &l);
    return ok_status();
  }
  auto it = pass.staged->find(chain);
  if (it == pass.staged->end())
    return make_error(EAGAIN, "layer " + chain + " left " + p.root + " while attach prepared; run attach again");
  EXTRAFS_CHECK_STATUS(install_layerdb_entry(p, it->second, chain));
  pass.staged->erase(it);
  return ok_status();
}

// Builds overlay2/<cache-id> for a layer served at `target`, under a temporary name, renamed into
// place once complete. The l/ symlink is made first (dangling until the rename).
Result<std::string> create_overlay_dir(const DataRootPaths& p, const std::string& cache_id, const std::string& target,
                                       const std::string& lower, bool base, bool committed) {
  EXTRAFS_TRY(link, make_link(p, cache_id));
  std::string tmpl = p.overlay2 + "/" + kOverlayTmpPrefix + "XXXXXX";
  if (!::mkdtemp(tmpl.data())) return Error::from_errno(errno, p.overlay2);
  const std::string tmp = tmpl;
  auto fail = [&](Error e) -> Error {
    (void)remove_tree(tmp);
    ::unlink((p.links + "/" + link).c_str());
    return e;
  };
  if (::chmod(tmp.c_str(), 0710) != 0) return fail(Error::from_errno(errno, tmp));
  if (::symlink(target.c_str(), (tmp + "/diff").c_str()) != 0) return fail(Error::from_errno(errno, tmp + "/diff"));
  if (auto st = write_new_file(tmp + "/link", link, 0644); !st.ok()) return fail(st.error());
  if (!base) {
    if (auto st = write_new_file(tmp + "/lower", lower, 0644); !st.ok()) return fail(st.error());
    if (auto st = mkdir_mode(tmp + "/work", 0700); !st.ok()) return fail(st.error());
  }
  if (committed) {
    if (auto st = write_new_file(tmp + "/committed", "", 0600); !st.ok()) return fail(st.error());
  }
  (void)fsync_dir(tmp);
  const std::string dst = p.overlay2 + "/" + cache_id;
  if (::rename(tmp.c_str(), dst.c_str()) != 0) return fail(Error::from_errno(errno, "renaming into " + dst));
  (void)fsync_dir(p.overlay2);
  return link;
}

// The layer is in the layerdb already (attached before, or pulled or built by dockerd itself):
// reuse it, repairing its l/ symlink, a dangling diff symlink and a missing `committed`.
// Returns whether anything was repaired.
Result<bool> reuse_layer(const DataRootPaths& p, const std::string& ldb, const SourceLayer& s, bool top,
                         LocalLayer* here, Pass& pass) {
  bool changed = false;
  EXTRAFS_TRY(cid, read_file(ldb + "/cache-id", kMaxLineFileSize));
  here->cache_id = trim_trailing(cid);
  if (!is_cache_id(here->cache_id)) return make_error(EBADMSG, ldb + "/cache-id is not a valid cache id");
  const std::string odir = p.overlay2 + "/" + here->cache_id;
  auto link = read_file(odir + "/link", kMaxLineFileSize);
  if (!link.ok())
    return make_error(
        EBADMSG, "layer " + s.layer.chain_id + " in " + p.root + " has no " + odir + "/link; the data-root is damaged");
  here->link = trim_trailing(*link);
  if (auto lower = read_file(odir + "/lower", kMaxLineFileSize); lower.ok()) here->lower = trim_trailing(*lower);
  EXTRAFS_CHECK_STATUS(ensure_link_symlink(p, here->link, here->cache_id, pass, &changed));
  // A diff symlink left dangling by a mount that moved: point it at this mount. Whether it
  // dangles is asked in the dry pass only (the answer may take a lookup in another mount).
  const std::string diff = odir + "/diff";
  const auto cur = read_link(diff);
  if (here->cache_id == s.layer.cache_id && cur && *cur != s.target) {
    if (pass.dry) {
      if (!is_dir(diff)) {
        pass.dangling->insert(*cur);
        pass.writes = true;
        changed = true;
      }
    } else if (pass.dangling->count(*cur)) {
      const std::string tmp = diff + ".extrafs-new";
      ::unlink(tmp.c_str());
      if (::symlink(s.target.c_str(), tmp.c_str()) != 0) return Error::from_errno(errno, tmp);
      if (::rename(tmp.c_str(), diff.c_str()) != 0) return Error::from_errno(errno, diff);
      EXTRAFS_CHECK_STATUS(fsync_dir(odir));
      changed = true;
    }
  }
  if (!top && !path_exists(odir + "/committed")) {
    // What dockerd itself writes on a parent when it creates a child layer.
    if (pass.dry)
      pass.writes = true;
    else
      EXTRAFS_CHECK_STATUS(write_new_file(odir + "/committed", "", 0600));
  }
  return changed;
}

// overlay2/<cache-id> was left by an attach that stopped before its layerdb rename: adopt it if
// it is ours (its diff points at `target`), else refuse to touch it.
Status adopt_overlay_dir(const DataRootPaths& p, const std::string& odir, const SourceLayer& s,
                         const std::string& want_lower, bool base, bool top, LocalLayer* here, Pass& pass) {
  bool changed = false;
  if (read_link(odir + "/diff") != s.target || !path_exists(odir + "/link"))
    return make_error(EEXIST, odir + " already exists and was not made by extrafs docker attach from " + pass.mnt +
                                  "; refusing to touch it");
  EXTRAFS_TRY(link, read_file(odir + "/link", kMaxLineFileSize));
  here->link = trim_trailing(link);
  EXTRAFS_CHECK_STATUS(ensure_link_symlink(p, here->link, here->cache_id, pass, &changed));
  pass.writes = true;
  if (pass.dry) return ok_status();
  if (!base) {
    auto lower = read_file(odir + "/lower", kMaxLineFileSize);
    if (!lower.ok() || trim_trailing(*lower) != want_lower)
      EXTRAFS_CHECK_STATUS(write_file_atomic(odir + "/lower", want_lower, 0644));
    EXTRAFS_CHECK_STATUS(mkdir_mode(odir + "/work", 0700));
  }
  if (!top && !path_exists(odir + "/committed")) EXTRAFS_CHECK_STATUS(write_new_file(odir + "/committed", "", 0600));
  return ok_status();
}

// The image config, then the tag: dockerd never sees a tag without its config.
Status write_config_and_tag(const DataRootPaths& p, const DockerImage& img, const std::string& ref, AttachResult* r,
                            Pass& pass) {
  const std::string cfg = p.content + "/" + img.id.substr(7);
  auto existing = read_file(cfg, kMaxImageConfigSize);
  if (!existing.ok() || *existing != img.config) {
    if (!pass.dry) EXTRAFS_CHECK_STATUS(write_file_atomic(cfg, img.config, 0600));
    r->config_written = true;
  }
  EXTRAFS_TRY(repos, load_repositories(p.repos));
  auto& entry = repos["Repositories"][repo_of(ref)];
  if (!entry.is_object()) entry = nlohmann::json::object();
  if (!entry.contains(ref) || entry[ref] != img.id) {
    if (entry.contains(ref) && entry[ref].is_string()) r->previous_id = entry[ref].get<std::string>();
    entry[ref] = img.id;
    if (!pass.dry) EXTRAFS_CHECK_STATUS(save_repositories(p.repos, repos));
    r->tag_written = true;
  }
  if (r->config_written || r->tag_written) pass.writes = true;
  return ok_status();
}

Result<AttachResult> attach_one(const DataRootPaths& p, const SourceImage& s, Pass& pass) {
  AttachResult r;
  r.ref = s.ref;
  r.image_id = s.img.id;
  r.layers = static_cast<int>(s.layers.size());
  LocalLayer below;  // the layer under the current one, as it is in the data-root
  for (size_t i = 0; i < s.layers.size(); ++i) {
    const SourceLayer& sl = s.layers[i];
    const DockerLayer& layer = sl.layer;
    const bool base = i == 0, top = i + 1 == s.layers.size();
    const std::string ldb = p.layerdb_sha + "/" + layer.chain_id.substr(7);
    const std::string want_lower = base ? "" : child_lower(below.link, below.lower);
    LocalLayer here;
    if (path_exists(ldb + "/cache-id")) {
      EXTRAFS_TRY(repaired, reuse_layer(p, ldb, sl, top, &here, pass));
      ++(repaired ? r.layers_repaired : r.layers_present);
    } else {
      const std::string odir = p.overlay2 + "/" + layer.cache_id;
      here.cache_id = layer.cache_id;
      if (path_exists(odir)) {
        EXTRAFS_CHECK_STATUS(adopt_overlay_dir(p, odir, sl, want_lower, base, top, &here, pass));
        ++r.layers_repaired;
      } else {
        if (pass.dry) {
          here.link = "(new)";  // made in the real pass; the dry pass writes no lower file
        } else {
          EXTRAFS_TRY(link, create_overlay_dir(p, layer.cache_id, sl.target, want_lower, base, !top));
          here.link = link;
        }
        ++r.layers_created;
      }
      here.lower = want_lower;
      EXTRAFS_CHECK_STATUS(layerdb_entry(p, sl, pass));
    }
    below = here;
  }
  EXTRAFS_CHECK_STATUS(write_config_and_tag(p, s.img, s.ref, &r, pass));
  return r;
}

// Whether `repos` (a data-root's repositories.json) has `ref` pointing at `id`: tags are written
// last by attach, so that means the attach completed.
bool tag_points_at(const nlohmann::json& repos, const std::string& ref, const std::string& id) {
  const auto& r = repos["Repositories"];
  const std::string repo = repo_of(ref);
  return r.is_object() && r.contains(repo) && r[repo].is_object() && r[repo].contains(ref) &&
         r[repo][ref].is_string() && r[repo][ref].get<std::string>() == id;
}

class AttachChange : public DataRootChange {
 public:
  AttachChange(std::string mnt, std::vector<SourceImage> images, bool all, AttachReport* report)
      : mnt_(std::move(mnt)), images_(std::move(images)), all_(all), report_(report) {}
  ~AttachChange() override {
    for (const auto& [chain, dir] : staged_) (void)remove_tree(dir);
  }

  Result<bool> plan(const std::string& data_root) override {
    DataRootPaths p(data_root);
    if (all_) {
      // Attached meanwhile by another run: not again.
      EXTRAFS_TRY(repos, load_repositories(p.repos));
      std::erase_if(images_, [&](const SourceImage& s) { return tag_points_at(repos, s.ref, s.img.id); });
      if (images_.empty()) {
        report_->nothing_to_attach = true;
        return false;
      }
    }
    Pass pass{true, mnt_, &to_stage_, &staged_, &dangling_};
    std::vector<AttachResult> dry;
    for (const auto& s : images_) {
      EXTRAFS_TRY(r, attach_one(p, s, pass));
      dry.push_back(std::move(r));
    }
    if (!pass.writes) report_->images = std::move(dry);  // attached whole already: nothing to do
    return pass.writes;
  }

  Status prepare(const std::string& data_root) override {
    DataRootPaths p(data_root);
    EXTRAFS_CHECK_STATUS(ensure_data_root_layout(p));
    remove_dead_temporaries(p);
    for (const auto& [chain, layer] : to_stage_) {
      EXTRAFS_TRY(dir, stage_layerdb_entry(p, *layer));
      staged_[chain] = dir;
    }
    return ok_status();
  }

  Status apply(const std::string& data_root) override {
    DataRootPaths p(data_root);
    EXTRAFS_CHECK_STATUS(ensure_data_root_layout(p));
    Pass pass{false, mnt_, &to_stage_, &staged_, &dangling_};
    report_->images.clear();
    for (const auto& s : images_) {
      EXTRAFS_TRY(r, attach_one(p, s, pass));
      report_->images.push_back(std::move(r));
    }
    return ok_status();
  }

 private:
  std::string mnt_;
  std::vector<SourceImage> images_;
  bool all_;
  AttachReport* report_;
  std::map<std::string, const SourceLayer*> to_stage_;  // points into images_, fixed after plan()
  std::map<std::string, std::string> staged_;
  std::set<std::string> dangling_;
};

// Creates the data-root if it is missing (its parents 0755, itself 0710 as dockerd makes it);
// returns it resolved.
Result<std::string> make_data_root(const std::string& data_root_in, const std::string& mnt) {
  std::string data_root = absolute_path(data_root_in);
  if (auto st = mkdir_mode(data_root, 0710); !st.ok()) {
    // A deeper path that does not exist yet.
    EXTRAFS_CHECK_STATUS(make_dirs(parent_dir(data_root), 0755));
    if (::mkdir(data_root.c_str(), 0710) != 0 && errno != EEXIST) return Error::from_errno(errno, data_root);
  }
  data_root = real_path(data_root).value_or(data_root);
  if (data_root == mnt || data_root.rfind(mnt + "/", 0) == 0)
    return make_error(EINVAL, "data-root " + data_root + " lies inside the mount " + mnt);
  return data_root;
}

// The images `req` names, read from the mount. With `all`: every tag of the mount the data-root
// does not have yet (a first look, without the lock; plan() looks again under it). Tags docker
// would refuse never get here: DockerMeta::load leaves them out, with a warning.
Result<std::vector<SourceImage>> read_requested(const AttachRequest& req, const std::string& mnt) {
  EXTRAFS_TRY(meta, DockerMeta::load(mnt));
  std::vector<SourceImage> out;
  if (!req.all) {
    for (const auto& in : req.refs) {
      EXTRAFS_TRY(ref, familiar_ref(in));
      EXTRAFS_TRY(img, read_source_image(meta, mnt, ref));
      out.push_back(std::move(img));
    }
    return out;
  }
  auto repos = load_repositories(DataRootPaths(absolute_path(req.data_root)).repos);
  for (const auto& [ref, id] : meta.refs()) {
    if (repos.ok() && tag_points_at(*repos, ref, id)) continue;
    EXTRAFS_TRY(img, read_source_image(meta, mnt, ref));
    out.push_back(std::move(img));
  }
  return out;
}

}  // namespace

Result<std::string> resolve_extrafs_mount(const std::string& mountpoint) {
  auto real = real_path(absolute_path(mountpoint));
  if (!real) return Error::from_errno(errno, mountpoint);
  std::string type;
  if (!is_mount_point(*real, &type))
    return make_error(EINVAL, mountpoint + " is not an extrafs mount (nothing is mounted there)");
  if (type != "fuse.extrafs") return make_error(EINVAL, mountpoint + " is not an extrafs mount (it is " + type + ")");
  return *real;
}

Status docker_attach(const AttachRequest& req, AttachReport* report) {
  *report = AttachReport{};
  EXTRAFS_TRY(mnt, resolve_extrafs_mount(req.mount));
  EXTRAFS_CHECK_STATUS(check_overlay2_data_root(req.data_root));
  EXTRAFS_TRY(images, read_requested(req, mnt));
  EXTRAFS_TRY(data_root, make_data_root(req.data_root, mnt));
  AttachChange change(mnt, std::move(images), req.all, report);
  return run_with_dockerd_stopped(data_root, req.restart, change, req.restart_options, &report->restart);
}

}  // namespace extrafs::docker
