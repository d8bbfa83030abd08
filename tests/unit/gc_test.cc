// A store that shrinks: which catalogs gc keeps and what they name (the live set), `extrafs rm`
// and `extrafs gc` on stores built on disk (plain Hermes-style trees indexed by `extrafs index`,
// and packed ones published from a data-root of the same shape), and the writers never taking
// back what rm removed.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/posix_file.h"
#include "format/catalog.h"
#include "store/catalog_writer.h"
#include "store/docker_meta.h"
#include "store/gc.h"
#include "store/indexer.h"
#include "store/layout.h"
#include "store/live_set.h"
#include "store/publish.h"
#include "store/remove_images.h"
#include "store/store_lock.h"
#include "test_util.h"

using namespace extrafs;
using extrafs::testing::TempDir;

namespace {

void put(const std::string& path, const std::string& data) {
  REQUIRE(make_dirs(parent_dir(path)).ok());
  REQUIRE(write_file_atomic(path, data).ok());
}

void set_mtime(const std::string& path, int64_t t) {
  struct timespec times[2] = {{0, UTIME_OMIT}, {static_cast<time_t>(t), 0}};
  REQUIRE(::utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW) == 0);
}

// Every file and symlink under `root` (relative path -> content or link target), directories too.
std::map<std::string, std::string> snapshot(const std::string& root) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(root)) {
    const std::string rel = std::filesystem::relative(e.path(), root).string();
    if (e.is_symlink())
      out[rel] = "-> " + std::filesystem::read_symlink(e.path()).string();
    else if (e.is_regular_file())
      out[rel] = *read_file(e.path().string());
    else
      out[rel] = "<dir>";
  }
  return out;
}

// A docker data-root shaped tree (what a Hermes-style store is, copied with cp -a): layers with
// plain diff/ trees, link, lower and l/ symlinks, layerdb entries, image configs and tags.
struct Layer {
  std::string cache_id, diff_id, chain_id, link;
  std::optional<std::string> lower;
};

class Tree {
 public:
  explicit Tree(std::string root) : root_(std::move(root)) {}
  const std::string& root() const { return root_; }

  Layer layer(const Layer* parent, const std::string& name, const std::string& content) {
    Layer l;
    l.cache_id = random_cache_id();
    l.link = store::random_link_id();
    l.diff_id = store::sha256_digest("layer " + name);
    l.chain_id = parent ? store::sha256_digest(parent->chain_id + " " + l.diff_id) : l.diff_id;
    if (parent) l.lower = "l/" + parent->link + (parent->lower ? ":" + *parent->lower : "");
    const std::string ov = root_ + "/overlay2/" + l.cache_id;
    put(ov + "/diff/" + name, content);
    put(ov + "/link", l.link);
    if (l.lower) put(ov + "/lower", *l.lower);
    REQUIRE(make_dirs(root_ + "/overlay2/l").ok());
    REQUIRE(::symlink(("../" + l.cache_id + "/diff").c_str(), (root_ + "/overlay2/l/" + l.link).c_str()) == 0);
    const std::string db = root_ + "/image/overlay2/layerdb/sha256/" + l.chain_id.substr(7);
    put(db + "/cache-id", l.cache_id);
    put(db + "/diff", l.diff_id);
    put(db + "/size", std::to_string(content.size()));
    if (parent) put(db + "/parent", parent->chain_id);
    return l;
  }

  // An image of `layers` (base first) with `tags`; its id.
  std::string image(const std::vector<Layer>& layers, const std::vector<std::string>& tags) {
    nlohmann::json diffs = nlohmann::json::array();
    for (const auto& l : layers) diffs.push_back(l.diff_id);
    nlohmann::json cfg = {{"architecture", "amd64"},
                          {"os", "linux"},
                          {"n", ++images_},
                          {"rootfs", {{"type", "layers"}, {"diff_ids", diffs}}}};
    const std::string text = cfg.dump();
    const std::string id = store::sha256_digest(text);
    put(root_ + "/image/overlay2/imagedb/content/sha256/" + id.substr(7), text);
    for (const auto& t : tags) repos_[t.substr(0, t.rfind(':'))][t] = id;
    put(root_ + "/image/overlay2/repositories.json", nlohmann::json{{"Repositories", repos_}}.dump());
    return id;
  }

 private:
  std::string root_;
  nlohmann::json repos_ = nlohmann::json::object();
  int images_ = 0;
};

// Three images over a shared base: a:1 (base), b:1 (base + B), c:1 (base + C).
struct ThreeImages {
  Layer base, b, c;
  std::string a_id, b_id, c_id;
};
ThreeImages three_images(Tree& t) {
  ThreeImages s;
  s.base = t.layer(nullptr, "base", "the base layer");
  s.b = t.layer(&s.base, "bfile", "only in b");
  s.c = t.layer(&s.base, "cfile", std::string(100000, 'c'));
  s.a_id = t.image({s.base}, {"a:1"});
  s.b_id = t.image({s.base, s.b}, {"b:1"});
  s.c_id = t.image({s.base, s.c}, {"c:1"});
  return s;
}

// The three images as a Hermes-style store in a temporary directory, indexed once.
struct IndexedThree {
  TempDir t;
  Tree tree{t.path + "/s"};
  ThreeImages s = three_images(tree);
  std::string store = tree.root();
  IndexedThree() { REQUIRE(store::index_store(store, nullptr).ok()); }
};

std::set<std::string> catalog_layers(const std::string& store) {
  auto sc = store::load_store_catalog(store);
  REQUIRE(sc.ok());
  std::set<std::string> out;
  for (const auto& l : sc->catalog.layers) out.insert(l.cache_id);
  return out;
}

Result<store::RemoveReport> rm(const std::string& store, std::vector<std::string> images, bool all_untagged = false) {
  store::RemoveRequest req;
  req.store = store;
  req.images = std::move(images);
  req.all_untagged = all_untagged;
  return store::remove_images(req);
}

Result<store::GcReport> gc(const std::string& store, uint64_t grace, bool dry_run = false,
                           std::vector<std::string>* order = nullptr, int64_t now = 0) {
  store::GcRequest req;
  req.store = store;
  req.grace = grace;
  req.dry_run = dry_run;
  req.now = now;
  if (order) req.after_delete = [order](const std::string& rel) { order->push_back(rel); };
  return store::collect_garbage(req);
}

Fd open_dir(const std::string& p) { return Fd(::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)); }

size_t position(const std::vector<std::string>& v, const std::string& x) {
  auto it = std::find(v.begin(), v.end(), x);
  REQUIRE(it != v.end());
  return static_cast<size_t>(it - v.begin());
}

}  // namespace

TEST_CASE("a generation is kept while it was the newest within the grace period", "[gc]") {
  using store::kept_generations;
  CHECK(kept_generations({}, 0, 1000).empty());
  CHECK(kept_generations({{7, 10}}, 0, 1000) == std::vector<uint64_t>{7});
  // 1 was superseded at 100, 2 at 200, 3 is the newest.
  const std::vector<store::GenerationFile> gens = {{3, 200}, {1, 0}, {2, 100}};
  CHECK(kept_generations(gens, 0, 1000) == std::vector<uint64_t>{3});
  CHECK(kept_generations(gens, 799, 1000) == std::vector<uint64_t>{3});
  CHECK(kept_generations(gens, 801, 1000) == std::vector<uint64_t>{2, 3});  // 2 was newest until 200 > 199
  CHECK(kept_generations(gens, 800, 1000) == std::vector<uint64_t>{3});     // superseded exactly at the cutoff
  CHECK(kept_generations(gens, 901, 1000) == std::vector<uint64_t>{1, 2, 3});
  CHECK(kept_generations(gens, UINT64_MAX, 1000) == std::vector<uint64_t>{1, 2, 3});
  // Gaps (older writers removed generations) do not matter: the next one on disk counts.
  CHECK(kept_generations({{10, 50}, {40, 900}}, 200, 1000) == std::vector<uint64_t>{10, 40});
  CHECK(kept_generations({{10, 50}, {40, 700}}, 200, 1000) == std::vector<uint64_t>{40});
  // A generation written later than a newer one (clock steps) is judged by its successor alone.
  CHECK(kept_generations({{1, 990}, {2, 10}}, 100, 1000) == std::vector<uint64_t>{2});
}

TEST_CASE("the live set is what the kept catalogs name; what only older ones name is dropped", "[gc]") {
  IndexedThree x;
  const auto& s = x.s;
  const std::string& store = x.store;
  auto before = store::load_store_catalog(store);
  REQUIRE(before.ok());
  REQUIRE(before->catalog.generation == 1);
  REQUIRE(rm(store, {"c:1"}).ok());
  auto after = store::load_store_catalog(store);
  REQUIRE(after->catalog.generation == 2);
  const int64_t now = 1800000000;
  set_mtime(store + "/extrafs/catalog.d/1", now - 1000);
  set_mtime(store + "/extrafs/catalog.d/2", now - 500);  // generation 1 was the newest until then
  Fd fd = open_dir(store);

  auto g0 = store::compute_live_set(fd.get(), store, 0, now);
  REQUIRE(g0.ok());
  CHECK(g0->generations == std::vector<uint64_t>{2});
  CHECK(g0->layers == std::set<std::string>{s.base.cache_id, s.b.cache_id});
  CHECK(g0->links.count(s.base.link));
  CHECK_FALSE(g0->links.count(s.c.link));
  CHECK(g0->dropped_layers == std::set<std::string>{s.c.cache_id});
  CHECK(g0->image_indexes == std::set<std::string>{after->catalog.image_index->hex()});
  CHECK(g0->dropped_image_indexes == std::set<std::string>{before->catalog.image_index->hex()});
  CHECK(g0->holds("extrafs/catalog"));
  CHECK(g0->holds("extrafs/catalog.d/2"));
  CHECK_FALSE(g0->holds("extrafs/catalog.d/1"));
  CHECK(g0->holds("extrafs/layers/" + s.b.cache_id + ".index"));
  CHECK_FALSE(g0->holds("extrafs/layers/" + s.c.cache_id + ".index"));
  CHECK_FALSE(g0->holds("overlay2/" + s.c.cache_id + "/diff/cfile"));
  CHECK_FALSE(g0->holds("overlay2/l/" + s.c.link));
  CHECK(g0->holds("overlay2/l/" + s.b.link));
  CHECK_FALSE(g0->holds("extrafs/image-" + before->catalog.image_index->hex() + ".index"));
  CHECK(g0->holds("image/overlay2/repositories.json"));
  CHECK(g0->holds("extrafs/.publish.lock"));
  // Objects are judged only once they are known.
  const std::string some_object = "extrafs/objects/" + std::string(32, '0');
  CHECK(g0->holds(some_object));
  REQUIRE(store::add_live_objects(fd.get(), store, true, &*g0).ok());
  CHECK(g0->objects_known);
  CHECK_FALSE(g0->objects.empty());
  CHECK_FALSE(g0->holds(some_object));
  CHECK(g0->holds("extrafs/objects/" + *g0->objects.begin()));

  // Generation 2 came 500 s ago: a grace period longer than that keeps generation 1 and its layers.
  auto g600 = store::compute_live_set(fd.get(), store, 600, now);
  REQUIRE(g600.ok());
  CHECK(g600->generations == std::vector<uint64_t>{1, 2});
  CHECK(g600->layers.count(s.c.cache_id));
  CHECK(g600->dropped_layers.empty());
  CHECK(g600->holds("extrafs/layers/" + s.c.cache_id + ".index"));
  CHECK(g600->holds("extrafs/catalog.d/1"));
}

TEST_CASE("the live set refuses to guess when a kept catalog cannot be read", "[gc]") {
  TempDir t;
  Tree tree(t.path + "/s");
  three_images(tree);
  const std::string store = tree.root();
  Fd fd = open_dir(store);
  CHECK(store::compute_live_set(fd.get(), store, 0, 1800000000).code() == ENOENT);  // no catalog yet
  REQUIRE(store::index_store(store, nullptr).ok());
  REQUIRE(rm(store, {"c:1"}).ok());
  // The older generation, not kept, damaged: noted, and its names are unknown.
  put(store + "/extrafs/catalog.d/1", "damaged");
  auto live = store::compute_live_set(fd.get(), store, 0, 1800000000);
  REQUIRE(live.ok());
  REQUIRE(live->unreadable.size() == 1);
  CHECK(live->dropped_layers.empty());
  // The kept one damaged: an error naming it.
  put(store + "/extrafs/catalog.d/2", "damaged");
  auto bad = store::compute_live_set(fd.get(), store, 0, 1800000000);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("kept catalog generation 2") != std::string::npos);
  auto r = gc(store, 0);
  REQUIRE_FALSE(r.ok());
  CHECK(path_exists(store + "/extrafs/catalog.d/1"));
}

TEST_CASE("rm takes out the layers only its image used, marks them, and deletes nothing a host reads", "[gc]") {
  IndexedThree x;
  const auto& s = x.s;
  const std::string& store = x.store;
  auto before = store::load_store_catalog(store);
  REQUIRE(before.ok());
  const std::string store_id = before->catalog.store_id;
  CHECK(format::is_store_id(store_id));
  auto files_before = snapshot(store);

  auto r = rm(store, {"c:1"});
  REQUIRE(r.ok());
  REQUIRE(r->images.size() == 1);
  CHECK(r->images[0].id == s.c_id);
  CHECK(r->images[0].refs == std::vector<std::string>{"c:1"});
  CHECK(r->layers_dropped == std::vector<std::string>{s.c.cache_id});
  CHECK(r->bytes_dropped == 100000);
  CHECK(r->catalog_written);
  CHECK(r->generation == 2);

  auto after = store::load_store_catalog(store);
  REQUIRE(after.ok());
  CHECK(after->catalog.store_id == store_id);  // kept by every writer
  CHECK(catalog_layers(store) == std::set<std::string>{s.base.cache_id, s.b.cache_id});
  CHECK_FALSE(after->catalog.image_index == before->catalog.image_index);
  CHECK(path_exists(store + "/extrafs/removed/" + s.c.cache_id));
  // The docker metadata: c:1, its config and its layer's layerdb entry gone; the rest intact.
  auto meta = store::DockerMeta::load(store);
  REQUIRE(meta.ok());
  CHECK(meta->refs() == std::map<std::string, std::string>{{"a:1", s.a_id}, {"b:1", s.b_id}});
  CHECK_FALSE(path_exists(store + "/image/overlay2/imagedb/content/sha256/" + s.c_id.substr(7)));
  CHECK_FALSE(path_exists(store + "/image/overlay2/layerdb/sha256/" + s.c.chain_id.substr(7)));
  CHECK(path_exists(store + "/image/overlay2/layerdb/sha256/" + s.base.chain_id.substr(7)));
  CHECK(meta->image("b:1").ok());
  // Every file a host may read is still there, byte for byte: indexes, the plain tree, objects,
  // the previous image/ index and catalog generation.
  auto files_after = snapshot(store);
  for (const auto& [rel, content] : files_before) {
    if (rel.rfind("image/", 0) == 0 || rel == "extrafs/catalog") continue;
    INFO(rel);
    REQUIRE(files_after.count(rel));
    CHECK(files_after[rel] == content);
  }
}

TEST_CASE("rm refuses a name the store does not have and changes nothing", "[gc]") {
  IndexedThree x;
  const std::string& store = x.store;
  auto before = snapshot(store);
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"nope:1"}, {"c:1", "nope:1"}, {"sha256:" + std::string(64, '9')}, {std::string(12, 'f')}, {"a"}}) {
    auto r = rm(store, args);
    INFO(args.back());
    REQUIRE_FALSE(r.ok());
    CHECK(r.code() == ENOENT);
    CHECK(r.error().message.find("no image") != std::string::npos);
    CHECK(r.error().message.find('\n') == std::string::npos);
    CHECK(snapshot(store) == before);
  }
  // Malformed arguments are usage errors, told apart before the store is opened.
  CHECK(store::check_image_argument("Upper:1").code() == EINVAL);
  CHECK(store::check_image_argument("sha256:abc").code() == EINVAL);
  CHECK(store::check_image_argument(std::string(11, 'a')).ok());  // a name of hex letters is a name
  CHECK(store::check_image_argument(std::string(12, 'a')).ok());
  CHECK(store::check_image_argument("registry.example:5000/team/app:v1.2").ok());
}

TEST_CASE("rm refuses when an image that stays cannot be read, and changes nothing", "[gc]") {
  IndexedThree x;
  const auto& s = x.s;
  const std::string& store = x.store;
  REQUIRE(::unlink((store + "/image/overlay2/layerdb/sha256/" + s.b.chain_id.substr(7) + "/cache-id").c_str()) == 0);
  auto before = snapshot(store);
  auto r = rm(store, {"c:1"});
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("image " + s.b_id.substr(7, 12) + " (b:1) stays") != std::string::npos);
  CHECK(r.error().message.find("cannot tell which layers it uses") != std::string::npos);
  CHECK(snapshot(store) == before);
  // Removing the damaged one too is the way out; its own layer, which rm cannot attribute to it
  // without the layerdb entry, stays in the catalog.
  auto both = rm(store, {"c:1", s.b_id.substr(7, 12)});
  REQUIRE(both.ok());
  CHECK(both->images.size() == 2);
  CHECK(catalog_layers(store) == std::set<std::string>{s.base.cache_id, s.b.cache_id});
}

TEST_CASE("rm of one of two tags only untags; by id or --all-untagged the image goes", "[gc]") {
  TempDir t;
  Tree tree(t.path + "/s");
  auto base = tree.layer(nullptr, "base", "base");
  auto top = tree.layer(&base, "top", "top");
  const std::string id = tree.image({base, top}, {"x:1", "x:latest"});
  const std::string old_id = tree.image({base}, {});  // untagged: its tag moved to a newer build
  const std::string store = tree.root();
  REQUIRE(store::index_store(store, nullptr).ok());
  auto r = rm(store, {"x"});  // x:latest
  REQUIRE(r.ok());
  CHECK(r->untagged == std::vector<std::string>{"x:latest"});
  CHECK(r->images.empty());
  CHECK(r->layers_dropped.empty());
  CHECK(catalog_layers(store).size() == 2);

  auto u = rm(store, {}, /*all_untagged=*/true);
  REQUIRE(u.ok());
  REQUIRE(u->images.size() == 1);
  CHECK(u->images[0].id == old_id);
  CHECK(u->layers_dropped.empty());  // x:1 uses the base too
  auto again = rm(store, {}, true);  // nothing left to do: nothing written
  REQUIRE(again.ok());
  CHECK(again->images.empty());
  CHECK_FALSE(again->catalog_written);

  auto byid = rm(store, {id});
  REQUIRE(byid.ok());
  CHECK(byid->images.size() == 1);
  CHECK(byid->layers_dropped.size() == 2);
  CHECK(catalog_layers(store).empty());
}

TEST_CASE("a killed rm is finished by the next one, and a layer back in the catalog loses its mark", "[gc]") {
  IndexedThree x;
  const auto& s = x.s;
  const std::string& store = x.store;
  // As left by `rm c:1` killed after its marks, its tag and its config, before the catalog.
  put(store + "/extrafs/removed/" + s.c.cache_id, "");
  auto repos = nlohmann::json::parse(*read_file(store + "/image/overlay2/repositories.json"));
  repos["Repositories"].erase("c");
  put(store + "/image/overlay2/repositories.json", repos.dump());
  REQUIRE(::unlink((store + "/image/overlay2/imagedb/content/sha256/" + s.c_id.substr(7)).c_str()) == 0);
  // A stale mark too: on a layer an image uses.
  put(store + "/extrafs/removed/" + s.b.cache_id, "");
  CHECK(rm(store, {"c:1"}).code() == ENOENT);  // its name is gone already
  auto r = rm(store, {}, /*all_untagged=*/true);
  REQUIRE(r.ok());
  CHECK(r->images.empty());
  CHECK(r->layers_dropped == std::vector<std::string>{s.c.cache_id});
  CHECK(catalog_layers(store) == std::set<std::string>{s.base.cache_id, s.b.cache_id});
  CHECK_FALSE(path_exists(store + "/image/overlay2/layerdb/sha256/" + s.c.chain_id.substr(7)));
  CHECK(path_exists(store + "/extrafs/removed/" + s.c.cache_id));
  CHECK_FALSE(path_exists(store + "/extrafs/removed/" + s.b.cache_id));
}

TEST_CASE("extrafs index never takes back a layer rm removed", "[gc]") {
  IndexedThree x;
  const auto& s = x.s;
  const std::string& store = x.store;
  REQUIRE(rm(store, {"c:1"}).ok());
  const auto layers = store::load_store_catalog(store)->catalog.layers;
  auto r = store::index_store(store, nullptr);
  REQUIRE(r.ok());
  CHECK(r->layers_removed == 1);
  CHECK(r->layers_indexed == 0);
  CHECK(r->layers_present == 2);
  // (The image/ tree is indexed again: rm's reads moved access times there.)
  CHECK(store::load_store_catalog(store)->catalog.layers == layers);
  CHECK_FALSE(catalog_layers(store).count(s.c.cache_id));
}

TEST_CASE("gc deletes what only dropped catalogs name, namers before what they name; a dry run deletes nothing",
          "[gc]") {
  IndexedThree x;
  const auto& s = x.s;
  const std::string& store = x.store;
  auto first = store::load_store_catalog(store);
  REQUIRE(rm(store, {"c:1"}).ok());
  const std::string c_index = "extrafs/layers/" + s.c.cache_id + ".index";
  const std::string old_image_index = "extrafs/image-" + first->catalog.image_index->hex() + ".index";

  // Within the grace period: nothing goes.
  auto kept = gc(store, 7 * 86400);
  REQUIRE(kept.ok());
  CHECK(kept->total.files == 0);
  CHECK(kept->kept_generations == 2);
  CHECK(kept->kept_layers == 3);

  auto before = snapshot(store);
  auto dry = gc(store, 0, /*dry_run=*/true);
  REQUIRE(dry.ok());
  CHECK(snapshot(store) == before);
  CHECK(dry->freed[size_t(store::GcKind::kGeneration)].files == 1);
  CHECK(dry->freed[size_t(store::GcKind::kImageIndex)].files == 1);
  CHECK(dry->freed[size_t(store::GcKind::kLayerIndex)].files == 1);
  CHECK(dry->freed[size_t(store::GcKind::kLink)].files == 1);
  CHECK(dry->freed[size_t(store::GcKind::kLayerTree)].files == 3);  // diff/cfile, link and lower
  CHECK(dry->freed[size_t(store::GcKind::kLayerTree)].bytes == 100000 + s.c.link.size() + s.c.lower->size());
  CHECK(dry->freed[size_t(store::GcKind::kMark)].files == 1);

  std::vector<std::string> order;
  auto done = gc(store, 0, false, &order);
  REQUIRE(done.ok());
  CHECK(done->total.files == dry->total.files);
  CHECK(done->total.bytes == dry->total.bytes);
  // What names a file goes first: the generation, the image/ index, the layer index, the objects
  // only the old image/ index named, the l/ link and the tree, and last the mark.
  const size_t gen = position(order, "extrafs/catalog.d/1"), img = position(order, old_image_index),
               idx = position(order, c_index), link = position(order, "overlay2/l/" + s.c.link),
               tree_pos = position(order, "overlay2/" + s.c.cache_id),
               mark = position(order, "extrafs/removed/" + s.c.cache_id);
  CHECK(gen < img);
  CHECK(img < idx);
  CHECK(idx < link);
  CHECK(link < tree_pos);
  CHECK(tree_pos < mark);
  for (const auto& rel : order)
    if (rel.rfind("extrafs/objects/", 0) == 0) CHECK(position(order, rel) > img);
  CHECK_FALSE(path_exists(store + "/" + c_index));
  CHECK_FALSE(path_exists(store + "/overlay2/" + s.c.cache_id));
  CHECK_FALSE(path_exists(store + "/overlay2/l/" + s.c.link));
  CHECK(path_exists(store + "/overlay2/" + s.b.cache_id + "/diff/bfile"));
  CHECK(path_exists(store + "/overlay2/l/" + s.b.link));
  CHECK(path_exists(store + "/extrafs/catalog.d/2"));
  // What is left verifies: every index the catalog names, every object those name.
  Fd fd = open_dir(store);
  auto live = store::compute_live_set(fd.get(), store, 0, ::time(nullptr));
  REQUIRE(live.ok());
  REQUIRE(store::add_live_objects(fd.get(), store, true, &*live).ok());
  for (const auto& o : live->objects) CHECK(path_exists(store + "/extrafs/objects/" + o));
  // A second run finds nothing.
  auto again = gc(store, 0);
  REQUIRE(again.ok());
  CHECK(again->total.files == 0);
}

TEST_CASE("a layer rm removed stays a grace period after its mark, also where no generation says so", "[gc]") {
  IndexedThree x;
  const auto& s = x.s;
  const std::string& store = x.store;
  REQUIRE(rm(store, {"c:1"}).ok());
  // As in a store whose catalogs before rm had no generations: nothing on disk names the layer.
  std::filesystem::remove_all(store + "/extrafs/catalog.d");
  const std::string index = store + "/extrafs/layers/" + s.c.cache_id + ".index";
  const std::string mark = store + "/extrafs/removed/" + s.c.cache_id;
  const int64_t now = ::time(nullptr);
  set_mtime(index, now - 10 * 86400);  // the index is old; the removal is not
  set_mtime(mark, now - 3 * 3600);
  auto kept = gc(store, 4 * 3600);
  REQUIRE(kept.ok());
  CHECK(path_exists(index));
  CHECK(path_exists(store + "/overlay2/" + s.c.cache_id + "/diff/cfile"));
  CHECK(path_exists(mark));
  auto gone = gc(store, 2 * 3600);
  REQUIRE(gone.ok());
  CHECK_FALSE(path_exists(index));
  CHECK_FALSE(path_exists(store + "/overlay2/" + s.c.cache_id));
  CHECK_FALSE(path_exists(mark));
  CHECK(path_exists(store + "/overlay2/" + s.b.cache_id + "/diff/bfile"));
}

TEST_CASE("gc leaves young files no catalog names, unmarked plain trees, and young temporaries", "[gc]") {
  IndexedThree x;
  const std::string& store = x.store;
  const int64_t now = ::time(nullptr);
  const std::string orphan(64, 'd');
  // A killed publish's layer files and object, and temporaries: young, then old. (Their writer's
  // pid runs, as a pid reused since does, or it is on another host: the lock's own clean-up of
  // dead writers' temporaries leaves them.)
  put(store + "/extrafs/layers/" + orphan + ".index", "not even an index");
  put(store + "/extrafs/layers/" + orphan + ".blob", "blob");
  put(store + "/extrafs/objects/" + std::string(32, 'e'), "object");
  put(store + "/extrafs/layers/.x.blob.tmp-1", "temporary");
  put(store + "/image/overlay2/repositories.json.tmp.1", "{}");
  // A plain tree copied in by hand, not indexed yet, not even the right age: never touched.
  const std::string copied(64, 'f');
  put(store + "/overlay2/" + copied + "/diff/file", "copied by hand");
  set_mtime(store + "/overlay2/" + copied + "/diff/file", now - 30 * 86400);
  auto young = gc(store, 0);
  REQUIRE(young.ok());
  CHECK(young->total.files == 0);
  CHECK(young->young == 3);

  for (const std::string& rel :
       {"/extrafs/layers/" + orphan + ".index", "/extrafs/layers/" + orphan + ".blob",
        "/extrafs/objects/" + std::string(32, 'e'), std::string("/extrafs/layers/.x.blob.tmp-1"),
        std::string("/image/overlay2/repositories.json.tmp.1")})
    set_mtime(store + rel, now - 2 * 3600);
  auto old = gc(store, 0);
  REQUIRE(old.ok());
  CHECK(old->freed[size_t(store::GcKind::kLayerIndex)].files == 1);
  CHECK(old->freed[size_t(store::GcKind::kLayerBlob)].files == 1);
  CHECK(old->freed[size_t(store::GcKind::kObject)].files == 1);
  CHECK(old->freed[size_t(store::GcKind::kTemporary)].files == 2);
  CHECK(old->young == 0);
  CHECK_FALSE(path_exists(store + "/extrafs/layers/" + orphan + ".index"));
  CHECK_FALSE(path_exists(store + "/extrafs/layers/.x.blob.tmp-1"));
  CHECK(path_exists(store + "/overlay2/" + copied + "/diff/file"));
}

TEST_CASE("gc is refused while another writer holds the store, and a dry run takes the lock too", "[gc]") {
  IndexedThree x;
  const std::string& store = x.store;
  Fd fd = open_dir(store);
  auto held = store::StoreWriteLock::take(fd.get(), store);
  REQUIRE(held.ok());
  for (bool dry : {false, true}) {
    auto r = gc(store, 0, dry);
    REQUIRE_FALSE(r.ok());
    CHECK(r.code() == EBUSY);
    CHECK(r.error().message.find("being written by another extrafs publish, index, rm or gc") != std::string::npos);
  }
  CHECK(rm(store, {"c:1"}).code() == EBUSY);
}

TEST_CASE("publish never writes a new layer under a cache-id rm removed", "[gc]") {
  // A data-root of the same shape as the trees above; publish takes its cache-ids when free.
  TempDir t;
  Tree root(t.path + "/root");
  auto s = three_images(root);
  const std::string store = t.path + "/store";
  store::PublishRequest req;
  req.data_root = root.root();
  req.images = {"a:1", "b:1", "c:1"};
  req.store = store;
  REQUIRE(store::publish(req).ok());
  REQUIRE(catalog_layers(store).count(s.c.cache_id));
  REQUIRE(rm(store, {"c:1"}).ok());
  const std::string blob = store + "/extrafs/layers/" + s.c.cache_id + ".blob";
  struct stat before {};
  REQUIRE(::stat(blob.c_str(), &before) == 0);
  const std::string bytes = *read_file(blob);

  req.images = {"c:1"};
  auto again = store::publish(req);
  REQUIRE(again.ok());
  CHECK(again->layers_written == 1);
  auto layers = catalog_layers(store);
  CHECK(layers.size() == 3);
  CHECK_FALSE(layers.count(s.c.cache_id));  // a new cache-id for the same layer
  struct stat after {};
  REQUIRE(::stat(blob.c_str(), &after) == 0);
  CHECK(after.st_ino == before.st_ino);  // the old blob, untouched, for hosts still reading it
  CHECK(*read_file(blob) == bytes);
  CHECK(path_exists(store + "/extrafs/removed/" + s.c.cache_id));
  // gc then deletes the old one only.
  REQUIRE(gc(store, 0).ok());
  CHECK_FALSE(path_exists(blob));
  for (const auto& id : catalog_layers(store)) CHECK(path_exists(store + "/extrafs/layers/" + id + ".blob"));
}
