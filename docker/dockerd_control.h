// Changing a dockerd data-root safely, restarting the dockerd that owns it around the change when
// asked: what `extrafs docker attach|detach [--restart]` (and the docker CLI plugin) call.
// dockerd reads a data-root's image metadata only at start-up (and rewrites repositories.json
// from memory), so the change has to happen while it is stopped; with live-restore enabled,
// running containers survive that stop (their shims outlive dockerd) and the new dockerd takes
// them back.
//
// run_with_dockerd_stopped(), in order:
//   1. take the data-root lock (docker/data_root.h), held to the end;
//   2. recover: if the restart journal (docker/dockerd_journal.h) says an earlier run stopped this
//      dockerd and died before starting it again, start it again now (recover_stopped_dockerd);
//   3. change.plan(): read and check everything, write nothing; nothing to change ends here,
//      dockerd untouched;
//   4. find the dockerd running on the data-root (docker/dockerd_probe.h). One running without
//      `restart`: EBUSY. With `restart`: record how it was started (its systemd unit when it is
//      that unit's main process, else executable, command line, environment, working directory,
//      output files), check that its executable is there, open a pidfd to it, ask its API
//      (`GET /info`) about live-restore and refuse (EPERM) without it;
//   5. change.prepare(): stage what can be staged (from the mount too); with no dockerd running,
//      change.apply() and done;
//   6. the window: write the journal, defer SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP, SIGTTIN,
//      SIGTTOU, SIGUSR1, SIGUSR2, SIGALRM and SIGPIPE (blocked; children get a clean mask and
//      their own process group, so a terminal's Ctrl-C reaches neither them nor us); stop dockerd
//      (`systemctl stop` of the unit and its active sockets, or SIGTERM through a pidfd) and wait
//      for it to exit; change.apply(), which reads nothing but the data-root; start it again the
//      same way, always, also when the change failed; wait for `GET /_ping`; remove the journal;
//      end the deferral (a deferred signal is reported, not lost: see reraise_deferred_signal).
//
// A run killed by SIGKILL in the window leaves the journal: the next run on the data-root (step
// 2) starts dockerd again. Not thread-safe: it blocks the signals in the calling thread only (a
// program with other threads blocks them there for good), and runs children. One call per
// data-root at a time across processes (the lock). Leaves no child process behind but the
// dockerd it started.
#pragma once

#include <string>
#include <vector>

#include "common/result.h"
#include "docker/dockerd_journal.h"

namespace extrafs::docker {

// The data-root work done with no dockerd running on it, in three steps, each called once, in
// order, under the data-root lock. An error in plan() or prepare() leaves dockerd running.
class DataRootChange {
 public:
  virtual ~DataRootChange() = default;
  // Before anything about dockerd is decided (it may be running): read and check everything the
  // change needs, writing nothing. Returns false when there is nothing to change (dockerd is then
  // left alone, and the run succeeds even if a dockerd runs and `restart` was not asked).
  virtual Result<bool> plan(const std::string& data_root) = 0;
  // Once the change may go ahead, before dockerd is stopped (it may be running): read what is
  // left to read (from the mount too) and stage it in the data-root where dockerd does not look.
  virtual Status prepare(const std::string& data_root) = 0;
  // With no dockerd on the data-root: the writes. Reads nothing but the data-root and what
  // plan() and prepare() kept (never the mount, which may hang).
  virtual Status apply(const std::string& data_root) = 0;
};

// How a running dockerd was started, read from /proc/PID.
struct DockerdProcess {
  DockerdLaunch launch;               // what the journal keeps
  std::string config_file;            // its --config-file, or /etc/docker/daemon.json
  unsigned long long start_time = 0;  // /proc/PID/stat field 22: tells it from a later process with its pid
  bool cwd_deleted = false;           // its working directory was removed while it ran
};

// Reads /proc/PID of a running dockerd: its command line and environment (split at NULs, empty
// arguments kept), executable (" (deleted)" after a package upgrade replaced it: the path, which
// then holds the new binary), working directory (told from a directory whose name ends in
// " (deleted)" by comparing device and inode), output files, systemd unit, API socket. ESRCH if
// it is gone or was replaced by another process while being read.
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

// What `GET /info` of a dockerd says about where and how it keeps images.
struct DockerdInfo {
  std::string root_dir;       // DockerRootDir: its data-root, as that dockerd sees it ("" if not said)
  bool live_restore = false;  // LiveRestoreEnabled
  std::string driver;         // Driver: its graph driver ("overlay2")
};

// `GET /info` of the dockerd behind `socket`. Errors name the socket: its connect errors,
// EIO for a non-200 answer, EBADMSG for an answer without a boolean LiveRestoreEnabled.
Result<DockerdInfo> dockerd_info(const std::string& socket);

// Whether the dockerd behind `socket` runs with live-restore: `GET /info` -> LiveRestoreEnabled.
Result<bool> dockerd_live_restore(const std::string& socket);

struct RestartOptions {
  int stop_timeout_s = 120;   // for dockerd to exit after SIGTERM / systemctl stop
  int start_timeout_s = 120;  // for the new dockerd to answer /_ping
  int lock_timeout_s = 600;   // for another extrafs docker run on the data-root (it may be restarting dockerd)
};

// What run_with_dockerd_stopped did; filled as far as it got, also when it fails.
struct RestartOutcome {
  std::string recovered;   // a line about a dockerd an interrupted earlier run had left stopped, if any
  bool changed = false;    // plan() found work and apply() succeeded
  bool restarted = false;  // dockerd was stopped and answers again
  long old_pid = 0;
  long new_pid = 0;         // 0 when systemd started it and did not tell
  std::string how;          // "systemd unit docker.service" or "its own command line"
  double api_down_s = 0;    // from the stop request until the new dockerd answered /_ping
  int deferred_signal = 0;  // a signal that arrived while dockerd was stopped, or 0
};

// Runs `change` with no dockerd on `data_root` (an existing directory), as the header comment
// says. Errors, one line each: EBUSY (a dockerd runs and `restart` is false, or it runs in another
// pid namespace), EPERM (no live-restore; dockerd left alone), the change's own errors (dockerd
// started again all the same, saying so), and failures to stop or start dockerd (the journal
// then stays, so the next run tries again).
Status run_with_dockerd_stopped(const std::string& data_root, bool restart, DataRootChange& change,
                                const RestartOptions& opts, RestartOutcome* out);

// Step 2 alone, for a caller holding the data-root lock: if the journal of `data_root` says an
// interrupted run left its dockerd stopped, and none runs there now, starts it again as recorded
// and waits for its API, then removes the journal. A journal from an earlier boot is removed
// without starting anything (the boot started what starts at boot). Returns a line for the
// operator, empty when there was nothing to recover. On failure the journal stays.
Result<std::string> recover_stopped_dockerd(const std::string& data_root, const RestartOptions& opts);

// Ends the process by the signal run_with_dockerd_stopped deferred (after the caller has printed
// what it did), with the signal's default action; for SIGTSTP and the like, stops and returns
// once continued. Does nothing for 0.
void reraise_deferred_signal(int sig);

}  // namespace extrafs::docker
