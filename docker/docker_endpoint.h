// Which dockerd a docker CLI talks to, worked out as the docker CLI itself does, for the docker
// CLI plugin (tools/docker_plugin.cc): it has to write into that dockerd's data-root, so only a
// local daemon (a unix socket) will do.
//
// Order (docker/cli's own): the -H/--host flag; else the --context flag; else $DOCKER_HOST; else
// $DOCKER_CONTEXT; else "currentContext" of CONFIG/config.json; else the default socket. A
// context other than "default" is CONFIG/contexts/meta/<sha256 of its name>/meta.json, whose
// Endpoints.docker.Host is the endpoint. CONFIG is the --config flag, else $DOCKER_CONFIG, else
// ~/.docker. Reads files only; thread-safe.
#pragma once

#include <string>

#include "common/result.h"

namespace extrafs::docker {

// The default endpoint of a docker CLI with nothing configured.
inline constexpr const char* kDefaultDockerHost = "unix:///var/run/docker.sock";

struct DockerCliSettings {
  std::string host_flag;       // -H/--host, or ""
  std::string context_flag;    // -c/--context, or ""
  std::string docker_host;     // $DOCKER_HOST, or ""
  std::string docker_context;  // $DOCKER_CONTEXT, or ""
  std::string config_dir;      // --config, else $DOCKER_CONFIG, else $HOME/.docker
};

// The docker CLI's settings from this process's environment; `host_flag`, `context_flag` and
// `config_flag` are the global flags the CLI handed on ("" when not given).
DockerCliSettings docker_cli_settings(const std::string& host_flag, const std::string& context_flag,
                                      const std::string& config_flag);

// The endpoint ("unix:///path", "tcp://...", ...) the CLI with `s` talks to, and in *via how it
// got there (for messages: "DOCKER_HOST", "context NAME", ...). ENOENT for a context that does
// not exist, EBADMSG for an unreadable config.json or meta.json (each naming the file), EINVAL
// for -H together with --context (the CLI refuses that too).
Result<std::string> docker_cli_endpoint(const DockerCliSettings& s, std::string* via = nullptr);

// The socket path of a "unix://" endpoint. EINVAL, in one line saying why, for any other kind
// (tcp://, ssh://, npipe://, fd://): the daemon's data-root must be on this host.
Result<std::string> local_socket_of(const std::string& endpoint, const std::string& via);

}  // namespace extrafs::docker
