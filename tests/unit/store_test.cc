#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "common/posix_file.h"
#include "store/docker_meta.h"
#include "store/trace.h"

using namespace extrafs;

TEST_CASE("a trace written by the writer reads back the same", "[store]") {
  char tmpl[] = "/tmp/extrafs-trace-test.XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  const std::string id(64, 'a');
  std::vector<store::TraceEntry> want = {
      {id, 16, "etc/passwd"}, {id, 17, "odd\nname\\with back\\slash"}, {id + "-init", 3, "with space/ and more"}};
  std::string path;
  {
    auto w = store::TraceWriter::create(dir);
    REQUIRE(w.ok());
    path = (*w)->path();
    CHECK(path.rfind(dir + "/trace-", 0) == 0);
    for (const auto& e : want) (*w)->record(e.cache_id, e.entry, e.path);
  }
  auto text = read_file(path);
  REQUIRE(text.ok());
  CHECK(std::count(text->begin(), text->end(), '\n') == 3);  // one line each, newlines escaped
  auto got = store::read_trace_file(path);
  REQUIRE(got.ok());
  CHECK(*got == want);
  std::filesystem::remove_all(dir);
}

TEST_CASE("traces name the bad line", "[store]") {
  CHECK(store::format_trace_line("c", 5, "a\nb\\") == "c 5 a\\nb\\\\\n");
  auto bad = store::parse_trace("c 1 ok\nc 2 bad\\q\n");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("line 2") != std::string::npos);
  CHECK(store::parse_trace("c nope path\n").code() == EINVAL);
  CHECK(store::parse_trace(" 1 path\n").code() == EINVAL);
  auto lead = store::parse_trace("c 1 /abs\nc 2 /\n");
  REQUIRE(lead.ok());
  REQUIRE(lead->size() == 1);
  CHECK((*lead)[0].path == "abs");
  CHECK(store::read_trace_file("/nonexistent/trace").code() == ENOENT);
}

TEST_CASE("diff_ids are parsed from an image config and bad ones named", "[store]") {
  const std::string a = "sha256:" + std::string(64, 'a'), b = "sha256:" + std::string(64, 'b');
  auto ok = store::parse_diff_ids(R"({"rootfs":{"type":"layers","diff_ids":[")" + a + R"(",")" + b + R"("]}})");
  REQUIRE(ok.ok());
  CHECK(*ok == std::vector<std::string>{a, b});
  auto empty = store::parse_diff_ids(R"({"rootfs":{"diff_ids":[]}})");
  REQUIRE(empty.ok());
  CHECK(empty->empty());
  for (const char* missing : {"", "not json", "[]", "{}", R"({"rootfs":1})", R"({"rootfs":{"diff_ids":"x"}})"}) {
    auto r = store::parse_diff_ids(missing);
    CHECK(r.code() == EBADMSG);
    CHECK(r.error().message == "has no rootfs.diff_ids");
  }
  const std::vector<std::string> bad_lists = {"[1]", "[\"sha256:abc\"]", "[\"" + std::string(64, 'a') + "\"]",
                                             "[\"sha256:" + std::string(64, 'A') + "\"]", "[\"" + a + "\",null]"};
  for (const auto& bad : bad_lists) {
    auto r = store::parse_diff_ids(R"({"rootfs":{"diff_ids":)" + bad + "}}");
    CHECK(r.code() == EBADMSG);
    CHECK(r.error().message == "has a bad diff_id");
  }
}
