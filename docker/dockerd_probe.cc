#include "docker/dockerd_probe.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <optional>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/posix_file.h"
#include "common/str_util.h"

namespace extrafs::docker {

namespace {

// Parses dockerd's command line (and its config file) for the data-root it uses.
std::string dockerd_data_root(long pid, const std::vector<std::string>& args) {
  std::string root, config = kDaemonJson;
  if (auto v = dockerd_flag_values(args, {"--data-root", "--graph", "-g"}); !v.empty()) root = v.back();
  if (auto v = dockerd_flag_values(args, {"--config-file"}); !v.empty()) config = v.back();
  const std::string cwd = read_link("/proc/" + std::to_string(pid) + "/cwd").value_or("/");
  auto rel = [&](const std::string& x) { return x.empty() || x.front() == '/' ? x : cwd + "/" + x; };
  if (root.empty()) {
    if (auto text = read_file(rel(config)); text.ok()) {
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
  auto comm = read_file("/proc/" + pid + "/comm");
  if (!comm.ok() || trim_trailing(*comm) != "dockerd") return false;
  if (!process_running(std::strtol(pid.c_str(), nullptr, 10))) return false;
  auto cmdline = read_file("/proc/" + pid + "/cmdline");
  return cmdline.ok() && !cmdline->empty();
}

bool same_dir(const std::string& a, const struct stat& b_st, const std::string& b_real) {
  struct stat st;
  if (::stat(a.c_str(), &st) == 0 && st.st_dev == b_st.st_dev && st.st_ino == b_st.st_ino) return true;
  auto r = real_path(a);
  return r && *r == b_real;
}

// A dockerd process of this pid namespace whose data-root is `real` (stat `root_st`).
std::optional<long> find_dockerd_process(const std::string& real, const struct stat& root_st) {
  auto procs = list_dir("/proc");
  if (!procs.ok()) return std::nullopt;
  for (const auto& name : *procs) {
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    long pid = std::strtol(name.c_str(), nullptr, 10);
    if (pid == ::getpid()) continue;
    if (!live_dockerd(name)) continue;
    auto cmdline = read_file("/proc/" + name + "/cmdline");
    if (!cmdline.ok()) continue;
    if (same_dir(dockerd_data_root(pid, split_cmdline(*cmdline)), root_st, real)) return pid;
  }
  return std::nullopt;
}

// The bolt databases dockerd and the containerd it starts keep flocked while they run: this also
// finds a dockerd in another pid namespace.
Status check_bolt_locks(const std::string& real) {
  for (const char* rel : {"/volumes/metadata.db", "/network/files/local-kv.db", "/buildkit/metadata_v2.db",
                          "/buildkit/cache.db", "/buildkit/snapshots.db", "/buildkit/containerdmeta.db",
                          "/containerd/daemon/io.containerd.metadata.v1.bolt/meta.db"}) {
    const std::string f = real + rel;
    Fd fd(::open(f.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
    if (!fd.valid()) continue;
    if (::flock(fd.get(), LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK)
      return make_error(EBUSY, "data-root " + real + " is in use (" + f +
                                   " is locked by a running dockerd or its containerd); stop that dockerd first");
  }
  return ok_status();
}

// The system dockerd's default pid files (for /var/lib/docker).
std::optional<std::pair<long, std::string>> find_system_pid_file(const std::string& real) {
  if (real != kDefaultDataRoot) return std::nullopt;
  for (const char* pf : {"/run/docker.pid", "/var/run/docker.pid"}) {
    auto text = read_file(pf);
    if (!text.ok()) continue;
    auto pid = parse_uint(trim_trailing(*text));
    if (!pid || *pid == 0) continue;
    if (live_dockerd(std::to_string(*pid))) return std::make_pair(static_cast<long>(*pid), std::string(pf));
  }
  return std::nullopt;
}

}  // namespace

std::vector<std::string> split_cmdline(const std::string& cmdline) {
  std::vector<std::string> args;
  size_t pos = 0;
  while (pos < cmdline.size()) {
    size_t end = cmdline.find('\0', pos);
    if (end == std::string::npos) end = cmdline.size();
    args.push_back(cmdline.substr(pos, end - pos));
    pos = end + 1;
  }
  return args;
}

std::vector<std::string> dockerd_flag_values(const std::vector<std::string>& args,
                                             const std::vector<std::string>& flags) {
  std::vector<std::string> out;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    for (const auto& flag : flags) {
      if (a == flag && i + 1 < args.size()) {
        out.push_back(args[++i]);
        break;
      }
      if (a.rfind(flag + "=", 0) == 0) {
        out.push_back(a.substr(flag.size() + 1));
        break;
      }
      if (flag.size() == 2 && a.size() > 2 && a.rfind(flag, 0) == 0 && a[1] != '-') {
        out.push_back(a.substr(2));
        break;
      }
    }
  }
  return out;
}

std::optional<long> find_dockerd(const std::string& data_root_in) {
  auto real = real_path(absolute_path(data_root_in));
  struct stat root_st;
  if (!real || ::stat(real->c_str(), &root_st) != 0) return std::nullopt;
  if (auto pid = find_dockerd_process(*real, root_st)) return pid;
  if (auto pf = find_system_pid_file(*real)) return pf->first;
  return std::nullopt;
}

Status check_dockerd_stopped(const std::string& data_root_in) {
  auto real = real_path(absolute_path(data_root_in));
  struct stat root_st;
  if (!real || ::stat(real->c_str(), &root_st) != 0) return ok_status();  // nothing there yet
  if (auto pid = find_dockerd_process(*real, root_st)) {
    const std::string p = std::to_string(*pid);
    return make_error(EBUSY,
                      "dockerd (pid " + p + ") is running on data-root " + *real + "; stop it first (kill -TERM " + p +
                          " and wait for it to exit, or 'systemctl stop docker.socket docker' for the system one)");
  }
  EXTRAFS_CHECK_STATUS(check_bolt_locks(*real));
  if (auto pf = find_system_pid_file(*real))
    return make_error(EBUSY, "dockerd (pid " + std::to_string(pf->first) + ", " + pf->second +
                                 ") is running on data-root " + *real +
                                 "; stop it first ('systemctl stop docker.socket docker')");
  return ok_status();
}

Status check_overlay2_data_root(const std::string& data_root_in, const std::string& daemon_json) {
  const std::string data_root = real_path(absolute_path(data_root_in)).value_or(absolute_path(data_root_in));
  for (const char* d :
       {"aufs", "btrfs", "devicemapper", "fuse-overlayfs", "overlay", "vfs", "zfs", "windowsfilter", "lcow"}) {
    const std::string img = data_root + "/image/" + d;
    if (is_dir(img))
      return make_error(EINVAL, "data-root " + data_root + " holds images of the " + d + " storage driver (" + img +
                                    "); extrafs docker needs a dockerd using overlay2");
    const std::string layers = data_root + "/" + d;
    if (auto names = list_dir(layers); is_dir(layers) && names.ok() && !names->empty())
      return make_error(EINVAL, "data-root " + data_root + " holds layers of the " + d + " storage driver (" + layers +
                                    "); extrafs docker needs a dockerd using overlay2");
  }
  auto text = read_file(daemon_json);
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
    return make_error(EINVAL, daemon_json +
                                  " enables the containerd image store (features.containerd-snapshotter); "
                                  "extrafs docker needs dockerd's overlay2 graph driver");
  return ok_status();
}

}  // namespace extrafs::docker
