#include "store/catalog_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include "common/posix_file.h"
#include "format/layer_index.h"
#include "store/indexer.h"
#include "store/layout.h"

namespace extrafs::store {

namespace {
constexpr uint64_t kGenerationTries = 1000;
}  // namespace

Result<StoreCatalog> load_store_catalog(const std::string& store) {
  StoreCatalog sc;
  const std::string catalog_path = StoreLayout(store).catalog();
  Fd root(::open(store.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root.valid()) return Error::from_errno(errno, "store " + store);
  auto text = read_file_beneath(root.get(), format::kCatalogPath, store, format::kMaxCatalogSize);
  if (text.ok()) {
    auto parsed = format::Catalog::parse(*text);
    if (!parsed.ok()) return make_error(parsed.code(), catalog_path + ": " + parsed.error().message);
    sc.catalog = std::move(parsed).value();
    sc.text = std::move(text).value();
  } else if (text.code() != ENOENT) {
    return text.error();
  }
  return sc;
}

void merge_catalog_layer(format::Catalog* catalog, format::CatalogLayer layer) {
  auto it = std::find_if(catalog->layers.begin(), catalog->layers.end(),
                         [&](const format::CatalogLayer& l) { return l.cache_id == layer.cache_id; });
  if (it == catalog->layers.end())
    catalog->layers.push_back(std::move(layer));
  else
    *it = std::move(layer);
}

Result<CatalogCommit> commit_store_catalog(const std::string& store, StoreCatalog* sc) {
  const StoreLayout layout(store);
  CatalogCommit report;
  EXTRAFS_CHECK_STATUS(make_dirs(layout.layers_dir()));
  Fd root(::open(store.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root.valid()) return Error::from_errno(errno, "store " + store);
  // Nothing written goes through a symlink: the catalog and indexes land in the store itself.
  EXTRAFS_CHECK_STATUS(check_dir_beneath(root.get(), "extrafs/layers", store));
  // Image objects and catalog generations too: made here, then checked like extrafs/layers.
  EXTRAFS_CHECK_STATUS(make_dirs(layout.objects_dir()));
  EXTRAFS_CHECK_STATUS(make_dirs(layout.catalog_generations_dir()));
  EXTRAFS_CHECK_STATUS(check_dir_beneath(root.get(), "extrafs/objects", store));
  EXTRAFS_CHECK_STATUS(check_dir_beneath(root.get(), "extrafs/catalog.d", store));
  auto image = open_beneath(root.get(), "image", O_RDONLY | O_DIRECTORY, store);
  if (!image.ok() && image.code() != ENOENT) return image.error();  // a symlinked image/ is refused
  if (image.ok()) {
    // The image/ files themselves may be rewritten by the next publish; the index names copies.
    ObjectSink objects(layout.root(), /*compress=*/false);
    EXTRAFS_TRY(bytes, index_directory_at(image->get(), layout.image_dir(), objects, WalkOptions{}));
    EXTRAFS_CHECK_STATUS(objects.finish());
    auto parsed = format::LayerIndex::parse(bytes);
    if (!parsed.ok()) return make_error(EIO, "index of image/ does not verify: " + parsed.error().message);
    Digest128 digest = (*parsed)->digest();
    const std::string path = layout.image_index(digest);
    if (::access(path.c_str(), F_OK) != 0) {
      EXTRAFS_CHECK_STATUS(write_file_atomic(path, bytes));
      report.image_indexed = true;
    }
    sc->catalog.image_index = digest;
  }
  if (sc->catalog.store_id.empty()) sc->catalog.store_id = new_store_id();
  std::string text = sc->catalog.serialize();
  if (text != sc->text) {
    // A new generation, under a name no earlier catalog had (a publish killed after writing
    // catalog.d/<N> but before the catalog leaves N taken: a mount may have read it).
    EXTRAFS_CHECK_STATUS(make_dirs(layout.catalog_generations_dir()));
    const uint64_t previous = sc->catalog.generation;
    for (uint64_t g = previous + 1;; ++g) {
      if (g > previous + kGenerationTries)
        return make_error(EEXIST,
                          layout.catalog_generations_dir() + ": no free generation after " + std::to_string(previous));
      sc->catalog.generation = g;
      text = sc->catalog.serialize();
      Status st = write_file_atomic_new(layout.catalog_generation(g), text);
      if (st.ok()) break;
      if (st.code() != EEXIST) return st.error();
    }
    EXTRAFS_CHECK_STATUS(write_file_atomic(layout.catalog(), text));
    report.catalog_written = true;
    sc->text = std::move(text);
  }
  return report;
}

std::string new_store_id() { return random_chars(32, "0123456789abcdef"); }

}  // namespace extrafs::store
