#include "docker/docker_endpoint.h"

#include <cstdlib>

#include <nlohmann/json.hpp>

#include "common/posix_file.h"
#include "common/str_util.h"
#include "store/docker_meta.h"

namespace extrafs::docker {

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// A small JSON file of the CLI's configuration; an empty object when it does not exist and need not.
Result<nlohmann::json> read_json_file(const std::string& path, bool must_exist) {
  auto text = read_file(path, uint64_t{1} << 20);
  if (!text.ok()) {
    if (text.code() == ENOENT && !must_exist) return nlohmann::json::object();
    return make_error(text.code(), text.error().message);
  }
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (!j.is_object()) return make_error(EBADMSG, path + " is not a JSON object");
  return j;
}

Result<std::string> context_endpoint(const std::string& config_dir, const std::string& name) {
  // docker names a context's directory by the SHA-256 of its name.
  const std::string digest = store::sha256_digest(name).substr(7);
  const std::string meta = config_dir + "/contexts/meta/" + digest + "/meta.json";
  if (!path_exists(meta))
    return make_error(ENOENT, "docker context \"" + escape_control(name) + "\" does not exist (no " + meta + ")");
  EXTRAFS_TRY(j, read_json_file(meta, true));
  auto ep = j.value("/Endpoints/docker/Host"_json_pointer, nlohmann::json());
  if (!ep.is_string() || ep.get<std::string>().empty())
    return make_error(EBADMSG, meta + " has no Endpoints.docker.Host");
  return ep.get<std::string>();
}

}  // namespace

DockerCliSettings docker_cli_settings(const std::string& host_flag, const std::string& context_flag,
                                      const std::string& config_flag) {
  DockerCliSettings s;
  s.host_flag = host_flag;
  s.context_flag = context_flag;
  s.docker_host = env("DOCKER_HOST");
  s.docker_context = env("DOCKER_CONTEXT");
  s.config_dir = !config_flag.empty() ? config_flag : env("DOCKER_CONFIG");
  if (s.config_dir.empty()) s.config_dir = env("HOME") + "/.docker";
  return s;
}

Result<std::string> docker_cli_endpoint(const DockerCliSettings& s, std::string* via) {
  std::string how;
  auto done = [&](std::string ep, std::string h) -> Result<std::string> {
    if (via) *via = std::move(h);
    return ep;
  };
  if (!s.host_flag.empty() && !s.context_flag.empty())
    return make_error(EINVAL, "conflicting options: cannot specify both --host and --context");
  if (!s.host_flag.empty()) return done(s.host_flag, "--host");
  std::string context = s.context_flag;
  how = "--context " + context;
  if (context.empty()) {
    if (!s.docker_host.empty()) return done(s.docker_host, "DOCKER_HOST");
    context = s.docker_context;
    how = "DOCKER_CONTEXT " + context;
  }
  if (context.empty()) {
    const std::string cfg = s.config_dir + "/config.json";
    EXTRAFS_TRY(j, read_json_file(cfg, false));
    if (j.contains("currentContext") && j["currentContext"].is_string())
      context = j["currentContext"].get<std::string>();
    how = "context " + context + " (" + cfg + ")";
  }
  // The default context is DOCKER_HOST, else the default socket.
  if (context.empty() || context == "default")
    return s.docker_host.empty() ? done(kDefaultDockerHost, "the default endpoint")
                                 : done(s.docker_host, "DOCKER_HOST");
  EXTRAFS_TRY(ep, context_endpoint(s.config_dir, context));
  return done(ep, how);
}

Result<std::string> local_socket_of(const std::string& endpoint, const std::string& via) {
  constexpr std::string_view kUnix = "unix://";
  if (endpoint.rfind(kUnix, 0) == 0 && endpoint.size() > kUnix.size()) return endpoint.substr(kUnix.size());
  return make_error(EINVAL,
                    "the docker endpoint " + escape_control(endpoint) + " (from " + escape_control(via) +
                        ") is not a local unix socket: images are attached into the data-root of a dockerd on this "
                        "host, so run docker extrafs there");
}

}  // namespace extrafs::docker
