// What the two libcurl users of backend/ share: http_backend.cc (hosts read a store over
// http(s) and S3) and http_s3_writer.cc (`extrafs push` writes one into an S3 bucket). The
// process-wide set-up, TLS, S3 signing of a request, and reading answers. Included only by the
// backend/http_*.cc files, the only ones allowed to use libcurl (as nfs_backend.cc is for
// libnfs).
//
// Facts about libcurl 7.88 (Debian 12) behind the signing (measured against radosgw):
// - CURLOPT_AWS_SIGV4 signs host, x-amz-date and every header we add, and takes the payload hash
//   from our x-amz-content-sha256 header when there is one. Without that header it sends none,
//   and radosgw rejects every request (403 SignatureDoesNotMatch).
// - The canonical URI is the path as sent, so every key segment is percent-encoded the way SigV4
//   canonicalises it (url.h), and the canonical query string is the query as sent: 7.88 neither
//   sorts its parameters nor adds the '=' of one without a value. A query must therefore be
//   built already canonical (make_s3_query): "uploads=", not "uploads".
//
// Thread-safety: the functions are pure or act on the handle given; init_curl() may be called
// from any thread.
#pragma once

#include <curl/curl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "backend/http_source.h"

namespace extrafs::backend::http {

// Once per process: curl_global_init, and SIGPIPE ignored unless something handles it already
// (with CURLOPT_NOSIGNAL, OpenSSL writing to a connection the peer closed would raise it and kill
// the process; a broken connection is then an error like any other).
void init_curl();

// TLS is always verified: against the system's CA store, or `s.cacert` (cacert=FILE).
void set_tls(CURL* e, const HttpSource& s);

// Signs the request with AWS Signature V4 when `s` has credentials (nothing happens for an
// anonymous source): the credentials, `payload_sha256` (hex SHA-256 of the body, or
// "UNSIGNED-PAYLOAD") as x-amz-content-sha256, the session token if any. Adds the headers to
// *headers, which the caller passes to CURLOPT_HTTPHEADER and frees.
void set_s3_signing(CURL* e, const HttpSource& s, std::string_view payload_sha256, curl_slist** headers);

// "k1=v1&k2=v2" from (name, value) pairs: sorted by name, every name and value percent-encoded
// as SigV4 canonicalises them, '=' also after an empty value. What curl 7.88 signs as it is.
std::string make_s3_query(std::vector<std::pair<std::string, std::string>> params);

// The S3 error code (<Code>X</Code>) of an XML error body, or "".
std::string s3_error_code(const std::string& body);

// The text of the first <tag>...</tag> of `xml` at or after `*pos` (XML entities decoded), and
// *pos moved past it; nullopt if there is none.
std::optional<std::string> xml_element(std::string_view xml, std::string_view tag, size_t* pos);

// Retry-After: delay-seconds or an HTTP date, in seconds from now (0 to 3600); nullopt if absent
// or unreadable.
std::optional<int64_t> retry_after_s(const std::string& value);

// Whether header line `line` is header `lower_name` ("content-range:"), case-insensitively.
bool header_is(std::string_view line, std::string_view lower_name);

// `s` without leading blanks and trailing blanks or line ends.
std::string_view trim_header(std::string_view s);

}  // namespace extrafs::backend::http
