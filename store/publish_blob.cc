#include "store/publish_blob.h"

#include <fcntl.h>
#include <lz4.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>

#include "common/posix_file.h"

namespace extrafs::store {

namespace {
constexpr size_t kWriteBuffer = 4u << 20;
}

bool lz4_if_smaller(std::string_view raw, std::string* out) {
  if (raw.size() > static_cast<size_t>(LZ4_MAX_INPUT_SIZE)) return false;
  out->resize(static_cast<size_t>(LZ4_compressBound(static_cast<int>(raw.size()))));
  // Capacity raw.size()-1: anything that does not come out smaller is not worth decompressing.
  int cap = static_cast<int>(raw.size()) - 1;
  if (cap <= 0) return false;
  int n = LZ4_compress_default(raw.data(), out->data(), static_cast<int>(raw.size()), cap);
  if (n <= 0) return false;
  out->resize(static_cast<size_t>(n));
  return true;
}

uint64_t ordered_prefix(const format::LayerIndex& idx, const std::vector<std::string>& paths, std::string_view blob) {
  const std::optional<uint32_t> object = idx.find_object(blob);
  if (!object) return 0;
  std::vector<std::pair<uint64_t, uint64_t>> extents;  // (offset, end) of the files' chunks in the blob
  for (const auto& path : paths) {
    std::optional<uint32_t> e = 0;
    for (size_t start = 0; e && start < path.size();) {
      size_t end = std::min(path.find('/', start), path.size());
      if (end > start) {
        if (!idx.is_dir(*e))
          e.reset();
        else
          e = idx.lookup(*e, std::string_view(path).substr(start, end - start));
      }
      start = end + 1;
    }
    if (!e || *e == 0 || !S_ISREG(idx.attr_entry(*e).mode)) continue;
    for (const auto& c : idx.chunks(*e))
      if (!(c.flags & format::kChunkZero) && c.object == *object)
        extents.emplace_back(c.offset, c.offset + c.stored_len);
  }
  std::sort(extents.begin(), extents.end());
  // A file listed twice, or a hard link to one already listed, repeats extents: skip what is covered.
  uint64_t prefix = 0;
  for (const auto& [off, end] : extents) {
    if (off > prefix) break;
    prefix = std::max(prefix, end);
  }
  return prefix;
}

Result<std::unique_ptr<BlobWriter>> BlobWriter::create(const std::string& path, std::string object_path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return Error::from_errno(errno, "create " + path);
  return std::unique_ptr<BlobWriter>(new BlobWriter(fd, path, std::move(object_path)));
}

Result<std::unique_ptr<BlobWriter>> BlobWriter::create_scratch(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDWR | O_TMPFILE | O_CLOEXEC, 0600);
  if (fd < 0) return Error::from_errno(errno, "create a scratch file in " + dir);
  return std::unique_ptr<BlobWriter>(new BlobWriter(fd, dir + "/(scratch)", ""));
}

BlobWriter::~BlobWriter() {
  if (fd_ >= 0) ::close(fd_);
}

Status BlobWriter::write(std::string_view data) {
  if (buf_.size() + data.size() > kWriteBuffer) EXTRAFS_CHECK_STATUS(flush());
  if (data.size() >= kWriteBuffer) {
    buf_.assign(data);
    return flush();
  }
  buf_.append(data);
  return ok_status();
}

Status BlobWriter::flush() {
  if (int e = write_all(fd_, buf_.data(), buf_.size())) return Error::from_errno(e, "write " + path_);
  buf_.clear();
  return ok_status();
}

Status BlobWriter::pack(format::IndexBuilder& builder, std::string_view raw, format::ChunkRecord* rec) {
  rec->object = object_.empty() ? 0 : builder.add_object(object_);
  rec->offset = offset_;
  std::string_view stored = raw;
  rec->flags = 0;
  if (lz4_if_smaller(raw, &lz4_)) {
    rec->flags = format::kChunkLz4;
    stored = lz4_;
  }
  rec->stored_len = static_cast<uint32_t>(stored.size());
  EXTRAFS_CHECK_STATUS(write(stored));
  offset_ += stored.size();
  raw_bytes_ += raw.size();
  return ok_status();
}

Result<uint64_t> BlobWriter::append(BlobWriter& other) {
  EXTRAFS_CHECK_STATUS(flush());
  EXTRAFS_CHECK_STATUS(other.flush());
  uint64_t base = offset_;
  loff_t in = 0;
  uint64_t left = other.offset_;
  while (left > 0) {
    ssize_t n = ::copy_file_range(other.fd_, &in, fd_, nullptr, left, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL)) {
      // Fall back to read/write.
      std::string chunk(1u << 20, '\0');
      while (left > 0) {
        ssize_t r = ::pread(other.fd_, chunk.data(), std::min<uint64_t>(chunk.size(), left), in);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return Error::from_errno(r < 0 ? errno : EIO, "read " + other.path_);
        buf_.assign(chunk.data(), static_cast<size_t>(r));
        EXTRAFS_CHECK_STATUS(flush());
        in += r;
        left -= static_cast<uint64_t>(r);
      }
      break;
    }
    if (n < 0) return Error::from_errno(errno, "copy into " + path_);
    if (n == 0) return make_error(EIO, "copy into " + path_ + ": source ended early");
    left -= static_cast<uint64_t>(n);
  }
  offset_ += other.offset_;
  raw_bytes_ += other.raw_bytes_;
  return base;
}

Status BlobWriter::finish() {
  EXTRAFS_CHECK_STATUS(flush());
  if (::fsync(fd_) != 0) return Error::from_errno(errno, "fsync " + path_);
  return ok_status();
}

}  // namespace extrafs::store
