#include "backend/http_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include "backend/url.h"
#include "common/hash.h"
#include "common/posix_file.h"
#include "common/str_util.h"

namespace extrafs::backend {
namespace {

Error bad(std::string msg) { return Error{EINVAL, std::move(msg)}; }

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    size_t i = s.find(sep, start);
    out.push_back(s.substr(start, i == std::string_view::npos ? std::string_view::npos : i - start));
    if (i == std::string_view::npos) return out;
    start = i + 1;
  }
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

bool has_control(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return true;
  return false;
}

// "scheme://authority[/path]" of an http(s) URL: the normalised base (no trailing '/'), and
// whether it is https. `what` names it in messages ("http URL", "s3_endpoint").
Result<std::string> parse_http_url(std::string_view url, std::string_view what, bool allow_path) {
  const std::string w(what);
  std::string_view rest;
  std::string scheme;
  if (starts_with(url, "http://")) {
    scheme = "http";
    rest = url.substr(7);
  } else if (starts_with(url, "https://")) {
    scheme = "https";
    rest = url.substr(8);
  } else {
    return bad(w + " '" + std::string(url) + "' is not an http:// or https:// URL");
  }
  if (rest.find('?') != std::string_view::npos) return bad(w + " must not contain a query ('?')");
  if (rest.find('#') != std::string_view::npos) return bad(w + " must not contain '#'");
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  EXTRAFS_TRY(auth, parse_url_authority(authority, w));
  if (!valid_url_path(path)) return bad(w + " has a bad path '" + std::string(path) + "'");
  std::vector<std::string_view> parts;
  if (!split_path(path, &parts)) return bad(w + " path must not contain '..'");
  if (!allow_path && !parts.empty()) return bad(w + " must not have a path (got '" + std::string(path) + "')");
  std::string base = scheme + "://" + url_host(auth.host);
  if (auth.port != 0) base += ":" + std::to_string(auth.port);
  for (auto p : parts) {
    if (p == "%2e%2e" || p == "%2E%2E" || p == ".%2e" || p == "%2e." || p == ".%2E" || p == "%2E.")
      return bad(w + " path must not contain '..'");
    base += "/";
    base += p;
  }
  return base;
}

// S3 bucket names (the rules S3 enforces for new buckets): 3-63 of a-z 0-9 . -, starting and
// ending with a letter or digit.
bool valid_bucket(std::string_view b) {
  if (b.size() < 3 || b.size() > 63) return false;
  for (char c : b)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-')) return false;
  auto edge = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  return edge(b.front()) && edge(b.back()) && b.find("..") == std::string_view::npos;
}

struct S3Mirror {
  std::string bucket;
  std::string prefix;  // components joined by '/', no leading or trailing '/'
};

Result<S3Mirror> parse_s3_url(std::string_view url) {
  std::string_view rest = url.substr(5);  // after "s3://"
  size_t slash = rest.find('/');
  std::string_view bucket = rest.substr(0, slash);
  std::string_view prefix = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  if (bucket.empty()) return bad("s3 URL '" + std::string(url) + "' has no bucket (s3://BUCKET[/PREFIX])");
  if (!valid_bucket(bucket))
    return bad("bad bucket '" + std::string(bucket) + "' in s3 URL (3-63 of a-z, 0-9, '.', '-')");
  if (has_control(prefix)) return bad("s3 URL prefix must not contain control characters");
  std::vector<std::string_view> parts;
  if (!split_path(prefix, &parts)) return bad("s3 URL prefix must not contain '..'");
  S3Mirror m;
  m.bucket = bucket;
  for (auto p : parts) {
    if (!m.prefix.empty()) m.prefix += '/';
    m.prefix += p;
  }
  return m;
}

Result<std::string> parse_one_proxy(std::string_view p) {
  if (p == "DIRECT") return std::string();
  std::string_view hostport = p;
  if (starts_with(p, "http://")) {
    hostport = p.substr(7);
    if (!hostport.empty() && hostport.back() == '/') hostport.remove_suffix(1);
  } else if (p.find("://") != std::string_view::npos) {
    return bad("proxy '" + std::string(p) + "': only http:// proxies are supported");
  }
  if (hostport.find('/') != std::string_view::npos) return bad("proxy '" + std::string(p) + "' must not have a path");
  EXTRAFS_TRY(auth, parse_url_authority(hostport, "proxy '" + std::string(p) + "'"));
  if (auth.port == 0) return bad("proxy '" + std::string(p) + "' needs a port (HOST:PORT)");
  return "http://" + url_host(auth.host) + ":" + std::to_string(auth.port);
}

}  // namespace

bool is_http_source(std::string_view source) {
  return starts_with(source, "http://") || starts_with(source, "https://") || starts_with(source, "s3://");
}

Result<std::vector<ProxyGroup>> parse_proxy_spec(std::string_view spec) {
  std::vector<ProxyGroup> groups;
  if (spec.empty()) return std::vector<ProxyGroup>{ProxyGroup{""}};
  if (has_control(spec)) return bad("proxy= must not contain control characters");
  for (auto g : split(spec, ';')) {
    if (g.empty()) return bad("proxy=" + std::string(spec) + ": an empty proxy group (two ';' or one at an end)");
    ProxyGroup group;
    for (auto p : split(g, '|')) {
      if (p.empty()) return bad("proxy=" + std::string(spec) + ": an empty proxy in group '" + std::string(g) + "'");
      EXTRAFS_TRY(proxy, parse_one_proxy(p));
      group.push_back(std::move(proxy));
    }
    groups.push_back(std::move(group));
  }
  return groups;
}

Status check_http_source(std::string_view source) {
  if (has_control(source)) return bad("source must not contain control characters");
  bool s3 = starts_with(source, "s3://");
  size_t count = 0;
  for (auto m : split(source, ';')) {
    ++count;
    if (m.empty()) return bad("source '" + std::string(source) + "' has an empty mirror (two ';' or one at an end)");
    if (s3 != starts_with(m, "s3://"))
      return bad("mirrors of one source must be URLs of one kind: '" + std::string(m) + "' is not like the first");
    if (s3) {
      EXTRAFS_TRY(parsed, parse_s3_url(m));
      (void)parsed;
    } else {
      EXTRAFS_TRY(base, parse_http_url(m, "http URL", /*allow_path=*/true));
      (void)base;
    }
  }
  if (count > 16) return bad("source names " + std::to_string(count) + " mirrors (at most 16)");
  return ok_status();
}

Status check_http_options(std::string_view source, const HttpOptions& o) {
  const std::pair<const char*, const std::string*> named[] = {{"proxy", &o.proxy},
                                                              {"cacert", &o.cacert},
                                                              {"s3_endpoint", &o.s3_endpoint},
                                                              {"s3_region", &o.s3_region},
                                                              {"s3_credentials", &o.s3_credentials},
                                                              {"s3_profile", &o.s3_profile}};
  const bool http = is_http_source(source), s3 = starts_with(source, "s3://");
  for (const auto& [name, value] : named) {
    if (value->empty()) continue;
    if (!http) return bad(std::string(name) + "= applies to http(s) and s3 sources only");
    if (!s3 && std::string_view(name).substr(0, 3) == "s3_")
      return bad(std::string(name) + "= applies to s3:// sources only");
  }
  EXTRAFS_TRY(groups, parse_proxy_spec(o.proxy));
  (void)groups;
  return ok_status();
}

Result<HttpSource> resolve_http_source(std::string_view source, const HttpOptions& o) {
  EXTRAFS_CHECK_STATUS(check_http_source(source));
  HttpSource out;
  out.s3 = starts_with(source, "s3://");
  EXTRAFS_CHECK_STATUS(check_http_options(source, o));
  EXTRAFS_TRY(groups, parse_proxy_spec(o.proxy));
  out.proxy_groups = std::move(groups);
  if (!o.cacert.empty()) {
    if (o.cacert.front() != '/') return bad("cacert=" + o.cacert + ": expected an absolute path");
    struct stat st;
    if (::stat(o.cacert.c_str(), &st) != 0) return Error::from_errno(errno, "cacert=" + o.cacert);
    if (!S_ISREG(st.st_mode)) return bad("cacert=" + o.cacert + " is not a regular file");
    out.cacert = o.cacert;
  }
  for (auto m : split(source, ';')) out.mirror_names.emplace_back(m);
  if (!out.s3) {
    for (auto m : split(source, ';')) {
      EXTRAFS_TRY(base, parse_http_url(m, "http URL", true));
      out.mirrors.push_back(std::move(base));
    }
    return out;
  }

  std::string region = o.s3_region.empty() ? "us-east-1" : o.s3_region;
  for (char c : region)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-') || region.size() > 64)
      return bad("s3_region=" + o.s3_region + ": expected a region name like us-east-1");
  std::string endpoint;
  if (!o.s3_endpoint.empty()) {
    EXTRAFS_TRY(e, parse_http_url(o.s3_endpoint, "s3_endpoint", /*allow_path=*/true));
    endpoint = std::move(e);
  }
  for (auto m : split(source, ';')) {
    EXTRAFS_TRY(s3, parse_s3_url(m));
    std::string base;
    if (!endpoint.empty()) {
      base = endpoint + "/" + s3.bucket;  // path-style: any S3-compatible service
    } else {
      // Virtual-hosted: AWS's default. A bucket with a '.' would not match the wildcard
      // certificate of *.s3.REGION.amazonaws.com.
      if (s3.bucket.find('.') != std::string::npos)
        return bad(
            "bucket '" + s3.bucket +
            "' has a '.', which AWS's virtual-hosted URLs cannot serve over https: give s3_endpoint=https://s3." +
            region + ".amazonaws.com");
      base = "https://" + s3.bucket + ".s3." + region + ".amazonaws.com";
    }
    out.bucket_urls.push_back(base);
    out.key_prefixes.push_back(s3.prefix);
    EXTRAFS_TRY(encoded, percent_encode_path(s3.prefix));  // checked by parse_s3_url
    base += encoded;
    out.mirrors.push_back(std::move(base));
  }

  if (!o.s3_credentials.empty()) {
    if (o.s3_credentials.front() != '/')
      return bad("s3_credentials=" + o.s3_credentials + ": expected an absolute path");
    EXTRAFS_TRY(c, load_s3_credentials(o.s3_credentials, o.s3_profile));
    out.credentials = std::move(c);
  } else {
    if (!o.s3_profile.empty()) return bad("s3_profile= needs s3_credentials=FILE");
    const char* ak = std::getenv("AWS_ACCESS_KEY_ID");
    const char* sk = std::getenv("AWS_SECRET_ACCESS_KEY");
    const char* tok = std::getenv("AWS_SESSION_TOKEN");
    bool have_ak = ak != nullptr && *ak != '\0', have_sk = sk != nullptr && *sk != '\0';
    if (have_ak != have_sk)
      return bad(std::string("the environment has ") + (have_ak ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY") +
                 " without " + (have_ak ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID"));
    if (have_ak) {
      out.credentials.access_key = ak;
      out.credentials.secret_key = sk;
      if (tok != nullptr) out.credentials.session_token = tok;
    }
  }
  if (has_control(out.credentials.access_key) || has_control(out.credentials.secret_key) ||
      has_control(out.credentials.session_token))
    return bad("the S3 credentials hold a control character");
  if (!out.credentials.anonymous()) out.sigv4 = "aws:amz:" + region + ":s3";
  return out;
}

Result<S3Credentials> load_s3_credentials(const std::string& path, const std::string& profile_in) {
  const std::string profile = profile_in.empty() ? "default" : profile_in;
  const std::string what = "s3_credentials=" + path;
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd.valid()) {
    if (errno == ELOOP) return make_error(ELOOP, what + " is a symlink (give the file itself)");
    return Error::from_errno(errno, what);
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Error::from_errno(errno, what);
  if (!S_ISREG(st.st_mode)) return make_error(EINVAL, what + " is not a regular file");
  if (st.st_uid != ::geteuid())
    return make_error(EPERM,
                      what + " is not owned by the user running extrafs (uid " + std::to_string(::geteuid()) + ")");
  if ((st.st_mode & 077) != 0)
    return make_error(EPERM, what + " may be read or written by group or others (chmod 600 it)");
  constexpr size_t kLimit = 64 << 10;
  std::string text(kLimit + 1, '\0');
  size_t n = 0;
  if (int e = pread_all(fd.get(), text.data(), text.size(), 0, &n)) return Error::from_errno(e, what);
  if (n > kLimit) return make_error(EFBIG, what + " is larger than 64 KiB");
  text.resize(n);

  S3Credentials c;
  bool in_profile = false, found = false;
  int line_no = 0;
  for (auto raw : split(text, '\n')) {
    ++line_no;
    std::string_view line = trim(raw);
    if (line.empty() || line.front() == '#' || line.front() == ';') continue;
    if (line.front() == '[') {
      if (line.back() != ']')
        return make_error(EINVAL, what + ": line " + std::to_string(line_no) + ": unterminated '['");
      std::string_view name = trim(line.substr(1, line.size() - 2));
      in_profile = name == profile;
      found = found || in_profile;
      continue;
    }
    size_t eq = line.find('=');
    if (eq == std::string_view::npos)
      return make_error(EINVAL, what + ": line " + std::to_string(line_no) + " is neither [profile] nor key = value");
    if (!in_profile) continue;
    std::string_view key = trim(line.substr(0, eq));
    std::string value(trim(line.substr(eq + 1)));
    if (key == "aws_access_key_id")
      c.access_key = value;
    else if (key == "aws_secret_access_key")
      c.secret_key = value;
    else if (key == "aws_session_token" || key == "aws_security_token")
      c.session_token = value;
  }
  if (!found) return make_error(EINVAL, what + " has no profile [" + profile + "]");
  if (c.access_key.empty() || c.secret_key.empty())
    return make_error(EINVAL, what + ": profile [" + profile + "] lacks " +
                                  (c.access_key.empty() ? "aws_access_key_id" : "aws_secret_access_key"));
  return c;
}

size_t proxy_slot(std::string_view path, size_t n) {
  if (n <= 1) return 0;
  return static_cast<size_t>(xxh3_64(path.data(), path.size()) % n);
}

}  // namespace extrafs::backend
