#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include "common/posix_file.h"
#include "common/unix_http.h"
#include "docker/docker_endpoint.h"
#include "docker/dockerd_control.h"
#include "docker/dockerd_journal.h"
#include "docker/dockerd_probe.h"
#include "store/docker_meta.h"
#include "test_util.h"

using namespace extrafs;

namespace {

// A one-connection HTTP server on a unix socket in a fresh temporary directory: accepts one
// client, reads its request up to the blank line, sends `answer` (unless `silent`) and closes.
class TinyServer {
 public:
  explicit TinyServer(std::string answer, bool silent = false) : answer_(std::move(answer)) {
    char tmpl[] = "/tmp/extrafs-http-test.XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/api.sock";
    listen_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(listen_.valid());
    struct sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path_.c_str());
    REQUIRE(::bind(listen_.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(::listen(listen_.get(), 4) == 0);
    thread_ = std::thread([this, silent] {
      Fd c(::accept(listen_.get(), nullptr, nullptr));
      if (!c.valid()) return;
      char buf[4096];
      while (request_.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = ::read(c.get(), buf, sizeof(buf));
        if (n <= 0) break;
        request_.append(buf, static_cast<size_t>(n));
      }
      if (silent) {
        char b;
        (void)!::read(c.get(), &b, 1);  // until the client gives up and closes
        return;
      }
      (void)!write_all(c.get(), answer_.data(), answer_.size());
    });
  }
  ~TinyServer() {
    if (thread_.joinable()) thread_.join();
    std::filesystem::remove_all(dir_);
  }
  const std::string& path() const { return path_; }
  // The request as received: waits for the server to finish its one connection.
  const std::string& request() {
    if (thread_.joinable()) thread_.join();
    return request_;
  }

 private:
  std::string answer_, dir_, path_, request_;
  Fd listen_;
  std::thread thread_;
};

std::string ok_json(const std::string& body) {
  return "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n\r\n" + body;
}

}  // namespace

TEST_CASE("an HTTP GET over a unix socket returns the status and the body read to EOF", "[dockerd]") {
  TinyServer s(ok_json("{\"LiveRestoreEnabled\":true}\n"));
  auto r = http_get_unix(s.path(), "/info");
  REQUIRE(r.ok());
  CHECK(r->status == 200);
  CHECK(r->reason == "OK");
  CHECK(r->body == "{\"LiveRestoreEnabled\":true}\n");
  CHECK(s.request().rfind("GET /info HTTP/1.0\r\n", 0) == 0);
}

TEST_CASE("a non-2xx answer is returned with its status, not as an error", "[dockerd]") {
  TinyServer s("HTTP/1.1 404 Not Found\r\n\r\npage not found");
  auto r = http_get_unix(s.path(), "/nope");
  REQUIRE(r.ok());
  CHECK(r->status == 404);
  CHECK(r->body == "page not found");
}

TEST_CASE("an answer that is not HTTP is EBADMSG naming the socket", "[dockerd]") {
  TinyServer s("SSH-2.0-OpenSSH\r\n");
  auto r = http_get_unix(s.path(), "/info");
  REQUIRE(!r.ok());
  CHECK(r.code() == EBADMSG);
  CHECK(r.error().message.find(s.path()) != std::string::npos);
}

TEST_CASE("a server that never answers times out within the bound", "[dockerd]") {
  TinyServer s("", /*silent=*/true);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = http_get_unix(s.path(), "/info", 200);
  const auto took = std::chrono::steady_clock::now() - t0;
  REQUIRE(!r.ok());
  CHECK(r.code() == ETIMEDOUT);
  CHECK(took < std::chrono::seconds(2));
}

TEST_CASE("no socket is a connect error naming the path", "[dockerd]") {
  auto r = http_get_unix("/nonexistent-extrafs-test/docker.sock", "/_ping");
  REQUIRE(!r.ok());
  CHECK(r.code() == ENOENT);
  CHECK(r.error().message.find("/nonexistent-extrafs-test/docker.sock") != std::string::npos);
}

TEST_CASE("the status line is parsed strictly", "[dockerd]") {
  CHECK(parse_http_response("HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody").ok());
  auto empty_reason = parse_http_response("HTTP/1.0 204\r\n\r\n");
  REQUIRE(empty_reason.ok());
  CHECK(empty_reason->status == 204);
  CHECK(empty_reason->body.empty());
  CHECK(!parse_http_response("HTTP/1.1 2x0 OK\r\n\r\n").ok());
  CHECK(!parse_http_response("HTTP/1.1 2000 OK\r\n\r\n").ok());
  CHECK(!parse_http_response("HTTP/1.1 200 OK\r\nno end of headers").ok());
  CHECK(!parse_http_response("").ok());
}

TEST_CASE("LiveRestoreEnabled is read from GET /info", "[dockerd]") {
  {
    TinyServer s(ok_json("{\"ID\":\"x\",\"LiveRestoreEnabled\":true}"));
    auto r = docker::dockerd_live_restore(s.path());
    REQUIRE(r.ok());
    CHECK(*r);
  }
  {
    TinyServer s(ok_json("{\"LiveRestoreEnabled\":false}"));
    auto r = docker::dockerd_live_restore(s.path());
    REQUIRE(r.ok());
    CHECK(!*r);
  }
  {
    TinyServer s(ok_json("{\"NoSuchField\":1}"));
    auto r = docker::dockerd_live_restore(s.path());
    REQUIRE(!r.ok());
    CHECK(r.code() == EBADMSG);
  }
  {
    TinyServer s("HTTP/1.0 500 Internal Server Error\r\n\r\n{}");
    CHECK(!docker::dockerd_live_restore(s.path()).ok());
  }
}

TEST_CASE("DockerRootDir, live-restore and the driver are read from GET /info", "[dockerd]") {
  TinyServer s(ok_json("{\"DockerRootDir\":\"/srv/docker\",\"LiveRestoreEnabled\":true,\"Driver\":\"overlay2\"}"));
  auto r = docker::dockerd_info(s.path());
  REQUIRE(r.ok());
  CHECK(r->root_dir == "/srv/docker");
  CHECK(r->live_restore);
  CHECK(r->driver == "overlay2");
}

TEST_CASE("the docker CLI's endpoint comes from -H, --context, DOCKER_HOST, DOCKER_CONTEXT, then config.json",
          "[dockerd]") {
  testing::TempDir cfg;
  // A context "remote" on tcp and "local" on a unix socket, as `docker context create` keeps them.
  auto add_context = [&](const std::string& name, const std::string& host) {
    const std::string dir = cfg.path + "/contexts/meta/" + store::sha256_digest(name).substr(7);
    std::filesystem::create_directories(dir);
    REQUIRE(write_file_atomic(dir + "/meta.json",
                              "{\"Name\":\"" + name + "\",\"Endpoints\":{\"docker\":{\"Host\":\"" + host + "\"}}}")
                .ok());
  };
  add_context("remote", "tcp://10.0.0.1:2375");
  add_context("local", "unix:///run/local.sock");
  // -H, --context, $DOCKER_HOST, $DOCKER_CONTEXT -> the endpoint and where it came from.
  auto endpoint = [&](const std::string& host_flag, const std::string& context_flag, const std::string& docker_host,
                      const std::string& docker_context) {
    docker::DockerCliSettings s;
    s.host_flag = host_flag;
    s.context_flag = context_flag;
    s.docker_host = docker_host;
    s.docker_context = docker_context;
    s.config_dir = cfg.path;
    std::string via;
    auto r = docker::docker_cli_endpoint(s, &via);
    return r.ok() ? *r + " via " + via : "error: " + r.error().message;
  };
  CHECK(endpoint("", "", "", "") == "unix:///var/run/docker.sock via the default endpoint");
  CHECK(endpoint("", "", "unix:///h.sock", "") == "unix:///h.sock via DOCKER_HOST");
  CHECK(endpoint("unix:///f.sock", "", "unix:///h.sock", "") == "unix:///f.sock via --host");
  CHECK(endpoint("", "local", "unix:///h.sock", "") == "unix:///run/local.sock via --context local");
  CHECK(endpoint("", "", "unix:///h.sock", "local") == "unix:///h.sock via DOCKER_HOST");
  CHECK(endpoint("", "", "", "local") == "unix:///run/local.sock via DOCKER_CONTEXT local");
  CHECK(endpoint("", "default", "unix:///h.sock", "") == "unix:///h.sock via DOCKER_HOST");
  CHECK(endpoint("unix:///f.sock", "local", "", "").rfind("error: conflicting options", 0) == 0);
  CHECK(endpoint("", "nosuch", "", "").find("docker context \"nosuch\" does not exist") != std::string::npos);
  REQUIRE(write_file_atomic(cfg.path + "/config.json", "{\"auths\":{},\"currentContext\":\"remote\"}").ok());
  CHECK(endpoint("", "", "", "").rfind("tcp://10.0.0.1:2375 via context remote", 0) == 0);
  REQUIRE(write_file_atomic(cfg.path + "/config.json", "not json").ok());
  CHECK(endpoint("", "", "", "").rfind("error: " + cfg.path + "/config.json is not a JSON object", 0) == 0);

  auto sock = docker::local_socket_of("unix:///run/local.sock", "x");
  REQUIRE(sock.ok());
  CHECK(*sock == "/run/local.sock");
  for (const char* e : {"tcp://10.0.0.1:2375", "ssh://me@host", "fd://", "unix://"}) {
    auto r = docker::local_socket_of(e, "DOCKER_HOST");
    REQUIRE(!r.ok());
    CHECK(r.code() == EINVAL);
  }
}

TEST_CASE("dockerd's API socket comes from -H, then its config file, then the default", "[dockerd]") {
  using V = std::vector<std::string>;
  auto sock = [](const V& args, const std::string& cfg = "/nonexistent/daemon.json") {
    auto r = docker::dockerd_api_socket(args, "/srv", cfg);
    return r.ok() ? *r : "error: " + r.error().message;
  };
  CHECK(sock({"dockerd", "-H", "unix:///tmp/d.sock"}) == "/tmp/d.sock");
  CHECK(sock({"dockerd", "--host=unix:///tmp/e.sock"}) == "/tmp/e.sock");
  CHECK(sock({"dockerd", "-Hunix:///tmp/f.sock"}) == "/tmp/f.sock");
  CHECK(sock({"dockerd", "-H", "tcp://127.0.0.1:2375", "-H", "unix://rel.sock"}) == "/srv/rel.sock");
  CHECK(sock({"dockerd", "-H", "fd://", "--containerd=/run/containerd/containerd.sock"}) == "/run/docker.sock");
  CHECK(sock({"dockerd"}) == "/var/run/docker.sock");
  CHECK(sock({"dockerd", "-H", "tcp://127.0.0.1:2375"}).rfind("error: dockerd listens on no unix socket", 0) == 0);

  char tmpl[] = "/tmp/extrafs-daemon-json.XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  REQUIRE(write_file_atomic(dir + "/daemon.json", R"({"hosts": ["tcp://0.0.0.0:2375", "unix:///run/x.sock"]})").ok());
  CHECK(sock({"dockerd"}, dir + "/daemon.json") == "/run/x.sock");
  CHECK(sock({"dockerd", "--config-file", dir + "/daemon.json"}) == "/run/x.sock");
  CHECK(sock({"dockerd", "--config-file=" + dir + "/daemon.json", "-H", "unix:///a.sock"}) == "/a.sock");
  std::filesystem::remove_all(dir);
}

TEST_CASE("the systemd service of a process is read from its cgroup", "[dockerd]") {
  CHECK(docker::service_of_cgroup("0::/system.slice/docker.service\n") == "docker.service");
  CHECK(docker::service_of_cgroup("12:memory:/x\n1:name=systemd:/system.slice/docker.service\n0::/\n") ==
        "docker.service");
  CHECK(docker::service_of_cgroup("0::/user.slice/user-0.slice/session-3.scope\n").empty());
  CHECK(docker::service_of_cgroup("0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope\n").empty());
  CHECK(docker::service_of_cgroup("0::/\n").empty());
  CHECK(docker::service_of_cgroup("4:memory:/system.slice/docker.service\n0::/\n").empty());
}

TEST_CASE("dockerd flag values are found in every spelling", "[dockerd]") {
  const std::vector<std::string> args = {"dockerd",    "--data-root", "/a",           "-g=/b",
                                         "--graph=/c", "-g/d",        "--data-rootx", "/e"};
  CHECK(docker::dockerd_flag_values(args, {"--data-root", "--graph", "-g"}) ==
        std::vector<std::string>{"/a", "/b", "/c", "/d"});
  static const char raw[] = "dockerd\0-H\0unix:///x\0";
  CHECK(docker::split_cmdline(std::string(raw, sizeof(raw) - 1)) ==
        std::vector<std::string>{"dockerd", "-H", "unix:///x"});
}

TEST_CASE("journal strings survive any byte, and a bad %XX is refused", "[dockerd]") {
  std::string all;
  for (int c = 0; c < 256; ++c) all += static_cast<char>(c);
  const std::string enc = docker::journal_encode(all);
  for (char c : enc) CHECK((c >= 0x20 && c < 0x7f));
  auto dec = docker::journal_decode(enc);
  REQUIRE(dec.ok());
  CHECK(*dec == all);
  CHECK(docker::journal_encode("a b%c") == "a b%25c");
  CHECK(!docker::journal_decode("%4").ok());
  CHECK(!docker::journal_decode("%zz").ok());
}

TEST_CASE("a restart journal is read back as written", "[dockerd]") {
  testing::TempDir t;
  docker::DockerdLaunch l;
  l.pid = 1234;
  l.exe = "/usr/sbin/dockerd";
  l.argv = {"dockerd", "--data-root", "/srv/d", "", "-H", "unix:///run/x\n.sock"};
  l.env = {"PATH=/usr/bin", std::string("ODD=\xff\x01%")};
  l.cwd = "/srv/was here";
  l.stdout_file = "/var/log/d.log";
  l.api_socket = "/run/x.sock";
  REQUIRE(docker::write_restart_journal(t.path, l).ok());
  struct stat st;
  REQUIRE(::stat(docker::restart_journal_path(t.path).c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  auto j = docker::read_restart_journal(t.path);
  REQUIRE(j.ok());
  REQUIRE(j->has_value());
  const docker::RestartJournal& r = **j;
  CHECK(r.boot_id == docker::current_boot_id());
  CHECK(r.by_pid == ::getpid());
  CHECK(r.dockerd.pid == 1234);
  CHECK(r.dockerd.argv == l.argv);
  CHECK(r.dockerd.env == l.env);
  CHECK(r.dockerd.cwd == l.cwd);
  CHECK(r.dockerd.stdout_file == l.stdout_file);
  CHECK(r.dockerd.stderr_file.empty());
  CHECK(r.dockerd.unit.empty());
  REQUIRE(docker::remove_restart_journal(t.path).ok());
  auto none = docker::read_restart_journal(t.path);
  REQUIRE(none.ok());
  CHECK(!none->has_value());
}

TEST_CASE("a journal that cannot be read is an error naming it, left in place", "[dockerd]") {
  testing::TempDir t;
  const std::string path = docker::restart_journal_path(t.path);
  for (const char* text :
       {"{", R"({"version": 2, "dockerd": {}})", R"({"version": 1, "dockerd": {"api_socket": "/x"}})",
        R"({"version": 1, "dockerd": {"api_socket": "/x", "unit": "../x.service"}})"}) {
    REQUIRE(write_file_atomic(path, text).ok());
    auto r = docker::recover_stopped_dockerd(t.path, {});
    REQUIRE(!r.ok());
    CHECK(r.code() == EBADMSG);
    CHECK(r.error().message.find(path) != std::string::npos);
    CHECK(path_exists(path));
  }
}

TEST_CASE("a journal from an earlier boot is dropped without starting anything", "[dockerd]") {
  testing::TempDir t;
  const std::string path = docker::restart_journal_path(t.path);
  REQUIRE(write_file_atomic(path, R"({"version": 1, "boot_id": "not-this-boot", "by": "extrafs docker attach x:1",
      "dockerd": {"pid": 77, "exe": "/bin/false", "argv": ["false"], "api_socket": "/nonexistent/d.sock"}})")
              .ok());
  auto r = docker::recover_stopped_dockerd(t.path, {});
  REQUIRE(r.ok());
  CHECK(r->find("earlier boot") != std::string::npos);
  CHECK(!path_exists(path));
  auto again = docker::recover_stopped_dockerd(t.path, {});
  REQUIRE(again.ok());
  CHECK(again->empty());
}

namespace {
// A child process (`sh -c 'sleep 30; :' ''`: its last argument empty) started in `dir`.
pid_t child_in(const std::string& dir) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (::chdir(dir.c_str()) != 0) ::_exit(1);
    ::execl("/bin/sh", "sh", "-c", "sleep 30; :", "", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}
void end_child(pid_t pid) {
  ::kill(pid, SIGKILL);
  int status;
  ::waitpid(pid, &status, 0);
}
// Waits (bounded) until `pid` has exec'd, so /proc shows its own command line.
void wait_exec(pid_t pid) {
  for (int i = 0; i < 200; ++i) {
    auto c = read_file("/proc/" + std::to_string(pid) + "/cmdline");
    if (c.ok() && c->rfind(std::string("sh\0-c", 5), 0) == 0) return;
    ::usleep(10000);
  }
}
}  // namespace

TEST_CASE("a process's working directory is read robustly, deleted or not", "[dockerd]") {
  testing::TempDir t;
  const std::string gone = t.path + "/gone", odd = t.path + "/x (deleted)";
  REQUIRE(::mkdir(gone.c_str(), 0755) == 0);
  REQUIRE(::mkdir(odd.c_str(), 0755) == 0);
  pid_t a = child_in(gone), b = child_in(odd);
  wait_exec(a);
  wait_exec(b);
  REQUIRE(::rmdir(gone.c_str()) == 0);
  auto da = docker::inspect_dockerd(a);
  auto db = docker::inspect_dockerd(b);
  end_child(a);
  end_child(b);
  REQUIRE(da.ok());
  REQUIRE(db.ok());
  CHECK(da->launch.cwd == gone);
  CHECK(da->cwd_deleted);
  CHECK(db->launch.cwd == odd);
  CHECK(!db->cwd_deleted);
  CHECK(db->launch.argv == std::vector<std::string>{"sh", "-c", "sleep 30; :", ""});
  CHECK(db->launch.exe == *real_path("/bin/sh"));
  CHECK(db->start_time > 0);
}

TEST_CASE("inspecting a process that is gone is ESRCH", "[dockerd]") {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) ::_exit(0);
  int status;
  ::waitpid(pid, &status, 0);
  auto d = docker::inspect_dockerd(pid);
  REQUIRE(!d.ok());
  CHECK(d.code() == ESRCH);
}
