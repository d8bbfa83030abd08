// What a command that changed a dockerd data-root through docker::run_with_dockerd_stopped
// prints about that dockerd, and how it ends: shared by `extrafs docker attach|detach` and the
// docker CLI plugin (`docker extrafs pull|rmi`), which restart dockerd the same way. Called from
// the main thread, after the library call returned.
#pragma once

#include <string_view>

#include "docker/dockerd_control.h"

namespace extrafs::tools {

// The dockerd an interrupted earlier run had left stopped and this run started again, if any (it
// happened first, so it is printed first), on stdout.
void print_recovered(const docker::RestartOutcome& o);
// The restart, if there was one, on stdout: how, the pids, how long its API was unavailable.
void print_restart(const docker::RestartOutcome& o);
// Returns `rc`, unless a signal arrived while dockerd was stopped: then says so on stderr
// ("<program>: SIGINT arrived ...") and ends the process by that signal, as it would have then.
int finish_restart(const docker::RestartOutcome& o, int rc, std::string_view program);

}  // namespace extrafs::tools
