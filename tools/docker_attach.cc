#include "tools/docker_attach.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/str_util.h"
#include "tools/docker_meta.h"
#include "tools/mount_cmd.h"

namespace extrafs::tools {

namespace {

constexpr int kMaxLayers = 128;  // overlay2's maxDepth

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r' || s.back() == '\t')) s.pop_back();
  return s;
}

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

bool lexists(const std::string& p) {
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0;
}

bool is_dir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_symlink(const std::string& p) {
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
}

std::optional<std::string> read_link(const std::string& p) {
  char buf[PATH_MAX + 1];
  ssize_t n = ::readlink(p.c_str(), buf, PATH_MAX);
  if (n < 0) return std::nullopt;
  return std::string(buf, static_cast<size_t>(n));
}

Result<std::vector<std::string>> list_dir(const std::string& p) {
  DIR* d = ::opendir(p.c_str());
  if (!d) return Error::from_errno(errno, p);
  std::vector<std::string> out;
  while (struct dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

bool dir_nonempty(const std::string& p) {
  auto l = list_dir(p);
  return l.ok() && !l->empty();
}

std::string absolute(const std::string& p) {
  if (!p.empty() && p.front() == '/') return p;
  char cwd[PATH_MAX];
  if (!::getcwd(cwd, sizeof cwd)) return p;
  return std::string(cwd) + "/" + p;
}

std::optional<std::string> real_path(const std::string& p) {
  char* r = ::realpath(p.c_str(), nullptr);
  if (!r) return std::nullopt;
  std::string out = r;
  std::free(r);
  return out;
}

Status fsync_path(const std::string& p, bool directory) {
  int fd = ::open(p.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return Error::from_errno(errno, p);
  int rc = ::fsync(fd);
  int e = errno;
  ::close(fd);
  if (rc != 0) return Error::from_errno(e, p);
  return ok_status();
}

std::string parent_dir(const std::string& p) {
  auto s = p.rfind('/');
  return s == 0 ? "/" : p.substr(0, s);
}

// Creates `path` with exactly `data` (fails if it exists), fsynced.
Status write_new_file(const std::string& path, const std::string& data, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) return Error::from_errno(errno, path);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      return Error::from_errno(e, path);
    }
    off += static_cast<size_t>(n);
  }
  if (::fchmod(fd, mode) != 0 || ::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    return Error::from_errno(e, path);
  }
  if (::close(fd) != 0) return Error::from_errno(errno, path);
  return ok_status();
}

std::string random_chars(size_t n, std::string_view alphabet) {
  std::string out;
  while (out.size() < n) {
    unsigned char buf[64];
    ssize_t got = ::getrandom(buf, sizeof buf, 0);
    if (got <= 0) continue;
    for (ssize_t i = 0; i < got && out.size() < n; ++i) {
      // Rejection sampling keeps the characters uniform.
      unsigned limit = 256 - 256 % alphabet.size();
      if (buf[i] < limit) out += alphabet[buf[i] % alphabet.size()];
    }
  }
  return out;
}

// Replaces `path` atomically (temporary file in the same directory, fsync, rename, fsync dir).
Status write_file_atomic(const std::string& path, const std::string& data, mode_t mode) {
  const std::string tmp = path + ".extrafs-" + random_chars(8, "abcdefghijklmnopqrstuvwxyz0123456789");
  auto st = write_new_file(tmp, data, mode);
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    return Error::from_errno(e, path);
  }
  return fsync_path(parent_dir(path), true);
}

Status mkdir_mode(const std::string& p, mode_t mode) {
  if (::mkdir(p.c_str(), mode) != 0) {
    if (errno == EEXIST && is_dir(p)) return ok_status();
    return Error::from_errno(errno, p);
  }
  if (::chmod(p.c_str(), mode) != 0) return Error::from_errno(errno, p);
  return ok_status();
}

// Removes a directory tree without following symlinks (a layer's `diff` symlink is unlinked, never
// entered) and without crossing into another file system.
Status remove_tree_at(int parent_fd, const std::string& name, const std::string& shown, dev_t dev) {
  struct stat st;
  if (::fstatat(parent_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return ok_status();
    return Error::from_errno(errno, shown);
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlinkat(parent_fd, name.c_str(), 0) != 0 && errno != ENOENT) return Error::from_errno(errno, shown);
    return ok_status();
  }
  if (st.st_dev != dev) return make_error(EBUSY, shown + " is a mount point; unmount it first");
  int fd = ::openat(parent_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return Error::from_errno(errno, shown);
  DIR* d = ::fdopendir(fd);
  if (!d) {
    int e = errno;
    ::close(fd);
    return Error::from_errno(e, shown);
  }
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  Status result = ok_status();
  for (const auto& n : names) {
    auto s = remove_tree_at(::dirfd(d), n, shown + "/" + n, dev);
    if (!s.ok()) {
      result = s;
      break;
    }
  }
  ::closedir(d);
  if (!result.ok()) return result;
  if (::unlinkat(parent_fd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) return Error::from_errno(errno, shown);
  return ok_status();
}

Status remove_tree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT ? ok_status() : Status(Error::from_errno(errno, path));
  const std::string dir = parent_dir(path);
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Error::from_errno(errno, dir);
  auto s = remove_tree_at(fd, path.substr(path.rfind('/') + 1), path, st.st_dev);
  ::close(fd);
  return s;
}

// An flock on the data-root directory: one attach/detach at a time per data-root.
class DataRootLock {
 public:
  static Result<DataRootLock> take(const std::string& root) {
    DataRootLock l;
    l.fd_ = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (l.fd_ < 0) return Error::from_errno(errno, root);
    for (int i = 0; i < 300; ++i) {
      if (::flock(l.fd_, LOCK_EX | LOCK_NB) == 0) return l;
      if (errno != EWOULDBLOCK) return Error::from_errno(errno, "locking " + root);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return make_error(EBUSY, "another extrafs docker attach/detach has been working on " + root + " for 30 s");
  }
  DataRootLock() = default;
  DataRootLock(DataRootLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  DataRootLock& operator=(DataRootLock&&) = delete;
  ~DataRootLock() {
    if (fd_ >= 0) ::close(fd_);
  }

 private:
  int fd_ = -1;
};

// The type of the file system `path` (absolute, not resolved through symlinks beyond what the
// caller did) lies on: the longest mount point that is a prefix of it.
std::string fstype_of(const std::string& path) {
  std::string best, type;
  for (const auto& m : read_mounts()) {
    const bool under = m.point == "/" || path == m.point ||
                       (path.size() > m.point.size() && path.compare(0, m.point.size(), m.point) == 0 &&
                        path[m.point.size()] == '/');
    if (under && m.point.size() >= best.size()) {
      best = m.point;
      type = m.fstype;
    }
  }
  return type;
}

// Splits "name:tag" into the repository key of repositories.json ("name").
std::string repo_of(const std::string& ref) { return ref.substr(0, ref.rfind(':')); }

struct Paths {
  std::string root, image, layerdb, layerdb_sha, layerdb_tmp, imagedb, content, overlay2, links, repos;
  explicit Paths(const std::string& r)
      : root(r),
        image(r + "/image/overlay2"),
        layerdb(image + "/layerdb"),
        layerdb_sha(layerdb + "/sha256"),
        layerdb_tmp(layerdb + "/tmp"),
        imagedb(image + "/imagedb"),
        content(imagedb + "/content/sha256"),
        overlay2(r + "/overlay2"),
        links(overlay2 + "/l"),
        repos(image + "/repositories.json") {}
};

Status ensure_layout(const Paths& p) {
  // Modes as dockerd 20.10 makes them.
  for (const auto& [dir, mode] : std::vector<std::pair<std::string, mode_t>>{
           {p.root + "/image", 0700},
           {p.image, 0700},
           {p.layerdb, 0700},
           {p.layerdb_sha, 0755},
           {p.layerdb_tmp, 0755},
           {p.imagedb, 0700},
           {p.imagedb + "/content", 0700},
           {p.content, 0700},
           {p.overlay2, 0710},
           {p.links, 0700}}) {
    EXTRAFS_CHECK_STATUS(mkdir_mode(dir, mode));
  }
  return ok_status();
}

Result<nlohmann::json> load_repositories(const std::string& path) {
  auto text = read_text_file(path);
  if (!text.ok()) {
    if (text.code() == ENOENT) return nlohmann::json{{"Repositories", nlohmann::json::object()}};
    return text.error();
  }
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(EBADMSG, path + " is not valid JSON; refusing to replace it");
  if (!j.contains("Repositories")) j["Repositories"] = nlohmann::json::object();
  if (!j["Repositories"].is_object()) return make_error(EBADMSG, path + ": Repositories is not an object");
  for (auto& [repo, refs] : j["Repositories"].items())
    if (!refs.is_object()) return make_error(EBADMSG, path + ": bad entry for " + repo);
  return j;
}

Status save_repositories(const std::string& path, const nlohmann::json& j) {
  struct stat st;
  mode_t mode = ::stat(path.c_str(), &st) == 0 ? (st.st_mode & 07777) : 0600;
  return write_file_atomic(path, j.dump(), mode);
}

// The expected `lower` of a layer whose parent has link `plink` and lower `plower`.
std::string child_lower(const std::string& plink, const std::string& plower) {
  return "l/" + plink + (plower.empty() ? "" : ":" + plower);
}

// Makes overlay2/l/<new link> -> ../<cache_id>/diff; returns the link id.
Result<std::string> make_link(const Paths& p, const std::string& cache_id) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string id = random_chars(26, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");
    const std::string l = p.links + "/" + id;
    if (::symlink(("../" + cache_id + "/diff").c_str(), l.c_str()) == 0) return id;
    if (errno != EEXIST) return Error::from_errno(errno, l);
  }
  return make_error(EEXIST, "could not find a free link name in " + p.links);
}

Status ensure_link_symlink(const Paths& p, const std::string& link, const std::string& cache_id, bool* changed) {
  const std::string l = p.links + "/" + link;
  const std::string want = "../" + cache_id + "/diff";
  auto cur = read_link(l);
  if (cur && *cur == want) return ok_status();
  if (lexists(l)) return make_error(EEXIST, l + " exists and does not point at " + want);
  if (::symlink(want.c_str(), l.c_str()) != 0) return Error::from_errno(errno, l);
  *changed = true;
  return ok_status();
}

struct LocalLayer {
  std::string cache_id;
  std::string link;
  std::string lower;
};

// Copies the layerdb entry of `layer` from the mount into the data-root (temporary directory in
// layerdb/tmp, renamed into layerdb/sha256/<hex>).
Status copy_layerdb_entry(const Paths& p, const std::string& mnt, const DockerLayer& layer, const std::string& parent_chain) {
  const std::string hex = layer.chain_id.substr(7);
  const std::string src = mnt + "/image/overlay2/layerdb/sha256/" + hex;
  std::vector<std::pair<std::string, std::string>> files;
  for (const char* name : {"diff", "size", "cache-id", "parent", "tar-split.json.gz"}) {
    const std::string f = src + "/" + name;
    auto data = read_text_file(f);
    if (!data.ok()) {
      if (data.code() == ENOENT && (std::string(name) == "tar-split.json.gz" ||
                                    (std::string(name) == "parent" && parent_chain.empty())))
        continue;
      return data.error();
    }
    files.emplace_back(name, std::move(*data));
  }
  for (const auto& [name, data] : files) {
    if (name == "diff" && trim(data) != layer.diff_id)
      return make_error(EBADMSG, src + "/diff says " + trim(data) + ", the image config says " + layer.diff_id);
    if (name == "cache-id" && trim(data) != layer.cache_id)
      return make_error(EBADMSG, src + "/cache-id does not match");
    if (name == "parent" && trim(data) != parent_chain)
      return make_error(EBADMSG, src + "/parent says " + trim(data) + ", expected " + (parent_chain.empty() ? "none" : parent_chain));
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
  (void)fsync_path(tmp, true);
  const std::string dst = p.layerdb_sha + "/" + hex;
  if (::rename(tmp.c_str(), dst.c_str()) != 0) {
    int e = errno;
    cleanup();
    return Error::from_errno(e, "renaming into " + dst);
  }
  return fsync_path(p.layerdb_sha, true);
}

// Builds overlay2/<cache-id> for a layer served at `target`, under a temporary name, renamed into
// place once complete. The l/ symlink is made first (dangling until the rename).
Result<std::string> create_overlay_dir(const Paths& p, const std::string& cache_id, const std::string& target,
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
  (void)fsync_path(tmp, true);
  const std::string dst = p.overlay2 + "/" + cache_id;
  if (::rename(tmp.c_str(), dst.c_str()) != 0) return fail(Error::from_errno(errno, "renaming into " + dst));
  (void)fsync_path(p.overlay2, true);
  return link;
}

Result<AttachResult> attach_one(const Paths& p, const std::string& mnt, const DockerImage& img, const std::string& ref) {
  AttachResult r;
  r.ref = ref;
  r.image_id = img.id;
  r.layers = static_cast<int>(img.layers.size());
  LocalLayer below;  // the layer under the current one, as it is in the data-root
  std::string parent_chain;
  for (size_t i = 0; i < img.layers.size(); ++i) {
    const DockerLayer& layer = img.layers[i];
    const bool base = i == 0, top = i + 1 == img.layers.size();
    const std::string hex = layer.chain_id.substr(7);
    const std::string ldb = p.layerdb_sha + "/" + hex;
    const std::string target = mnt + "/overlay2/" + layer.cache_id + "/diff";
    const std::string want_lower = base ? "" : child_lower(below.link, below.lower);
    LocalLayer here;
    bool changed = false;

    if (lexists(ldb + "/cache-id")) {
      // Present: attached before, or a layer dockerd pulled or built itself. Reuse it.
      EXTRAFS_TRY(cid, read_text_file(ldb + "/cache-id"));
      here.cache_id = trim(cid);
      if (here.cache_id.empty() || here.cache_id.find('/') != std::string::npos || here.cache_id[0] == '.')
        return make_error(EBADMSG, ldb + "/cache-id is not a valid cache id");
      const std::string odir = p.overlay2 + "/" + here.cache_id;
      auto link = read_text_file(odir + "/link");
      if (!link.ok())
        return make_error(EBADMSG, "layer " + layer.chain_id + " in " + p.root + " has no " + odir +
                                       "/link; the data-root is damaged");
      here.link = trim(*link);
      if (auto lower = read_text_file(odir + "/lower"); lower.ok()) here.lower = trim(*lower);
      EXTRAFS_CHECK_STATUS(ensure_link_symlink(p, here.link, here.cache_id, &changed));
      // A diff symlink left dangling by a mount that moved: point it at this mount.
      const std::string diff = odir + "/diff";
      if (here.cache_id == layer.cache_id && is_symlink(diff) && read_link(diff) != target && !is_dir(diff)) {
        const std::string tmp = diff + ".extrafs-new";
        ::unlink(tmp.c_str());
        if (::symlink(target.c_str(), tmp.c_str()) != 0) return Error::from_errno(errno, tmp);
        if (::rename(tmp.c_str(), diff.c_str()) != 0) return Error::from_errno(errno, diff);
        changed = true;
      }
      if (!top && !lexists(odir + "/committed")) {
        // What dockerd itself writes on a parent when it creates a child layer.
        EXTRAFS_CHECK_STATUS(write_new_file(odir + "/committed", "", 0600));
      }
      if (changed) ++r.layers_repaired;
      else ++r.layers_present;
    } else {
      const std::string odir = p.overlay2 + "/" + layer.cache_id;
      here.cache_id = layer.cache_id;
      if (lexists(odir)) {
        // Left by an attach that stopped before its layerdb rename: adopt it if it is ours.
        if (read_link(odir + "/diff") != target || !lexists(odir + "/link"))
          return make_error(EEXIST, odir + " already exists and was not made by extrafs docker attach from " + mnt +
                                        "; refusing to touch it");
        EXTRAFS_TRY(link, read_text_file(odir + "/link"));
        here.link = trim(link);
        EXTRAFS_CHECK_STATUS(ensure_link_symlink(p, here.link, here.cache_id, &changed));
        if (!base) {
          auto lower = read_text_file(odir + "/lower");
          if (!lower.ok() || trim(*lower) != want_lower) EXTRAFS_CHECK_STATUS(write_file_atomic(odir + "/lower", want_lower, 0644));
          EXTRAFS_CHECK_STATUS(mkdir_mode(odir + "/work", 0700));
        }
        if (!top && !lexists(odir + "/committed")) EXTRAFS_CHECK_STATUS(write_new_file(odir + "/committed", "", 0600));
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

  const std::string cfg = p.content + "/" + img.id.substr(7);
  auto existing = read_text_file(cfg);
  if (!existing.ok() || *existing != img.config) {
    EXTRAFS_CHECK_STATUS(write_file_atomic(cfg, img.config, 0600));
    r.config_written = true;
  }

  EXTRAFS_TRY(repos, load_repositories(p.repos));
  auto& entry = repos["Repositories"][repo_of(ref)];
  if (!entry.is_object()) entry = nlohmann::json::object();
  if (!entry.contains(ref) || entry[ref] != img.id) {
    if (entry.contains(ref) && entry[ref].is_string()) r.previous_id = entry[ref].get<std::string>();
    entry[ref] = img.id;
    EXTRAFS_CHECK_STATUS(save_repositories(p.repos, repos));
    r.tag_written = true;
  }
  return r;
}

// Parses dockerd's command line (and its config file) for the data-root it uses.
std::string dockerd_data_root(long pid, const std::vector<std::string>& args) {
  std::string root, config = kDaemonJson;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](const std::string& flag) -> std::optional<std::string> {
      if (a == flag && i + 1 < args.size()) return args[i + 1];
      if (a.rfind(flag + "=", 0) == 0) return a.substr(flag.size() + 1);
      return std::nullopt;
    };
    for (const char* f : {"--data-root", "--graph", "-g"})
      if (auto v = value(f)) root = *v;
    if (auto v = value("--config-file")) config = *v;
  }
  const std::string cwd = read_link("/proc/" + std::to_string(pid) + "/cwd").value_or("/");
  auto rel = [&](const std::string& x) { return x.empty() || x.front() == '/' ? x : cwd + "/" + x; };
  if (root.empty()) {
    if (auto text = read_text_file(rel(config)); text.ok()) {
      auto j = nlohmann::json::parse(*text, nullptr, false);
      if (j.is_object()) {
        for (const char* k : {"data-root", "graph"})
          if (j.contains(k) && j[k].is_string()) root = j[k].get<std::string>();
      }
    }
  }
  if (root.empty()) root = kDefaultDataRoot;
  return rel(root);
}

// A running (not zombie) dockerd: a zombie keeps its comm but has no command line, and must not
// count (an unreaped one may linger for a while).
bool live_dockerd(const std::string& pid) {
  auto comm = read_text_file("/proc/" + pid + "/comm");
  if (!comm.ok() || trim(*comm) != "dockerd") return false;
  auto stat = read_text_file("/proc/" + pid + "/stat");
  if (!stat.ok()) return false;
  auto close = stat->rfind(')');
  if (close == std::string::npos || close + 2 >= stat->size() || (*stat)[close + 2] == 'Z' || (*stat)[close + 2] == 'X')
    return false;
  auto cmdline = read_text_file("/proc/" + pid + "/cmdline");
  return cmdline.ok() && !cmdline->empty();
}

bool same_dir(const std::string& a, const struct stat& b_st, const std::string& b_real) {
  struct stat st;
  if (::stat(a.c_str(), &st) == 0 && st.st_dev == b_st.st_dev && st.st_ino == b_st.st_ino) return true;
  auto r = real_path(a);
  return r && *r == b_real;
}

}  // namespace

Result<std::string> familiar_ref(const std::string& in) {
  if (in.empty()) return make_error(EINVAL, "empty image name");
  for (char c : in)
    if (static_cast<unsigned char>(c) <= ' ' || c == '@' || c == '\\')
      return make_error(EINVAL, "'" + in + "' is not an image name:tag");
  if (in.rfind("sha256:", 0) == 0) return make_error(EINVAL, "'" + in + "': give the image as name:tag");
  std::string r = in;
  for (const char* prefix : {"docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"})
    if (r.rfind(prefix, 0) == 0) {
      r = r.substr(std::string(prefix).size());
      break;
    }
  r = normalize_ref(r);
  auto colon = r.rfind(':');
  if (colon == 0 || colon + 1 == r.size() || r.front() == '/' || r.back() == '/' || r.find("//") != std::string::npos)
    return make_error(EINVAL, "'" + in + "' is not an image name:tag");
  return r;
}

Status check_dockerd_stopped(const std::string& data_root_in) {
  const std::string data_root = absolute(data_root_in);
  auto real = real_path(data_root);
  struct stat root_st;
  if (!real || ::stat(real->c_str(), &root_st) != 0) return ok_status();  // nothing there yet
  auto procs = list_dir("/proc");
  if (procs.ok()) {
    for (const auto& name : *procs) {
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      long pid = std::strtol(name.c_str(), nullptr, 10);
      if (pid == ::getpid()) continue;
      if (!live_dockerd(name)) continue;
      auto cmdline = read_text_file("/proc/" + name + "/cmdline");
      if (!cmdline.ok()) continue;
      std::vector<std::string> args;
      size_t pos = 0;
      while (pos < cmdline->size()) {
        size_t end = cmdline->find('\0', pos);
        if (end == std::string::npos) end = cmdline->size();
        args.push_back(cmdline->substr(pos, end - pos));
        pos = end + 1;
      }
      if (same_dir(dockerd_data_root(pid, args), root_st, *real))
        return make_error(EBUSY, "dockerd (pid " + name + ") is running on data-root " + *real +
                                     "; stop it first (kill -TERM " + name +
                                     " and wait for it to exit, or 'systemctl stop docker.socket docker' for the system one)");
    }
  }
  // The bolt databases dockerd and the containerd it starts keep flocked while they run: this also
  // finds a dockerd in another pid namespace.
  for (const char* rel : {"/volumes/metadata.db", "/network/files/local-kv.db", "/buildkit/metadata_v2.db",
                          "/buildkit/cache.db", "/buildkit/snapshots.db", "/buildkit/containerdmeta.db",
                          "/containerd/daemon/io.containerd.metadata.v1.bolt/meta.db"}) {
    const std::string f = *real + rel;
    int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) continue;
    bool busy = ::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
    ::close(fd);
    if (busy)
      return make_error(EBUSY, "data-root " + *real + " is in use (" + f +
                                   " is locked by a running dockerd or its containerd); stop that dockerd first");
  }
  // The system dockerd's default pid file.
  if (*real == kDefaultDataRoot) {
    for (const char* pf : {"/run/docker.pid", "/var/run/docker.pid"}) {
      auto text = read_text_file(pf);
      if (!text.ok()) continue;
      auto pid = parse_uint(trim(*text));
      if (!pid || *pid == 0) continue;
      if (live_dockerd(std::to_string(*pid)))
        return make_error(EBUSY, "dockerd (pid " + std::to_string(*pid) + ", " + pf + ") is running on data-root " + *real +
                                     "; stop it first ('systemctl stop docker.socket docker')");
    }
  }
  return ok_status();
}

Status check_overlay2_data_root(const std::string& data_root_in, const std::string& daemon_json) {
  const std::string data_root = real_path(absolute(data_root_in)).value_or(absolute(data_root_in));
  for (const char* d : {"aufs", "btrfs", "devicemapper", "fuse-overlayfs", "overlay", "vfs", "zfs", "windowsfilter", "lcow"}) {
    const std::string img = data_root + "/image/" + d;
    if (is_dir(img))
      return make_error(EINVAL, "data-root " + data_root + " holds images of the " + d + " storage driver (" + img +
                                    "); extrafs docker needs a dockerd using overlay2");
    const std::string layers = data_root + "/" + d;
    if (is_dir(layers) && dir_nonempty(layers))
      return make_error(EINVAL, "data-root " + data_root + " holds layers of the " + d + " storage driver (" + layers +
                                    "); extrafs docker needs a dockerd using overlay2");
  }
  auto text = read_text_file(daemon_json);
  if (!text.ok()) return ok_status();
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (!j.is_object()) return ok_status();  // dockerd itself refuses to start with it
  for (const char* k : {"data-root", "graph"}) {
    if (j.contains(k) && j[k].is_string()) {
      // A dockerd started with this file uses that data-root (a --data-root flag as well is an
      // error), so the file says nothing about another one.
      const std::string other = j[k].get<std::string>();
      struct stat st;
      const bool same = ::stat(data_root.c_str(), &st) == 0 ? same_dir(other, st, data_root)
                                                            : real_path(other).value_or(other) == data_root;
      if (!same) return ok_status();
    }
  }
  if (j.contains("storage-driver") && j["storage-driver"].is_string() && j["storage-driver"] != "overlay2")
    return make_error(EINVAL, daemon_json + " sets storage-driver " + j["storage-driver"].get<std::string>() +
                                  "; extrafs docker needs a dockerd using overlay2");
  if (j.contains("features") && j["features"].is_object() && j["features"].contains("containerd-snapshotter") &&
      j["features"]["containerd-snapshotter"] == true)
    return make_error(EINVAL, daemon_json + " enables the containerd image store (features.containerd-snapshotter); "
                                            "extrafs docker needs dockerd's overlay2 graph driver");
  return ok_status();
}

Result<std::string> resolve_extrafs_mount(const std::string& mountpoint) {
  auto real = real_path(absolute(mountpoint));
  if (!real) return Error::from_errno(errno, mountpoint);
  std::string type;
  if (!is_mount_point(*real, &type)) return make_error(EINVAL, mountpoint + " is not an extrafs mount (nothing is mounted there)");
  if (type != "fuse.extrafs") return make_error(EINVAL, mountpoint + " is not an extrafs mount (it is " + type + ")");
  return *real;
}

Result<std::vector<AttachResult>> attach_images(const std::string& mountpoint, const std::string& data_root_in,
                                                const std::vector<std::string>& refs) {
  EXTRAFS_TRY(mnt, resolve_extrafs_mount(mountpoint));
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

  std::string data_root = absolute(data_root_in);
  if (auto st = mkdir_mode(data_root, 0710); !st.ok()) {
    // mkdir -p for a deeper path that does not exist yet
    std::string acc;
    for (size_t pos = 1; pos != std::string::npos;) {
      pos = data_root.find('/', pos + 1);
      acc = data_root.substr(0, pos);
      if (!is_dir(acc) && ::mkdir(acc.c_str(), pos == std::string::npos ? 0710 : 0755) != 0 && errno != EEXIST)
        return Error::from_errno(errno, acc);
    }
  }
  data_root = real_path(data_root).value_or(data_root);
  if (data_root == mnt || data_root.rfind(mnt + "/", 0) == 0)
    return make_error(EINVAL, "data-root " + data_root + " lies inside the mount " + mnt);
  EXTRAFS_TRY(lock, DataRootLock::take(data_root));
  Paths p(data_root);
  EXTRAFS_CHECK_STATUS(ensure_layout(p));
  std::vector<AttachResult> out;
  for (const auto& [ref, img] : images) {
    EXTRAFS_TRY(r, attach_one(p, mnt, img, ref));
    out.push_back(std::move(r));
  }
  return out;
}

Result<DetachResult> detach_image(const std::string& data_root_in, const std::string& in_ref) {
  EXTRAFS_TRY(ref, familiar_ref(in_ref));
  const std::string data_root = real_path(absolute(data_root_in)).value_or(absolute(data_root_in));
  if (!is_dir(data_root)) return make_error(ENOENT, "data-root " + data_root + " does not exist");
  EXTRAFS_TRY(lock, DataRootLock::take(data_root));
  Paths p(data_root);
  DetachResult r;
  r.ref = ref;

  EXTRAFS_TRY(repos, load_repositories(p.repos));
  std::string id;
  std::set<std::string> other_tags;
  for (auto& [repo, refs] : repos["Repositories"].items()) {
    for (auto& [name, value] : refs.items()) {
      if (!value.is_string()) continue;
      if (name == ref) id = value.get<std::string>();
    }
  }
  if (id.empty()) return make_error(ENOENT, "no image " + ref + " in " + data_root);
  r.image_id = id;
  for (auto& [repo, refs] : repos["Repositories"].items())
    for (auto& [name, value] : refs.items())
      if (name != ref && name.find('@') == std::string::npos && value == id) other_tags.insert(name);

  // The image's layers as they are in the data-root, base first.
  struct Layer {
    std::string chain, cache_id, link, lower;
    bool ours = false;  // diff is a symlink into an extrafs mount: made by attach
  };
  std::vector<Layer> layers;
  const std::string cfg_path = p.content + "/" + id.substr(7);
  auto cfg = read_text_file(cfg_path);
  auto chains_of_config = [](const std::string& text) -> std::vector<std::string> {
    auto j = nlohmann::json::parse(text, nullptr, false);
    std::vector<std::string> diffs;
    if (j.is_object() && j.contains("rootfs") && j["rootfs"].is_object() && j["rootfs"].contains("diff_ids") &&
        j["rootfs"]["diff_ids"].is_array())
      for (const auto& d : j["rootfs"]["diff_ids"])
        if (d.is_string()) diffs.push_back(d.get<std::string>());
    return chain_ids(diffs);
  };
  if (cfg.ok()) {
    for (const auto& chain : chains_of_config(*cfg)) {
      Layer l;
      l.chain = chain;
      auto cid = read_text_file(p.layerdb_sha + "/" + chain.substr(7) + "/cache-id");
      if (!cid.ok()) continue;  // already gone
      l.cache_id = trim(*cid);
      if (l.cache_id.empty() || l.cache_id.find('/') != std::string::npos || l.cache_id[0] == '.') continue;
      const std::string odir = p.overlay2 + "/" + l.cache_id;
      if (auto link = read_text_file(odir + "/link"); link.ok()) l.link = trim(*link);
      if (auto lower = read_text_file(odir + "/lower"); lower.ok()) l.lower = trim(*lower);
      if (auto target = read_link(odir + "/diff")) {
        const std::string suffix = "/overlay2/" + l.cache_id + "/diff";
        const bool shape = target->size() > suffix.size() && target->front() == '/' &&
                           target->compare(target->size() - suffix.size(), suffix.size(), suffix) == 0;
        // Into an extrafs mount, or dangling (the mount is gone): dockerd never makes a symlink diff.
        l.ours = shape && (fstype_of(*target) == "fuse.extrafs" || !lexists(*target));
      }
      layers.push_back(std::move(l));
    }
  }
  bool any_ours = false;
  for (const auto& l : layers) any_ours |= l.ours;
  if (cfg.ok() && !any_ours && !layers.empty())
    return make_error(EINVAL, ref + " in " + data_root + " was not attached by extrafs (none of its layers is served by an extrafs mount); use docker rmi");

  // Who else uses what.
  bool container_uses_image = false, child_image = false;
  std::set<std::string> used_chains;
  if (auto ids = list_dir(p.content); ids.ok()) {
    for (const auto& hex : *ids) {
      if (hex == id.substr(7) || !is_hex64(hex)) continue;
      if (auto text = read_text_file(p.content + "/" + hex); text.ok())
        for (const auto& c : chains_of_config(*text)) used_chains.insert(c);
      if (auto parent = read_text_file(p.imagedb + "/metadata/sha256/" + hex + "/parent"); parent.ok() && trim(*parent) == id)
        child_image = true;
    }
  }
  if (auto ids = list_dir(p.root + "/containers"); ids.ok()) {
    for (const auto& c : *ids) {
      auto text = read_text_file(p.root + "/containers/" + c + "/config.v2.json");
      if (!text.ok()) continue;
      auto j = nlohmann::json::parse(*text, nullptr, false);
      if (j.is_object() && j.contains("Image") && j["Image"] == id) container_uses_image = true;
    }
  }
  if (auto mounts = list_dir(p.layerdb + "/mounts"); mounts.ok()) {
    for (const auto& m : *mounts) {
      auto parent = read_text_file(p.layerdb + "/mounts/" + m + "/parent");
      std::string chain = parent.ok() ? trim(*parent) : "";
      for (int depth = 0; !chain.empty() && depth < 256 && used_chains.insert(chain).second; ++depth) {
        auto up = read_text_file(p.layerdb_sha + "/" + chain.substr(chain.find(':') + 1) + "/parent");
        chain = up.ok() ? trim(*up) : "";
      }
    }
  }

  const bool keep_config = !other_tags.empty() || container_uses_image || child_image;
  std::vector<Layer> remove;
  if (!other_tags.empty()) {
    r.note = "also tagged " + *other_tags.begin();
    for (const auto& l : layers) r.kept_layers.push_back(l.cache_id + " (image also tagged " + *other_tags.begin() + ")");
  } else if (container_uses_image) {
    r.note = "a container uses the image";
    for (const auto& l : layers) r.kept_layers.push_back(l.cache_id + " (a container uses the image)");
  } else {
    if (child_image) r.note = "another image was built on it";
    for (const auto& l : layers) {
      if (!l.ours) r.kept_layers.push_back(l.cache_id + " (not made by extrafs docker attach)");
      else if (used_chains.count(l.chain)) r.kept_layers.push_back(l.cache_id + " (used by another image or a container)");
      else remove.push_back(l);
    }
    // Layers whose link is in the lower chain of a layer that stays (a container's layer, a layer
    // built on top) stay too, and so, in turn, does their own lower chain.
    std::set<std::string> removing;
    for (const auto& l : remove) removing.insert(l.cache_id);
    std::set<std::string> used_links;
    if (auto dirs = list_dir(p.overlay2); dirs.ok()) {
      for (const auto& d : *dirs) {
        if (d == "l" || removing.count(d)) continue;
        auto lower = read_text_file(p.overlay2 + "/" + d + "/lower");
        if (!lower.ok()) continue;
        add_lower_links(trim(*lower), &used_links);
      }
    }
    for (bool changed = true; changed;) {
      changed = false;
      for (auto it = remove.begin(); it != remove.end(); ++it) {
        if (!it->link.empty() && used_links.count(it->link)) {
          r.kept_layers.push_back(it->cache_id + " (in the lower chain of a container or another layer)");
          add_lower_links(it->lower, &used_links);
          remove.erase(it);
          changed = true;
          break;
        }
      }
    }
  }

  // 1. The tag (and, with the config, digest references to the image), so dockerd never sees a
  //    tag without its image.
  for (auto it = repos["Repositories"].begin(); it != repos["Repositories"].end();) {
    auto& refs = it.value();
    for (auto jt = refs.begin(); jt != refs.end();) {
      if (jt.key() == ref || (!keep_config && jt.value() == id && jt.key().find('@') != std::string::npos)) jt = refs.erase(jt);
      else ++jt;
    }
    if (refs.empty()) it = repos["Repositories"].erase(it);
    else ++it;
  }
  EXTRAFS_CHECK_STATUS(save_repositories(p.repos, repos));
  // 2. The config.
  if (!keep_config) {
    if (::unlink(cfg_path.c_str()) != 0 && errno != ENOENT) return Error::from_errno(errno, cfg_path);
    EXTRAFS_CHECK_STATUS(remove_tree(p.imagedb + "/metadata/sha256/" + id.substr(7)));
    r.config_removed = true;
  }
  // 3. The layers, top first: the layerdb entry (renamed away first), the l/ symlink, the dir.
  for (auto it = remove.rbegin(); it != remove.rend(); ++it) {
    const std::string ldb = p.layerdb_sha + "/" + it->chain.substr(7);
    std::string tmpl = p.layerdb_tmp + "/extrafs-rm-XXXXXX";
    (void)mkdir_mode(p.layerdb_tmp, 0755);
    if (!::mkdtemp(tmpl.data())) return Error::from_errno(errno, p.layerdb_tmp);
    const std::string graveyard = tmpl + "/entry";
    if (::rename(ldb.c_str(), graveyard.c_str()) != 0 && errno != ENOENT) return Error::from_errno(errno, ldb);
    EXTRAFS_CHECK_STATUS(remove_tree(tmpl));
    if (!it->link.empty()) {
      const std::string l = p.links + "/" + it->link;
      if (read_link(l) == "../" + it->cache_id + "/diff") ::unlink(l.c_str());
    }
    EXTRAFS_CHECK_STATUS(remove_tree(p.overlay2 + "/" + it->cache_id));
    r.removed_layers.push_back(it->cache_id);
  }
  return r;
}

}  // namespace extrafs::tools
