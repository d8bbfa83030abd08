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
#include <unordered_map>
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

// Opens `rel` (relative to directory fd `root`) one component at a time, so that no path is ever
// longer than one name and no symlink is followed.
Result<int> open_relative(int root, const std::string& rel, const std::string& shown) {
  int dir = ::dup(root);
  if (dir < 0) return Error::from_errno(errno, "dup");
  size_t start = 0;
  for (;;) {
    size_t end = rel.find('/', start);
    bool last = end == std::string::npos;
    std::string comp = rel.substr(start, last ? std::string::npos : end - start);
    int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (last ? 0 : O_DIRECTORY);
    // O_NOATIME: indexing must not change what it indexes (re-running it changes nothing).
    int fd = ::openat(dir, comp.c_str(), flags | O_NOATIME);
    if (fd < 0 && errno == EPERM) fd = ::openat(dir, comp.c_str(), flags);
    int e = errno;
    ::close(dir);
    if (fd < 0) return Error::from_errno(e, "open " + shown);
    if (last) return fd;
    dir = fd;
    start = end + 1;
  }
}

// Chunks a regular file, skipping holes; non-zero chunks go to `sink`.
Status chunk_file(int fd, const std::string& rel, uint64_t size, IndexBuilder& builder, ChunkSink& sink,
                  std::vector<ChunkRecord>* chunks, std::vector<char>* buf) {
  const uint32_t chunk_size = builder.chunk_size();
  buf->resize(chunk_size);
  uint64_t n_chunks = size / chunk_size + (size % chunk_size ? 1 : 0);
  uint64_t next_data = 0;  // offset of the next data region at or after the current chunk
  for (uint64_t c = 0; c < n_chunks; ++c) {
    uint64_t off = c * chunk_size;
    uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(chunk_size, size - off));
    ChunkRecord r{};
    r.raw_len = len;
    if (next_data < off + len) {
      off_t d = ::lseek(fd, static_cast<off_t>(off), SEEK_DATA);
      next_data = d < 0 ? UINT64_MAX : static_cast<uint64_t>(d);  // ENXIO: no data until EOF
    }
    if (next_data >= off + len) {
      r.flags = kChunkZero;
    } else {
      size_t done = 0;
      while (done < len) {
        ssize_t n = ::pread(fd, buf->data() + done, len - done, static_cast<off_t>(off + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return Error::from_errno(errno, "read " + rel);
        if (n == 0) return make_error(EIO, rel + " shrank while being indexed");
        done += static_cast<size_t>(n);
      }
      std::string_view raw(buf->data(), len);
      if (!describe_chunk(raw, &r)) EXTRAFS_CHECK_STATUS(sink.put(builder, rel, off, raw, &r));
    }
    chunks->push_back(r);
  }
  return ok_status();
}

// Walks a tree into an IndexBuilder: metadata first (breadth-first), then the content of the
// regular files, in the order the options ask for.
struct Walker {
  IndexBuilder builder;
  ChunkSink& sink;
  std::map<std::pair<dev_t, ino_t>, uint32_t> links;
  std::vector<std::pair<uint32_t, std::string>> files;  // builder index, relative path
  std::vector<char> buf;

  Walker(uint32_t chunk_size, ChunkSink& s) : builder(chunk_size), sink(s) {}

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
    }
    bool is_dir = S_ISDIR(st.st_mode), is_reg = S_ISREG(st.st_mode);
    uint32_t id = builder.add(std::move(e));
    if (is_dir) dirs->emplace_back(id, rel);
    if (is_reg) files.emplace_back(id, rel);
    return ok_status();
  }

  // Breadth-first walk; each directory is entered with chdir so that paths stay short.
  Status walk(const std::string& root, const WalkOptions& opts) {
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
    return content(rootfd.get(), opts);
  }

  // Content pass: the files named in opts.first (in that order), then every other file in walk order.
  Status content(int root_fd, const WalkOptions& opts) {
    std::vector<size_t> order;
    order.reserve(files.size());
    std::vector<bool> taken(files.size(), false);
    if (!opts.first.empty()) {
      std::unordered_map<std::string_view, size_t> by_path;
      for (size_t i = 0; i < files.size(); ++i) by_path.emplace(files[i].second, i);
      for (const auto& p : opts.first) {
        auto it = by_path.find(p);
        if (it == by_path.end() || taken[it->second]) continue;
        taken[it->second] = true;
        order.push_back(it->second);
      }
    }
    for (size_t i = 0; i < files.size(); ++i)
      if (!taken[i]) order.push_back(i);
    for (size_t i : order) {
      auto& [id, rel] = files[i];
      BuildEntry& e = builder.at(id);
      uint64_t size = static_cast<uint64_t>(e.st.st_size);
      EXTRAFS_TRY(fd, open_relative(root_fd, rel, rel));
      Fd file(fd);
      EXTRAFS_CHECK_STATUS(sink.begin_file(builder, rel));
      std::vector<ChunkRecord> chunks;
      EXTRAFS_CHECK_STATUS(chunk_file(file.get(), rel, size, builder, sink, &chunks, &buf));
      builder.at(id).chunks = std::move(chunks);
      if (opts.on_file) opts.on_file(size);
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

}  // namespace

bool describe_chunk(std::string_view raw, ChunkRecord* rec) {
  rec->raw_len = static_cast<uint32_t>(raw.size());
  if (std::all_of(raw.begin(), raw.end(), [](char ch) { return ch == 0; })) {
    rec->flags = kChunkZero;
    rec->object = 0;
    rec->offset = 0;
    rec->stored_len = 0;
    std::memset(rec->digest, 0, sizeof rec->digest);
    return true;
  }
  Digest128 d = xxh3_128(raw.data(), raw.size());
  std::memcpy(rec->digest, d.bytes.data(), 16);
  return false;
}

Status PlainFileSink::begin_file(IndexBuilder& builder, const std::string& rel) {
  object_ = builder.add_object(prefix_ + "/" + rel);
  return ok_status();
}

Status PlainFileSink::put(IndexBuilder&, const std::string&, uint64_t file_offset, std::string_view raw, ChunkRecord* rec) {
  rec->object = object_;
  rec->offset = file_offset;
  rec->stored_len = static_cast<uint32_t>(raw.size());
  rec->flags = 0;
  return ok_status();
}

Result<std::string> index_directory(const std::string& dir, ChunkSink& sink, const WalkOptions& options) {
  Walker w(options.chunk_size, sink);
  EXTRAFS_CHECK_STATUS(w.walk(dir, options));
  return w.builder.serialize();
}

Result<std::string> index_directory(const std::string& dir, const std::string& object_prefix, uint32_t chunk_size) {
  PlainFileSink sink(object_prefix);
  WalkOptions opts;
  opts.chunk_size = chunk_size;
  return index_directory(dir, sink, opts);
}

Status make_dirs(const std::string& path) {
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

Result<StoreCatalog> load_store_catalog(const std::string& store) {
  StoreCatalog sc;
  const std::string catalog_path = store + "/" + kCatalogPath;
  auto text = read_small_file(catalog_path);
  if (text.ok()) {
    auto parsed = Catalog::parse(*text);
    if (!parsed.ok()) return make_error(parsed.code(), catalog_path + ": " + parsed.error().message);
    sc.catalog = std::move(parsed).value();
    sc.text = std::move(text).value();
  } else if (text.code() != ENOENT) {
    return text.error();
  }
  return sc;
}

void merge_catalog_layer(Catalog* catalog, CatalogLayer layer) {
  auto it = std::find_if(catalog->layers.begin(), catalog->layers.end(),
                         [&](const CatalogLayer& l) { return l.cache_id == layer.cache_id; });
  if (it == catalog->layers.end()) catalog->layers.push_back(std::move(layer));
  else *it = std::move(layer);
}

Result<CatalogCommit> commit_store_catalog(const std::string& store, StoreCatalog* sc) {
  CatalogCommit report;
  EXTRAFS_CHECK_STATUS(make_dirs(store + "/extrafs/layers"));
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
    sc->catalog.image_index = digest;
  }
  std::string text = sc->catalog.serialize();
  if (text != sc->text) {
    EXTRAFS_CHECK_STATUS(write_file_atomic(store + "/" + kCatalogPath, text));
    report.catalog_written = true;
    sc->text = std::move(text);
  }
  return report;
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
  EXTRAFS_TRY(sc, load_store_catalog(store));
  EXTRAFS_CHECK_STATUS(make_dirs(store + "/extrafs/layers"));

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
    merge_catalog_layer(&sc.catalog, std::move(layer));
  }

  EXTRAFS_TRY(commit, commit_store_catalog(store, &sc));
  report.image_indexed = commit.image_indexed;
  report.catalog_written = commit.catalog_written;
  return report;
}

}  // namespace extrafs::fs
