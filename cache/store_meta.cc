#include "cache/store_meta.h"

#include <optional>
#include <span>
#include <utility>

#include "backend/backend.h"

namespace extrafs::cache {

namespace {
MetaVersion version_of(const backend::ObjectInfo& info) {
  return MetaVersion{info.size, info.mtime_ns, info.version_tag, info.file_id, info.ctime_ns};
}
}  // namespace

StoreMeta::StoreMeta(backend::Backend& backend, BlockCache* disk, std::function<void(const Error&)> on_write_error)
    : backend_(backend), disk_(disk), on_write_error_(std::move(on_write_error)) {}

Result<std::string> StoreMeta::read_meta(std::string_view path, const std::string& cache_name, uint64_t limit,
                                         const std::function<Status(const std::string&)>& check) {
  std::string key(path);
  bool was_refused = false;
  {
    MutexLock lock(&refused_mu_);
    was_refused = refused_.count(key) != 0;
  }
  if (was_refused) {
    // Only an object refused before costs a stat first: unchanged, it is refused again unread.
    auto info = backend_.stat(path);
    if (!info.ok()) {
      if (info.code() != ENOENT) backend_errors_++;
      return info.error();
    }
    MutexLock lock(&refused_mu_);
    auto it = refused_.find(key);
    if (it != refused_.end()) {
      if (it->second.version == version_of(*info)) return it->second.error;
      refused_.erase(it);
    }
  }
  // The version is the one the read went by (its stat, or the answer to a one-request read), so
  // a refusal is remembered for the very version refused.
  std::optional<backend::ObjectInfo> seen;
  auto refuse = [&](const Error& why) {
    if (seen) {
      MutexLock lock(&refused_mu_);
      refused_[key] = Refusal{version_of(*seen), why};
    }
    return why;
  };
  auto got = backend_.read_object(path, limit, &seen);
  if (!got.ok()) {
    // Refused from its attributes (over `limit`, not a regular file), or not read at all.
    const int code = got.code();
    if (code == EFBIG || code == EISDIR || code == EINVAL) return refuse(got.error());
    if (code != ENOENT) backend_errors_++;
    return got.error();
  }
  bytes_fetched_ += got->size();
  if (auto verdict = check(*got); !verdict.ok()) return refuse(verdict.error());
  if (disk_) {
    auto st = disk_->put_meta(cache_name, std::as_bytes(std::span(got->data(), got->size())));
    if (!st.ok() && on_write_error_) on_write_error_(st.error());
  }
  return got;
}

Result<std::string> StoreMeta::kept_meta(const std::string& cache_name) {
  if (!disk_) return make_error(ENOENT, "no disk cache");
  EXTRAFS_TRY(kept, disk_->get_meta(cache_name));
  return std::string(reinterpret_cast<const char*>(kept.data()), kept.size());
}

Result<MetaVersion> StoreMeta::meta_version(std::string_view path) {
  EXTRAFS_TRY(info, backend_.stat(path));
  return version_of(info);
}

std::string StoreMeta::describe() const { return backend_.describe(); }

}  // namespace extrafs::cache
