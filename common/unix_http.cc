#include "common/unix_http.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "common/posix_file.h"

namespace extrafs {

namespace {

using Clock = std::chrono::steady_clock;

// Milliseconds left until `deadline` (0 once it has passed).
int ms_left(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

// Waits until `fd` is ready for `events`; ETIMEDOUT at the deadline.
Status wait_ready(int fd, short events, Clock::time_point deadline, const std::string& what) {
  for (;;) {
    struct pollfd p = {fd, events, 0};
    int n = ::poll(&p, 1, ms_left(deadline));
    if (n > 0) return ok_status();
    if (n == 0) return make_error(ETIMEDOUT, what + ": no answer in time");
    if (errno != EINTR) return Error::from_errno(errno, what);
  }
}

}  // namespace

Result<HttpResponse> parse_http_response(const std::string& raw) {
  // "HTTP/1.1 200 OK\r\n"; the reason may be empty.
  const size_t eol = raw.find("\r\n");
  const size_t end = raw.find("\r\n\r\n");
  if (eol == std::string::npos || end == std::string::npos || raw.compare(0, 5, "HTTP/") != 0)
    return make_error(EBADMSG, "not an HTTP answer");
  const std::string line = raw.substr(0, eol);
  const size_t sp = line.find(' ');
  if (sp == std::string::npos || sp + 4 > line.size()) return make_error(EBADMSG, "bad HTTP status line: " + line);
  const std::string code = line.substr(sp + 1, 3);
  if (code.find_first_not_of("0123456789") != std::string::npos || (sp + 4 < line.size() && line[sp + 4] != ' '))
    return make_error(EBADMSG, "bad HTTP status line: " + line);
  HttpResponse r;
  r.status = std::stoi(code);
  r.reason = sp + 5 <= line.size() ? line.substr(sp + 5) : "";
  r.body = raw.substr(end + 4);
  return r;
}

Result<HttpResponse> http_get_unix(const std::string& socket_path, const std::string& path, int timeout_ms,
                                   size_t max_response) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path))
    return make_error(ENAMETOOLONG, socket_path + ": socket path too long");
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);

  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return Error::from_errno(errno, "socket");
  // A unix connect either completes at once or fails (EAGAIN: the listen backlog is full).
  if (::connect(fd.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) != 0)
    return Error::from_errno(errno, "connect to " + socket_path);

  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  size_t sent = 0;
  while (sent < request.size()) {
    EXTRAFS_CHECK_STATUS(wait_ready(fd.get(), POLLOUT, deadline, socket_path));
    ssize_t n = ::send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno != EINTR && errno != EAGAIN) return Error::from_errno(errno, "send to " + socket_path);
    if (n > 0) sent += static_cast<size_t>(n);
  }

  std::string raw;
  char buf[16384];
  for (;;) {
    EXTRAFS_CHECK_STATUS(wait_ready(fd.get(), POLLIN, deadline, socket_path));
    ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Error::from_errno(errno, "read from " + socket_path);
    }
    raw.append(buf, static_cast<size_t>(n));
    if (raw.size() > max_response)
      return make_error(EFBIG, socket_path + ": answer larger than " + std::to_string(max_response) + " bytes");
  }
  auto r = parse_http_response(raw);
  if (!r.ok()) return make_error(EBADMSG, socket_path + ": " + r.error().message);
  return r;
}

}  // namespace extrafs
