#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>

#include "backend/local_backend.h"
#include "test_util.h"

using namespace extrafs;
using extrafs::testing::TempDir;

namespace {

void write_file(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
}

}  // namespace

TEST_CASE("a file replaced by rename is read in its new version, not through the old fd", "[backend]") {
  TempDir dir;
  write_file(dir.path + "/catalog", "first version");
  auto b = backend::LocalBackend::open(dir.path);
  REQUIRE(b.ok());
  auto first = (*b)->read_all("catalog");
  REQUIRE(first.ok());
  CHECK(*first == "first version");

  // What a publish does: write a new file beside it, rename it over the old one.
  write_file(dir.path + "/catalog.tmp", "the second, longer version");
  REQUIRE(std::rename((dir.path + "/catalog.tmp").c_str(), (dir.path + "/catalog").c_str()) == 0);
  auto second = (*b)->read_all("catalog");
  INFO((second.ok() ? std::string() : second.error().message));
  REQUIRE(second.ok());
  CHECK(*second == "the second, longer version");

  write_file(dir.path + "/catalog.tmp", "third");
  REQUIRE(std::rename((dir.path + "/catalog.tmp").c_str(), (dir.path + "/catalog").c_str()) == 0);
  auto third = (*b)->read_all("catalog");
  REQUIRE(third.ok());
  CHECK(*third == "third");
}
