#include "docker/detach.h"

#include <stdlib.h>
#include <unistd.h>

#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "common/mountinfo.h"
#include "common/posix_file.h"
#include "common/str_util.h"
#include "docker/data_root.h"
#include "store/docker_meta.h"

namespace extrafs::docker {

namespace {

// One layer of the image as it is in the data-root.
struct Layer {
  std::string chain, cache_id, link, lower;
  bool ours = false;  // diff is a symlink into an extrafs mount: made by attach
};

// What else in the data-root uses the image or its layers.
struct Users {
  bool container_uses_image = false;
  bool child_image = false;           // an image built on this one
  std::set<std::string> used_chains;  // chain IDs of other images and of containers' layers
};

// Adds the link ids named by a `lower` file ("l/A:l/B:...") to `links`.
void add_lower_links(const std::string& lower, std::set<std::string>* links) {
  for (size_t pos = 0; pos <= lower.size();) {
    size_t end = lower.find(':', pos);
    if (end == std::string::npos) end = lower.size();
    std::string part = lower.substr(pos, end - pos);
    if (part.rfind("l/", 0) == 0) links->insert(part.substr(2));
    pos = end + 1;
  }
}

// The chain IDs of an image config (none if it is unreadable).
std::vector<std::string> chains_of_config(const std::string& text) {
  auto diffs = store::parse_diff_ids(text);
  return diffs.ok() ? store::chain_ids(*diffs) : std::vector<std::string>{};
}

// The id `ref` is tagged with, and the other tags of that id.
Result<std::string> find_tag(const nlohmann::json& repos, const std::string& ref, const std::string& data_root,
                             std::set<std::string>* other_tags) {
  std::string id;
  for (auto& [repo, refs] : repos["Repositories"].items())
    for (auto& [name, value] : refs.items())
      if (value.is_string() && name == ref) id = value.get<std::string>();
  if (id.empty()) return make_error(ENOENT, "no image " + ref + " in " + data_root);
  for (auto& [repo, refs] : repos["Repositories"].items())
    for (auto& [name, value] : refs.items())
      if (name != ref && name.find('@') == std::string::npos && value == id) other_tags->insert(name);
  return id;
}

// Whether attach made the layer `cache_id` whose diff symlink points at `target`: into an extrafs
// mount, or dangling (the mount is gone); dockerd never makes a symlink diff. Asks the mount
// table and looks the target up: plan() only.
bool made_by_attach(const std::string& cache_id, const std::string& target) {
  const std::string suffix = "/overlay2/" + cache_id + "/diff";
  const bool shape = target.size() > suffix.size() && target.front() == '/' &&
                     target.compare(target.size() - suffix.size(), suffix.size(), suffix) == 0;
  return shape && (fstype_of(target) == "fuse.extrafs" || !path_exists(target));
}

// The image's layers as they are in the data-root, base first (layers already gone are skipped).
// `ours` gives, for a diff symlink target, whether attach made the layer: judged by plan()
// (filled when `judge`), looked up by apply() (a target it never judged is not ours).
std::vector<Layer> local_layers(const DataRootPaths& p, const std::string& config, std::map<std::string, bool>* ours,
                                bool judge) {
  std::vector<Layer> layers;
  for (const auto& chain : chains_of_config(config)) {
    Layer l;
    l.chain = chain;
    auto cid = read_file(p.layerdb_sha + "/" + chain.substr(7) + "/cache-id");
    if (!cid.ok()) continue;  // already gone
    l.cache_id = trim_trailing(*cid);
    if (!is_cache_id(l.cache_id)) continue;
    const std::string odir = p.overlay2 + "/" + l.cache_id;
    if (auto link = read_file(odir + "/link"); link.ok()) l.link = trim_trailing(*link);
    if (auto lower = read_file(odir + "/lower"); lower.ok()) l.lower = trim_trailing(*lower);
    if (auto target = read_link(odir + "/diff")) {
      const std::string key = l.cache_id + " " + *target;
      if (judge) (*ours)[key] = made_by_attach(l.cache_id, *target);
      auto it = ours->find(key);
      l.ours = it != ours->end() && it->second;
    }
    layers.push_back(std::move(l));
  }
  return layers;
}

Users find_users(const DataRootPaths& p, const std::string& id) {
  Users u;
  if (auto ids = list_dir(p.content); ids.ok()) {
    for (const auto& hex : *ids) {
      if (hex == id.substr(7) || !is_hex64(hex)) continue;
      if (auto text = read_file(p.content + "/" + hex); text.ok())
        for (const auto& c : chains_of_config(*text)) u.used_chains.insert(c);
      if (auto parent = read_file(p.imagedb + "/metadata/sha256/" + hex + "/parent");
          parent.ok() && trim_trailing(*parent) == id)
        u.child_image = true;
    }
  }
  if (auto ids = list_dir(p.root + "/containers"); ids.ok()) {
    for (const auto& c : *ids) {
      auto text = read_file(p.root + "/containers/" + c + "/config.v2.json");
      if (!text.ok()) continue;
      auto j = nlohmann::json::parse(*text, nullptr, false);
      if (j.is_object() && j.contains("Image") && j["Image"] == id) u.container_uses_image = true;
    }
  }
  // A container's read-write layer: its parent chain is in use.
  if (auto mounts = list_dir(p.layerdb + "/mounts"); mounts.ok()) {
    for (const auto& m : *mounts) {
      auto parent = read_file(p.layerdb + "/mounts/" + m + "/parent");
      std::string chain = parent.ok() ? trim_trailing(*parent) : "";
      for (int depth = 0; !chain.empty() && depth < 256 && u.used_chains.insert(chain).second; ++depth) {
        auto up = read_file(p.layerdb_sha + "/" + chain.substr(chain.find(':') + 1) + "/parent");
        chain = up.ok() ? trim_trailing(*up) : "";
      }
    }
  }
  return u;
}

// Layers whose link is in the lower chain of a layer that stays (a container's layer, a layer
// built on top) stay too, and so, in turn, does their own lower chain.
void keep_lower_chains(const DataRootPaths& p, std::vector<Layer>* remove, DetachResult* r) {
  std::set<std::string> removing;
  for (const auto& l : *remove) removing.insert(l.cache_id);
  std::set<std::string> used_links;
  if (auto dirs = list_dir(p.overlay2); dirs.ok()) {
    for (const auto& d : *dirs) {
      if (d == "l" || removing.count(d)) continue;
      auto lower = read_file(p.overlay2 + "/" + d + "/lower");
      if (!lower.ok()) continue;
      add_lower_links(trim_trailing(*lower), &used_links);
    }
  }
  for (bool changed = true; changed;) {
    changed = false;
    for (auto it = remove->begin(); it != remove->end(); ++it) {
      if (!it->link.empty() && used_links.count(it->link)) {
        r->kept_layers.push_back(it->cache_id + " (in the lower chain of a container or another layer)");
        add_lower_links(it->lower, &used_links);
        remove->erase(it);
        changed = true;
        break;
      }
    }
  }
}

// Which layers go; records the others in r->kept_layers with the reason, and r->note.
std::vector<Layer> plan_removal(const DataRootPaths& p, const std::vector<Layer>& layers, const Users& users,
                                const std::set<std::string>& other_tags, DetachResult* r) {
  std::vector<Layer> remove;
  if (!other_tags.empty()) {
    r->note = "also tagged " + *other_tags.begin();
    for (const auto& l : layers)
      r->kept_layers.push_back(l.cache_id + " (image also tagged " + *other_tags.begin() + ")");
    return remove;
  }
  if (users.container_uses_image) {
    r->note = "a container uses the image";
    for (const auto& l : layers) r->kept_layers.push_back(l.cache_id + " (a container uses the image)");
    return remove;
  }
  if (users.child_image) r->note = "another image was built on it";
  for (const auto& l : layers) {
    if (!l.ours)
      r->kept_layers.push_back(l.cache_id + " (not made by extrafs docker attach)");
    else if (users.used_chains.count(l.chain))
      r->kept_layers.push_back(l.cache_id + " (used by another image or a container)");
    else
      remove.push_back(l);
  }
  keep_lower_chains(p, &remove, r);
  return remove;
}

// The tag (and, with the config, digest references to the image), so dockerd never sees a tag
// without its image.
Status remove_tag(const DataRootPaths& p, nlohmann::json& repos, const std::string& ref, const std::string& id,
                  bool keep_config) {
  for (auto it = repos["Repositories"].begin(); it != repos["Repositories"].end();) {
    auto& refs = it.value();
    for (auto jt = refs.begin(); jt != refs.end();) {
      if (jt.key() == ref || (!keep_config && jt.value() == id && jt.key().find('@') != std::string::npos))
        jt = refs.erase(jt);
      else
        ++jt;
    }
    if (refs.empty())
      it = repos["Repositories"].erase(it);
    else
      ++it;
  }
  return save_repositories(p.repos, repos);
}

Status remove_config(const DataRootPaths& p, const std::string& id) {
  const std::string cfg_path = p.content + "/" + id.substr(7);
  if (::unlink(cfg_path.c_str()) != 0 && errno != ENOENT) return Error::from_errno(errno, cfg_path);
  return remove_tree(p.imagedb + "/metadata/sha256/" + id.substr(7));
}

// One layer: the layerdb entry (renamed away first, so dockerd never sees an entry without its
// directory), the l/ symlink if it is the layer's, the overlay2 directory.
Status remove_layer(const DataRootPaths& p, const Layer& l) {
  const std::string ldb = p.layerdb_sha + "/" + l.chain.substr(7);
  std::string tmpl = p.layerdb_tmp + "/" + kLayerdbTmpPrefix + "rm-XXXXXX";
  (void)mkdir_mode(p.layerdb_tmp, 0755);
  if (!::mkdtemp(tmpl.data())) return Error::from_errno(errno, p.layerdb_tmp);
  const std::string graveyard = tmpl + "/entry";
  if (::rename(ldb.c_str(), graveyard.c_str()) != 0 && errno != ENOENT) return Error::from_errno(errno, ldb);
  EXTRAFS_CHECK_STATUS(fsync_dir(p.layerdb_sha));
  EXTRAFS_CHECK_STATUS(remove_tree(tmpl));
  if (!l.link.empty()) {
    const std::string link = p.links + "/" + l.link;
    if (read_link(link) == "../" + l.cache_id + "/diff") ::unlink(link.c_str());
  }
  return remove_tree(p.overlay2 + "/" + l.cache_id);
}

// One image out of the data-root. `judge`: the dry run of plan(), which checks, judges the
// layers into `ours` and removes nothing.
Result<DetachResult> detach_one(const DataRootPaths& p, const std::string& ref, std::map<std::string, bool>* ours,
                                bool judge) {
  DetachResult r;
  r.ref = ref;
  EXTRAFS_TRY(repos, load_repositories(p.repos));
  std::set<std::string> other_tags;
  EXTRAFS_TRY(id, find_tag(repos, ref, p.root, &other_tags));
  r.image_id = id;

  auto cfg = read_file(p.content + "/" + id.substr(7));
  const std::vector<Layer> layers = cfg.ok() ? local_layers(p, *cfg, ours, judge) : std::vector<Layer>{};
  bool any_ours = false;
  for (const auto& l : layers) any_ours |= l.ours;
  if (cfg.ok() && !any_ours && !layers.empty())
    return make_error(
        EINVAL, ref + " in " + p.root +
                    " was not attached by extrafs (none of its layers is served by an extrafs mount); use docker rmi");
  if (judge) return r;

  const Users users = find_users(p, id);
  const bool keep_config = !other_tags.empty() || users.container_uses_image || users.child_image;
  const std::vector<Layer> remove = plan_removal(p, layers, users, other_tags, &r);

  EXTRAFS_CHECK_STATUS(remove_tag(p, repos, ref, id, keep_config));
  if (!keep_config) {
    EXTRAFS_CHECK_STATUS(remove_config(p, id));
    r.config_removed = true;
  }
  for (auto it = remove.rbegin(); it != remove.rend(); ++it) {  // top first
    EXTRAFS_CHECK_STATUS(remove_layer(p, *it));
    r.removed_layers.push_back(it->cache_id);
  }
  return r;
}

class DetachChange : public DataRootChange {
 public:
  DetachChange(std::vector<std::string> refs, DetachReport* report) : refs_(std::move(refs)), report_(report) {}

  Result<bool> plan(const std::string& data_root) override {
    DataRootPaths p(data_root);
    for (const auto& ref : refs_) EXTRAFS_CHECK_STATUS(detach_one(p, ref, &ours_, true));
    return !refs_.empty();
  }

  Status prepare(const std::string& data_root) override {
    remove_dead_temporaries(DataRootPaths(data_root));
    return ok_status();
  }

  Status apply(const std::string& data_root) override {
    DataRootPaths p(data_root);
    for (const auto& ref : refs_) {
      EXTRAFS_TRY(r, detach_one(p, ref, &ours_, false));
      report_->images.push_back(std::move(r));
    }
    return ok_status();
  }

 private:
  std::vector<std::string> refs_;
  DetachReport* report_;
  std::map<std::string, bool> ours_;  // "cache-id diff-target" -> made by attach
};

}  // namespace

Status docker_detach(const DetachRequest& req, DetachReport* report) {
  *report = DetachReport{};
  std::vector<std::string> refs;
  for (const auto& in : req.refs) {
    EXTRAFS_TRY(ref, familiar_ref(in));
    refs.push_back(ref);
  }
  const std::string data_root = real_path(absolute_path(req.data_root)).value_or(absolute_path(req.data_root));
  if (!is_dir(data_root)) return make_error(ENOENT, "data-root " + data_root + " does not exist");
  DetachChange change(std::move(refs), report);
  return run_with_dockerd_stopped(data_root, req.restart, change, req.restart_options, &report->restart);
}

}  // namespace extrafs::docker
