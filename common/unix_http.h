// A minimal HTTP/1.0 client over a unix stream socket, for the local sockets extrafs asks: dockerd's
// API (`GET /info`, `/_ping` for attach|detach --restart, `/images/json` for the docker CLI plugin)
// and a mount's stats socket (`extrafs stats`). One request per
// connection ("Connection: close" semantics of HTTP/1.0): send the request, read to EOF, split the
// status line, headers and body. No chunked encoding (an HTTP/1.0 answer never uses it), no
// redirects, no keep-alive. Thread-safe (no shared state); every call is bounded by its timeout.
#pragma once

#include <string>

#include "common/result.h"

namespace extrafs {

struct HttpResponse {
  int status = 0;      // e.g. 200
  std::string reason;  // e.g. "OK"
  std::string body;    // everything after the blank line that ends the headers
};

// The largest answer read by default (dockerd's /info is a few KiB).
inline constexpr size_t kHttpMaxResponse = size_t{4} << 20;

// `GET path HTTP/1.0` to the unix socket at `socket_path`, reading the answer to EOF. Errors
// (naming the socket): connect failures with their errno, ETIMEDOUT when the whole exchange takes
// longer than `timeout_ms`, EBADMSG for an answer that is not HTTP, EFBIG past `max_response`
// bytes. A non-2xx status is not an error: the caller looks at `status`.
Result<HttpResponse> http_get_unix(const std::string& socket_path, const std::string& path, int timeout_ms = 5000,
                                   size_t max_response = kHttpMaxResponse);

// Splits a raw HTTP answer into status, reason and body. EBADMSG if it has no "HTTP/x.y NNN"
// status line or no end of headers.
Result<HttpResponse> parse_http_response(const std::string& raw);

}  // namespace extrafs
