#include "fs/index_loader.h"

#include <spdlog/spdlog.h>

#include "format/catalog.h"
#include "format/index_format.h"

namespace extrafs::fs {

using format::kMaxIndexSize;
using format::layer_index_path;
using format::LayerIndex;

IndexLoader::IndexLoader(cache::MetaSource& meta, double retry_s, Clock now)
    : meta_(meta),
      retry_(std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(retry_s))),
      now_(now ? std::move(now) : Clock([] { return std::chrono::steady_clock::now(); })) {}

std::shared_ptr<const LayerIndex> IndexLoader::kept(const std::string& cache_name, const Digest128& want) {
  auto kept = meta_.kept_meta(cache_name);
  if (!kept.ok() || xxh3_128(kept->data(), kept->size()) != want) return nullptr;
  auto idx = LayerIndex::parse(std::move(kept).value());
  return idx.ok() ? *idx : nullptr;
}

Result<std::shared_ptr<const LayerIndex>> IndexLoader::load(const std::string& path, const std::string& cache_name,
                                                            const Digest128& want, const std::string& what) {
  if (auto k = kept(cache_name, want)) return k;
  // The check parses the index; a cheap digest comparison first rejects a wrong file outright.
  auto check = [&](const std::string& bytes) -> Status {
    if (xxh3_128(bytes.data(), bytes.size()) != want) {
      auto parsed = LayerIndex::parse(bytes);
      if (!parsed.ok()) return parsed.error();
      return make_error(EBADMSG, "index does not match the digest in the catalog");
    }
    auto parsed = LayerIndex::parse(bytes);
    if (!parsed.ok()) return parsed.error();
    return ok_status();
  };
  auto got = meta_.read_meta(path, cache_name, kMaxIndexSize, check);
  if (!got.ok()) return make_error(got.code(), "index of " + what + " (" + path + "): " + got.error().message);
  auto idx = LayerIndex::parse(std::move(got).value());
  if (!idx.ok()) return make_error(idx.code(), path + ": " + idx.error().message);
  return idx;
}

Result<std::shared_ptr<const LayerIndex>> IndexLoader::get(LazyIndex& l) {
  MutexLock lock(&l.mu_);
  while (!l.index_ && l.loading_) l.cv_.wait(&l.mu_);
  if (l.index_) return l.index_;
  if (l.failure_ && now_() - l.failed_at_ < retry_) return *l.failure_;
  // This caller reads it; the others wait on the cv. Only this layer's mutex is released and
  // retaken: lookups in other layers never wait for this read.
  l.loading_ = true;
  lock.unlock();
  const std::string& id = l.cache_id_;
  auto idx = load(layer_index_path(id), "index-" + id, l.digest_, "layer " + id);
  lock.lock();
  l.loading_ = false;
  if (idx.ok()) {
    if (l.failure_) spdlog::info("index of layer {} loaded; the layer is served again", id);
    l.index_ = *idx;
    l.failure_.reset();
  } else {
    // One line per outage, not one per access.
    if (!l.failure_)
      spdlog::warn("{}; the layer answers EIO until it can be read (tried again on access)", idx.error().message);
    l.failure_ = make_error(EIO, idx.error().message);
    l.failed_at_ = now_();
  }
  l.cv_.notify_all();
  if (!idx.ok()) return *l.failure_;
  return l.index_;
}

std::shared_ptr<const LayerIndex> IndexLoader::local(LazyIndex& l) {
  if (auto idx = l.loaded()) return idx;
  auto k = kept("index-" + l.cache_id_, l.digest_);
  if (!k) return nullptr;
  MutexLock lock(&l.mu_);
  if (!l.index_) {
    l.index_ = std::move(k);
    l.failure_.reset();
  }
  return l.index_;
}

}  // namespace extrafs::fs
