#include <catch2/catch.hpp>

#include "tools/mount_cmd.h"

using namespace extrafs::tools;

namespace {

// `bad` (one option) is a usage error whose message names the option.
void check_refused_naming_its_key(const std::string& bad) {
  MountRequest x;
  auto st = apply_mount_options(bad, &x);
  INFO(bad);
  REQUIRE_FALSE(st.ok());
  CHECK(st.code() == EINVAL);
  CHECK(st.error().message.find(bad.substr(0, bad.find('='))) != std::string::npos);
}

}  // namespace

TEST_CASE("http(s) and s3 mount options are parsed and bad ones named", "[mount]") {
  MountRequest r;
  REQUIRE(apply_mount_options("refresh=5,proxy=p1:3128|p2:3128;DIRECT,cacert=/etc/ca.pem,s3_endpoint=http://h:7480,"
                              "s3_region=eu-west-1,s3_credentials=/etc/s3.ini,s3_profile=ci",
                              &r)
              .ok());
  CHECK(r.refresh_s == 5);
  CHECK(r.http.proxy == "p1:3128|p2:3128;DIRECT");
  CHECK(r.http.cacert == "/etc/ca.pem");
  CHECK(r.http.s3_endpoint == "http://h:7480");
  CHECK(r.http.s3_region == "eu-west-1");
  CHECK(r.http.s3_credentials == "/etc/s3.ini");
  CHECK(r.http.s3_profile == "ci");
  CHECK(default_refresh_s("/srv/store") == 1);
  CHECK(default_refresh_s("nfs://h/export") == 1);
  CHECK(default_refresh_s("https://h/store") == 60);
  CHECK(default_refresh_s("s3://bucket") == 60);
  for (const char* bad : {"refresh=0", "refresh=1.5", "refresh=86401", "refresh=", "proxy=", "proxy=p1",
                          "proxy=p1:3128;", "proxy=https://p:1", "cacert=relative.pem",
                          "cacert=", "s3_credentials=creds", "s3_endpoint=", "s3_region=", "s3_profile="})
    check_refused_naming_its_key(bad);
}

TEST_CASE("mount options are parsed and bad ones named", "[mount]") {
  MountRequest r;
  REQUIRE(apply_mount_options("cache=/tmp/c,cache_size=512M,timeout=5,threads=4,allow_other,log_level=debug", &r).ok());
  CHECK(r.cache_dir == "/tmp/c");
  CHECK(r.cache_size == 512ull << 20);
  CHECK(r.timeout_s == 5);
  CHECK(r.threads == 4u);
  CHECK(r.allow_other);
  CHECK(r.log_level == "debug");
  REQUIRE(apply_mount_options("rw,defaults,_netdev,noauto,x-systemd.automount,nosuid,nodev", &r).ok());
  CHECK(r.fuse_opts == std::vector<std::string>{"nosuid", "nodev"});

  REQUIRE(apply_mount_options("cache_size=1.5G,max_read=0131072,blksize=4096", &r).ok());
  CHECK(r.cache_size == 3ull << 29);
  CHECK(r.fuse_opts == std::vector<std::string>{"nosuid", "nodev", "max_read=131072", "blksize=4096"});

  for (const char* bad : {"bogus=1",
                          "cache_size=abc",
                          "threads=0",
                          "timeout=",
                          "cache=relative",
                          "log_level=loud",
                          "allow_other=1",
                          "cache_size=1K",
                          "cache_size=1.5.2G",
                          "cache_size=1.1G",
                          "cache_size=20G ",
                          "cache_size=99999999999T",
                          "timeout=1.5",
                          "timeout=+5",
                          "timeout=18446744073709551617",
                          "timeout=86401",
                          "threads=4x",
                          "threads=-1",
                          "threads=1025",
                          "max_read=",
                          "max_read=0",
                          "max_read=4294967296",
                          "max_read=1M",
                          "max_read=-1",
                          "blksize=1000",
                          "blksize=256",
                          "blksize=4k"}) {
    check_refused_naming_its_key(bad);
  }
}

TEST_CASE("fstab's comment= and x-* options are accepted and not passed on", "[mount]") {
  MountRequest r;
  REQUIRE(apply_mount_options("comment=x-gvfs-show,x-systemd.before=docker.service,comment=", &r).ok());
  CHECK(r.fuse_opts.empty());
  // "comment" is a key like any other: one that only starts with it is still unknown.
  CHECK(apply_mount_options("commentary=1", &r).code() == EINVAL);
}
