// The store catalog (STORE/extrafs/catalog): which layers the store holds, the digest of each
// layer's index, the docker `link`/`lower` of each layer, and the index of the store's image/ tree.
// JSON, versioned, with an xxh3-128 checksum over its canonical form. Layers are only ever
// appended: a layer once listed keeps its position, so a mounted daemon can add new ones in place.
//
// Generations: each catalog a publisher writes carries a generation number (one more than the
// catalog it replaces) and is written twice: as STORE/extrafs/catalog.d/<generation>, a name
// never reused, and as STORE/extrafs/catalog (replaced atomically; what first loads and older
// readers read). A daemon holding generation N looks up catalog.d/<N+1> to learn of the next: a
// name it has never seen, which an NFS server cannot answer from attributes it cached for an
// older file. The generation is an optional key of format version 1 (readers that predate it
// ignore it; the checksum covers it); catalogs without one (generation 0) come from older
// writers.
//
// Store id: a random 128-bit id (32 lowercase hex digits) that the first writer of a store puts
// in its catalog and every later writer keeps, so that a store made again from scratch (whose
// generations start again at 1) is told apart from the one it replaces. An optional key of
// format version 1 like "generation" (older readers ignore it, the checksum covers it); "" in
// catalogs written before it, which the next writer gives one.
//
// Ordered prefix: a layer published with `--order` packs the files of a recorded start-up first
// in its blob, in trace order; its catalog entry then says how many bytes at the start of the
// blob those files take ("ordered_prefix", an optional key of format version 1 like
// "generation": older readers ignore it, the checksum covers it). A daemon fetches that prefix in
// the background when a container first touches the layer (fs/ordered_prefetch.h). The value is
// a hint: a reader clamps it to the blob's chunks and its own memory budget.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/hash.h"
#include "common/result.h"

namespace extrafs::format {

inline constexpr int kCatalogVersion = 1;
inline constexpr const char* kCatalogPath = "extrafs/catalog";
inline constexpr const char* kCatalogGenerationsDir = "extrafs/catalog.d";

// The largest catalog anyone reads (the daemon, `extrafs index`, publish, verify, rm, gc), each catalog
// generation too; a larger one is refused from its size before a byte is read. A layer takes
// about 200 bytes plus 29 per entry of its lower chain, and docker stacks at most 128 layers, so
// even layers at the deepest chain take under 4 KiB: 64 MiB is over 16,000 of those, or about
// 100,000 layers of ordinary images.
inline constexpr uint64_t kMaxCatalogSize = uint64_t{64} << 20;

struct CatalogLayer {
  std::string cache_id;              // overlay2 directory name
  Digest128 index_digest;            // xxh3-128 of the index file
  std::string link;                  // content of overlay2/<id>/link ("" if none)
  std::optional<std::string> lower;  // content of overlay2/<id>/lower, absent for base layers
  uint64_t bytes = 0;                // content bytes of the layer's regular files
  uint64_t ordered_prefix = 0;       // bytes at the start of the blob holding the traced files (0: none)
  bool operator==(const CatalogLayer&) const = default;
};

struct Catalog {
  std::vector<CatalogLayer> layers;
  std::optional<Digest128> image_index;  // index of STORE/image, if the store has one
  uint64_t generation = 0;               // 0: written without generations
  std::string store_id;                  // 32 lowercase hex digits; "": written without one

  static Result<Catalog> parse(std::string_view text);
  std::string serialize() const;
  const CatalogLayer* find(std::string_view cache_id) const;
};

// The rules every layer of a catalog follows, the one check shared by the reader
// (Catalog::parse) and the writers (`extrafs index`, publish) so that they never write a catalog
// the reader rejects: a cache_id as every reader of a store or data-root takes it (is_cache_id,
// common/str_util.h: docker's 64 lowercase hex digits, optionally "-init"), a link of 1-128
// characters [A-Za-z0-9_-] (not "l", "." or "..") or "", and a lower (if any) that is a
// ':'-separated list of "l/<link>". EBADMSG with a message naming the layer and what is wrong.
Status check_catalog_layer(const CatalogLayer& layer);

// Where the catalog is loaded (the daemon, and index and publish before writing one): the layers
// whose lower chain cannot be served, each with a one-line reason. A lower entry "l/<link>" must
// be the link of another layer of the catalog whose own chain is served, and a link may belong to
// one layer only (both layers are refused otherwise). The layers named are to be left out.
// Linear in the size of the catalog (every lower entry is looked at a bounded number of times),
// so a crafted catalog of long chains costs its parse, no more.
std::vector<std::pair<std::string, std::string>> unchained_layers(const Catalog& catalog);

// The catalog of the store `source` from the result of reading its catalog file: a missing file
// says to run `extrafs index` or `extrafs publish`; every error names the store.
Result<Catalog> store_catalog(const Result<std::string>& text, const std::string& source);

// Name under which a daemon keeps its copy of the catalog of `source` in the block cache (per
// source, so that a cache directory pointed at another store never serves the wrong catalog).
std::string catalog_cache_name(const std::string& source);

// Where the index files live, relative to the store root.
std::string layer_index_path(std::string_view cache_id);
// The blob of a published layer, as chunk records name it.
std::string layer_blob_path(std::string_view cache_id);
std::string image_index_path(const Digest128& digest);
// extrafs/catalog.d/<generation> (decimal).
std::string catalog_generation_path(uint64_t generation);
// Whether `id` is a store id as catalogs carry it: 32 lowercase hex digits.
bool is_store_id(std::string_view id);

}  // namespace extrafs::format
