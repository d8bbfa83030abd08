#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "common/hash.h"
#include "common/log.h"
#include "common/posix_file.h"
#include "format/catalog.h"
#include "format/layer_index.h"
#include "store/catalog_writer.h"
#include "store/chunking.h"
#include "store/docker_meta.h"
#include "store/indexer.h"
#include "store/layout.h"
#include "store/publish_blob.h"
#include "store/trace.h"
#include "test_util.h"

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

TEST_CASE("link ids use docker's alphabet and length", "[store]") {
  std::set<std::string> seen;
  std::set<char> chars;
  for (int i = 0; i < 200; ++i) {
    std::string l = store::random_link_id();
    CHECK(l.size() == 26);
    CHECK(l.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") == std::string::npos);
    chars.insert(l.begin(), l.end());
    seen.insert(l);
  }
  CHECK(seen.size() == 200);
  CHECK(chars.size() == 32);  // every character of the alphabet turns up (5200 draws)
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

TEST_CASE("tags and image ids docker would refuse are left out of a store's metadata, one warning each", "[store]") {
  // An image whose config and layerdb entry are right, in memory.
  const std::string cid(64, 'c');
  const std::string diff = "sha256:" + std::string(64, 'd');
  const std::string config = R"({"rootfs":{"type":"layers","diff_ids":[")" + diff + R"("]}})";
  const std::string id = store::sha256_digest(config);
  std::map<std::string, std::string> files = {
      {"image/overlay2/imagedb/content/sha256/" + id.substr(7), config},
      {"image/overlay2/layerdb/sha256/" + diff.substr(7) + "/cache-id", cid},
  };
  nlohmann::json repos;
  auto& r = repos["Repositories"];
  r["good"]["good:1"] = id;
  r["good"]["good@sha256:" + std::string(64, 'e')] = id;  // a digest reference: not a tag
  r["x"]["x:1\nextrafs_injected_total 1"] = id;           // a forged metric line
  r["app"]["app:1\x1b[2J\rforged row"] = id;              // terminal escapes
  r["Upper"]["Upper:1"] = id;                             // upper case name
  r["app"]["app:" + std::string(129, 't')] = id;          // tag too long
  r["app"]["app:2"] = "sha256:../../etc/passwd";          // not an image id
  r["app"]["other:1"] = id;                               // under another repository
  r["evil\nextrafs_injected_total 2"] = "not an object";  // a repository that is no object
  files["image/overlay2/repositories.json"] = repos.dump();
  store::MetaFiles mf;
  mf.read = [&](const std::string& rel, uint64_t) -> Result<std::string> {
    auto it = files.find(rel);
    if (it == files.end()) return make_error(ENOENT, rel + ": no such file");
    return it->second;
  };
  mf.exists = [&](const std::string& rel) { return files.count(rel) > 0; };

  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(64);
  auto previous = spdlog::default_logger();
  auto logger = std::make_shared<spdlog::logger>("meta-test", sink);
  logger->set_formatter(make_log_formatter("%l %*"));
  spdlog::set_default_logger(logger);
  auto meta = store::DockerMeta::load(mf, "STORE");
  auto again = store::DockerMeta::load(mf, "STORE");  // said once per process, not per load
  auto lines = sink->last_formatted();
  spdlog::set_default_logger(previous);

  REQUIRE(meta.ok());
  CHECK(meta->refs() == std::map<std::string, std::string>{{"good:1", id}});
  REQUIRE(again.ok());
  CHECK(again->refs() == meta->refs());
  auto img = meta->image("good:1");
  REQUIRE(img.ok());
  REQUIRE(img->layers.size() == 1);
  CHECK(img->layers[0].cache_id == cid);
  CHECK(img->tags == std::vector<std::string>{"good:1"});
  // One line each for the 7 refused entries, all escaped, each naming the file.
  CHECK(lines.size() == 7);
  for (const auto& l : lines) {
    INFO(l);
    CHECK(l.rfind("warning STORE/image/overlay2/repositories.json: skipping ", 0) == 0);
    CHECK(l.find('\n') == l.size() - 1);
    CHECK(l.find('\x1b') == std::string::npos);
    CHECK(l.find('\r') == std::string::npos);
  }
}

namespace {
// Reads every chunk of every file of the image/ index `digest` from the store's files and checks
// it against its digest; returns the object paths the index names.
std::vector<std::string> check_image_index(const std::string& store, const Digest128& digest) {
  auto bytes = read_file(store + "/" + format::image_index_path(digest));
  REQUIRE(bytes.ok());
  auto idx = format::LayerIndex::parse(std::move(bytes).value());
  REQUIRE(idx.ok());
  std::vector<std::string> objects;
  for (const auto& c : (*idx)->all_chunks()) {
    if (c.flags & format::kChunkZero) continue;
    std::string object((*idx)->object_path(c.object));
    objects.push_back(object);
    auto data = read_file(store + "/" + object);
    REQUIRE(data.ok());
    REQUIRE(data->size() >= c.offset + c.raw_len);
    Digest128 got = xxh3_128(data->data() + c.offset, c.raw_len);
    CHECK(std::memcmp(got.bytes.data(), c.digest, 16) == 0);
  }
  return objects;
}
}  // namespace

TEST_CASE("image/ files rewritten in place leave an earlier image index readable", "[store]") {
  char tmpl[] = "/tmp/extrafs-objects-test.XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string store = tmpl;
  const std::string repo = store + "/image/overlay2/repositories.json";
  REQUIRE(make_dirs(store + "/image/overlay2/imagedb").ok());
  REQUIRE(write_file_atomic(repo, R"({"Repositories":{"a":{"a:1":"sha256:11"}}})").ok());
  REQUIRE(write_file_atomic(store + "/image/overlay2/imagedb/config", std::string(300000, 'c') + "end").ok());

  store::StoreCatalog sc;
  auto first = store::commit_store_catalog(store, &sc);
  REQUIRE(first.ok());
  CHECK(first->catalog_written);
  REQUIRE(sc.catalog.image_index);
  const Digest128 old_index = *sc.catalog.image_index;
  auto objects = check_image_index(store, old_index);
  REQUIRE(objects.size() >= 2);
  for (const auto& o : objects) CHECK(o.rfind("extrafs/objects/", 0) == 0);

  // A publisher rewrites repositories.json in place (same path, other bytes, other size).
  {
    Fd fd(::open(repo.c_str(), O_WRONLY | O_TRUNC));
    REQUIRE(fd.valid());
    std::string text = R"({"Repositories":{"a":{"a:1":"sha256:11"},"b":{"b:2":"sha256:22"}}})";
    REQUIRE(write_all(fd.get(), text.data(), text.size()) == 0);
  }
  auto second = store::commit_store_catalog(store, &sc);
  REQUIRE(second.ok());
  CHECK(second->image_indexed);
  CHECK_FALSE(*sc.catalog.image_index == old_index);
  check_image_index(store, old_index);  // what a host on the old catalog reads is unchanged
  check_image_index(store, *sc.catalog.image_index);

  // Nothing changed: no new index, no new object, no new catalog.
  auto third = store::commit_store_catalog(store, &sc);
  REQUIRE(third.ok());
  CHECK_FALSE(third->image_indexed);
  CHECK_FALSE(third->catalog_written);
  std::filesystem::remove_all(store);
}

TEST_CASE("each new catalog is also written under a generation never used before", "[store]") {
  char tmpl[] = "/tmp/extrafs-generation-test.XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string store = tmpl;
  const std::string repo = store + "/image/overlay2/repositories.json";
  REQUIRE(make_dirs(store + "/image/overlay2").ok());
  REQUIRE(write_file_atomic(repo, "{}").ok());
  auto current = [&] { return *read_file(store + "/" + format::kCatalogPath); };

  store::StoreCatalog sc;
  REQUIRE(store::commit_store_catalog(store, &sc).ok());
  CHECK(sc.catalog.generation == 1);
  CHECK(*read_file(store + "/extrafs/catalog.d/1") == current());
  // Unchanged: no new generation.
  REQUIRE(store::commit_store_catalog(store, &sc).ok());
  CHECK(sc.catalog.generation == 1);
  CHECK_FALSE(path_exists(store + "/extrafs/catalog.d/2"));

  // A publish killed after writing generation 2 but before the catalog: 2 stays as it was.
  REQUIRE(write_file_atomic(store + "/extrafs/catalog.d/2", "left by a killed publish").ok());
  auto reread = store::load_store_catalog(store);
  REQUIRE(reread.ok());
  CHECK(reread->catalog.generation == 1);
  REQUIRE(write_file_atomic(repo, R"({"Repositories":{}})").ok());
  auto commit = store::commit_store_catalog(store, &*reread);
  REQUIRE(commit.ok());
  CHECK(commit->catalog_written);
  CHECK(reread->catalog.generation == 3);
  CHECK(*read_file(store + "/extrafs/catalog.d/2") == "left by a killed publish");
  CHECK(*read_file(store + "/extrafs/catalog.d/3") == current());
  auto parsed = format::Catalog::parse(current());
  REQUIRE(parsed.ok());
  CHECK(parsed->generation == 3);
  std::filesystem::remove_all(store);
}

TEST_CASE("the first catalog of a store gets a store id that every later catalog keeps", "[store]") {
  extrafs::testing::TempDir t;
  const std::string store = t.path;
  const std::string repo = store + "/image/overlay2/repositories.json";
  REQUIRE(make_dirs(store + "/image/overlay2").ok());
  REQUIRE(write_file_atomic(repo, "{}").ok());
  store::StoreCatalog sc;
  REQUIRE(store::commit_store_catalog(store, &sc).ok());
  const std::string id = sc.catalog.store_id;
  CHECK(format::is_store_id(id));
  CHECK(format::Catalog::parse(*read_file(store + "/extrafs/catalog.d/1"))->store_id == id);
  REQUIRE(write_file_atomic(repo, R"({"Repositories":{}})").ok());
  auto reread = store::load_store_catalog(store);
  REQUIRE(reread.ok());
  REQUIRE(store::commit_store_catalog(store, &*reread).ok());
  CHECK(reread->catalog.generation == 2);
  CHECK(format::Catalog::parse(*read_file(store + "/extrafs/catalog"))->store_id == id);
  // A catalog written before store ids gets one at its next write; a new store another one.
  store::StoreCatalog legacy = *reread;
  legacy.catalog.store_id.clear();
  legacy.text = legacy.catalog.serialize();
  REQUIRE(store::commit_store_catalog(store, &legacy).ok());
  CHECK(format::is_store_id(legacy.catalog.store_id));
  CHECK(legacy.catalog.store_id != id);
  CHECK(store::new_store_id() != store::new_store_id());
}

TEST_CASE("publish --order records the bytes its traced files take at the start of the blob", "[store]") {
  char tmpl[] = "/tmp/extrafs-order-test.XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  REQUIRE(make_dirs(dir + "/tree/sub").ok());
  // Random bytes: stored as they are, so the sizes below are the stored sizes.
  auto put = [&](const std::string& rel, size_t n, uint32_t seed) {
    REQUIRE(write_file_atomic(dir + "/tree/" + rel, extrafs::testing::pseudo_random(n, seed)).ok());
  };
  put("a", 5000, 1);
  put("sub/b", 3000, 2);
  put("c", 7000, 3);
  REQUIRE(::link((dir + "/tree/sub/b").c_str(), (dir + "/tree/b-again").c_str()) == 0);
  auto prefix_for = [&](std::vector<std::string> first) {
    const std::string blob_path = dir + "/layer.blob";
    ::unlink(blob_path.c_str());
    auto blob = store::BlobWriter::create(blob_path, format::layer_blob_path("L"));
    REQUIRE(blob.ok());
    store::WalkOptions opts;
    opts.first = first;
    auto bytes = store::index_directory(dir + "/tree", **blob, opts);
    REQUIRE(bytes.ok());
    auto idx = format::LayerIndex::parse(*bytes);
    REQUIRE(idx.ok());
    return store::ordered_prefix(**idx, first, (*blob)->object_path());
  };
  CHECK(prefix_for({}) == 0);
  CHECK(prefix_for({"sub/b", "a"}) == 3000 + 5000);
  // Names that are no regular file of the layer (missing, a directory) are packed nowhere and
  // counted nowhere; a hard link to a traced file adds nothing.
  CHECK(prefix_for({"missing", "sub", "c", "/x/../a", "b-again", "sub/b"}) == 7000 + 3000);
  // A traced file that the walk did not pack first (here: not named first) is not in the prefix.
  CHECK(prefix_for({"nope"}) == 0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("chunk objects are stored once, lz4 where it pays, in place only once finished, and taken as they are",
          "[store]") {
  testing::TempDir t;
  const std::string s = t.path + "/s";
  REQUIRE(make_dirs(s).ok());
  const std::string text(1 << 20, 'a');                          // lz4 makes it much smaller
  const std::string noise = testing::pseudo_random(1 << 20, 7);  // lz4 cannot
  format::IndexBuilder b;
  auto pack = [&](store::ObjectSink& sink, const std::string& raw) {
    format::ChunkRecord rec{};
    REQUIRE_FALSE(store::describe_chunk(raw, &rec));
    REQUIRE(sink.pack(b, raw, &rec).ok());
    return rec;
  };
  auto digest_of = [](const format::ChunkRecord& rec) {
    Digest128 d;
    std::memcpy(d.bytes.data(), rec.digest, 16);
    return d;
  };
  {
    store::ObjectSink sink(s, /*compress=*/true);
    const auto a = pack(sink, text), n = pack(sink, noise), again = pack(sink, text);
    CHECK((a.flags & format::kChunkLz4) != 0);
    CHECK(a.stored_len < (64u << 10));
    CHECK(n.flags == 0);
    CHECK(n.stored_len == noise.size());
    CHECK(again.stored_len == a.stored_len);
    CHECK(again.object == a.object);
    CHECK(sink.objects_written() == 2);  // the same chunk twice is one object
    const std::string obj = store::StoreLayout(s).object(digest_of(a));
    CHECK_FALSE(path_exists(obj));  // nothing named before finish()
    REQUIRE(sink.finish().ok());
    CHECK(read_file(obj)->size() == a.stored_len);
    auto got = read_file(store::StoreLayout(s).object(digest_of(n)));
    REQUIRE(got.ok());
    CHECK(*got == noise);
  }
  {
    // A later sink (another publish, or the image/ tree, raw) takes the objects as they are.
    store::ObjectSink raw_sink(s, /*compress=*/false);
    const auto a = pack(raw_sink, text);
    CHECK((a.flags & format::kChunkLz4) != 0);
    CHECK(raw_sink.objects_written() == 0);
  }
  {
    // An object larger than its chunk is a damaged store, never taken.
    const std::string small(4096, 'z');
    format::ChunkRecord rec{};
    REQUIRE_FALSE(store::describe_chunk(small, &rec));
    REQUIRE(write_file_atomic(store::StoreLayout(s).object(digest_of(rec)), small + "more").ok());
    store::ObjectSink sink(s, true);
    auto st = sink.pack(b, small, &rec);
    CHECK(st.code() == EBADMSG);
  }
  {
    // Objects of a sink never finished (a failed publish) are not left behind.
    store::ObjectSink sink(s, true);
    pack(sink, testing::pseudo_random(1000, 9));
  }
  auto names = list_dir(store::StoreLayout(s).objects_dir());
  REQUIRE(names.ok());
  CHECK(names->size() == 3);
  for (const auto& n : *names) CHECK(n.find(".tmp.") == std::string::npos);
}
