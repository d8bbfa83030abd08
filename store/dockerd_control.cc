#include "store/dockerd_control.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/posix_file.h"
#include "common/str_util.h"
#include "store/data_root.h"
#include "store/dockerd_probe.h"
#include "store/unix_http.h"

namespace extrafs::store {

namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kSystemdSocketPath = "/run/docker.sock";  // fd:// (docker.socket)
constexpr const char* kDefaultSocketPath = "/var/run/docker.sock";

// `s` cut at every `sep`; no empty field after a trailing separator.
std::vector<std::string> split_on(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find(sep, pos);
    if (end == std::string_view::npos) end = s.size();
    out.emplace_back(s.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

bool ends_with(const std::string& s, std::string_view tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::string relative_to(const std::string& cwd, const std::string& path) {
  return path.empty() || path.front() == '/' ? path : cwd + "/" + path;
}

bool wait_gone(long pid, int timeout_s) {
  const auto end = Clock::now() + std::chrono::seconds(timeout_s);
  while (process_running(pid)) {
    if (Clock::now() >= end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

// A regular file that /proc/PID/fd/N is open on, or empty (a tty, pipe, socket, deleted file...).
std::string regular_file_of_fd(const std::string& proc, int n) {
  const std::string fd = proc + "/fd/" + std::to_string(n);
  struct stat st;
  if (::stat(fd.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return "";
  auto target = read_link(fd);
  if (!target || target->empty() || target->front() != '/' || target->find(" (deleted)") != std::string::npos) return "";
  return *target;
}

// Runs `argv` (PATH searched) with stdin /dev/null, collecting stdout and stderr; bounded by
// `timeout_s` (then killed, ETIMEDOUT). A non-zero exit is an error naming the command and its
// first line of output.
Result<std::string> run_program(const std::vector<std::string>& argv, int timeout_s) {
  std::string cmd;
  for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return Error::from_errno(errno, "pipe");
  Fd rd(fds[0]), wr(fds[1]);
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return Error::from_errno(errno, "fork");
  if (pid == 0) {
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::dup2(wr.get(), 1);
    ::dup2(wr.get(), 2);
    ::execvp(cargv[0], cargv.data());
    ::_exit(127);
  }
  wr.reset();
  std::string out;
  const auto end = Clock::now() + std::chrono::seconds(timeout_s);
  bool timed_out = false;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    struct pollfd p = {rd.get(), POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(left));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    char buf[4096];
    ssize_t got = ::read(rd.get(), buf, sizeof(buf));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    if (out.size() < (size_t{1} << 20)) out.append(buf, static_cast<size_t>(got));
  }
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) return make_error(ETIMEDOUT, cmd + " did not finish within " + std::to_string(timeout_s) + " s");
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return out;
  std::string first = out.substr(0, out.find('\n'));
  return make_error(EIO, cmd + " failed (" +
                             (WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status))
                                                : "signal " + std::to_string(WTERMSIG(status))) +
                             (first.empty() ? ")" : "): " + first));
}

bool systemd_running() { return is_dir("/run/systemd/system"); }

// `systemctl show -p PROP --value UNIT`, trimmed; empty on failure.
std::string unit_property(const std::string& unit, const std::string& prop) {
  auto out = run_program({"systemctl", "show", "-p", prop, "--value", unit}, 30);
  return out.ok() ? trim_trailing(*out) : "";
}

// The sockets that would start `unit` again if a client connected while it is stopped (docker.socket).
std::vector<std::string> active_trigger_sockets(const std::string& unit) {
  std::vector<std::string> out;
  for (const auto& s : split_on(unit_property(unit, "TriggeredBy"), ' '))
    if (ends_with(s, ".socket") && unit_property(s, "ActiveState") == "active") out.push_back(s);
  return out;
}

// Opens the file a restarted dockerd writes its stdout/stderr to: `path` in append mode, else /dev/null.
int open_output(const std::string& path) {
  int fd = -1;
  if (!path.empty()) fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  return fd;
}

// Starts `d` again with its own executable, command line, environment and working directory,
// detached from us and from any terminal (setsid, double fork, stdin /dev/null). Returns its pid.
Result<long> spawn_detached(const DockerdProcess& d) {
  std::vector<char*> argv, envp;
  for (const auto& a : d.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : d.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  // Everything the children need is prepared here: after fork only async-signal-safe calls.
  Fd in(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  Fd out(open_output(d.stdout_file));
  Fd err(open_output(d.stderr_file));
  if (!in.valid() || !out.valid() || !err.valid()) return Error::from_errno(errno, "/dev/null");
  // The pipe carries the grandchild's pid, then, only if exec fails, its errno; exec closes it
  // (O_CLOEXEC), so EOF after the pid means dockerd is running.
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return Error::from_errno(errno, "pipe");
  Fd rd(fds[0]), wr(fds[1]);
  const long max_fd = ::sysconf(_SC_OPEN_MAX) > 0 ? ::sysconf(_SC_OPEN_MAX) : 1024;
  pid_t mid = ::fork();
  if (mid < 0) return Error::from_errno(errno, "fork");
  if (mid == 0) {
    ::setsid();
    pid_t child = ::fork();
    if (child != 0) ::_exit(child < 0 ? 1 : 0);
    // The only writer of the pipe: its pid, then (only if exec fails) the errno.
    int32_t self = static_cast<int32_t>(::getpid());
    (void)!::write(wr.get(), &self, sizeof(self));
    ::signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    int e = 0;
    if (::chdir(d.cwd.c_str()) != 0) e = errno;
    if (e == 0 && (::dup2(in.get(), 0) < 0 || ::dup2(out.get(), 1) < 0 || ::dup2(err.get(), 2) < 0)) e = errno;
    if (e == 0) {
      for (int fd = 3; fd < max_fd && fd < 65536; ++fd)
        if (fd != wr.get()) ::close(fd);
      ::execve(d.exe.c_str(), argv.data(), envp.data());
      e = errno;
    }
    int32_t code = e;
    (void)!::write(wr.get(), &code, sizeof(code));
    ::_exit(127);
  }
  wr.reset();
  int status = 0;
  while (::waitpid(mid, &status, 0) < 0 && errno == EINTR) {
  }
  int32_t words[2] = {0, 0};
  size_t got = 0;
  while (got < sizeof(words)) {
    ssize_t n = ::read(rd.get(), reinterpret_cast<char*>(words) + got, sizeof(words) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  if (got < sizeof(int32_t) || words[0] <= 0) return make_error(ECHILD, "could not fork a new dockerd");
  if (got == sizeof(words))
    return Error::from_errno(words[1], "starting " + d.exe + " in " + d.cwd);
  return static_cast<long>(words[0]);
}

// Waits until the API at `socket` answers GET /_ping with 200 "OK". Fails early if `pid` (when
// non-zero) exits.
Status wait_api(const std::string& socket, long pid, int timeout_s) {
  const auto end = Clock::now() + std::chrono::seconds(timeout_s);
  std::string last = "no answer";
  while (Clock::now() < end) {
    auto r = http_get_unix(socket, "/_ping", 1000);
    if (r.ok() && r->status == 200 && r->body == "OK") return ok_status();
    last = r.ok() ? "GET /_ping answered " + std::to_string(r->status) : r.error().message;
    if (pid != 0 && !process_running(pid)) return make_error(ESRCH, "the new dockerd (pid " + std::to_string(pid) + ") exited");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return make_error(ETIMEDOUT, "dockerd's API did not answer within " + std::to_string(timeout_s) + " s (" + last + ")");
}

Status stop(const DockerdProcess& d, const RestartOptions& o) {
  if (!d.unit.empty()) {
    std::vector<std::string> cmd = {"systemctl", "stop"};
    for (const auto& s : active_trigger_sockets(d.unit)) cmd.push_back(s);
    cmd.push_back(d.unit);
    EXTRAFS_CHECK_STATUS(run_program(cmd, o.stop_timeout_s + 30));
  } else if (::kill(static_cast<pid_t>(d.pid), SIGTERM) != 0 && errno != ESRCH) {
    return Error::from_errno(errno, "kill -TERM " + std::to_string(d.pid));
  }
  if (!wait_gone(d.pid, o.stop_timeout_s))
    return make_error(ETIMEDOUT, "dockerd (pid " + std::to_string(d.pid) + ") did not exit within " +
                                     std::to_string(o.stop_timeout_s) + " s");
  return ok_status();
}

// Starts `d` again; returns the new pid (0 if systemd did not tell).
Result<long> start(const DockerdProcess& d, const std::vector<std::string>& sockets, const RestartOptions& o) {
  if (!d.unit.empty()) {
    std::vector<std::string> cmd = {"systemctl", "start", d.unit};
    cmd.insert(cmd.end(), sockets.begin(), sockets.end());
    EXTRAFS_CHECK_STATUS(run_program(cmd, o.start_timeout_s + 30));
    auto pid = parse_uint(unit_property(d.unit, "MainPID"));
    return pid ? static_cast<long>(*pid) : 0L;
  }
  return spawn_detached(d);
}

std::string fmt_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f s", s);
  return buf;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

std::string service_of_cgroup(const std::string& cgroup_text) {
  std::string found;
  for (const auto& line : split_on(cgroup_text, '\n')) {
    // "0::/system.slice/docker.service" (unified) or "1:name=systemd:/system.slice/docker.service".
    const size_t c1 = line.find(':');
    const size_t c2 = c1 == std::string::npos ? std::string::npos : line.find(':', c1 + 1);
    if (c2 == std::string::npos) continue;
    const std::string ctl = line.substr(c1 + 1, c2 - c1 - 1);
    if (!ctl.empty() && ctl != "name=systemd") continue;
    for (const auto& comp : split_on(std::string_view(line).substr(c2 + 1), '/'))
      if (ends_with(comp, ".service") && comp != ".service" && comp.rfind("user@", 0) != 0) found = comp;
  }
  return found;
}

Result<std::string> dockerd_api_socket(const std::vector<std::string>& args, const std::string& cwd,
                                       const std::string& default_config) {
  std::vector<std::string> hosts = dockerd_flag_values(args, {"-H", "--host"});
  if (hosts.empty()) {
    auto cfg = dockerd_flag_values(args, {"--config-file"});
    const std::string file = relative_to(cwd, cfg.empty() ? default_config : cfg.back());
    if (auto text = read_file(file); text.ok()) {
      auto j = nlohmann::json::parse(*text, nullptr, false);
      if (j.is_object() && j.contains("hosts") && j["hosts"].is_array())
        for (const auto& h : j["hosts"])
          if (h.is_string()) hosts.push_back(h.get<std::string>());
    }
  }
  if (hosts.empty()) return std::string(kDefaultSocketPath);
  for (const auto& h : hosts) {
    if (h.rfind("unix://", 0) == 0) {
      const std::string path = h.substr(7);
      return path.empty() ? std::string(kDefaultSocketPath) : relative_to(cwd, path);
    }
    if (h.rfind("fd://", 0) == 0) return std::string(kSystemdSocketPath);
  }
  std::string all;
  for (const auto& h : hosts) all += (all.empty() ? "" : ", ") + h;
  return make_error(ENOENT, "dockerd listens on no unix socket (hosts: " + all + ")");
}

Result<DockerdProcess> inspect_dockerd(long pid) {
  DockerdProcess d;
  d.pid = pid;
  const std::string proc = "/proc/" + std::to_string(pid);
  auto cmdline = read_file(proc + "/cmdline");
  if (!cmdline.ok() || cmdline->empty()) return make_error(ESRCH, "dockerd (pid " + std::to_string(pid) + ") is gone");
  d.argv = split_cmdline(*cmdline);
  auto env = read_file(proc + "/environ");
  if (!env.ok()) return make_error(env.code(), "cannot read the environment of dockerd (pid " + std::to_string(pid) + "): " + env.error().message);
  d.env = split_cmdline(*env);
  d.cwd = read_link(proc + "/cwd").value_or("/");
  d.exe = read_link(proc + "/exe").value_or("");
  // A binary replaced by a package upgrade shows as "PATH (deleted)": start the new one.
  if (const size_t del = d.exe.find(" (deleted)"); del != std::string::npos) d.exe.erase(del);
  if (d.exe.empty()) d.exe = relative_to(d.cwd, d.argv[0]);
  d.stdout_file = regular_file_of_fd(proc, 1);
  d.stderr_file = regular_file_of_fd(proc, 2);
  auto cfg = dockerd_flag_values(d.argv, {"--config-file"});
  d.config_file = relative_to(d.cwd, cfg.empty() ? kDaemonJson : cfg.back());
  if (systemd_running()) {
    if (auto cg = read_file(proc + "/cgroup"); cg.ok()) {
      std::string unit = service_of_cgroup(*cg);
      // Only when dockerd is that unit's main process: a dockerd started by hand from a shell in
      // some other service (a CI runner) is not restarted through that service.
      if (!unit.empty() && unit_property(unit, "MainPID") == std::to_string(pid)) d.unit = unit;
    }
  }
  EXTRAFS_TRY(sock, dockerd_api_socket(d.argv, d.cwd, kDaemonJson));
  d.api_socket = sock;
  return d;
}

Result<bool> dockerd_live_restore(const std::string& socket) {
  EXTRAFS_TRY(r, http_get_unix(socket, "/info", 10000));
  if (r.status != 200) return make_error(EIO, socket + ": GET /info answered " + std::to_string(r.status) + " " + r.reason);
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (!j.is_object() || !j.contains("LiveRestoreEnabled") || !j["LiveRestoreEnabled"].is_boolean())
    return make_error(EBADMSG, socket + ": GET /info has no boolean LiveRestoreEnabled");
  return j["LiveRestoreEnabled"].get<bool>();
}

Result<RestartOutcome> run_with_dockerd_stopped(const std::string& data_root, bool restart,
                                                const std::function<Status()>& change, const RestartOptions& opts) {
  RestartOutcome out;
  auto pid = find_dockerd(data_root);
  if (!pid || !restart) {
    if (auto st = check_dockerd_stopped(data_root); !st.ok())
      return make_error(st.code(), st.error().message + (pid ? "; or pass --restart to restart it around the change "
                                                               "(needs live-restore)"
                                                             : ""));
    EXTRAFS_CHECK_STATUS(change());
    return out;
  }
  const std::string who = "dockerd (pid " + std::to_string(*pid) + ")";
  EXTRAFS_TRY(d, inspect_dockerd(*pid));
  auto live = dockerd_live_restore(d.api_socket);
  if (!live.ok())
    return make_error(live.code(), "cannot ask " + who + " whether live-restore is enabled: " + live.error().message);
  if (!*live)
    return make_error(EPERM, who + " runs without live-restore, so restarting it would stop its containers; set "
                             "\"live-restore\": true in " + d.config_file + " and reload it (kill -HUP " +
                             std::to_string(*pid) + "), or stop it yourself");
  out.old_pid = d.pid;
  out.how = d.unit.empty() ? "its own command line" : "systemd unit " + d.unit;
  const std::vector<std::string> sockets = d.unit.empty() ? std::vector<std::string>{} : active_trigger_sockets(d.unit);
  const auto t0 = Clock::now();
  if (auto st = stop(d, opts); !st.ok()) return make_error(st.code(), "stopping " + who + ": " + st.error().message);

  // dockerd's containerd releases the data-root's databases just after dockerd exits.
  Status changed = check_dockerd_stopped(data_root);
  for (int i = 0; i < 100 && !changed.ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    changed = check_dockerd_stopped(data_root);
  }
  if (changed.ok()) changed = change();

  auto started = start(d, sockets, opts);
  Status up = started.ok() ? wait_api(d.api_socket, d.unit.empty() ? *started : 0, opts.start_timeout_s)
                           : Status(started.error());
  out.restarted = up.ok();
  out.new_pid = started.ok() ? *started : 0;
  out.api_down_s = seconds_since(t0);
  if (!changed.ok() && !up.ok())
    return make_error(changed.code(), changed.error().message + "; and starting dockerd again failed: " + up.error().message);
  if (!changed.ok())
    return make_error(changed.code(), changed.error().message + " (dockerd was started again; its API was unavailable for " +
                                          fmt_seconds(out.api_down_s) + ")");
  if (!up.ok())
    return make_error(up.code(), "the change is done, but starting dockerd again (" + out.how + ") failed: " + up.error().message);
  return out;
}

}  // namespace extrafs::store
