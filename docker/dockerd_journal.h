// The restart journal: a small file a `--restart` run writes into the data-root before it stops
// the dockerd that owns it, and removes once that dockerd answers again. A run killed in between
// (SIGKILL, a crash, a power cut) leaves it behind, and it says what to start again and how: the
// systemd unit (and the sockets that were active), or the executable, command line, environment,
// working directory and output files. The next `extrafs docker` run on that data-root, and
// `extrafs-attach@.service` at the next boot, read it (docker/dockerd_control.h,
// recover_stopped_dockerd) under the data-root lock.
//
//   DATAROOT/extrafs-restart.json   mode 0600, replaced atomically; dockerd ignores it
//
// Strings are kept byte for byte: every byte outside printable ASCII, and '%', is written as
// %XX, so a command line or environment that is not UTF-8 survives the JSON. Not thread-safe;
// callers hold the data-root lock (docker/data_root.h).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/result.h"

namespace extrafs::docker {

// Where the journal of `data_root` (resolved) lives.
std::string restart_journal_path(const std::string& data_root);

// How the stopped dockerd is started again.
struct DockerdLaunch {
  long pid = 0;                      // the pid it had (for messages)
  std::string unit;                  // "docker.service" when systemd ran it, else empty
  std::vector<std::string> sockets;  // with `unit`: the socket units that were active
  std::string exe;                   // without `unit`: what to execute
  std::vector<std::string> argv;     // its command line, argv[0] first
  std::vector<std::string> env;      // its environment ("NAME=value")
  std::string cwd;                   // its working directory (may no longer exist)
  std::string stdout_file;           // a regular file its stdout was appended to, else empty
  std::string stderr_file;           // likewise for stderr
  std::string api_socket;            // the unix socket its API listens on
};

struct RestartJournal {
  int version = 1;
  std::string boot_id;     // /proc/sys/kernel/random/boot_id when written
  std::string stopped_at;  // UTC, "2026-12-07T01:02:03Z"
  long by_pid = 0;         // the extrafs process that stopped it
  std::string by;          // that process's command line, for messages
  DockerdLaunch dockerd;
};

// This boot's id (/proc/sys/kernel/random/boot_id), or empty if unreadable.
std::string current_boot_id();
// The command line of this process, blank-separated, for RestartJournal::by.
std::string own_command_line();

// Writes (atomically, durably, mode 0600) the journal of `data_root`: how to start `dockerd`
// again, with this boot's id, the time, and this process's pid and command line.
Status write_restart_journal(const std::string& data_root, const DockerdLaunch& dockerd);
// The journal of `data_root`, or nullopt if there is none. EBADMSG (naming the file) for one
// that cannot be parsed: the caller reports it and leaves it for the operator.
Result<std::optional<RestartJournal>> read_restart_journal(const std::string& data_root);
// Removes the journal of `data_root` (durably); no journal is fine.
Status remove_restart_journal(const std::string& data_root);

// The %XX coding of the journal's strings (exposed for tests).
std::string journal_encode(const std::string& s);
Result<std::string> journal_decode(const std::string& s);

}  // namespace extrafs::docker
