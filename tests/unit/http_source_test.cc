// http(s) and s3 SOURCE strings, proxy= specs and S3 credentials files (backend/http_source.h):
// parsed strictly, resolved to the URLs HttpBackend asks, and refused with one line naming what
// is wrong. No network.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>
#include <set>

#include "backend/http_source.h"
#include "backend/url.h"
#include "test_util.h"

using namespace extrafs;
using namespace extrafs::backend;

namespace {

// Sets (or clears, for nullptr) an environment variable for one scope.
class EnvVar {
 public:
  EnvVar(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value, 1);
    else
      ::unsetenv(name);
  }
  ~EnvVar() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

struct NoAwsEnv {
  EnvVar a{"AWS_ACCESS_KEY_ID", nullptr}, b{"AWS_SECRET_ACCESS_KEY", nullptr}, c{"AWS_SESSION_TOKEN", nullptr};
};

std::string write_file(const std::string& path, const std::string& text, mode_t mode) {
  std::ofstream(path) << text;
  ::chmod(path.c_str(), mode);
  return path;
}

}  // namespace

TEST_CASE("http and https mirrors resolve to base URLs in the order given", "[http]") {
  NoAwsEnv env;
  auto r = resolve_http_source("https://a.example/store/;http://127.0.0.1:8080//x/./y;https://[::1]:8443/s%20t", {});
  REQUIRE(r.ok());
  CHECK_FALSE(r->s3);
  CHECK(r->mirrors ==
        std::vector<std::string>{"https://a.example/store", "http://127.0.0.1:8080/x/y", "https://[::1]:8443/s%20t"});
  CHECK(r->mirror_names.size() == 3);
  CHECK(r->proxy_groups == std::vector<ProxyGroup>{{""}});
  CHECK(r->sigv4.empty());
  auto root = resolve_http_source("http://h", {});
  REQUIRE(root.ok());
  CHECK(root->mirrors == std::vector<std::string>{"http://h"});
}

TEST_CASE("bad http and s3 sources are refused with one line naming the problem", "[http]") {
  NoAwsEnv env;
  const std::pair<const char*, const char*> cases[] = {
      {"http://", "has no host"},
      {"http://user:pw@h/x", "user name"},
      {"https://h:0/x", "bad port '0'"},
      {"https://h:99999/x", "bad port"},
      {"http://h/x?a=1", "query"},
      {"http://h/x#f", "'#'"},
      {"http://h/a/../b", "'..'"},
      {"http://h/a/%2e%2e/b", "'..'"},
      {"http://h/a b", "bad path"},
      {"http://h/a%zz", "bad path"},
      {"http://bad_host!/x", "bad host"},
      {"http://h/x;", "empty mirror"},
      {"http://h/x;;http://g/y", "empty mirror"},
      {"http://h/x;s3://bucket", "one kind"},
      {"s3://bucket;http://h/x", "one kind"},
      {"s3://", "no bucket"},
      {"s3:///prefix", "no bucket"},
      {"s3://ab/x", "bad bucket"},
      {"s3://Upper/x", "bad bucket"},
      {"s3://-bucket/x", "bad bucket"},
      {"s3://bucket/a/../b", "'..'"},
      {"s3://bucket/a\nb", "control"},
  };
  for (const auto& [source, needle] : cases) {
    INFO(source);
    auto r = resolve_http_source(source, {});
    REQUIRE_FALSE(r.ok());
    CHECK(r.code() == EINVAL);
    CHECK(r.error().message.find(needle) != std::string::npos);
    CHECK(r.error().message.find('\n') == std::string::npos);
  }
}

TEST_CASE("s3 sources are path-style with an endpoint, virtual-hosted without", "[http]") {
  NoAwsEnv env;
  HttpOptions o;
  auto aws = resolve_http_source("s3://my-bucket/some prefix/v1/", o);
  REQUIRE(aws.ok());
  CHECK(aws->s3);
  CHECK(aws->mirrors == std::vector<std::string>{"https://my-bucket.s3.us-east-1.amazonaws.com/some%20prefix/v1"});
  CHECK(aws->sigv4.empty());  // no credentials: anonymous
  o.s3_region = "eu-west-3";
  auto region = resolve_http_source("s3://my-bucket", o);
  REQUIRE(region.ok());
  CHECK(region->mirrors == std::vector<std::string>{"https://my-bucket.s3.eu-west-3.amazonaws.com"});
  o.s3_endpoint = "http://127.0.0.1:7480/";
  auto rgw = resolve_http_source("s3://bkt/p;s3://other.bucket", o);
  REQUIRE(rgw.ok());
  CHECK(rgw->mirrors == std::vector<std::string>{"http://127.0.0.1:7480/bkt/p", "http://127.0.0.1:7480/other.bucket"});
  o.s3_endpoint.clear();
  auto dotted = resolve_http_source("s3://other.bucket", o);
  REQUIRE_FALSE(dotted.ok());
  CHECK(dotted.error().message.find("s3_endpoint") != std::string::npos);
  o.s3_region = "EU WEST";
  CHECK_FALSE(resolve_http_source("s3://bucket", o).ok());
}

TEST_CASE("options that do not fit the source are refused", "[http]") {
  NoAwsEnv env;
  HttpOptions o;
  o.s3_region = "us-east-2";
  auto r = resolve_http_source("http://h/x", o);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message == "s3_region= applies to s3:// sources only");
  auto local = check_http_options("/srv/store", o);
  REQUIRE_FALSE(local.ok());
  CHECK(local.error().message.find("http(s) and s3 sources only") != std::string::npos);
  HttpOptions p;
  p.proxy = "127.0.0.1:3128";
  CHECK_FALSE(check_http_options("nfs://h/export", p).ok());
  CHECK(check_http_options("https://h/x", p).ok());
  CHECK(check_http_options("/srv/store", HttpOptions{}).ok());
  HttpOptions c;
  c.cacert = "/no/such/ca.pem";
  auto ca = resolve_http_source("https://h/x", c);
  REQUIRE_FALSE(ca.ok());
  CHECK(ca.code() == ENOENT);
  CHECK(ca.error().message.find("cacert=/no/such/ca.pem") != std::string::npos);
}

TEST_CASE("proxy specs are groups of proxies, DIRECT included", "[http]") {
  auto g = parse_proxy_spec("http://p1:3128|p2:3128;DIRECT");
  REQUIRE(g.ok());
  CHECK(*g == std::vector<ProxyGroup>{{"http://p1:3128", "http://p2:3128"}, {""}});
  auto v6 = parse_proxy_spec("[::1]:3128");
  REQUIRE(v6.ok());
  CHECK(*v6 == std::vector<ProxyGroup>{{"http://[::1]:3128"}});
  CHECK(*parse_proxy_spec("") == std::vector<ProxyGroup>{{""}});
  for (const char* bad : {"p1", "p1:3128;", ";p1:3128", "p1:3128||p2:3128", "https://p1:3128", "socks5://p:1",
                          "p1:3128/x", "p1:99999", "direct", "user@p1:3128", "p1:3128\n"}) {
    INFO(bad);
    auto r = parse_proxy_spec(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.code() == EINVAL);
  }
}

TEST_CASE("an object's proxy in a group is a stable hash of its path", "[http]") {
  CHECK(proxy_slot("anything", 1) == 0);
  std::set<size_t> seen;
  for (int i = 0; i < 64; ++i) {
    std::string path = "extrafs/layers/" + std::to_string(i) + ".blob";
    size_t s = proxy_slot(path, 3);
    CHECK(s < 3);
    CHECK(proxy_slot(path, 3) == s);  // the same for every call, host and run
    seen.insert(s);
  }
  CHECK(seen.size() == 3);  // and spread over the group
}

TEST_CASE("path segments are percent-encoded as SigV4 canonicalises them", "[http]") {
  CHECK(percent_encode_segment("a-b_c.d~e") == "a-b_c.d~e");
  CHECK(percent_encode_segment("a b+c/%") == "a%20b%2Bc%2F%25");
  CHECK(percent_encode_segment("\xc3\xa9\n") == "%C3%A9%0A");
}

TEST_CASE("S3 credentials come from a private file, else the environment, else none", "[http]") {
  extrafs::testing::TempDir dir;
  const std::string ini =
      "# comment\n[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key=SKDEFAULT\n\n"
      "[other]\n aws_access_key_id=AKOTHER \naws_secret_access_key = SKOTHER\naws_session_token = TOKEN\n";
  const std::string good = write_file(dir.path + "/creds", ini, 0600);
  auto d = load_s3_credentials(good, "");
  REQUIRE(d.ok());
  CHECK(d->access_key == "AKDEFAULT");
  CHECK(d->secret_key == "SKDEFAULT");
  CHECK(d->session_token.empty());
  auto other = load_s3_credentials(good, "other");
  REQUIRE(other.ok());
  CHECK(other->access_key == "AKOTHER");
  CHECK(other->session_token == "TOKEN");

  auto missing = load_s3_credentials(good, "nope");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message.find("[nope]") != std::string::npos);
  auto absent = load_s3_credentials(dir.path + "/absent", "");
  REQUIRE_FALSE(absent.ok());
  CHECK(absent.code() == ENOENT);
  const std::string open_file = write_file(dir.path + "/open", ini, 0644);
  auto readable = load_s3_credentials(open_file, "");
  REQUIRE_FALSE(readable.ok());
  CHECK(readable.code() == EPERM);
  CHECK(readable.error().message.find("chmod 600") != std::string::npos);
  REQUIRE(::symlink(good.c_str(), (dir.path + "/link").c_str()) == 0);
  CHECK(load_s3_credentials(dir.path + "/link", "").code() == ELOOP);
  const std::string half = write_file(dir.path + "/half", "[default]\naws_access_key_id=AK\n", 0600);
  auto h = load_s3_credentials(half, "");
  REQUIRE_FALSE(h.ok());
  CHECK(h.error().message.find("aws_secret_access_key") != std::string::npos);
  const std::string junk = write_file(dir.path + "/junk", "[default\n", 0600);
  CHECK(load_s3_credentials(junk, "").code() == EINVAL);
  // No message ever quotes a key.
  for (const auto& r : {missing, absent, readable, h}) CHECK(r.error().message.find("SKDEFAULT") == std::string::npos);

  HttpOptions o;
  o.s3_endpoint = "http://127.0.0.1:7480";
  o.s3_credentials = good;
  o.s3_profile = "other";
  {
    EnvVar ak("AWS_ACCESS_KEY_ID", "AKENV"), sk("AWS_SECRET_ACCESS_KEY", "SKENV");
    auto f = resolve_http_source("s3://bucket", o);  // the file wins over the environment
    REQUIRE(f.ok());
    CHECK(f->credentials.access_key == "AKOTHER");
    CHECK(f->sigv4 == "aws:amz:us-east-1:s3");
    o.s3_credentials.clear();
    o.s3_profile.clear();
    auto e = resolve_http_source("s3://bucket", o);
    REQUIRE(e.ok());
    CHECK(e->credentials.access_key == "AKENV");
    CHECK(e->credentials.secret_key == "SKENV");
  }
  {
    EnvVar ak("AWS_ACCESS_KEY_ID", "AKENV"), sk("AWS_SECRET_ACCESS_KEY", nullptr);
    CHECK_FALSE(resolve_http_source("s3://bucket", o).ok());
  }
  NoAwsEnv none;
  auto anon = resolve_http_source("s3://bucket", o);
  REQUIRE(anon.ok());
  CHECK(anon->credentials.anonymous());
  CHECK(anon->sigv4.empty());
  o.s3_profile = "other";
  CHECK_FALSE(resolve_http_source("s3://bucket", o).ok());  // a profile without a file
}
