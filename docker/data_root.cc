#include "docker/data_root.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <utility>
#include <vector>

#include "common/posix_file.h"
#include "store/docker_meta.h"

namespace extrafs::docker {

DataRootPaths::DataRootPaths(const std::string& r)
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

Status mkdir_mode(const std::string& p, mode_t mode) {
  if (::mkdir(p.c_str(), mode) != 0) {
    if (errno == EEXIST && is_dir(p)) return ok_status();
    return Error::from_errno(errno, p);
  }
  if (::chmod(p.c_str(), mode) != 0) return Error::from_errno(errno, p);
  return ok_status();
}

Status ensure_data_root_layout(const DataRootPaths& p) {
  // Modes as dockerd 20.10 makes them.
  for (const auto& [dir, mode] : std::vector<std::pair<std::string, mode_t>>{{p.root + "/image", 0700},
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

void remove_dead_temporaries(const DataRootPaths& p) {
  if (auto names = list_dir(p.layerdb_tmp); names.ok())
    for (const auto& n : *names)
      if (n.rfind(kLayerdbTmpPrefix, 0) == 0) (void)remove_tree(p.layerdb_tmp + "/" + n);
  if (auto names = list_dir(p.overlay2); names.ok())
    for (const auto& n : *names)
      if (n.rfind(kOverlayTmpPrefix, 0) == 0) (void)remove_tree(p.overlay2 + "/" + n);
}

Result<nlohmann::json> load_repositories(const std::string& path) {
  auto text = read_file(path);
  if (!text.ok()) {
    if (text.code() == ENOENT) return nlohmann::json{{"Repositories", nlohmann::json::object()}};
    return text.error();
  }
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return make_error(EBADMSG, path + " is not valid JSON; refusing to replace it");
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
  r = store::normalize_ref(r);
  auto colon = r.rfind(':');
  if (colon == 0 || colon + 1 == r.size() || r.front() == '/' || r.back() == '/' || r.find("//") != std::string::npos)
    return make_error(EINVAL, "'" + in + "' is not an image name:tag");
  EXTRAFS_CHECK_STATUS(store::check_reference(r));
  return r;
}

std::string repo_of(const std::string& ref) { return ref.substr(0, ref.rfind(':')); }

Result<DataRootLock> DataRootLock::take(const std::string& root, int timeout_s) {
  DataRootLock l;
  l.fd_ = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (l.fd_ < 0) return Error::from_errno(errno, root);
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  for (;;) {
    if (::flock(l.fd_, LOCK_EX | LOCK_NB) == 0) return l;
    if (errno != EWOULDBLOCK) return Error::from_errno(errno, "locking " + root);
    if (std::chrono::steady_clock::now() >= end) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return make_error(EBUSY, "another extrafs docker attach/detach has been working on " + root + " for " +
                               std::to_string(timeout_s) + " s");
}

DataRootLock::~DataRootLock() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace extrafs::docker
