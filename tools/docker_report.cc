#include "tools/docker_report.h"

#include <cstdio>
#include <cstring>
#include <string>

#include "common/log.h"
#include "common/str_util.h"

namespace extrafs::tools {

void print_recovered(const docker::RestartOutcome& o) {
  if (!o.recovered.empty()) std::printf("%s\n", escape_control(o.recovered).c_str());
}

void print_restart(const docker::RestartOutcome& o) {
  if (!o.restarted) return;
  std::printf("dockerd restarted (%s; pid %ld -> %s): its API was unavailable for %.2f s\n", o.how.c_str(), o.old_pid,
              o.new_pid ? std::to_string(o.new_pid).c_str() : "?", o.api_down_s);
}

int finish_restart(const docker::RestartOutcome& o, int rc, std::string_view program) {
  if (o.deferred_signal) {
    std::fflush(stdout);
    const char* abbrev = sigabbrev_np(o.deferred_signal);
    print_error(program, (abbrev ? "SIG" + std::string(abbrev) : "signal " + std::to_string(o.deferred_signal)) +
                             " arrived while dockerd was stopped; it was started again first");
    docker::reraise_deferred_signal(o.deferred_signal);
  }
  return rc;
}

}  // namespace extrafs::tools
