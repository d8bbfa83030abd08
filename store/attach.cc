#include "store/attach.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <utility>

#include <nlohmann/json.hpp>

#include "common/mountinfo.h"
#include "common/posix_file.h"
#include "common/str_util.h"
#include "store/data_root.h"
#include "store/docker_meta.h"

namespace extrafs::store {

namespace {

// A layer as it is in the data-root.
struct LocalLayer {
  std::string cache_id;
  std::string link;
  std::string lower;
};

// The expected `lower` of a layer whose parent has link `plink` and lower `plower`.
std::string child_lower(const std::string& plink, const std::string& plower) {
  return "l/" + plink + (plower.empty() ? "" : ":" + plower);
}

// Makes overlay2/l/<new link> -> ../<cache_id>/diff; returns the link id.
Result<std::string> make_link(const DataRootPaths& p, const std::string& cache_id) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string id = random_link_id();
    const std::string l = p.links + "/" + id;
    if (::symlink(("../" + cache_id + "/diff").c_str(), l.c_str()) == 0) return id;
    if (errno != EEXIST) return Error::from_errno(errno, l);
  }
  return make_error(EEXIST, "could not find a free link name in " + p.links);
}

Status ensure_link_symlink(const DataRootPaths& p, const std::string& link, const std::string& cache_id, bool* changed) {
  const std::string l = p.links + "/" + link;
  const std::string want = "../" + cache_id + "/diff";
  auto cur = read_link(l);
  if (cur && *cur == want) return ok_status();
  if (path_exists(l)) return make_error(EEXIST, l + " exists and does not point at " + want);
  if (::symlink(want.c_str(), l.c_str()) != 0) return Error::from_errno(errno, l);
  *changed = true;
  return ok_status();
}

// Copies the layerdb entry of `layer` from the mount into the data-root (temporary directory in
// layerdb/tmp, renamed into layerdb/sha256/<hex>).
Status copy_layerdb_entry(const DataRootPaths& p, const std::string& mnt, const DockerLayer& layer,
                          const std::string& parent_chain) {
  const std::string hex = layer.chain_id.substr(7);
  const std::string src = mnt + "/image/overlay2/layerdb/sha256/" + hex;
  std::vector<std::pair<std::string, std::string>> files;
  for (const char* name : {"diff", "size", "cache-id", "parent", "tar-split.json.gz"}) {
    const std::string f = src + "/" + name;
    auto data = read_file(f);
    if (!data.ok()) {
      if (data.code() == ENOENT && (std::string(name) == "tar-split.json.gz" ||
                                    (std::string(name) == "parent" && parent_chain.empty())))
        continue;
      return data.error();
    }
    files.emplace_back(name, std::move(*data));
  }
  for (const auto& [name, data] : files) {
    if (name == "diff" && trim_trailing(data) != layer.diff_id)
      return make_error(EBADMSG, src + "/diff says " + trim_trailing(data) + ", the image config says " + layer.diff_id);
    if (name == "cache-id" && trim_trailing(data) != layer.cache_id)
      return make_error(EBADMSG, src + "/cache-id does not match");
    if (name == "parent" && trim_trailing(data) != parent_chain)
      return make_error(EBADMSG, src + "/parent says " + trim_trailing(data) + ", expected " +
                                     (parent_chain.empty() ? "none" : parent_chain));
  }
  std::string tmpl = p.layerdb_tmp + "/extrafs-XXXXXX";
  if (!::mkdtemp(tmpl.data())) return Error::from_errno(errno, p.layerdb_tmp);
  const std::string tmp = tmpl;
  auto cleanup = [&] { (void)remove_tree(tmp); };
  if (::chmod(tmp.c_str(), 0700) != 0) {
    cleanup();
    return Error::from_errno(errno, tmp);
  }
  for (const auto& [name, data] : files) {
    auto st = write_new_file(tmp + "/" + name, data, 0644);
    if (!st.ok()) {
      cleanup();
      return st;
    }
  }
  (void)fsync_dir(tmp);
  const std::string dst = p.layerdb_sha + "/" + hex;
  if (::rename(tmp.c_str(), dst.c_str()) != 0) {
    int e = errno;
    cleanup();
    return Error::from_errno(e, "renaming into " + dst);
  }
  return fsync_dir(p.layerdb_sha);
}

// Builds overlay2/<cache-id> for a layer served at `target`, under a temporary name, renamed into
// place once complete. The l/ symlink is made first (dangling until the rename).
Result<std::string> create_overlay_dir(const DataRootPaths& p, const std::string& cache_id, const std::string& target,
                                       const std::string& lower, bool base, bool committed) {
  EXTRAFS_TRY(link, make_link(p, cache_id));
  std::string tmpl = p.overlay2 + "/.extrafs-XXXXXX";
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
Result<bool> reuse_layer(const DataRootPaths& p, const std::string& ldb, const DockerLayer& layer,
                         const std::string& target, bool top, LocalLayer* here) {
  bool changed = false;
  EXTRAFS_TRY(cid, read_file(ldb + "/cache-id"));
  here->cache_id = trim_trailing(cid);
  if (!is_cache_id(here->cache_id)) return make_error(EBADMSG, ldb + "/cache-id is not a valid cache id");
  const std::string odir = p.overlay2 + "/" + here->cache_id;
  auto link = read_file(odir + "/link");
  if (!link.ok())
    return make_error(EBADMSG, "layer " + layer.chain_id + " in " + p.root + " has no " + odir +
                                   "/link; the data-root is damaged");
  here->link = trim_trailing(*link);
  if (auto lower = read_file(odir + "/lower"); lower.ok()) here->lower = trim_trailing(*lower);
  EXTRAFS_CHECK_STATUS(ensure_link_symlink(p, here->link, here->cache_id, &changed));
  // A diff symlink left dangling by a mount that moved: point it at this mount.
  const std::string diff = odir + "/diff";
  if (here->cache_id == layer.cache_id && is_symlink(diff) && read_link(diff) != target && !is_dir(diff)) {
    const std::string tmp = diff + ".extrafs-new";
    ::unlink(tmp.c_str());
    if (::symlink(target.c_str(), tmp.c_str()) != 0) return Error::from_errno(errno, tmp);
    if (::rename(tmp.c_str(), diff.c_str()) != 0) return Error::from_errno(errno, diff);
    EXTRAFS_CHECK_STATUS(fsync_dir(odir));
    changed = true;
  }
  if (!top && !path_exists(odir + "/committed")) {
    // What dockerd itself writes on a parent when it creates a child layer.
    EXTRAFS_CHECK_STATUS(write_new_file(odir + "/committed", "", 0600));
  }
  return changed;
}

// overlay2/<cache-id> was left by an attach that stopped before its layerdb rename: adopt it if
// it is ours (its diff points at `target`), else refuse to touch it.
Status adopt_overlay_dir(const DataRootPaths& p, const std::string& mnt, const std::string& odir, const std::string& target,
                         const std::string& want_lower, bool base, bool top, LocalLayer* here) {
  bool changed = false;
  if (read_link(odir + "/diff") != target || !path_exists(odir + "/link"))
    return make_error(EEXIST, odir + " already exists and was not made by extrafs docker attach from " + mnt +
                                  "; refusing to touch it");
  EXTRAFS_TRY(link, read_file(odir + "/link"));
  here->link = trim_trailing(link);
  EXTRAFS_CHECK_STATUS(ensure_link_symlink(p, here->link, here->cache_id, &changed));
  if (!base) {
    auto lower = read_file(odir + "/lower");
    if (!lower.ok() || trim_trailing(*lower) != want_lower) EXTRAFS_CHECK_STATUS(write_file_atomic(odir + "/lower", want_lower, 0644));
    EXTRAFS_CHECK_STATUS(mkdir_mode(odir + "/work", 0700));
  }
  if (!top && !path_exists(odir + "/committed")) EXTRAFS_CHECK_STATUS(write_new_file(odir + "/committed", "", 0600));
  return ok_status();
}

// The image config, then the tag: dockerd never sees a tag without its config.
Status write_config_and_tag(const DataRootPaths& p, const DockerImage& img, const std::string& ref, AttachResult* r) {
  const std::string cfg = p.content + "/" + img.id.substr(7);
  auto existing = read_file(cfg);
  if (!existing.ok() || *existing != img.config) {
    EXTRAFS_CHECK_STATUS(write_file_atomic(cfg, img.config, 0600));
    r->config_written = true;
  }
  EXTRAFS_TRY(repos, load_repositories(p.repos));
  auto& entry = repos["Repositories"][repo_of(ref)];
  if (!entry.is_object()) entry = nlohmann::json::object();
  if (!entry.contains(ref) || entry[ref] != img.id) {
    if (entry.contains(ref) && entry[ref].is_string()) r->previous_id = entry[ref].get<std::string>();
    entry[ref] = img.id;
    EXTRAFS_CHECK_STATUS(save_repositories(p.repos, repos));
    r->tag_written = true;
  }
  return ok_status();
}

Result<AttachResult> attach_one(const DataRootPaths& p, const std::string& mnt, const DockerImage& img,
                                const std::string& ref) {
  AttachResult r;
  r.ref = ref;
  r.image_id = img.id;
  r.layers = static_cast<int>(img.layers.size());
  LocalLayer below;  // the layer under the current one, as it is in the data-root
  std::string parent_chain;
  for (size_t i = 0; i < img.layers.size(); ++i) {
    const DockerLayer& layer = img.layers[i];
    const bool base = i == 0, top = i + 1 == img.layers.size();
    const std::string ldb = p.layerdb_sha + "/" + layer.chain_id.substr(7);
    const std::string target = mnt + "/overlay2/" + layer.cache_id + "/diff";
    const std::string want_lower = base ? "" : child_lower(below.link, below.lower);
    LocalLayer here;
    if (path_exists(ldb + "/cache-id")) {
      EXTRAFS_TRY(repaired, reuse_layer(p, ldb, layer, target, top, &here));
      ++(repaired ? r.layers_repaired : r.layers_present);
    } else {
      const std::string odir = p.overlay2 + "/" + layer.cache_id;
      here.cache_id = layer.cache_id;
      if (path_exists(odir)) {
        EXTRAFS_CHECK_STATUS(adopt_overlay_dir(p, mnt, odir, target, want_lower, base, top, &here));
        ++r.layers_repaired;
      } else {
        EXTRAFS_TRY(link, create_overlay_dir(p, layer.cache_id, target, want_lower, base, !top));
        here.link = link;
        ++r.layers_created;
      }
      here.lower = want_lower;
      EXTRAFS_CHECK_STATUS(copy_layerdb_entry(p, mnt, layer, parent_chain));
    }
    below = here;
    parent_chain = layer.chain_id;
  }
  EXTRAFS_CHECK_STATUS(write_config_and_tag(p, img, ref, &r));
  return r;
}

// Resolves every reference to an image the mount serves, checking that each layer is there.
Result<std::vector<std::pair<std::string, DockerImage>>> resolve_images(const std::string& mnt,
                                                                         const std::vector<std::string>& refs) {
  EXTRAFS_TRY(meta, DockerMeta::load(mnt));
  std::vector<std::pair<std::string, DockerImage>> images;
  for (const auto& in : refs) {
    EXTRAFS_TRY(ref, familiar_ref(in));
    auto img = meta.image(ref);
    if (!img.ok()) {
      if (img.code() == ENOENT && !meta.refs().count(ref))
        return make_error(ENOENT, "no image " + ref + " in " + mnt + " (see 'extrafs ls " + mnt + "')");
      return img.error();
    }
    if (img->layers.empty()) return make_error(EBADMSG, ref + " has no layers");
    if (img->layers.size() > static_cast<size_t>(kMaxLayers))
      return make_error(E2BIG, ref + " has " + std::to_string(img->layers.size()) + " layers; overlay2 takes at most 128");
    for (const auto& l : img->layers) {
      const std::string diff = mnt + "/overlay2/" + l.cache_id + "/diff";
      if (!is_dir(diff)) return make_error(ENOENT, diff + " is missing: the store does not serve layer " + l.cache_id);
    }
    images.emplace_back(ref, std::move(*img));
  }
  return images;
}

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

}  // namespace

Result<std::string> resolve_extrafs_mount(const std::string& mountpoint) {
  auto real = real_path(absolute_path(mountpoint));
  if (!real) return Error::from_errno(errno, mountpoint);
  std::string type;
  if (!is_mount_point(*real, &type)) return make_error(EINVAL, mountpoint + " is not an extrafs mount (nothing is mounted there)");
  if (type != "fuse.extrafs") return make_error(EINVAL, mountpoint + " is not an extrafs mount (it is " + type + ")");
  return *real;
}

Result<std::vector<AttachResult>> attach_images(const std::string& mountpoint, const std::string& data_root_in,
                                                const std::vector<std::string>& refs) {
  EXTRAFS_TRY(mnt, resolve_extrafs_mount(mountpoint));
  EXTRAFS_TRY(images, resolve_images(mnt, refs));
  EXTRAFS_TRY(data_root, make_data_root(data_root_in, mnt));
  EXTRAFS_TRY(lock, DataRootLock::take(data_root));
  DataRootPaths p(data_root);
  EXTRAFS_CHECK_STATUS(ensure_data_root_layout(p));
  std::vector<AttachResult> out;
  for (const auto& [ref, img] : images) {
    EXTRAFS_TRY(r, attach_one(p, mnt, img, ref));
    out.push_back(std::move(r));
  }
  return out;
}

Result<std::vector<std::string>> unattached_refs(const std::string& mountpoint, const std::string& data_root) {
  EXTRAFS_TRY(mnt, resolve_extrafs_mount(mountpoint));
  EXTRAFS_TRY(served, DockerMeta::load(mnt));
  // Tags are written last by attach: a tag pointing at the image means the attach completed.
  EXTRAFS_TRY(repos, load_repositories(DataRootPaths(data_root).repos));
  std::vector<std::string> out;
  for (const auto& [ref, id] : served.refs()) {
    if (ref.find('@') != std::string::npos) continue;  // a digest reference, not a tag
    const auto& r = repos["Repositories"];
    const std::string repo = repo_of(ref);
    const bool have = r.is_object() && r.contains(repo) && r[repo].is_object() && r[repo].contains(ref) &&
                      r[repo][ref].is_string() && r[repo][ref].get<std::string>() == id;
    if (!have) out.push_back(ref);
  }
  return out;
}

}  // namespace extrafs::store
