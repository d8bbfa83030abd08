#include <catch2/catch.hpp>

#include <fmt/format.h>

#include <cstring>

#include "format/layer_index.h"
#include "test_util.h"

using namespace extrafs;
using namespace extrafs::format;
using namespace extrafs::testing;

namespace {

// A small tree with one of each kind of entry.
std::string sample_index() {
  IndexBuilder b(4096);
  uint32_t root = add_root(b);
  uint32_t etc = add_dir(b, root, "etc");
  uint32_t bin = add_dir(b, root, "bin");
  uint32_t f = add_file(b, nullptr, etc, "passwd", pseudo_random(10000, 1), "objs/passwd");
  BuildEntry link;
  link.name = "passwd-link";
  link.parent = bin;
  link.st = make_stat(S_IFREG | 0644, 10000, 2);
  link.link_of = f;
  b.add(link);
  b.at(f).st.st_nlink = 2;
  BuildEntry sym;
  sym.name = "sh";
  sym.parent = bin;
  sym.st = make_stat(S_IFLNK | 0777, 7);
  sym.target = "busybox";
  b.add(sym);
  BuildEntry wh;
  wh.name = "gone";
  wh.parent = root;
  wh.st = make_stat(S_IFCHR | 0, 0);
  wh.st.st_rdev = 0;
  b.add(wh);
  BuildEntry dev;
  dev.name = "null";
  dev.parent = root;
  dev.st = make_stat(S_IFCHR | 0666, 0);
  dev.st.st_rdev = makedev(1, 3);
  b.add(dev);
  b.at(etc).xattrs = {{"trusted.overlay.opaque", "y"}, {"user.bin", std::string("\0\1\2", 3)}};
  BuildEntry suid;
  suid.name = "su";
  suid.parent = bin;
  suid.st = make_stat(S_IFREG | 04755, 0);
  b.add(suid);
  auto bytes = b.serialize();
  REQUIRE(bytes.ok());
  return *bytes;
}

IndexHeader header_of(const std::string& bytes) {
  IndexHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  return h;
}

// Rewrites the header (and both checksums) so that a test can probe the structural checks.
std::string reseal(std::string bytes, const IndexHeader& h0) {
  IndexHeader h = h0;
  std::memcpy(bytes.data(), &h, sizeof h);
  Digest128 body = xxh3_128(bytes.data() + sizeof h, bytes.size() - sizeof h);
  std::memcpy(h.body_digest, body.bytes.data(), 16);
  h.header_checksum = 0;
  h.header_checksum = xxh3_64(&h, sizeof h);
  std::memcpy(bytes.data(), &h, sizeof h);
  return bytes;
}

template <typename Rec>
std::string patch(std::string bytes, uint64_t offset, const std::function<void(Rec&)>& f) {
  Rec r;
  std::memcpy(&r, bytes.data() + offset, sizeof r);
  f(r);
  std::memcpy(bytes.data() + offset, &r, sizeof r);
  return reseal(bytes, header_of(bytes));
}

}  // namespace

TEST_CASE("an index round-trips every attribute", "[index]") {
  auto idx = LayerIndex::parse(sample_index());
  REQUIRE(idx.ok());
  const LayerIndex& x = **idx;
  REQUIRE(x.entry_count() == 9);
  auto etc = x.lookup(0, "etc");
  REQUIRE(etc);
  CHECK(x.is_dir(*etc));
  auto passwd = x.lookup(*etc, "passwd");
  REQUIRE(passwd);
  CHECK(x.entry(*passwd).size == 10000);
  CHECK(x.entry(*passwd).nlink == 2);
  CHECK(x.entry(*passwd).uid == 1000);
  CHECK(x.entry(*passwd).mtime_sec == 1700000000);
  CHECK(x.entry(*passwd).mtime_nsec == 123456789u);
  CHECK(x.entry(*passwd).ctime_sec == 1700000001);
  CHECK(x.entry(*passwd).ctime_nsec == 1u);
  CHECK(x.chunks(*passwd).size() == 3);
  CHECK(x.object_path(x.chunks(*passwd)[0].object) == "objs/passwd");
  auto bin = x.lookup(0, "bin");
  REQUIRE(bin);
  auto hl = x.lookup(*bin, "passwd-link");
  REQUIRE(hl);
  CHECK(x.entry(*hl).primary == *passwd);
  CHECK(x.chunks(*hl).size() == 3);
  auto sh = x.lookup(*bin, "sh");
  REQUIRE(sh);
  CHECK(x.target(*sh) == "busybox");
  auto su = x.lookup(*bin, "su");
  REQUIRE(su);
  CHECK(x.entry(*su).mode == (S_IFREG | 04755));
  auto dev = x.lookup(0, "null");
  REQUIRE(dev);
  CHECK(x.entry(*dev).rdev == makedev(1, 3));
  auto xs = x.xattrs(*etc);
  REQUIRE(xs.size() == 2);
  CHECK(x.xattr_name(xs[0]) == "trusted.overlay.opaque");
  CHECK(x.xattr_value(xs[0]) == "y");
  CHECK(x.xattr_value(xs[1]) == std::string("\0\1\2", 3));
  CHECK_FALSE(x.lookup(0, "missing"));
  CHECK_FALSE(x.lookup(*passwd, "x"));  // not a directory
  CHECK(x.path_of(*hl) == "bin/passwd-link");
  CHECK(x.content_bytes() == 10000);  // the hard-link group counts once
}

TEST_CASE("serialising the same tree twice gives identical bytes", "[index]") {
  CHECK(sample_index() == sample_index());
}

TEST_CASE("children are found by binary search in large directories", "[index]") {
  IndexBuilder b;
  uint32_t root = add_root(b);
  for (int i = 0; i < 10000; ++i) {
    BuildEntry e;
    e.name = fmt::format("f{}", i * 7919 % 10007);
    e.parent = root;
    e.st = make_stat(S_IFREG | 0644, 0);
    b.add(e);
  }
  auto bytes = b.serialize();
  REQUIRE(bytes.ok());
  auto idx = LayerIndex::parse(*bytes);
  REQUIRE(idx.ok());
  for (int i = 0; i < 10000; ++i) CHECK((*idx)->lookup(0, fmt::format("f{}", i * 7919 % 10007)));
  CHECK_FALSE((*idx)->lookup(0, "f10008"));
}

TEST_CASE("the builder refuses duplicate names and misordered parents", "[index]") {
  IndexBuilder b;
  uint32_t root = add_root(b);
  add_dir(b, root, "a");
  add_dir(b, root, "a");
  CHECK(b.serialize().code() == EINVAL);

  IndexBuilder c;
  add_root(c);
  BuildEntry e;
  e.name = "x";
  e.parent = 5;
  e.st = make_stat(S_IFREG | 0644);
  c.add(e);
  CHECK(c.serialize().code() == EINVAL);
}

TEST_CASE("every kind of corrupt index is rejected with a message", "[index]") {
  const std::string good = sample_index();
  const IndexHeader h = header_of(good);
  auto rejects = [](const std::string& bytes, const std::string& needle) {
    auto r = LayerIndex::parse(bytes);
    REQUIRE_FALSE(r.ok());
    INFO(r.error().message);
    CHECK(r.error().message.find(needle) != std::string::npos);
  };

  SECTION("empty and short files") {
    rejects("", "shorter than a header");
    rejects(good.substr(0, 100), "shorter than a header");
  }
  SECTION("bad magic") {
    std::string b = good;
    b[0] = 'X';
    rejects(b, "bad magic");
  }
  SECTION("unknown version") {
    IndexHeader x = h;
    x.version = 99;
    auto r = LayerIndex::parse(reseal(good, x));
    REQUIRE_FALSE(r.ok());
    CHECK(r.code() == ENOTSUP);
  }
  SECTION("header checksum") {
    std::string b = good;
    b[offsetof(IndexHeader, chunk_size)] ^= 1;
    rejects(b, "header checksum");
  }
  SECTION("body checksum: every flipped byte of the body is caught") {
    for (size_t i = sizeof(IndexHeader); i < good.size(); i += 7) {
      std::string b = good;
      b[i] ^= 0x20;
      CHECK_FALSE(LayerIndex::parse(b).ok());
    }
  }
  SECTION("truncated and extended files") {
    rejects(good.substr(0, good.size() - 1), "header says");
    rejects(good + "x", "header says");
  }
  SECTION("tables out of bounds") {
    IndexHeader x = h;
    x.entry_count = 1ull << 40;
    rejects(reseal(good, x), "entry table out of bounds");
    x = h;
    x.chunk_offset = good.size() - 8;
    rejects(reseal(good, x), "chunk table out of bounds");
    x = h;
    x.strings_size = good.size();
    rejects(reseal(good, x), "string area out of bounds");
    x = h;
    x.chunk_size = 12345;
    rejects(reseal(good, x), "bad chunk size");
  }
  auto entry_off = [&](uint32_t i) { return h.entry_offset + i * sizeof(EntryRecord); };
  auto idx = LayerIndex::parse(good);
  REQUIRE(idx.ok());
  uint32_t etc = *(*idx)->lookup(0, "etc");
  uint32_t passwd = *(*idx)->lookup(etc, "passwd");
  SECTION("names with a slash, dot-dot, or out of bounds") {
    // "passwd" is the only child of "etc", so renaming it cannot trip the sort check first.
    std::string b = good;
    uint64_t name_off = (*idx)->entry(passwd).name_off + h.strings_offset;
    b[name_off + 2] = '/';
    rejects(reseal(b, h), "bad name");
    b = good;
    b.replace(name_off, 2, "..");
    rejects(patch<EntryRecord>(b, entry_off(passwd), [](EntryRecord& e) { e.name_len = 2; }), "bad name");
    rejects(patch<EntryRecord>(good, entry_off(passwd), [](EntryRecord& e) { e.name_len = 0; }), "bad name");
    rejects(patch<EntryRecord>(good, entry_off(etc), [](EntryRecord& e) { e.name_off = 1ull << 40; }),
            "name out of bounds");
  }
  SECTION("cycles and wrong parents") {
    rejects(patch<EntryRecord>(good, entry_off(etc), [&](EntryRecord& e) { e.parent = etc; }), "before its parent");
    rejects(patch<EntryRecord>(good, entry_off(passwd), [&](EntryRecord& e) { e.parent = 0; }), "not among its parent");
    rejects(patch<EntryRecord>(good, entry_off(0), [&](EntryRecord& e) { e.mode = S_IFREG | 0644; }), "root directory");
  }
  SECTION("bad types, chunk tables and links") {
    rejects(patch<EntryRecord>(good, entry_off(passwd), [](EntryRecord& e) { e.mode = 0170000 | 0644; }), "bad type");
    rejects(patch<EntryRecord>(good, entry_off(passwd), [](EntryRecord& e) { e.size = 20000; }), "chunks for");
    rejects(patch<EntryRecord>(good, entry_off(passwd), [](EntryRecord& e) { e.mtime_nsec = 1000000000u; }),
            "bad time");
    rejects(patch<EntryRecord>(good, entry_off(passwd), [](EntryRecord& e) { e.chunk_first = 1ull << 50; }),
            "chunks out of range");
    rejects(patch<EntryRecord>(good, entry_off(passwd), [](EntryRecord& e) { e.primary = 1u << 30; }), "hard-link");
    rejects(patch<EntryRecord>(good, entry_off(passwd), [&](EntryRecord& e) { e.primary = etc; }), "hard-link");
    rejects(patch<ChunkRecord>(good, h.chunk_offset, [](ChunkRecord& c) { c.object = 77; }), "missing object");
    rejects(patch<ChunkRecord>(good, h.chunk_offset, [](ChunkRecord& c) { c.flags = 0x80; }), "unknown flags");
    rejects(patch<ChunkRecord>(good, h.chunk_offset, [](ChunkRecord& c) { c.raw_len = c.stored_len = 1; }),
            "bad length");
    rejects(patch<XattrRecord>(good, h.xattr_offset, [](XattrRecord& x) { x.value_off = 1ull << 40; }),
            "xattr out of bounds");
  }
  SECTION("object paths that leave the store") {
    std::string b = good;
    uint64_t off = b.find("objs/passwd", h.strings_offset);
    REQUIRE(off != std::string::npos);
    b.replace(off, 11, "../../etc/x");
    rejects(reseal(b, h), "bad path");
  }
}
