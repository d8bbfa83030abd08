#include "format/catalog.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <unordered_map>
#include <unordered_set>

#include "common/str_util.h"

namespace extrafs::format {

using nlohmann::json;

namespace {
Error bad(const std::string& what) { return make_error(EBADMSG, "corrupt catalog: " + what); }

// A link as lower chains name it: 1-128 characters of [A-Za-z0-9_-], and never "l", "." or "..",
// so that "l/<link>" is one path component under l/. (A cache id has its own, stricter rule:
// is_cache_id, common/str_util.h.)
bool valid_link_id(std::string_view id) {
  if (id.empty() || id.size() > 128 || id == "l" || id == "." || id == "..") return false;
  for (char c : id) {
    bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '_';
    if (!ok) return false;
  }
  return true;
}
bool valid_link(std::string_view l) { return l.empty() || valid_link_id(l); }

// The links a lower chain names, in order; false if it is not "l/<link>[:l/<link>...]".
bool lower_links(std::string_view lower, std::vector<std::string_view>* links) {
  size_t start = 0;
  while (start <= lower.size()) {
    size_t end = lower.find(':', start);
    if (end == std::string_view::npos) end = lower.size();
    std::string_view e = lower.substr(start, end - start);
    if (e.size() < 3 || e.substr(0, 2) != "l/" || !valid_link_id(e.substr(2))) return false;
    if (links) links->push_back(e.substr(2));
    start = end + 1;
  }
  return true;
}

json body_of(const Catalog& c) {
  json layers = json::array();
  for (const auto& l : c.layers) {
    json j = {{"cache_id", l.cache_id}, {"index", l.index_digest.hex()}, {"link", l.link}, {"bytes", l.bytes}};
    if (l.lower) j["lower"] = *l.lower;
    if (l.ordered_prefix) j["ordered_prefix"] = l.ordered_prefix;
    layers.push_back(std::move(j));
  }
  json body = {{"format", "extrafs-catalog"}, {"version", kCatalogVersion}, {"layers", std::move(layers)}};
  if (c.image_index) body["image_index"] = c.image_index->hex();
  if (c.generation) body["generation"] = c.generation;
  if (!c.store_id.empty()) body["store_id"] = c.store_id;
  return body;
}
}  // namespace

Status check_catalog_layer(const CatalogLayer& l) {
  // The cache-id is quoted escaped: it may be anything when this runs on a store's directory names.
  if (!is_cache_id(l.cache_id)) return make_error(EBADMSG, "bad cache_id '" + escape_control(l.cache_id) + "'");
  if (!valid_link(l.link)) return make_error(EBADMSG, "bad link for " + l.cache_id);
  if (l.lower && (l.lower->size() > 65536 || !lower_links(*l.lower, nullptr)))
    return make_error(EBADMSG, "bad lower for " + l.cache_id + " (not a list of l/<link>)");
  return ok_status();
}

std::vector<std::pair<std::string, std::string>> unchained_layers(const Catalog& catalog) {
  const size_t n = catalog.layers.size();
  std::vector<std::pair<std::string, std::string>> out;
  std::unordered_map<std::string_view, std::vector<size_t>> by_link;  // link -> its layers, catalog order
  for (size_t i = 0; i < n; ++i)
    if (!catalog.layers[i].link.empty()) by_link[catalog.layers[i].link].push_back(i);
  std::vector<bool> refused(n, false);
  std::vector<size_t> to_spread;  // refused layers whose refusal has not reached their users yet
  auto refuse = [&](size_t i, std::string why) {
    if (refused[i]) return;
    refused[i] = true;
    out.emplace_back(catalog.layers[i].cache_id, std::move(why));
    to_spread.push_back(i);
  };
  std::vector<std::string_view> claimed_twice;
  for (const auto& [link, claimers] : by_link)
    if (claimers.size() > 1) claimed_twice.push_back(link);
  std::sort(claimed_twice.begin(), claimed_twice.end());
  for (auto link : claimed_twice)
    for (size_t i : by_link[link]) refuse(i, "link " + std::string(link) + " is claimed by more than one layer");
  // users[j]: the layers whose lower names the link of layer j. Every lower entry is looked up
  // once here and followed at most once below, so the whole check is linear in the catalog
  // (repeating passes until nothing changes was quadratic: one pass per step of a long chain).
  std::vector<std::vector<size_t>> users(n);
  std::vector<std::string_view> links;
  for (size_t i = 0; i < n; ++i) {
    const auto& l = catalog.layers[i];
    if (!l.lower) continue;
    links.clear();
    if (!lower_links(*l.lower, &links)) {
      refuse(i, "its lower is not a list of l/<link>");
      continue;
    }
    for (auto link : links) {
      auto it = by_link.find(link);
      if (it == by_link.end()) {
        refuse(i, "its lower names l/" + std::string(link) + ", which no layer of the catalog has");
        break;
      }
      if (it->second.front() == i) {
        refuse(i, "its lower names its own link");
        break;
      }
      users[it->second.front()].push_back(i);
    }
  }
  // A layer whose chain names a refused layer is refused in turn.
  while (!to_spread.empty()) {
    const size_t r = to_spread.back();
    to_spread.pop_back();
    for (size_t u : users[r]) refuse(u, "its lower names layer " + catalog.layers[r].cache_id + ", which is refused");
  }
  return out;
}

Result<Catalog> store_catalog(const Result<std::string>& text, const std::string& source) {
  if (!text.ok()) {
    if (text.code() == ENOENT)
      return make_error(ENOENT,
                        "store " + source + " has no extrafs catalog (run 'extrafs index' or 'extrafs publish' first)");
    return make_error(text.code(), "store " + source + ": " + text.error().message);
  }
  auto catalog = Catalog::parse(*text);
  if (!catalog.ok()) return make_error(catalog.code(), source + "/" + kCatalogPath + ": " + catalog.error().message);
  return catalog;
}

std::string catalog_cache_name(const std::string& source) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(xxh3_64(source.data(), source.size())));
  return std::string("catalog-") + buf;
}

std::string layer_index_path(std::string_view cache_id) { return "extrafs/layers/" + std::string(cache_id) + ".index"; }
std::string layer_blob_path(std::string_view cache_id) { return "extrafs/layers/" + std::string(cache_id) + ".blob"; }
std::string image_index_path(const Digest128& d) { return "extrafs/image-" + d.hex() + ".index"; }
std::string catalog_generation_path(uint64_t generation) {
  return std::string(kCatalogGenerationsDir) + "/" + std::to_string(generation);
}

bool is_store_id(std::string_view id) {
  if (id.size() != 32) return false;
  for (char c : id)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

std::string Catalog::serialize() const {
  json body = body_of(*this);
  std::string canon = body.dump();
  body["checksum"] = xxh3_128(canon.data(), canon.size()).hex();
  return body.dump(1) + "\n";
}

const CatalogLayer* Catalog::find(std::string_view cache_id) const {
  for (const auto& l : layers)
    if (l.cache_id == cache_id) return &l;
  return nullptr;
}

Result<Catalog> Catalog::parse(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("not JSON");
  // (json::value() throws when the key holds another type: check the type first.)
  if (!j.contains("format") || !j["format"].is_string() || j["format"].get<std::string>() != "extrafs-catalog")
    return bad("not an extrafs catalog");
  if (!j.contains("version") || !j["version"].is_number_integer()) return bad("no version");
  if (j["version"].get<int64_t>() != kCatalogVersion)
    return make_error(ENOTSUP, "catalog version " + j["version"].dump() + " is not supported");
  if (!j.contains("checksum") || !j["checksum"].is_string()) return bad("no checksum");
  std::string sum = j["checksum"].get<std::string>();
  j.erase("checksum");
  std::string canon = j.dump();
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION  // let the fuzzer reach what the checksum guards
  if (xxh3_128(canon.data(), canon.size()).hex() != sum) return bad("checksum mismatch");
#endif

  Catalog c;
  if (!j.contains("layers") || !j["layers"].is_array()) return bad("no layer list");
  std::unordered_set<std::string> seen;  // (Catalog::find per layer would be quadratic)
  for (const auto& l : j["layers"]) {
    if (!l.is_object()) return bad("layer is not an object");
    CatalogLayer layer;
    auto str = [&](const char* key, std::string* out) {
      if (!l.contains(key) || !l[key].is_string()) return false;
      *out = l[key].get<std::string>();
      return true;
    };
    std::string digest;
    if (!str("cache_id", &layer.cache_id) || !is_cache_id(layer.cache_id)) return bad("bad cache_id");
    if (!str("index", &digest) || !Digest128::from_hex(digest, &layer.index_digest))
      return bad("bad index digest for " + layer.cache_id);
    if (!str("link", &layer.link)) return bad("bad link for " + layer.cache_id);
    if (l.contains("lower")) {
      std::string lower;
      if (!str("lower", &lower)) return bad("bad lower for " + layer.cache_id);
      layer.lower = lower;
    }
    if (auto st = check_catalog_layer(layer); !st.ok()) return bad(st.error().message);
    if (!l.contains("bytes") || !l["bytes"].is_number_unsigned()) return bad("bad size for " + layer.cache_id);
    layer.bytes = l["bytes"].get<uint64_t>();
    // Any size is accepted here (the daemon clamps it to the blob); only the type is checked.
    if (l.contains("ordered_prefix")) {
      if (!l["ordered_prefix"].is_number_unsigned()) return bad("bad ordered_prefix for " + layer.cache_id);
      layer.ordered_prefix = l["ordered_prefix"].get<uint64_t>();
    }
    if (!seen.insert(layer.cache_id).second) return bad("layer " + layer.cache_id + " listed twice");
    c.layers.push_back(std::move(layer));
  }
  if (j.contains("image_index")) {
    Digest128 d;
    if (!j["image_index"].is_string() || !Digest128::from_hex(j["image_index"].get<std::string>(), &d))
      return bad("bad image index digest");
    c.image_index = d;
  }
  if (j.contains("generation")) {
    if (!j["generation"].is_number_unsigned() || j["generation"].get<uint64_t>() == 0) return bad("bad generation");
    c.generation = j["generation"].get<uint64_t>();
  }
  if (j.contains("store_id")) {
    if (!j["store_id"].is_string() || !is_store_id(j["store_id"].get<std::string>())) return bad("bad store_id");
    c.store_id = j["store_id"].get<std::string>();
  }
  return c;
}

}  // namespace extrafs::format
