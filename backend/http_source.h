// What an http://, https:// or s3:// SOURCE and its mount options name, checked and resolved
// without touching the network: the mirrors' base URLs, the proxy groups, the S3 signing
// settings and credentials. HttpBackend (http_backend.cc, the only file that includes libcurl)
// is built from it. Parsing here is strict: anything wrong is EINVAL with one line naming it.
//
// SOURCE forms (extrafs-mount(8); docs/DESIGN.md section 2):
//   http://HOST[:PORT]/PATH, https://HOST[:PORT]/PATH   the store root; PATH as written in a URL
//   s3://BUCKET[/PREFIX]                                PREFIX is a key prefix, taken literally
// Several mirrors of one store: URLs of one kind separated by ';' (failover order). No user
// name or password in a URL (credentials never belong in a SOURCE, which /proc/mounts shows),
// no query, no fragment, no ".." segment.
//
// Thread-safety: pure functions, and HttpSource is an immutable value once made.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace extrafs::backend {

// The mount options that concern http(s) and s3 sources (extrafs-mount(8)). An empty string is
// "not given".
struct HttpOptions {
  std::string proxy;           // proxy=SPEC; "" = DIRECT
  std::string cacert;          // cacert=FILE (PEM); "" = the system's CA store
  std::string s3_endpoint;     // s3_endpoint=URL; "" = https://s3.REGION.amazonaws.com
  std::string s3_region;       // s3_region=NAME; "" = us-east-1
  std::string s3_credentials;  // s3_credentials=FILE (AWS shared-credentials INI)
  std::string s3_profile;      // s3_profile=NAME; "" = default
  // Requests for these paths (an exact path, or a prefix ending in '/') carry
  // "Cache-Control: max-age=<revalidate_after_s>", so that a caching proxy asks the origin
  // again at most that often: the catalog and the probes for its next generation. Everything
  // else in a store is immutable and requested plainly.
  std::vector<std::string> revalidate_paths;
  int revalidate_after_s = 60;
  // Reads of these paths (prefixes ending in '/') that start at offset 0 are plain GETs without
  // a Range header: objects that are only ever read whole (content-addressed chunk objects).
  // Caching proxies keep such answers with their default settings, where squid passes a ranged
  // miss through uncached. The object must fit the read; a larger one fails it.
  std::vector<std::string> whole_object_paths;
};

// AWS credentials. Never printed, logged or put in a message.
struct S3Credentials {
  std::string access_key;
  std::string secret_key;
  std::string session_token;  // "" = none
  bool anonymous() const { return access_key.empty(); }
};

// One proxy of a group: "" for DIRECT, else "http://HOST:PORT".
using ProxyGroup = std::vector<std::string>;

struct HttpSource {
  bool s3 = false;
  // Each mirror's base URL "scheme://host[:port][/path]", without a trailing '/': an object's
  // URL is base + "/" + its path with every segment percent-encoded.
  std::vector<std::string> mirrors;
  // The mirrors as the user wrote them (for messages and describe()).
  std::vector<std::string> mirror_names;
  // S3 only, one per mirror: the bucket's URL (path-style "scheme://host[:port]/BUCKET", or
  // virtual-hosted "https://BUCKET.s3.REGION.amazonaws.com") and the key prefix as written
  // ("" or "a/b"): mirrors[i] is bucket_urls[i] + the encoded prefix. What a listing needs.
  std::vector<std::string> bucket_urls;
  std::vector<std::string> key_prefixes;
  std::vector<ProxyGroup> proxy_groups;  // never empty: {{""}} is DIRECT
  std::string cacert;
  // S3 only: AWS Signature V4 parameters (sigv4 empty: anonymous requests).
  std::string sigv4;  // "aws:amz:REGION:s3"
  S3Credentials credentials;
};

// Whether `source` names an http(s) or s3 store (it starts with http://, https:// or s3://).
bool is_http_source(std::string_view source);

// Parses SOURCE and the options into an HttpSource; the credentials come from
// s3_credentials=FILE (which must be a regular file owned by this process's user and not
// accessible by group or others), else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
// AWS_SESSION_TOKEN in the environment, else none (anonymous). Options that do not apply to
// the source's kind (s3_* for http(s)) are refused. EINVAL (bad syntax), ENOENT/EACCES/EPERM
// (credentials file) with one line.
Result<HttpSource> resolve_http_source(std::string_view source, const HttpOptions& options);

// Checks the syntax of SOURCE alone (no files read): what a tool checks before it forks.
Status check_http_source(std::string_view source);

// Checks that the options fit the source (any SOURCE form): s3_*= only for s3://, none of them
// for a source that is not http(s) or s3, and proxy= well-formed. EINVAL naming the first
// option that does not fit.
Status check_http_options(std::string_view source, const HttpOptions& options);

// Parses proxy=SPEC: groups separated by ';', proxies of a group by '|'; each proxy is DIRECT,
// HOST:PORT or http://HOST:PORT. EINVAL naming the bad part.
Result<std::vector<ProxyGroup>> parse_proxy_spec(std::string_view spec);

// Reads profile `profile` ("" = "default") of the AWS shared-credentials file `path`, after
// checking who owns it and who may read it. Messages name the file and the profile, never a key.
Result<S3Credentials> load_s3_credentials(const std::string& path, const std::string& profile);

// The proxy of a group of `n` that serves object `path` first: a stable hash of the path, the
// same on every host, so that the proxies of a group do not cache copies of each other's objects.
size_t proxy_slot(std::string_view path, size_t n);

}  // namespace extrafs::backend
