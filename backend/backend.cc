#include "backend/backend.h"

#include "backend/http_backend.h"
#include "backend/local_backend.h"
#include "backend/nfs_backend.h"
#include "common/posix_file.h"

namespace extrafs::backend {

Status Backend::check_object(std::string_view path, const ObjectInfo& info, uint64_t limit) {
  if (info.is_dir) return not_a_regular_file(std::string(path), S_IFDIR);
  if (info.special) return not_a_regular_file(std::string(path), info.special);
  if (info.size > limit) return too_large(std::string(path), info.size, limit);
  return ok_status();
}

Result<std::string> Backend::read_object(std::string_view path, uint64_t limit, std::optional<ObjectInfo>* seen) {
  EXTRAFS_TRY(info, stat(path));
  if (seen) *seen = info;
  EXTRAFS_CHECK_STATUS(check_object(path, info, limit));
  std::string out(info.size, '\0');
  EXTRAFS_TRY(n, read(path, 0, std::as_writable_bytes(std::span(out.data(), out.size()))));
  if (n != info.size) return make_error(EIO, std::string(path) + " changed while being read");
  return out;
}

Result<std::unique_ptr<Backend>> open_backend(const std::string& source, const BackendOptions& options) {
  if (source.rfind("nfs://", 0) == 0) return make_nfs_backend(source, options.timeout_ms, options.allow_offline);
  if (is_http_source(source)) return make_http_backend(source, options.http, options.timeout_ms);
  if (source.find("://") != std::string::npos)
    return make_error(EINVAL,
                      "source '" + source + "' is none of nfs://, http://, https://, s3:// or an absolute path");
  return LocalBackend::open(source);
}

Result<std::unique_ptr<Backend>> open_backend(const std::string& source, int timeout_ms, bool allow_offline) {
  BackendOptions options;
  options.timeout_ms = timeout_ms;
  options.allow_offline = allow_offline;
  return open_backend(source, options);
}

bool is_source(const std::string& source) {
  return (!source.empty() && source.front() == '/') || source.rfind("nfs://", 0) == 0 || is_http_source(source);
}

}  // namespace extrafs::backend
