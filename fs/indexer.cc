#include "fs/indexer.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "common/hash.h"
#include "common/str_util.h"
#include "fs/catalog.h"
#include "fs/layer_index.h"

namespace extrafs::fs {

namespace {

// Restores the working directory when the walk ends.
class CwdGuard {
 public:
  CwdGuard() : fd_(::open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {}
  ~CwdGuard() {
    if (fd_ >= 0) {
      (void)::fchdir(fd_);
      ::close(fd_);
    }
  }

 private:
  int fd_;
};

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Reads the xattrs of `name` (relative to the cwd), sorted by name.
Result<std::vector<std::pair<std::string, std::string>>> read_xattrs(const char* name, const std::string& shown) {
  std::vector<std::pair<std::string, std::string>> out;
  ssize_t len = ::llistxattr(name, nullptr, 0);
  if (len < 0) {
    if (errno == ENOTSUP) return out;
    return Error::from_errno(errno, "list xattrs of " + shown);
  }
  std::string names(static_cast<size_t>(len), '\0');
  len = ::llistxattr(name, names.data(), names.size());
  if (len < 0) return Error::from_errno(errno, "list xattrs of " + shown);
  names.resize(static_cast<size_t>(len));
  for (size_t pos = 0; pos < names.size();) {
    std::string key(names.c_str() + pos);
    pos += key.size() + 1;
    if (key.empty()) continue;
    ssize_t vlen = ::lgetxattr(name, key.c_str(), nullptr, 0);
    if (vlen < 0) {
      if (errno == ENODATA) continue;
      return Error::from_errno(errno, "read xattr " + key + " of " + shown);
    }
    std::string value(static_cast<size_t>(vlen), '\0');
    vlen = ::lgetxattr(name, key.c_str(), value.data(), value.size());
    if (vlen < 0) return Error::from_errno(errno, "read xattr " + key + " of " + shown);
    value.resize(static_cast<size_t>(vlen));
    out.emplace_back(std::move(key), std::move(value));
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Chunks a regular file (relative to the cwd), skipping holes.
Status chunk_file(const char* name, const std::string& shown, uint64_t size, uint32_t object, uint32_t chunk_size,
                  std::vector<ChunkRecord>* chunks, std::vector<char>* buf) {
  int raw_fd = ::open(name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
  if (raw_fd < 0 && errno == EPERM) raw_fd = ::open(name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (raw_fd < 0) return Error::from_errno(errno, "open " + shown);
  Fd fd(raw_fd);
  buf->resize(chunk_size);
  uint64_t n_chunks = size / chunk_size + (size % chunk_size ? 1 : 0);
  uint64_t next_data = 0;  // offset of the next data region at or after the current chunk
  for (uint64_t c = 0; c < n_chunks; ++c) {
    uint64_t off = c * chunk_size;
    uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(chunk_size, size - off));
    ChunkRecord r{};
    r.raw_len = len;
    if (next_data < off + len) {
      off_t d = ::lseek(fd.get(), static_cast<off_t>(off), SEEK_DATA);
      next_data = d < 0 ? UINT64_MAX : static_cast<uint64_t>(d);  // ENXIO: no data until EOF
    }
    bool hole = next_data >= off + len;
    if (!hole) {
      size_t done = 0;
      while (done < len) {
        ssize_t n = ::pread(fd.get(), buf->data() + done, len - done, static_cast<off_t>(off + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return Error::from_errno(errno, "read " + shown);
        if (n == 0) return make_error(EIO, shown + " shrank while being indexed");
        done += static_cast<size_t>(n);
      }
      hole = std::all_of(buf->begin(), buf->begin() + len, [](char ch) { return ch == 0; });
    }
    if (hole) {
      r.flags = kChunkZero;
    } else {
      r.object = object;
      r.offset = off;
      r.stored_len = len;
      Digest128 d = xxh3_128(buf->data(), len);
      std::memcpy(r.digest, d.bytes.data(), 16);
    }
    chunks->push_back(r);
  }
  return ok_status();
}

struct Walker {
  IndexBuilder builder;
  std::string prefix;
  std::map<std::pair<dev_t, ino_t>, uint32_t> links;
  std::vector<char> buf;

  explicit Walker(uint32_t chunk_size, std::string object_prefix) : builder(chunk_size), prefix(std::move(object_prefix)) {}

  Status add_entry(const char* name, uint32_t parent, const std::string& rel, std::vector<std::pair<uint32_t, std::string>>* dirs) {
    struct stat st;
    std::string shown = rel.empty() ? "." : rel;
    if (::lstat(name, &st) != 0) return Error::from_errno(errno, "stat " + shown);
    BuildEntry e;
    e.name = rel.empty() ? "" : std::string(name);
    e.parent = parent;
    e.st = st;
    if (!S_ISDIR(st.st_mode) && st.st_nlink > 1) {
      auto [it, inserted] = links.try_emplace({st.st_dev, st.st_ino}, static_cast<uint32_t>(builder.size()));
      if (!inserted) {
        e.link_of = it->second;
        builder.add(std::move(e));
        return ok_status();
      }
    }
    EXTRAFS_TRY(xattrs, read_xattrs(name, shown));
    e.xattrs = std::move(xattrs);
    if (S_ISLNK(st.st_mode)) {
      std::string target(static_cast<size_t>(st.st_size) + 1, '\0');
      ssize_t n = ::readlink(name, target.data(), target.size());
      if (n < 0) return Error::from_errno(errno, "readlink " + shown);
      target.resize(static_cast<size_t>(n));
      e.target = std::move(target);
    } else if (S_ISREG(st.st_mode)) {
      uint32_t obj = builder.add_object(prefix + "/" + rel);
      EXTRAFS_CHECK_STATUS(chunk_file(name, shown, static_cast<uint64_t>(st.st_size), obj, builder.chunk_size(), &e.chunks, &buf));
    }
    bool is_dir = S_ISDIR(st.st_mode);
    uint32_t id = builder.add(std::move(e));
    if (is_dir) dirs->emplace_back(id, rel);
    return ok_status();
  }

  // Breadth-first walk; each directory is entered with chdir so that paths stay short.
  Status walk(const std::string& root) {
    CwdGuard guard;
    if (::chdir(root.c_str()) != 0) return Error::from_errno(errno, root);
    int root_fd = ::open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0) return Error::from_errno(errno, root);
    Fd rootfd(root_fd);
    // Flush delayed allocation first: until written back, ext4 and xfs report st_blocks of
    // freshly written files that change later, and the index must record the settled value.
    (void)::syncfs(root_fd);
    std::vector<std::pair<uint32_t, std::string>> dirs;
    EXTRAFS_CHECK_STATUS(add_entry(".", 0, "", &dirs));
    for (size_t q = 0; q < dirs.size(); ++q) {
      auto [id, rel] = dirs[q];
      // Enter rel component by component from the root: no path is ever longer than one name.
      if (::fchdir(rootfd.get()) != 0) return Error::from_errno(errno, root);
      size_t start = 0;
      while (start < rel.size()) {
        size_t end = rel.find('/', start);
        if (end == std::string::npos) end = rel.size();
        std::string comp = rel.substr(start, end - start);
        if (::chdir(comp.c_str()) != 0) return Error::from_errno(errno, root + "/" + rel);
        start = end + 1;
      }
      // O_NOATIME: indexing must not change what it indexes (re-running it changes nothing).
      int dfd = ::open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOATIME);
      if (dfd < 0 && errno == EPERM) dfd = ::open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      DIR* d = dfd < 0 ? nullptr : ::fdopendir(dfd);
      if (!d) {
        int e = errno;
        if (dfd >= 0) ::close(dfd);
        return Error::from_errno(e, "open directory " + root + "/" + rel);
      }
      std::vector<std::string> names;
      while (struct dirent* de = ::readdir(d)) {
        if (std::strcmp(de->d_name, ".") == 0 || std::strcmp(de->d_name, "..") == 0) continue;
        names.emplace_back(de->d_name);
      }
      ::closedir(d);
      std::sort(names.begin(), names.end());
      for (const auto& n : names) {
        std::string child_rel = rel.empty() ? n : rel + "/" + n;
        EXTRAFS_CHECK_STATUS(add_entry(n.c_str(), id, child_rel, &dirs));
      }
    }
    return ok_status();
  }
};

Result<std::string> read_small_file(const std::string& path) {
  int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw < 0) return Error::from_errno(errno, path);
  Fd fd(raw);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno(errno, path);
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > (64u << 20)) return make_error(EFBIG, path + " is too large");
  }
  return out;
}

bool is_dir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

Status mkdirs(const std::string& path) {
  std::string cur;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    cur = path.substr(0, end);
    if (!cur.empty() && ::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) return Error::from_errno(errno, "mkdir " + cur);
    start = end + 1;
  }
  return ok_status();
}

}  // namespace

Result<std::string> index_directory(const std::string& dir, const std::string& object_prefix, uint32_t chunk_size) {
  Walker w(chunk_size, object_prefix);
  EXTRAFS_CHECK_STATUS(w.walk(dir));
  return w.builder.serialize();
}

Status write_file_atomic(const std::string& path, std::string_view data) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int raw = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (raw < 0) return Error::from_errno(errno, "create " + tmp);
  {
    Fd fd(raw);
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        return Error::from_errno(e, "write " + tmp);
      }
      done += static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) != 0) {
      int e = errno;
      ::unlink(tmp.c_str());
      return Error::from_errno(e, "fsync " + tmp);
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    return Error::from_errno(e, "rename " + tmp);
  }
  return ok_status();
}

Result<IndexStoreReport> index_store(const std::string& store_in, const std::function<void(const std::string&)>& progress) {
  std::string store = store_in;
  while (store.size() > 1 && store.back() == '/') store.pop_back();
  auto say = [&](const std::string& s) {
    if (progress) progress(s);
  };
  struct stat st;
  if (::stat(store.c_str(), &st) != 0) return Error::from_errno(errno, "store " + store);
  if (!S_ISDIR(st.st_mode)) return make_error(ENOTDIR, "store " + store + " is not a directory");
  const std::string ov = store + "/overlay2";
  if (!is_dir(ov)) return make_error(ENOENT, "store " + store + " has no overlay2/ directory (not a Hermes-style store)");

  IndexStoreReport report;
  Catalog catalog;
  const std::string catalog_path = store + "/" + kCatalogPath;
  std::string old_catalog_text;
  if (auto text = read_small_file(catalog_path); text.ok()) {
    auto parsed = Catalog::parse(*text);
    if (!parsed.ok()) return make_error(parsed.code(), catalog_path + ": " + parsed.error().message);
    catalog = std::move(parsed).value();
    old_catalog_text = std::move(text).value();
  } else if (text.code() != ENOENT) {
    return text.error();
  }
  EXTRAFS_CHECK_STATUS(mkdirs(store + "/extrafs/layers"));

  DIR* d = ::opendir(ov.c_str());
  if (!d) return Error::from_errno(errno, ov);
  std::vector<std::string> ids;
  while (struct dirent* de = ::readdir(d)) {
    std::string n = de->d_name;
    if (n == "." || n == ".." || n == "l") continue;
    if (is_dir(ov + "/" + n + "/diff")) ids.push_back(n);
  }
  ::closedir(d);
  std::sort(ids.begin(), ids.end());

  for (const auto& id : ids) {
    const std::string layer_dir = ov + "/" + id;
    const std::string index_file = store + "/" + layer_index_path(id);
    CatalogLayer layer;
    layer.cache_id = id;
    if (auto link = read_small_file(layer_dir + "/link"); link.ok()) layer.link = trim(*link);
    if (auto lower = read_small_file(layer_dir + "/lower"); lower.ok()) layer.lower = trim(*lower);
    std::shared_ptr<const LayerIndex> index;
    if (auto existing = read_small_file(index_file); existing.ok()) {
      if (auto parsed = LayerIndex::parse(std::move(existing).value()); parsed.ok()) index = *parsed;
    }
    if (index) {
      report.layers_present++;
    } else {
      say(fmt::format("indexing layer {}", id));
      EXTRAFS_TRY(bytes, index_directory(layer_dir + "/diff", "overlay2/" + id + "/diff"));
      auto parsed = LayerIndex::parse(bytes);
      if (!parsed.ok()) return make_error(EIO, "index of " + id + " does not verify: " + parsed.error().message);
      EXTRAFS_CHECK_STATUS(write_file_atomic(index_file, bytes));
      index = *parsed;
      report.layers_indexed++;
    }
    layer.index_digest = index->digest();
    layer.bytes = index->content_bytes();
    auto it = std::find_if(catalog.layers.begin(), catalog.layers.end(), [&](const CatalogLayer& l) { return l.cache_id == id; });
    if (it == catalog.layers.end()) catalog.layers.push_back(std::move(layer));
    else *it = std::move(layer);
  }

  if (is_dir(store + "/image")) {
    EXTRAFS_TRY(bytes, index_directory(store + "/image", "image"));
    auto parsed = LayerIndex::parse(bytes);
    if (!parsed.ok()) return make_error(EIO, "index of image/ does not verify: " + parsed.error().message);
    Digest128 digest = (*parsed)->digest();
    const std::string path = store + "/" + image_index_path(digest);
    if (::access(path.c_str(), F_OK) != 0) {
      EXTRAFS_CHECK_STATUS(write_file_atomic(path, bytes));
      report.image_indexed = true;
    }
    catalog.image_index = digest;
  }

  std::string text = catalog.serialize();
  if (text != old_catalog_text) {
    EXTRAFS_CHECK_STATUS(write_file_atomic(catalog_path, text));
    report.catalog_written = true;
  }
  return report;
}

}  // namespace extrafs::fs
