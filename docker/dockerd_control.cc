#include "docker/dockerd_control.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string_view>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/posix_file.h"
#include "common/str_util.h"
#include "common/unix_http.h"
#include "docker/data_root.h"
#include "docker/dockerd_probe.h"

namespace extrafs::docker {

namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kSystemdSocketPath = "/run/docker.sock";  // fd:// (docker.socket)
constexpr const char* kDefaultSocketPath = "/var/run/docker.sock";
constexpr std::string_view kDeletedSuffix = " (deleted)";

// The signals deferred while dockerd is stopped: every one whose default action ends or stops
// the process and that a user, a terminal, a service manager or a broken pipe sends.
constexpr int kDeferredSignals[] = {SIGINT,  SIGTERM, SIGHUP,  SIGQUIT, SIGTSTP, SIGTTIN,
                                    SIGTTOU, SIGUSR1, SIGUSR2, SIGALRM, SIGPIPE};

// Blocks kDeferredSignals in this thread for its lifetime. release() takes the ones that arrived
// meanwhile off the pending set and restores the mask: a signal is reported (the first one), not
// delivered, so the caller can finish and then act on it. A signal the process ignores, or one
// blocked before, is left as it would have been.
class DeferSignals {
 public:
  DeferSignals() {
    sigset_t set;
    sigemptyset(&set);
    for (int s : kDeferredSignals) sigaddset(&set, s);
    sigemptyset(&old_);
    active_ = ::pthread_sigmask(SIG_BLOCK, &set, &old_) == 0;
  }
  DeferSignals(const DeferSignals&) = delete;
  DeferSignals& operator=(const DeferSignals&) = delete;
  ~DeferSignals() { release(); }

  int release() {
    if (!active_) return first_;
    active_ = false;
    sigset_t pending;
    sigemptyset(&pending);
    ::sigpending(&pending);
    const struct timespec zero = {0, 0};
    for (int s : kDeferredSignals) {
      if (!sigismember(&pending, s) || sigismember(&old_, s)) continue;
      sigset_t one;
      sigemptyset(&one);
      sigaddset(&one, s);
      if (::sigtimedwait(&one, nullptr, &zero) != s) continue;
      struct sigaction sa;
      const bool ignored = ::sigaction(s, nullptr, &sa) == 0 && sa.sa_handler == SIG_IGN;
      if (!ignored && s != SIGPIPE && first_ == 0) first_ = s;
    }
    ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
    return first_;
  }

 private:
  sigset_t old_;
  bool active_ = false;
  int first_ = 0;
};

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

bool ends_with(std::string_view s, std::string_view tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::string relative_to(const std::string& cwd, const std::string& path) {
  return path.empty() || path.front() == '/' ? path : cwd + "/" + path;
}

bool same_file(const struct stat& a, const struct stat& b) { return a.st_dev == b.st_dev && a.st_ino == b.st_ino; }

// The path a /proc magic link (`link`: /proc/PID/cwd, exe, fd/N) stands for, and whether what it
// points at was deleted. The kernel shows a deleted file as "PATH (deleted)"; a file whose name
// really ends so is told apart by its device and inode.
struct LinkTarget {
  std::string path;
  bool deleted = false;
};
std::optional<LinkTarget> resolve_proc_link(const std::string& link) {
  auto text = read_link(link);
  if (!text || text->empty()) return std::nullopt;
  struct stat via_proc, via_path;
  if (::stat(link.c_str(), &via_proc) != 0) return std::nullopt;
  if (::stat(text->c_str(), &via_path) == 0 && same_file(via_proc, via_path)) return LinkTarget{*text, false};
  if (ends_with(*text, kDeletedSuffix)) return LinkTarget{text->substr(0, text->size() - kDeletedSuffix.size()), true};
  return LinkTarget{*text, false};  // renamed meanwhile, or outside our mount namespace
}

// "starttime" (field 22) of /proc/PID/stat: with the pid, names one process for good.
std::optional<unsigned long long> proc_start_time(long pid) {
  auto stat = read_file("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!stat.ok()) return std::nullopt;
  const size_t close = stat->rfind(')');
  if (close == std::string::npos) return std::nullopt;
  auto fields = split_on(std::string_view(*stat).substr(close + 1), ' ');
  // fields[0] is empty (the blank after ')'), fields[1] the state (field 3): field 22 is fields[20].
  if (fields.size() < 21) return std::nullopt;
  return parse_uint(fields[20]);
}

// A regular file that /proc/PID/fd/N is open on, or empty (a tty, pipe, socket, deleted file...).
std::string regular_file_of_fd(const std::string& proc, int n) {
  const std::string fd = proc + "/fd/" + std::to_string(n);
  struct stat st;
  if (::stat(fd.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return "";
  auto t = resolve_proc_link(fd);
  if (!t || t->deleted || t->path.front() != '/') return "";
  return t->path;
}

// A pidfd for `pid`, checked to be the process that started at `start_time` (so a signal never
// reaches a later process that got its pid). ESRCH if that process is gone.
Result<Fd> open_pidfd(long pid, unsigned long long start_time) {
  Fd fd(static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0)));
  if (!fd.valid()) return Error::from_errno(errno, "pidfd_open " + std::to_string(pid));
  if (proc_start_time(pid) != start_time) return make_error(ESRCH, "dockerd (pid " + std::to_string(pid) + ") is gone");
  return fd;
}

// Waits (bounded) until the process of `pidfd` has exited.
bool wait_exit(int pidfd, int timeout_s) {
  const auto end = Clock::now() + std::chrono::seconds(timeout_s);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count();
    struct pollfd p = {pidfd, POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(left > 0 ? left : 0));
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return false;
  }
}

// Runs `argv` (PATH searched) with stdin /dev/null, collecting stdout and stderr; bounded by
// `timeout_s` (then killed, ETIMEDOUT). The child gets an empty signal mask and its own process
// group, so a terminal's Ctrl-C meant for us does not stop it half way. A non-zero exit is an
// error naming the command and its first line of output.
Result<std::string> run_program(const std::vector<std::string>& argv, int timeout_s) {
  std::string cmd;
  for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return Error::from_errno(errno, "pipe");
  Fd rd(fds[0]), wr(fds[1]);
  Fd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!devnull.valid()) return Error::from_errno(errno, "/dev/null");
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return Error::from_errno(errno, "fork");
  if (pid == 0) {
    ::setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::dup2(devnull.get(), 0);
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
                             (first.empty() ? ")" : "): " + escape_control(first)));
}

bool systemd_running() { return is_dir("/run/systemd/system"); }

// `systemctl show -p PROP --value UNIT`, trimmed; empty on failure.
std::string unit_property(const std::string& unit, const std::string& prop) {
  auto out = run_program({"systemctl", "--no-ask-password", "show", "-p", prop, "--value", unit}, 30);
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
  if (!path.empty()) fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
  if (fd >= 0) {
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      fd = -1;
    } else {
      ::fcntl(fd, F_SETFL, O_WRONLY | O_APPEND);
    }
  }
  if (fd < 0) fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  return fd;
}

// Starts `d` again with its own executable, command line, environment and working directory
// (or "/" if that directory is gone), detached from us and from any terminal (setsid, double
// fork, stdin /dev/null, an empty signal mask). Returns its pid.
Result<long> spawn_detached(const DockerdLaunch& d) {
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
    // A working directory removed since dockerd started (or never visible here): start in "/",
    // where a dockerd whose relative paths pointed into it would have failed anyway.
    if (d.cwd.empty() || ::chdir(d.cwd.c_str()) != 0) {
      if (::chdir("/") != 0) e = errno;
    }
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
  if (got == sizeof(words)) return Error::from_errno(words[1], "starting " + d.exe);
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
    if (pid != 0 && !process_running(pid))
      return make_error(ESRCH, "the new dockerd (pid " + std::to_string(pid) + ") exited");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return make_error(ETIMEDOUT,
                    "dockerd's API did not answer within " + std::to_string(timeout_s) + " s (" + last + ")");
}

std::string how_started(const DockerdLaunch& d) {
  return d.unit.empty() ? "its own command line" : "systemd unit " + d.unit;
}

// Starts `d` again and waits for its API; returns the new pid (0 if systemd did not tell).
// `no_block` (systemd only): queue the start and return at once, without waiting.
Result<long> start_and_wait(const DockerdLaunch& d, const RestartOptions& o, bool no_block = false) {
  long pid = 0;
  if (!d.unit.empty()) {
    std::vector<std::string> units = {d.unit};
    units.insert(units.end(), d.sockets.begin(), d.sockets.end());
    // Every start counts against the unit's start rate limit (docker.service: 3 in 60 s), and
    // restarts are starts: without this, the third --restart in a minute leaves dockerd down.
    std::vector<std::string> reset = {"systemctl", "--no-ask-password", "reset-failed"};
    reset.insert(reset.end(), units.begin(), units.end());
    (void)run_program(reset, 30);
    std::vector<std::string> cmd = {"systemctl", "--no-ask-password", "start"};
    if (no_block) cmd.push_back("--no-block");
    cmd.insert(cmd.end(), units.begin(), units.end());
    EXTRAFS_CHECK_STATUS(run_program(cmd, o.start_timeout_s + 30));
    if (no_block) return 0L;
    pid = static_cast<long>(parse_uint(unit_property(d.unit, "MainPID")).value_or(0));
    EXTRAFS_CHECK_STATUS(wait_api(d.api_socket, 0, o.start_timeout_s));
  } else {
    EXTRAFS_TRY(spawned, spawn_detached(d));
    pid = spawned;
    EXTRAFS_CHECK_STATUS(wait_api(d.api_socket, pid, o.start_timeout_s));
  }
  return pid;
}

// Sends the stop: `systemctl stop` of the unit and its sockets, or SIGTERM through the pidfd.
Status request_stop(const DockerdLaunch& d, int pidfd, const RestartOptions& o) {
  if (!d.unit.empty()) {
    std::vector<std::string> cmd = {"systemctl", "--no-ask-password", "stop"};
    cmd.insert(cmd.end(), d.sockets.begin(), d.sockets.end());
    cmd.push_back(d.unit);
    auto r = run_program(cmd, o.stop_timeout_s + 30);
    if (!r.ok()) return r.error();
    return ok_status();
  }
  if (::syscall(SYS_pidfd_send_signal, pidfd, SIGTERM, nullptr, 0) != 0 && errno != ESRCH)
    return Error::from_errno(errno, "SIGTERM to dockerd (pid " + std::to_string(d.pid) + ")");
  return ok_status();
}

std::string fmt_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f s", s);
  return buf;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Whether a dockerd (or its containerd) uses `data_root` now, by process or by lock.
bool dockerd_in_use(const std::string& data_root) {
  return find_dockerd(data_root).has_value() || !check_dockerd_stopped(data_root).ok();
}

// Stops the dockerd of `d`, runs the change, starts it again: the window of the header comment.
Status restart_around(const std::string& data_root, const DockerdProcess& d, Fd pidfd, DataRootChange& change,
                      const RestartOptions& o, RestartOutcome* out) {
  const DockerdLaunch& l = d.launch;
  const std::string who = "dockerd (pid " + std::to_string(l.pid) + ")";
  const std::string journal = restart_journal_path(data_root);
  DeferSignals defer;
  if (auto st = write_restart_journal(data_root, l); !st.ok()) {
    out->deferred_signal = defer.release();
    return make_error(st.code(),
                      "cannot write the restart journal, so " + who + " was not stopped: " + st.error().message);
  }
  const auto t0 = Clock::now();
  Status stopped = request_stop(l, pidfd.get(), o);
  const bool gone = wait_exit(pidfd.get(), stopped.ok() ? o.stop_timeout_s : 5);
  if (!gone) {
    out->deferred_signal = defer.release();
    return make_error(stopped.ok() ? ETIMEDOUT : stopped.code(),
                      "stopping " + who + ": " +
                          (stopped.ok() ? "it did not exit within " + std::to_string(o.stop_timeout_s) + " s"
                                        : stopped.error().message) +
                          "; nothing was changed; should it exit later, the next extrafs docker command on " +
                          data_root + " starts it again (" + journal + ")");
  }
  // dockerd's containerd releases the data-root's databases just after dockerd exits.
  Status changed = check_dockerd_stopped(data_root);
  for (int i = 0; i < 100 && !changed.ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    changed = check_dockerd_stopped(data_root);
  }
  if (changed.ok()) changed = change.apply(data_root);

  auto up = start_and_wait(l, o);
  out->api_down_s = seconds_since(t0);
  if (up.ok()) {
    out->restarted = true;
    out->new_pid = *up;
    (void)remove_restart_journal(data_root);  // if it stays, the next run sees dockerd running and drops it
  }
  out->changed = changed.ok();
  out->deferred_signal = defer.release();
  if (!changed.ok() && !up.ok())
    return make_error(changed.code(), changed.error().message + "; and starting " + who + " again (" + how_started(l) +
                                          ") failed: " + up.error().message + "; " + journal +
                                          " stays, so the next extrafs docker command tries again");
  if (!changed.ok())
    return make_error(changed.code(), changed.error().message +
                                          " (dockerd was started again; its API was unavailable for " +
                                          fmt_seconds(out->api_down_s) + ")");
  if (!up.ok())
    return make_error(up.code(), "the change is done, but starting " + who + " again (" + how_started(l) +
                                     ") failed: " + up.error().message + "; " + journal +
                                     " stays, so the next extrafs docker command tries again");
  return ok_status();
}

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
  return make_error(ENOENT, "dockerd listens on no unix socket (hosts: " + escape_control(all) + ")");
}

Result<DockerdProcess> inspect_dockerd(long pid) {
  DockerdProcess d;
  DockerdLaunch& l = d.launch;
  l.pid = pid;
  const std::string proc = "/proc/" + std::to_string(pid);
  const std::string gone = "dockerd (pid " + std::to_string(pid) + ") is gone";
  auto t0 = proc_start_time(pid);
  if (!t0) return make_error(ESRCH, gone);
  d.start_time = *t0;
  auto cmdline = read_file(proc + "/cmdline", 1 << 20);
  if (!cmdline.ok() || cmdline->empty()) return make_error(ESRCH, gone);
  l.argv = split_cmdline(*cmdline);
  auto env = read_file(proc + "/environ", 1 << 20);
  if (!env.ok())
    return make_error(
        env.code(), "cannot read the environment of dockerd (pid " + std::to_string(pid) + "): " + env.error().message);
  l.env = split_cmdline(*env);
  auto cwd = resolve_proc_link(proc + "/cwd");
  if (!cwd) return make_error(ESRCH, gone);
  l.cwd = cwd->path;
  d.cwd_deleted = cwd->deleted;
  // A binary replaced by a package upgrade shows as deleted: start the new one at its path.
  auto exe = resolve_proc_link(proc + "/exe");
  l.exe = exe ? exe->path : relative_to(l.cwd, l.argv[0]);
  l.stdout_file = regular_file_of_fd(proc, 1);
  l.stderr_file = regular_file_of_fd(proc, 2);
  auto cfg = dockerd_flag_values(l.argv, {"--config-file"});
  d.config_file = relative_to(l.cwd, cfg.empty() ? kDaemonJson : cfg.back());
  if (systemd_running()) {
    if (auto cg = read_file(proc + "/cgroup", 1 << 20); cg.ok()) {
      std::string unit = service_of_cgroup(*cg);
      // Only when dockerd is that unit's main process: a dockerd started by hand from a shell in
      // some other service (a CI runner) is not restarted through that service.
      if (!unit.empty() && unit_property(unit, "MainPID") == std::to_string(pid)) {
        l.unit = unit;
        l.sockets = active_trigger_sockets(unit);
      }
    }
  }
  // Everything above describes one process only if it is still the one that started at t0.
  if (proc_start_time(pid) != t0) return make_error(ESRCH, gone);
  EXTRAFS_TRY(sock, dockerd_api_socket(l.argv, l.cwd, kDaemonJson));
  l.api_socket = sock;
  return d;
}

Result<DockerdInfo> dockerd_info(const std::string& socket) {
  EXTRAFS_TRY(r, http_get_unix(socket, "/info", 10000));
  if (r.status != 200)
    return make_error(EIO,
                      socket + ": GET /info answered " + std::to_string(r.status) + " " + escape_control(r.reason));
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (!j.is_object() || !j.contains("LiveRestoreEnabled") || !j["LiveRestoreEnabled"].is_boolean())
    return make_error(EBADMSG, socket + ": GET /info has no boolean LiveRestoreEnabled");
  DockerdInfo info;
  info.live_restore = j["LiveRestoreEnabled"].get<bool>();
  if (j.contains("DockerRootDir") && j["DockerRootDir"].is_string())
    info.root_dir = j["DockerRootDir"].get<std::string>();
  if (j.contains("Driver") && j["Driver"].is_string()) info.driver = j["Driver"].get<std::string>();
  return info;
}

Result<bool> dockerd_live_restore(const std::string& socket) {
  EXTRAFS_TRY(info, dockerd_info(socket));
  return info.live_restore;
}

Result<std::string> recover_stopped_dockerd(const std::string& data_root, const RestartOptions& o) {
  const std::string path = restart_journal_path(data_root);
  auto read = read_restart_journal(data_root);
  if (!read.ok()) {
    if (dockerd_in_use(data_root)) {
      (void)remove_restart_journal(data_root);
      return "removed " + path + ", which could not be read; the dockerd on " + data_root + " runs";
    }
    return make_error(read.code(), read.error().message + "; if a dockerd should run on " + data_root +
                                       ", start it and remove the file");
  }
  if (!*read) return std::string();
  const RestartJournal& j = **read;
  const DockerdLaunch& l = j.dockerd;
  // Started again after all (by the run itself just before it died, by systemd, by hand).
  if (dockerd_in_use(data_root)) {
    EXTRAFS_CHECK_STATUS(remove_restart_journal(data_root));
    return std::string();
  }
  const std::string by =
      "'" + escape_control(j.by) + "' (pid " + std::to_string(j.by_pid) + ", " + escape_control(j.stopped_at) + ")";
  const std::string who = "dockerd (pid " + std::to_string(l.pid) + ", " + how_started(l) + ")";
  if (j.boot_id.empty() || j.boot_id != current_boot_id()) {
    EXTRAFS_CHECK_STATUS(remove_restart_journal(data_root));
    return who + " was stopped by " + by +
           " in an earlier boot, which ended before it was started again; "
           "not starting it here (this boot starts what it is set to start); removed " +
           path;
  }
  if (!l.unit.empty() && !systemd_running())
    return make_error(
        ENOENT, who + " was left stopped by " + by + ", but systemd does not run here; start it and remove " + path);
  // Inside a systemd service (extrafs-attach@.service is ordered before docker.service), waiting
  // for docker.service to start would wait for ourselves: queue the start instead.
  const bool queue_only = !l.unit.empty() && std::getenv("INVOCATION_ID") != nullptr;
  auto started = start_and_wait(l, o, queue_only);
  if (!started.ok())
    return make_error(started.code(), who + " was left stopped by " + by +
                                          "; starting it again failed: " + started.error().message + "; " + path +
                                          " stays, so the next extrafs docker command tries again");
  EXTRAFS_CHECK_STATUS(remove_restart_journal(data_root));
  if (queue_only) return who + ", left stopped by " + by + ", is queued to start again (systemctl start --no-block)";
  return who + ", left stopped by " + by + ", was started again" +
         (*started ? " (pid " + std::to_string(*started) + ")" : std::string());
}

Status run_with_dockerd_stopped(const std::string& data_root, bool restart, DataRootChange& change,
                                const RestartOptions& o, RestartOutcome* out) {
  *out = RestartOutcome{};
  EXTRAFS_TRY(lock, DataRootLock::take(data_root, o.lock_timeout_s));
  EXTRAFS_TRY(recovered, recover_stopped_dockerd(data_root, o));
  out->recovered = recovered;

  EXTRAFS_TRY(work, change.plan(data_root));
  if (!work) return ok_status();

  // Whether the change may run, and how, is settled before prepare() stages anything.
  auto pid = find_dockerd(data_root);
  if (!pid) {
    EXTRAFS_CHECK_STATUS(check_dockerd_stopped(data_root));
    EXTRAFS_CHECK_STATUS(change.prepare(data_root));
    EXTRAFS_CHECK_STATUS(check_dockerd_stopped(data_root));  // started meanwhile (not by extrafs)?
    EXTRAFS_CHECK_STATUS(change.apply(data_root));
    out->changed = true;
    return ok_status();
  }
  if (!restart) {
    auto st = check_dockerd_stopped(data_root);
    return make_error(
        EBUSY, (st.ok() ? "dockerd (pid " + std::to_string(*pid) + ") runs on " + data_root : st.error().message) +
                   "; or pass --restart to restart it around the change (needs live-restore)");
  }
  const std::string who = "dockerd (pid " + std::to_string(*pid) + ")";
  EXTRAFS_TRY(d, inspect_dockerd(*pid));
  EXTRAFS_TRY(pidfd, open_pidfd(*pid, d.start_time));
  auto live = dockerd_live_restore(d.launch.api_socket);
  if (!live.ok())
    return make_error(live.code(), "cannot ask " + who + " whether live-restore is enabled: " + live.error().message);
  if (!*live)
    return make_error(EPERM, who +
                                 " runs without live-restore, so restarting it would stop its containers; set "
                                 "\"live-restore\": true in " +
                                 d.config_file + " and reload it (kill -HUP " + std::to_string(*pid) +
                                 "), or stop it yourself");
  // What starting it again needs, checked while it still runs.
  if (d.launch.unit.empty() && ::access(d.launch.exe.c_str(), X_OK) != 0)
    return make_error(ENOENT, "cannot restart " + who + ": its executable " + d.launch.exe +
                                  " is gone (nothing was changed; stop it yourself)");
  EXTRAFS_CHECK_STATUS(change.prepare(data_root));
  out->old_pid = *pid;
  out->how = how_started(d.launch);
  return restart_around(data_root, d, std::move(pidfd), change, o, out);
}

void reraise_deferred_signal(int sig) {
  if (sig <= 0) return;
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, sig);
  ::pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
  ::raise(sig);
}

}  // namespace extrafs::docker
