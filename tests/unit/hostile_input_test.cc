// Hostile input, the unit-level half: opening beneath a directory without symlinks, the shared
// catalog-layer rules and lower-chain check, docker's reference grammar, `extrafs index` on a
// store with bad layers, and one-line escaping of messages.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <spdlog/sinks/ringbuffer_sink.h>

#include "common/log.h"
#include "common/posix_file.h"
#include "common/str_util.h"
#include "format/catalog.h"
#include "store/docker_meta.h"
#include "store/indexer.h"
#include "store/store_lock.h"

using namespace extrafs;

namespace {

struct Tree {
  std::string path;
  Tree() {
    char tmpl[] = "/tmp/extrafs-hostile-test.XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~Tree() { std::filesystem::remove_all(path); }
  void file(const std::string& rel, const std::string& data) {
    REQUIRE(make_dirs(parent_dir(path + "/" + rel)).ok());
    REQUIRE(write_file_atomic(path + "/" + rel, data).ok());
  }
  void link(const std::string& rel, const std::string& target) {
    REQUIRE(make_dirs(parent_dir(path + "/" + rel)).ok());
    REQUIRE(::symlink(target.c_str(), (path + "/" + rel).c_str()) == 0);
  }
};

// Both ways open_beneath() works: openat2, and the walk for kernels without it.
void each_mode(const std::function<void()>& body) {
  for (bool fallback : {false, true}) {
    INFO("fallback walk: " << fallback);
    use_open_beneath_fallback_for_testing(fallback);
    body();
  }
  use_open_beneath_fallback_for_testing(false);
}

format::CatalogLayer layer(char c, std::string link, std::optional<std::string> lower = std::nullopt) {
  format::CatalogLayer l;
  l.cache_id = std::string(64, c);
  l.link = std::move(link);
  l.lower = std::move(lower);
  return l;
}

}  // namespace

TEST_CASE("open_beneath never follows a symlink nor leaves its directory", "[files]") {
  Tree t;
  t.file("store/a/b/file", "inside");
  t.file("outside/secret", "marker");
  t.link("store/a/up", "../../outside");
  t.link("store/a/abs", t.path + "/outside/secret");
  t.link("store/dirlink", "a");
  Fd root(::open((t.path + "/store").c_str(), O_RDONLY | O_DIRECTORY));
  REQUIRE(root.valid());
  each_mode([&] {
    auto ok = read_file_beneath(root.get(), "a/b/file", "S");
    REQUIRE(ok.ok());
    CHECK(*ok == "inside");
    CHECK(read_file_beneath(root.get(), "./a//b/file", "S").ok());
    CHECK(read_file_beneath(root.get(), "a/up/secret", "S").code() == ELOOP);  // symlinked parent
    CHECK(read_file_beneath(root.get(), "a/abs", "S").code() == ELOOP);        // symlinked file
    CHECK(read_file_beneath(root.get(), "dirlink/b/file", "S").code() == ELOOP);
    CHECK(read_file_beneath(root.get(), "a/../../outside/secret", "S").code() == EXDEV);
    CHECK(read_file_beneath(root.get(), "/etc/passwd", "S").code() == EXDEV);
    CHECK(check_dir_beneath(root.get(), "dirlink", "S").code() == ELOOP);
    CHECK(check_dir_beneath(root.get(), "a/b", "S").ok());
    CHECK(check_dir_beneath(root.get(), "a/b/file", "S").code() == ENOTDIR);
    CHECK(open_beneath(root.get(), "a/abs", O_PATH, "S").code() == ELOOP);
    CHECK(open_beneath(root.get(), "a/up/new", O_WRONLY | O_CREAT, "S", 0644).code() == ELOOP);
    auto names = list_dir_beneath(root.get(), "a", "S");
    REQUIRE(names.ok());
    CHECK(*names == std::vector<std::string>{"abs", "b", "up"});
    CHECK(list_dir_beneath(root.get(), "dirlink", "S").code() == ELOOP);
    auto msg = read_file_beneath(root.get(), "a/up/secret", "S").error().message;
    CHECK(msg.find("S/a/up/secret") != std::string::npos);
  });
  CHECK(!path_exists(t.path + "/outside/new"));
}

TEST_CASE("control characters in messages are escaped to one printable line", "[strings]") {
  CHECK(escape_control("plain text: ok/é") == "plain text: ok/é");
  CHECK(escape_control("a\nb") == "a\\nb");
  CHECK(escape_control("\r\t") == "\\r\\t");
  CHECK(escape_control(std::string("\x01\x1b[2J\x7f", 6)) == "\\x01\\x1b[2J\\x7f");
  CHECK(escape_control(std::string("\0", 1)) == "\\x00");
  std::string all;
  for (int c = 0; c < 256; ++c) all += static_cast<char>(c);
  for (char c : escape_control(all)) {
    auto u = static_cast<unsigned char>(c);
    CHECK((u >= 0x20 && u != 0x7f));
  }
}

TEST_CASE("text shown on a terminal is well-formed UTF-8 without C0 or C1 controls", "[strings]") {
  // Valid UTF-8 is kept, up to the largest code point.
  CHECK(escape_control("tag \xc2\xa0\xe2\x82\xac \xf0\x9f\x90\xb3 \xf4\x8f\xbf\xbf") ==
        "tag \xc2\xa0\xe2\x82\xac \xf0\x9f\x90\xb3 \xf4\x8f\xbf\xbf");
  // C1 controls (CSI is U+009B) act like ESC [ on many terminals.
  CHECK(escape_control("a\xc2\x9b"
                       "2Jb\xc2\x85") == "a\\xc2\\x9b2Jb\\xc2\\x85");
  // Bytes that are not UTF-8: a lone CSI byte, a stray continuation, overlong forms, a surrogate,
  // beyond U+10FFFF, a sequence cut short at the end.
  CHECK(escape_control("\x9b"
                       "2J") == "\\x9b2J");
  CHECK(escape_control("\x80") == "\\x80");
  CHECK(escape_control("\xc0\xaf") == "\\xc0\\xaf");
  CHECK(escape_control("\xe0\x80\xaf") == "\\xe0\\x80\\xaf");
  CHECK(escape_control("\xed\xa0\x80") == "\\xed\\xa0\\x80");
  CHECK(escape_control("\xf4\x90\x80\x80") == "\\xf4\\x90\\x80\\x80");
  CHECK(escape_control("ok\xe2\x82") == "ok\\xe2\\x82");
  // Every 1- and 2-byte input comes out as printable UTF-8 without a control.
  for (int a = 0; a < 256; ++a) {
    for (int b = 0; b < 256; ++b) {
      std::string in{static_cast<char>(a), static_cast<char>(b)};
      std::string out = escape_control(in);
      for (size_t i = 0; i < out.size(); ++i) {
        auto c = static_cast<unsigned char>(out[i]);
        INFO(a << " " << b << " -> " << out);
        REQUIRE((c >= 0x20 && c != 0x7f));
        REQUIRE(!(c == 0xc2 && i + 1 < out.size() && static_cast<unsigned char>(out[i + 1]) < 0xa0));
      }
    }
  }
}

TEST_CASE("daemon log lines escape what they quote", "[strings]") {
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4);
  spdlog::logger logger("escape-test", sink);
  logger.set_formatter(make_log_formatter("%l %*"));
  logger.warn("cannot read {}", std::string("a\nERROR forged entry\x1b[2J"));
  auto lines = sink->last_formatted();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0] == "warning cannot read a\\nERROR forged entry\\x1b[2J\n");
  // The pattern the daemon installs on stderr uses the escaping flag, not the raw message.
  CHECK(kStderrLogPattern.find("%*") != std::string_view::npos);
  CHECK(kStderrLogPattern.find("%v") == std::string_view::npos);
}

TEST_CASE("the catalog reader and writers share one rule for a layer", "[catalog]") {
  CHECK(format::check_catalog_layer(layer('a', "ABCDEFGHIJKLMNOPQRSTUVWXYZ")).ok());
  CHECK(format::check_catalog_layer(layer('a', "")).ok());
  CHECK(format::check_catalog_layer(layer('a', "../../x")).code() == EBADMSG);
  CHECK(format::check_catalog_layer(layer('a', "L", "l/A:l/B")).ok());
  for (const char* bad : {"", "../x", "l/", "l/A:", "l/A::l/B", "/etc/passwd", "l/../x", "l/A:../B", "x/A"})
    CHECK(format::check_catalog_layer(layer('a', "L", std::string(bad))).code() == EBADMSG);
  auto bad_id = layer('a', "L");
  bad_id.cache_id = "bad id";
  auto st = format::check_catalog_layer(bad_id);
  CHECK(st.code() == EBADMSG);
  CHECK(st.error().message.find("bad id") != std::string::npos);
  // What the rule refuses, the reader refuses: a catalog with such a layer does not parse.
  format::Catalog c;
  c.layers = {layer('a', "../../x")};
  CHECK_FALSE(format::Catalog::parse(c.serialize()).ok());
}

TEST_CASE("a lower chain is served only if every entry is the link of a served layer", "[catalog]") {
  format::Catalog c;
  c.layers = {layer('a', "AAA"), layer('b', "BBB", "l/AAA"), layer('c', "CCC", "l/BBB:l/AAA")};
  CHECK(format::unchained_layers(c).empty());
  c.layers.push_back(layer('d', "DDD", "l/ZZZ"));        // names no layer
  c.layers.push_back(layer('e', "EEE", "l/DDD:l/AAA"));  // names a refused one
  c.layers.push_back(layer('f', "FFF", "l/FFF"));        // names itself
  auto out = format::unchained_layers(c);
  std::set<std::string> ids;
  for (auto& [id, why] : out) ids.insert(id.substr(0, 1));
  CHECK(ids == std::set<std::string>{"d", "e", "f"});
  format::Catalog dup;
  dup.layers = {layer('a', "AAA"), layer('b', "AAA")};
  CHECK(format::unchained_layers(dup).size() == 2);
}

TEST_CASE("image references follow docker's grammar", "[store]") {
  for (const char* ok : {"busybox:latest", "library/busybox:1.36", "my-app__x/y.z:v1_2-3", "a--b:t",
                         "localhost:5000/app:1", "registry.example.com/team/app:2024.01", "Host/app:1", "x:_under"})
    CHECK(store::check_reference(ok).ok());
  for (const char* bad :
       {"../../x:1", "Busybox:1", "app:", "app", "app:bad/tag", "app:bad tag", "app:-dash", "app/:1", "/app:1",
        "a..b:1", "a._b:1", "-a:1", "a-:1", "app:t\nx", "reg.example.com/Up:1", "bad_host_.com/x:1"})
    CHECK(store::check_reference(bad).code() == EINVAL);
  CHECK(store::check_reference("app:" + std::string(128, 't')).ok());
  CHECK_FALSE(store::check_reference("app:" + std::string(129, 't')).ok());
  CHECK_FALSE(store::check_reference(std::string(256, 'a') + ":1").ok());
  CHECK(store::check_reference("app:t\nx").error().message.find('\n') == std::string::npos);
}

TEST_CASE("index skips bad layers, never follows a symlink, and writes a catalog the reader accepts", "[store]") {
  Tree t;
  const std::string good(64, 'a'), badlink(64, 'b'), symdiff(64, 'c'), symlinkfile(64, 'd'), orphan(64, 'e');
  t.file("outside/secret", "MARKER-OUTSIDE");
  t.file("s/overlay2/" + good + "/diff/etc/hello", "hello");
  t.link("s/overlay2/" + good + "/diff/etc/shadow", "/etc/shadow");  // content: stays a symlink
  t.file("s/overlay2/" + good + "/link", "AAAAAAAAAAAAAAAAAAAAAAAAAA\n");
  t.file("s/overlay2/" + badlink + "/diff/f", "x");
  t.file("s/overlay2/" + badlink + "/link", "../../x\n");
  t.link("s/overlay2/" + symdiff + "/diff", t.path + "/outside");
  t.file("s/overlay2/" + symlinkfile + "/diff/f", "y");
  t.link("s/overlay2/" + symlinkfile + "/link", t.path + "/outside/secret");
  t.file("s/overlay2/" + orphan + "/diff/f", "z");
  t.file("s/overlay2/" + orphan + "/link", "EEEEEEEEEEEEEEEEEEEEEEEEEE");
  t.file("s/overlay2/" + orphan + "/lower", "l/NOSUCHLINKNOSUCHLINKNOSUC");
  t.file("s/overlay2/bad id/diff/f", "w");
  for (int run = 0; run < 2; ++run) {
    INFO("run " << run);
    auto r = store::index_store(t.path + "/s", nullptr);
    REQUIRE(r.ok());
    CHECK(r->skipped.size() == 5);
    auto text = read_file(t.path + "/s/extrafs/catalog");
    REQUIRE(text.ok());
    CHECK(text->find("MARKER") == std::string::npos);
    auto c = format::Catalog::parse(*text);
    REQUIRE(c.ok());
    REQUIRE(c->layers.size() == 1);
    CHECK(c->layers[0].cache_id == good);
    CHECK(format::unchained_layers(*c).empty());
  }
}

TEST_CASE("index takes the writers' lock that publish takes", "[store]") {
  Tree t;
  t.file("s/overlay2/" + std::string(64, 'a') + "/diff/f", "x");
  t.file("s/extrafs/.keep", "");
  Fd root(::open((t.path + "/s").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  REQUIRE(root.valid());
  {
    auto held = store::StoreWriteLock::take(root.get(), t.path + "/s");
    REQUIRE(held.ok());
    auto r = store::index_store(t.path + "/s", nullptr);
    CHECK(r.code() == EBUSY);
    CHECK(r.error().message.find("another extrafs publish, index, rm or gc") != std::string::npos);
    CHECK_FALSE(path_exists(t.path + "/s/extrafs/catalog"));
    // A second writer in the same process is refused too (flock is per open file).
    CHECK(store::StoreWriteLock::take(root.get(), t.path + "/s").code() == EBUSY);
  }
  CHECK(store::index_store(t.path + "/s", nullptr).ok());
  CHECK(path_exists(t.path + "/s/extrafs/catalog"));
  // The lock file is never opened through a symlink.
  ::unlink((t.path + "/s/extrafs/.publish.lock").c_str());
  t.file("outside", "MARKER");
  t.link("s/extrafs/.publish.lock", t.path + "/outside");
  CHECK(store::index_store(t.path + "/s", nullptr).code() == ELOOP);
}

TEST_CASE("a writer removes the temporaries of killed writers, and only those", "[store]") {
  Tree t;
  t.file("s/overlay2/" + std::string(64, 'a') + "/diff/f", "x");
  pid_t dead = ::fork();
  REQUIRE(dead >= 0);
  if (dead == 0) ::_exit(0);
  int status = 0;
  REQUIRE(::waitpid(dead, &status, 0) == dead);
  const std::string d = std::to_string(dead), live = std::to_string(::getppid());
  const std::vector<std::string> stale = {
      "s/extrafs/catalog.tmp." + d,
      "s/extrafs/objects/0123.tmp." + d,
      "s/extrafs/catalog.d/7.tmp." + d,
      "s/extrafs/layers/.x.blob.tmp-" + d,
      "s/extrafs/removed/" + std::string(64, 'b') + ".tmp." + d,
      "s/image/overlay2/repositories.json.tmp." + d,
      "s/image/overlay2/imagedb/content/sha256/" + std::string(64, 'c') + ".tmp." + d};
  const std::vector<std::string> kept = {"s/extrafs/objects/4567.tmp." + live, "s/extrafs/objects/0123",
                                         "s/extrafs/catalog.d/7"};
  for (const auto& f : stale) t.file(f, "partial");
  for (const auto& f : kept) t.file(f, "keep");
  t.file("s/image/overlay2/layerdb/sha256/.tmp-abc-" + d + "/cache-id", "partial");
  REQUIRE(store::index_store(t.path + "/s", nullptr).ok());
  for (const auto& f : stale) CHECK_FALSE(path_exists(t.path + "/" + f));
  CHECK_FALSE(path_exists(t.path + "/s/image/overlay2/layerdb/sha256/.tmp-abc-" + d));
  for (const auto& f : kept) CHECK(path_exists(t.path + "/" + f));
  CHECK(store::stale_temporary_pid("catalog.tmp.12") == pid_t{12});
  CHECK(store::stale_temporary_pid(".old-ab-34") == pid_t{34});
  CHECK_FALSE(store::stale_temporary_pid("catalog"));
  CHECK_FALSE(store::stale_temporary_pid("x.tmp.abc"));
  CHECK_FALSE(store::stale_temporary_pid("x.tmp.0"));
}

TEST_CASE("index refuses a symlinked extrafs/layers or image/ directory", "[store]") {
  Tree t;
  t.file("s/overlay2/" + std::string(64, 'a') + "/diff/f", "x");
  t.file("elsewhere/keep", "");
  t.file("s/extrafs/.keep", "");
  t.link("s/extrafs/layers", t.path + "/elsewhere");
  auto r = store::index_store(t.path + "/s", nullptr);
  CHECK(r.code() == ELOOP);
  CHECK(list_dir(t.path + "/elsewhere")->size() == 1);
  ::unlink((t.path + "/s/extrafs/layers").c_str());
  t.link("s/image", t.path + "/elsewhere");
  r = store::index_store(t.path + "/s", nullptr);
  CHECK(r.code() == ELOOP);
  CHECK_FALSE(path_exists(t.path + "/s/extrafs/catalog"));
}
