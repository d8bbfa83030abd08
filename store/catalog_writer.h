// Writing a store's catalog (STORE/extrafs/catalog; format in format/catalog.h): the last step of
// `extrafs index`, `extrafs publish` and `extrafs rm`. The catalog is what moves a mounted host
// to a new version of the store, so it is written last, atomically and durably (temporary file,
// fsync, rename, fsync of the directory), and only when its content changed. Single-threaded; one writer
// per store at a time (every writer holds STORE/extrafs/.publish.lock, store_lock.h).
#pragma once

#include <string>

#include "common/result.h"
#include "format/catalog.h"

namespace extrafs::store {

// The catalog of a store as read from disk, with its text (to write it only if it changed).
struct StoreCatalog {
  format::Catalog catalog;
  std::string text;  // "" if the store had no catalog yet
};
// Reads STORE/extrafs/catalog; a missing catalog is an empty one, a corrupt one an error.
Result<StoreCatalog> load_store_catalog(const std::string& store);
// Replaces the layer with the same cache-id in place, or appends it (layers are never reordered).
void merge_catalog_layer(format::Catalog* catalog, format::CatalogLayer layer);

struct CatalogCommit {
  bool image_indexed = false;    // a new image/ index file was written
  bool catalog_written = false;  // the catalog changed and was written
};

// Indexes STORE/image (if present; its content goes to content-addressed objects, see ObjectSink,
// never referenced in the plain files, which later publishes rewrite), records that index in the
// catalog, and writes the catalog if it changed. Everything the catalog names must already be on
// disk, durably. A changed catalog gets the next free generation and is written as
// STORE/extrafs/catalog.d/<generation> (never replacing anything) and then over STORE/extrafs/catalog.
// A catalog without a store id (a new store, or one written before store ids) is given a new one
// (new_store_id); one that has it keeps it. Old generations are never removed here: which of them
// hosts may still depend on is `extrafs gc`'s question (live_set.h).
Result<CatalogCommit> commit_store_catalog(const std::string& store, StoreCatalog* sc);

// A fresh store id (format/catalog.h): 32 random lowercase hex digits.
std::string new_store_id();

}  // namespace extrafs::store
