// Unit tests of `extrafs publish`'s building blocks: the layer tar -> index conversion (tars made
// in memory with libarchive's writer) and the blob packing.
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <lz4.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/hash.h"
#include "common/posix_file.h"
#include "format/layer_index.h"
#include "store/layout.h"
#include "store/publish.h"
#include "store/publish_blob.h"
#include "store/publish_tar.h"
#include "store/trace.h"

using namespace extrafs;

namespace {

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/extrafs-publish-test.XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

struct EntryOpts {
  mode_t mode = 0644;
  uid_t uid = 0;
  gid_t gid = 0;
  time_t mtime = 1700000000;
  long mtime_ns = 123456789;
  std::vector<std::pair<std::string, std::string>> xattrs;
};

EntryOpts opt(mode_t mode, uid_t uid = 0) {
  EntryOpts o;
  o.mode = mode;
  o.uid = uid;
  return o;
}

// Builds a pax tar in memory.
class TarWriter {
 public:
  TarWriter() : a_(archive_write_new()) {
    archive_write_set_format_pax_restricted(a_);
    buf_.resize(64u << 20);
    archive_write_open_memory(a_, buf_.data(), buf_.size(), &used_);
  }
  ~TarWriter() {
    if (a_) archive_write_free(a_);
  }
  void add(const std::string& path, mode_t type, const std::string& data = "", EntryOpts o = EntryOpts{},
           const std::string& link = "", dev_t rdev = 0) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, path.c_str());
    archive_entry_set_filetype(e, type);
    archive_entry_set_perm(e, o.mode);
    archive_entry_set_uid(e, o.uid);
    archive_entry_set_gid(e, o.gid);
    archive_entry_set_mtime(e, o.mtime, o.mtime_ns);
    for (const auto& [k, v] : o.xattrs) archive_entry_xattr_add_entry(e, k.c_str(), v.data(), v.size());
    if (type == AE_IFLNK) archive_entry_set_symlink(e, link.c_str());
    if (type == AE_IFCHR || type == AE_IFBLK) archive_entry_set_rdev(e, rdev);
    archive_entry_set_size(e, type == AE_IFREG ? static_cast<la_int64_t>(data.size()) : 0);
    REQUIRE(archive_write_header(a_, e) == ARCHIVE_OK);
    if (type == AE_IFREG && !data.empty())
      REQUIRE(archive_write_data(a_, data.data(), data.size()) == static_cast<la_ssize_t>(data.size()));
    archive_entry_free(e);
  }
  void hardlink(const std::string& path, const std::string& target) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, path.c_str());
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_hardlink(e, target.c_str());
    archive_entry_set_size(e, 0);
    REQUIRE(archive_write_header(a_, e) == ARCHIVE_OK);
    archive_entry_free(e);
  }
  std::string finish() {
    archive_write_close(a_);
    archive_write_free(a_);
    a_ = nullptr;
    return buf_.substr(0, used_);
  }

 private:
  archive* a_;
  std::string buf_;
  size_t used_ = 0;
};

struct Converted {
  std::shared_ptr<const format::LayerIndex> index;
  std::string blob;
  store::LayerTarResult result;
};

Result<Converted> convert(const std::string& tar, const std::string& dir, std::vector<std::string> first = {}) {
  archive* a = archive_read_new();
  archive_read_support_format_tar(a);
  REQUIRE(archive_read_open_memory(a, tar.data(), tar.size()) == ARCHIVE_OK);
  const std::string blob_path = dir + "/layer.blob";
  std::filesystem::remove(blob_path);
  auto blob = store::BlobWriter::create(blob_path, "extrafs/layers/x.blob");
  REQUIRE(blob.ok());
  store::LayerTarOptions opts;
  opts.first = std::move(first);
  opts.scratch_dir = dir;
  auto res = store::convert_layer_tar(a, **blob, opts);
  archive_read_free(a);
  if (!res.ok()) return res.error();
  REQUIRE((*blob)->finish().ok());
  auto idx = format::LayerIndex::parse(res->index);
  REQUIRE(idx.ok());
  Converted c;
  c.index = *idx;
  c.result = std::move(res).value();
  std::ifstream in(blob_path, std::ios::binary);
  c.blob.assign(std::istreambuf_iterator<char>(in), {});
  return c;
}

uint32_t path_entry(const format::LayerIndex& idx, const std::string& path) {
  uint32_t cur = 0;
  size_t start = 0;
  while (start < path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    auto next = idx.lookup(cur, path.substr(start, end - start));
    REQUIRE(next.has_value());
    cur = *next;
    start = end + 1;
  }
  return cur;
}

std::string xattr(const format::LayerIndex& idx, uint32_t e, const std::string& name) {
  for (const auto& x : idx.xattrs(e))
    if (idx.xattr_name(x) == name) return std::string(idx.xattr_value(x));
  return "<none>";
}

std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::string read_chunk(const Converted& c, const format::ChunkRecord& r) {
  std::string stored = c.blob.substr(r.offset, r.stored_len);
  if (!(r.flags & format::kChunkLz4)) return stored;
  std::string raw(r.raw_len, '\0');
  int n = LZ4_decompress_safe(stored.data(), raw.data(), static_cast<int>(stored.size()), static_cast<int>(raw.size()));
  REQUIRE(n == static_cast<int>(r.raw_len));
  return raw;
}

}  // namespace

TEST_CASE("whiteouts become 0/0 character devices and are not entries of their own", "[publish]") {
  TempDir t;
  TarWriter w;
  w.add("opt/", AE_IFDIR, "", opt(0755));
  EntryOpts o;
  o.uid = 7;
  o.gid = 8;
  o.mtime = 1600000000;
  w.add("opt/.wh.gone", AE_IFREG, "", o);
  auto c = convert(w.finish(), t.path);
  REQUIRE(c.ok());
  const auto& idx = *c->index;
  uint32_t e = path_entry(idx, "opt/gone");
  const auto& r = idx.entry(e);
  CHECK(S_ISCHR(r.mode));
  CHECK((r.mode & 07777) == 0);
  CHECK(r.rdev == makedev(0, 0));
  CHECK(r.uid == 7);
  CHECK(r.gid == 8);
  CHECK(r.mtime_sec == 1600000000);
  CHECK_FALSE(idx.lookup(path_entry(idx, "opt"), ".wh.gone").has_value());
}

TEST_CASE("an opaque marker sets trusted.overlay.opaque on its directory, before or after the directory's entry",
          "[publish]") {
  TempDir t;
  TarWriter w;
  w.add("a/.wh..wh..opq", AE_IFREG);  // before the directory's own header
  w.add("a/", AE_IFDIR, "", opt(0700, 5));
  w.add("a/kept", AE_IFREG, "x");
  w.add("b/", AE_IFDIR, "", opt(0755));
  w.add("b/.wh..wh..opq", AE_IFREG);  // after it
  w.add("c/", AE_IFDIR);
  auto c = convert(w.finish(), t.path);
  REQUIRE(c.ok());
  const auto& idx = *c->index;
  uint32_t a = path_entry(idx, "a"), b = path_entry(idx, "b"), cc = path_entry(idx, "c");
  CHECK(xattr(idx, a, "trusted.overlay.opaque") == "y");
  CHECK(xattr(idx, b, "trusted.overlay.opaque") == "y");
  CHECK(xattr(idx, cc, "trusted.overlay.opaque") == "<none>");
  CHECK((idx.entry(a).mode & 07777) == 0700);  // the header's attributes still apply
  CHECK(idx.entry(a).uid == 5);
  CHECK(idx.lookup(a, "kept").has_value());
  CHECK_FALSE(idx.lookup(a, ".wh..wh..opq").has_value());
  CHECK(idx.entry(a).child_count == 1);
}

TEST_CASE("hard-link entries become one hard-link group sharing content and attributes", "[publish]") {
  TempDir t;
  TarWriter w;
  w.add("etc/", AE_IFDIR);
  w.add("etc/a", AE_IFREG, "shared content", opt(04755, 3));
  w.hardlink("etc/b", "etc/a");
  w.hardlink("z", "etc/b");  // a link to a link
  auto c = convert(w.finish(), t.path);
  REQUIRE(c.ok());
  const auto& idx = *c->index;
  uint32_t a = path_entry(idx, "etc/a"), b = path_entry(idx, "etc/b"), z = path_entry(idx, "z");
  CHECK(idx.entry(a).primary == idx.entry(b).primary);
  CHECK(idx.entry(z).primary == idx.entry(a).primary);
  CHECK(idx.attr_entry(b).nlink == 3);
  CHECK(idx.attr_entry(z).size == 14);
  CHECK((idx.attr_entry(b).mode & 07777) == 04755);
  CHECK(idx.attr_entry(z).uid == 3);
  CHECK(idx.chunks(b).size() == 1);
  CHECK(idx.content_bytes() == 14);
  CHECK(c->result.docker_size == 14);  // counted once, as docker's layer size does
}

TEST_CASE("a hard link to an entry the layer does not have is rejected", "[publish]") {
  TempDir t;
  TarWriter w;
  w.hardlink("b", "missing");
  auto c = convert(w.finish(), t.path);
  REQUIRE_FALSE(c.ok());
  CHECK(c.code() == EBADMSG);
  CHECK(c.error().message.find("missing") != std::string::npos);
}

TEST_CASE("pax xattrs, modes, owners, times, devices and symlinks are kept", "[publish]") {
  TempDir t;
  TarWriter w;
  std::string cap("\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 20);
  EntryOpts o;
  o.mode = 02711;
  o.uid = 1000;
  o.gid = 100;
  o.xattrs = {{"security.capability", cap}, {"user.empty", ""}, {"user.note", "hello"}};
  w.add("bin/ping", AE_IFREG, "elf", o);
  w.add("tmp/", AE_IFDIR, "", opt(01777));
  w.add("dev/null", AE_IFCHR, "", opt(0666), "", makedev(1, 3));
  w.add("dev/sda", AE_IFBLK, "", opt(0660), "", makedev(8, 0));
  w.add("fifo", AE_IFIFO);
  w.add("link", AE_IFLNK, "", opt(0777), "bin/ping");
  auto c = convert(w.finish(), t.path);
  REQUIRE(c.ok());
  const auto& idx = *c->index;
  uint32_t p = path_entry(idx, "bin/ping");
  CHECK(xattr(idx, p, "security.capability") == cap);
  CHECK(xattr(idx, p, "user.empty").empty());
  CHECK(xattr(idx, p, "user.note") == "hello");
  CHECK(idx.entry(p).mode == (S_IFREG | 02711));
  CHECK(idx.entry(p).uid == 1000);
  CHECK(idx.entry(p).gid == 100);
  CHECK(idx.entry(p).mtime_sec == 1700000000);
  CHECK(idx.entry(p).mtime_nsec == 123456789);
  CHECK(idx.entry(path_entry(idx, "tmp")).mode == (S_IFDIR | 01777));
  CHECK(idx.entry(path_entry(idx, "dev/null")).rdev == makedev(1, 3));
  CHECK(S_ISBLK(idx.entry(path_entry(idx, "dev/sda")).mode));
  CHECK(idx.entry(path_entry(idx, "dev/sda")).rdev == makedev(8, 0));
  CHECK(S_ISFIFO(idx.entry(path_entry(idx, "fifo")).mode));
  CHECK(idx.target(path_entry(idx, "link")) == "bin/ping");
  CHECK(idx.entry(path_entry(idx, "link")).size == 8);
}

TEST_CASE("implicit parent directories are 0755 root:root at the epoch", "[publish]") {
  TempDir t;
  TarWriter w;
  w.add("./imp/deep/f", AE_IFREG, "f");
  auto c = convert(w.finish(), t.path);
  REQUIRE(c.ok());
  const auto& idx = *c->index;
  for (std::string d : {"", "imp", "imp/deep"}) {
    const auto& r = idx.entry(path_entry(idx, d));
    CHECK(r.mode == (S_IFDIR | 0755));
    CHECK(r.uid == 0);
    CHECK(r.gid == 0);
    CHECK(r.mtime_sec == 0);
    CHECK(r.mtime_nsec == 0);
  }
  CHECK(idx.entry(path_entry(idx, "imp")).nlink == 3);
}

TEST_CASE("paths that climb out of the layer are rejected", "[publish]") {
  std::string out;
  CHECK_FALSE(store::normalize_tar_path("../etc/passwd", &out));
  CHECK_FALSE(store::normalize_tar_path("a/../../b", &out));
  REQUIRE(store::normalize_tar_path("./a//b/", &out));
  CHECK(out == "a/b");
  REQUIRE(store::normalize_tar_path("/", &out));
  CHECK(out.empty());
}

TEST_CASE("chunks are lz4-compressed only when that makes them smaller; zero chunks store nothing", "[publish]") {
  TempDir t;
  const uint32_t cs = format::kDefaultChunkSize;
  std::string random = random_bytes(cs, 1);
  std::string zeros(cs, '\0');
  std::string text;
  while (text.size() < cs / 2) text += "the same line, over and over again\n";
  std::string content = random + zeros + text;  // three chunks, the last one short
  TarWriter w;
  w.add("big", AE_IFREG, content);
  w.add("allzero", AE_IFREG, std::string(100, '\0'));
  auto c = convert(w.finish(), t.path);
  REQUIRE(c.ok());
  const auto& idx = *c->index;
  auto chunks = idx.chunks(path_entry(idx, "big"));
  REQUIRE(chunks.size() == 3);
  CHECK(chunks[0].flags == 0);
  CHECK(chunks[0].stored_len == cs);
  CHECK(chunks[1].flags == format::kChunkZero);
  CHECK(chunks[1].stored_len == 0);
  CHECK(chunks[2].flags == format::kChunkLz4);
  CHECK(chunks[2].stored_len < chunks[2].raw_len / 4);
  CHECK(chunks[2].raw_len == text.size());
  CHECK(idx.object_path(chunks[0].object) == "extrafs/layers/x.blob");
  // The blob holds exactly the stored chunks, back to back, and they read back to the content.
  CHECK(c->blob.size() == chunks[0].stored_len + chunks[2].stored_len);
  CHECK(read_chunk(*c, chunks[0]) == random);
  CHECK(read_chunk(*c, chunks[2]) == text);
  Digest128 d = xxh3_128(text.data(), text.size());
  CHECK(std::memcmp(chunks[2].digest, d.bytes.data(), 16) == 0);
  auto z = idx.chunks(path_entry(idx, "allzero"));
  REQUIRE(z.size() == 1);
  CHECK(z[0].flags == format::kChunkZero);
  CHECK(idx.entry(path_entry(idx, "allzero")).blocks == 0);
  CHECK(idx.entry(path_entry(idx, "big")).blocks == (cs + text.size() + 4095) / 4096 * 8);

  std::string out;
  CHECK_FALSE(store::lz4_if_smaller(random, &out));
  REQUIRE(store::lz4_if_smaller(text, &out));
  CHECK(out.size() < text.size());
}

TEST_CASE("files named first are packed first, in that order; the rest follows intact", "[publish]") {
  TempDir t;
  std::string a = random_bytes(5000, 2), b = random_bytes(7000, 3), big = random_bytes(3u << 20, 4);
  TarWriter w;
  w.add("a", AE_IFREG, a);
  w.add("big", AE_IFREG, big);
  w.add("d/b", AE_IFREG, b);
  auto c = convert(w.finish(), t.path, {"d/b", "nope", "a"});
  REQUIRE(c.ok());
  const auto& idx = *c->index;
  auto cb = idx.chunks(path_entry(idx, "d/b"));
  auto ca = idx.chunks(path_entry(idx, "a"));
  auto cbig = idx.chunks(path_entry(idx, "big"));
  CHECK(cb[0].offset == 0);
  CHECK(ca[0].offset == cb[0].stored_len);
  CHECK(cbig[0].offset == ca[0].offset + ca[0].stored_len);
  CHECK(c->blob.substr(0, 7000) == b);
  CHECK(read_chunk(*c, ca[0]) == a);
  std::string back;
  for (const auto& r : cbig) back += read_chunk(*c, r);
  CHECK(back == big);
}

TEST_CASE("order traces are parsed with their escapes", "[publish]") {
  auto r = store::parse_trace("abc 12 etc/passwd\nabc 13 a\\nb\\\\c\n\nabc 12 etc/passwd\ndef 1 x y\n");
  REQUIRE(r.ok());
  REQUIRE(r->size() == 3);
  CHECK(std::make_pair((*r)[0].cache_id, (*r)[0].path) ==
        std::make_pair(std::string("abc"), std::string("etc/passwd")));
  CHECK((*r)[1].path == "a\nb\\c");
  CHECK((*r)[2].path == "x y");
  CHECK_FALSE(store::parse_trace("garbage\n").ok());
  CHECK_FALSE(store::parse_trace("abc x path\n").ok());
}

TEST_CASE("fresh links and cache-ids look like docker's", "[publish]") {
  std::string l = store::random_link_id(), id = random_cache_id();
  CHECK(l.size() == 26);
  CHECK(l.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") == std::string::npos);
  CHECK(id.size() == 64);
  CHECK(id.find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(l != store::random_link_id());
}
