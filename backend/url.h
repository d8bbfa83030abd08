// The pieces of URL parsing that every network SOURCE shares (nfs://, http://, https://, the
// s3_endpoint= and proxy= URLs): the authority (host and port) and percent-encoding. Pure
// functions without I/O; thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "common/result.h"

namespace extrafs::backend {

// The authority of a URL: "HOST", "HOST:PORT", "[IPV6]" or "[IPV6]:PORT".
struct UrlAuthority {
  std::string host;  // without brackets for IPv6
  int port = 0;      // 0 = none given
};

// Parses `authority`. `what` names the URL in messages ("nfs URL", "http URL", ...): EINVAL with
// one line such as "bad port '99999' in nfs URL (expected 1-65535)", "nfs URL has no host",
// "nfs URL must not contain a user name ('@')".
Result<UrlAuthority> parse_url_authority(std::string_view authority, std::string_view what);

// `host` as it is written in a URL: IPv6 addresses in brackets.
std::string url_host(const std::string& host);

// Whether `s` is a decimal port number 1-65535 (no sign, at most 5 digits).
bool parse_port(std::string_view s, int* out);

// Percent-encodes `s` for one URL path segment (RFC 3986): every byte but the unreserved
// A-Z a-z 0-9 - . _ ~ becomes %XX (upper-case hex), which is also the form AWS Signature V4
// canonicalises a path to, so a signed S3 key needs no second encoding.
std::string percent_encode_segment(std::string_view s);

// The URL path of the store-relative `path` ("extrafs/catalog" -> "/extrafs/catalog"): each
// '/'-separated component percent-encoded (percent_encode_segment), empty and "." ones dropped.
// EINVAL if a component is "..".
Result<std::string> percent_encode_path(std::string_view path);

// Whether `path` is a well-formed URL path: printable ASCII without space, '?', '#', '\\', and
// every '%' followed by two hex digits.
bool valid_url_path(std::string_view path);

}  // namespace extrafs::backend
