// Restarting the dockerd that owns a data-root around a change to it: what
// `extrafs docker attach|detach --restart` does. dockerd reads a data-root's image metadata only at
// start-up (and rewrites repositories.json from memory), so the change has to happen while it is
// stopped; with live-restore enabled, running containers survive that stop (their shims outlive
// dockerd) and the new dockerd takes them back.
//
//   1. find the dockerd running on the data-root (store/dockerd_probe.h) and record how it was
//      started: its systemd unit (when /proc/PID/cgroup names a .service whose MainPID it is), or
//      its executable, command line, environment, working directory and stdout/stderr files;
//   2. ask its API socket `GET /info` whether `LiveRestoreEnabled`; refuse if not;
//   3. stop it: `systemctl stop` (with the sockets that would start it again), or SIGTERM; wait
//      (bounded) for the process to go;
//   4. run the change;
//   5. start it again the same way (always, also when the change failed) and wait (bounded) for
//      `GET /_ping` to answer OK.
//
// Not thread-safe: one call at a time per data-root (the change takes the data-root's lock).
// Runs systemctl and starts dockerd as child processes; leaves no child behind.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"

namespace extrafs::store {

// How a running dockerd was started, read from /proc/PID before it is stopped.
struct DockerdProcess {
  long pid = 0;
  std::string unit;               // "docker.service" when systemd runs it, else empty
  std::string exe;                // /proc/PID/exe
  std::vector<std::string> argv;  // /proc/PID/cmdline
  std::vector<std::string> env;   // /proc/PID/environ
  std::string cwd;                // /proc/PID/cwd
  std::string stdout_file;        // a regular file its stdout was, else empty (-> /dev/null)
  std::string stderr_file;        // likewise for stderr
  std::string config_file;        // its --config-file, or /etc/docker/daemon.json
  std::string api_socket;         // the unix socket its API listens on
};

// Reads /proc/PID of a running dockerd. ESRCH if it is gone.
Result<DockerdProcess> inspect_dockerd(long pid);

// The unix socket dockerd's API listens on, from its command line `args` (argv[0] first): the first
// -H/--host unix://PATH (fd:// is systemd socket activation: /run/docker.sock), else the "hosts" of
// its --config-file (default `default_config`), else /var/run/docker.sock. Relative paths are taken
// against `cwd`. ENOENT if it listens on no unix socket (tcp:// only).
Result<std::string> dockerd_api_socket(const std::vector<std::string>& args, const std::string& cwd,
                                       const std::string& default_config);

// The systemd service named by the contents of /proc/PID/cgroup (the innermost "*.service" of the
// unified or name=systemd hierarchy, user@*.service managers excluded), or empty.
std::string service_of_cgroup(const std::string& cgroup_text);

// Whether the dockerd behind `socket` runs with live-restore: `GET /info` -> LiveRestoreEnabled.
Result<bool> dockerd_live_restore(const std::string& socket);

// What restart_dockerd_around did.
struct RestartOutcome {
  bool restarted = false;     // false: no dockerd ran on the data-root, the change ran alone
  long old_pid = 0;
  long new_pid = 0;           // 0 when systemd started it and did not tell
  std::string how;            // "systemd unit docker.service" or "its own command line"
  double api_down_s = 0;      // from the stop request until the new dockerd answered /_ping
};

struct RestartOptions {
  int stop_timeout_s = 120;   // for dockerd to exit after SIGTERM / systemctl stop
  int start_timeout_s = 120;  // for the new dockerd to answer /_ping
};

// Runs `change` with no dockerd on `data_root`. If one runs there and `restart` is false: EBUSY,
// one line naming it and hinting at --restart. If `restart`: the steps in the header comment; a
// dockerd without live-restore is refused (EPERM, one line naming the "live-restore": true
// setting) and left alone. If `change` fails after dockerd was stopped, dockerd is still started
// again and the change's error is returned (saying so).
Result<RestartOutcome> run_with_dockerd_stopped(const std::string& data_root, bool restart,
                                                const std::function<Status()>& change,
                                                const RestartOptions& opts = {});

}  // namespace extrafs::store
