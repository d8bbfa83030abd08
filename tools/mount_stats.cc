#include "tools/mount_stats.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/mountinfo.h"
#include "common/str_util.h"
#include "common/unix_http.h"
#include "store/layout.h"

namespace extrafs::tools {

namespace {

constexpr const char* kRootRunDir = "/run/extrafs";
constexpr const char* kSocketSuffix = ".sock";
constexpr const char* kTempSuffix = ".tmp";
// A request is a line and a few headers; a client that sends nothing is dropped after this.
constexpr size_t kMaxRequest = 8192;
constexpr auto kRequestTimeout = std::chrono::seconds(2);
// The whole exchange, seen from the client: the daemon answers at once unless it is stopped or
// overloaded; image names wait at most a couple of seconds (mount_images.h).
constexpr int kClientTimeoutMs = 10000;
// Large enough for any store (about 150 bytes a layer); a bound only against a runaway answer.
constexpr size_t kMaxAnswer = size_t{1} << 30;

// The run directory of daemons of the calling user: /run/extrafs for root, else
// $XDG_RUNTIME_DIR/extrafs ("" if that is not set).
std::string own_run_dir() {
  if (::geteuid() == 0) return kRootRunDir;
  const char* x = std::getenv("XDG_RUNTIME_DIR");
  return x && x[0] == '/' ? std::string(x) + "/extrafs" : std::string();
}

// Where a client looks, in order: root's daemons first (the usual case, also for a user asking
// about an allow_other mount), then the caller's own.
std::vector<std::string> run_dirs() {
  std::vector<std::string> out{kRootRunDir};
  if (auto own = own_run_dir(); !own.empty() && own != kRootRunDir) out.push_back(own);
  return out;
}

bool make_address(const std::string& path, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr->sun_path)) return false;
  std::memcpy(addr->sun_path, path.c_str(), path.size() + 1);
  return true;
}

// Connects to the unix socket at `path` without waiting (a full backlog is EAGAIN): the
// connected socket, or the errno.
Result<Fd> connect_now(const std::string& path) {
  sockaddr_un addr;
  if (!make_address(path, &addr)) return make_error(ENAMETOOLONG, path + ": socket path too long");
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return Error::from_errno(errno, "socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return Error::from_errno(errno, path);
  return fd;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Removes the sockets in `dir` that nobody listens on: those of daemons that were killed. A
// temporary name is some daemon's socket between bind and listen for a moment, so it goes only
// once it is a minute old.
void remove_dead_sockets(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (names.size() < 4096 && (ends_with(n, kSocketSuffix) || ends_with(n, kTempSuffix))) names.push_back(n);
  }
  ::closedir(d);
  const auto now = std::chrono::system_clock::now();
  for (const auto& n : names) {
    const std::string path = dir + "/" + n;
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    if (ends_with(n, kTempSuffix) &&
        now - std::chrono::system_clock::from_time_t(st.st_mtime) < std::chrono::minutes(1))
      continue;
    auto c = connect_now(path);
    if (!c.ok() && c.code() == ECONNREFUSED && ::unlink(path.c_str()) == 0)
      spdlog::debug("removed {}: the daemon that made it is gone", path);
  }
}

// Creates `dir` if needed and checks that only this user can write it: nobody else may put a
// socket there that a client would take for a daemon's.
Status prepare_run_dir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return Error::from_errno(errno, dir);
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) return Error::from_errno(errno, dir);
  if (!S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & 022))
    return make_error(EPERM, fmt::format("{} must be a directory of uid {} that nobody else can write "
                                         "(it holds the statistics sockets of extrafs mounts)",
                                         dir, ::geteuid()));
  return ok_status();
}

std::string status_line(int status) {
  switch (status) {
    case 200:
      return "200 OK";
    case 400:
      return "400 Bad Request";
    case 403:
      return "403 Forbidden";
    case 404:
      return "404 Not Found";
    default:
      return std::to_string(status) + " Error";
  }
}

// Sends all of `data` on the (blocking, send-timed-out) connection; false if the peer went away.
bool send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// The extrafs mount at `mountpoint`: its resolved path and its device ("MAJOR:MINOR").
struct MountId {
  std::string point;
  std::string dev;
};

Result<MountId> find_mount(const std::string& mountpoint) {
  MountId id;
  // realpath only reads link targets on the way, so a hung or dead mount does not stop it.
  id.point = real_path(absolute_path(mountpoint)).value_or(absolute_path(mountpoint));
  std::string fstype;
  for (const auto& m : read_mounts()) {
    if (m.point != id.point) continue;
    fstype = m.fstype;  // the last one is the top mount
    id.dev = m.dev;
  }
  if (fstype.empty()) return make_error(EINVAL, mountpoint + " is not an extrafs mount (nothing is mounted there)");
  if (fstype != "fuse.extrafs")
    return make_error(EINVAL, mountpoint + " is not an extrafs mount (it is " + fstype + ")");
  return id;
}

// The socket of the mount with device `dev`: the first run directory that has one (a socket of
// root or of the caller), else the one root's daemons would use (for the messages).
std::string socket_of(const std::string& dev) {
  const auto dirs = run_dirs();
  for (const auto& dir : dirs) {
    const std::string path = dir + "/" + dev + kSocketSuffix;
    struct stat st;
    if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_uid == 0 || st.st_uid == ::geteuid()))
      return path;
  }
  return dirs.front() + "/" + dev + kSocketSuffix;
}

}  // namespace

std::string json_text(const nlohmann::json& j, int indent) {
  return j.dump(indent, ' ', /*ensure_ascii=*/true, nlohmann::json::error_handler_t::replace);
}

Result<std::unique_ptr<StatsServer>> StatsServer::open(bool allow_other) {
  std::unique_ptr<StatsServer> s(new StatsServer());
  s->allow_other_ = allow_other;
  s->dir_ = own_run_dir();
  if (s->dir_.empty())
    return make_error(EINVAL, "no directory for the statistics socket: run as root, or set XDG_RUNTIME_DIR");
  EXTRAFS_CHECK_STATUS(prepare_run_dir(s->dir_));
  remove_dead_sockets(s->dir_);
  s->temp_path_ = fmt::format("{}/.{}.{}{}", s->dir_, ::getpid(), random_chars(8, store::kLinkIdAlphabet), kTempSuffix);
  sockaddr_un addr;
  if (!make_address(s->temp_path_, &addr)) return make_error(ENAMETOOLONG, s->temp_path_ + ": socket path too long");
  s->listen_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s->listen_.valid()) return Error::from_errno(errno, "socket");
  if (::bind(s->listen_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    s->temp_path_.clear();
    return Error::from_errno(err, "statistics socket in " + s->dir_);
  }
  // connect(2) needs write permission on the socket file: root (and this user) only, unless the
  // mount lets everybody in.
  if (::chmod(s->temp_path_.c_str(), allow_other ? 0666 : 0600) != 0) return Error::from_errno(errno, s->temp_path_);
  if (::listen(s->listen_.get(), 64) != 0) return Error::from_errno(errno, s->temp_path_);
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return Error::from_errno(errno, "pipe");
  s->stop_read_.reset(p[0]);
  s->stop_write_.reset(p[1]);
  return s;
}

Status StatsServer::serve(const std::string& dev, Handler handler) {
  if (dev.empty())
    return make_error(ENOENT, "the mount is not in /proc/self/mountinfo: no name for its statistics socket");
  const std::string path = dir_ + "/" + dev + kSocketSuffix;
  // Over whatever a killed daemon of an earlier mount with this device number left there.
  if (::rename(temp_path_.c_str(), path.c_str()) != 0) return Error::from_errno(errno, "statistics socket " + path);
  temp_path_.clear();
  path_ = path;
  struct stat st;
  if (::lstat(path_.c_str(), &st) == 0) {
    path_dev_ = st.st_dev;
    path_ino_ = st.st_ino;
  }
  handler_ = std::move(handler);
  thread_ = std::thread([this] { loop(); });
  return ok_status();
}

StatsServer::~StatsServer() {
  if (thread_.joinable()) {
    (void)!::write(stop_write_.get(), "x", 1);
    thread_.join();
  }
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
  // Only this server's own socket: a newer daemon may have taken the name since (a remount of
  // a device number freed by a lazy unmount).
  struct stat st;
  if (!path_.empty() && ::lstat(path_.c_str(), &st) == 0 && st.st_dev == path_dev_ && st.st_ino == path_ino_)
    ::unlink(path_.c_str());
}

void StatsServer::loop() {
  for (;;) {
    pollfd p[2] = {{listen_.get(), POLLIN, 0}, {stop_read_.get(), POLLIN, 0}};
    int n = ::poll(p, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || (p[1].revents & (POLLIN | POLLHUP))) return;
    if (!(p[0].revents & POLLIN)) continue;
    Fd conn(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn.valid()) continue;
    answer(conn.get());
  }
}

void StatsServer::answer(int conn) {
  const timeval tv{std::chrono::duration_cast<std::chrono::seconds>(kRequestTimeout).count(), 0};
  ::setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  const timeval send_tv{10, 0};
  ::setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &send_tv, sizeof send_tv);
  auto reply = [&](int status, const std::string& body, const char* type) {
    std::string head = fmt::format("HTTP/1.0 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                   status_line(status), type, body.size());
    if (send_all(conn, head)) send_all(conn, body);
  };
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
      !(allow_other_ || cred.uid == 0 || cred.uid == ::geteuid())) {
    reply(403, "only root may read the statistics of this mount (it has no allow_other)\n", "text/plain");
    return;
  }
  std::string req;
  const auto deadline = std::chrono::steady_clock::now() + kRequestTimeout;
  char buf[1024];
  while (req.find("\r\n\r\n") == std::string::npos && req.find("\n\n") == std::string::npos) {
    if (req.size() > kMaxRequest || std::chrono::steady_clock::now() > deadline) return;
    ssize_t n = ::recv(conn, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    req.append(buf, static_cast<size_t>(n));
  }
  // "GET /stats HTTP/1.0"
  const std::string line = req.substr(0, req.find_first_of("\r\n"));
  const size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
  if (sp1 == std::string::npos || sp2 <= sp1 || line.substr(0, sp1) != "GET" ||
      line.compare(sp2 + 1, 5, "HTTP/") != 0) {
    reply(400, "expected GET /stats\n", "text/plain");
    return;
  }
  int status = 200;
  std::string body = handler_(std::string_view(line).substr(sp1 + 1, sp2 - sp1 - 1), &status);
  reply(status, body, status == 200 ? "application/json" : "text/plain");
}

Result<nlohmann::json> read_mount_stats(const std::string& mountpoint, bool with_images) {
  EXTRAFS_TRY(mount, find_mount(mountpoint));
  const std::string socket = socket_of(mount.dev);
  auto got = http_get_unix(socket, with_images ? "/stats?images=1" : "/stats", kClientTimeoutMs, kMaxAnswer);
  if (!got.ok()) {
    switch (got.code()) {
      case ENOENT:
        return make_error(ENOENT,
                          fmt::format("{}: no statistics socket {}: its daemon is gone, or older than this extrafs",
                                      mountpoint, socket));
      case ECONNREFUSED:
        return make_error(ECONNREFUSED,
                          fmt::format("{}: its daemon is gone (nothing listens on {}); remove the mount with "
                                      "'extrafs unmount {}'",
                                      mountpoint, socket, mountpoint));
      case ECONNRESET:
      case EPIPE:
        // Accepted into the listen backlog, then closed unanswered: the daemon died with the
        // connection queued (a SIGKILLed daemon's last threads still hold its socket for a moment).
        return make_error(ECONNRESET,
                          fmt::format("{}: its daemon is gone (it closed {} without answering); remove the mount "
                                      "with 'extrafs unmount {}'",
                                      mountpoint, socket, mountpoint));
      case EACCES:
        return make_error(EACCES,
                          fmt::format("{}: permission denied on {} (only root may read the statistics of a mount "
                                      "without allow_other)",
                                      mountpoint, socket));
      case ETIMEDOUT:
        return make_error(ETIMEDOUT, fmt::format("{}: its daemon did not answer within {} s (is it stopped?)",
                                                 mountpoint, kClientTimeoutMs / 1000));
      default:
        return make_error(got.code(), mountpoint + ": " + got.error().message);
    }
  }
  if (got->status != 200)
    return make_error(got->status == 403 ? EACCES : EBADMSG,
                      fmt::format("{}: the daemon answered {} {}: {}", mountpoint, got->status, got->reason,
                                  trim_trailing(got->body)));
  auto j = nlohmann::json::parse(got->body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(EBADMSG, mountpoint + " returned unreadable statistics");
  return j;
}

pid_t mount_daemon_pid(const std::string& mountpoint, bool remove_stale) {
  auto mount = find_mount(mountpoint);
  if (!mount.ok()) return 0;
  const std::string socket = socket_of(mount->dev);
  auto conn = connect_now(socket);
  if (!conn.ok()) {
    if (conn.code() == ECONNREFUSED && remove_stale) ::unlink(socket.c_str());
    return 0;
  }
  // The credentials of whoever called listen(): the daemon, whether or not it is running now.
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(conn->get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return 0;
  return cred.pid;
}

}  // namespace extrafs::tools
