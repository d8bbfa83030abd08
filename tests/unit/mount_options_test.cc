#include <catch2/catch.hpp>

#include "tools/mount_cmd.h"

using namespace extrafs::tools;

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

  for (const char* bad : {"bogus=1", "cache_size=abc", "threads=0", "timeout=", "cache=relative", "log_level=loud",
                          "allow_other=1", "cache_size=1K"}) {
    MountRequest x;
    auto st = apply_mount_options(bad, &x);
    INFO(bad);
    REQUIRE_FALSE(st.ok());
    CHECK(st.code() == EINVAL);
    std::string key = std::string(bad).substr(0, std::string(bad).find('='));
    CHECK(st.error().message.find(key) != std::string::npos);
  }
}
