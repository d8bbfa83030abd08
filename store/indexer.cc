#include "store/indexer.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <unordered_map>
#include <vector>

#include "common/hash.h"
#include "common/posix_file.h"
#include "common/str_util.h"
#include "fs/catalog.h"
#include "fs/layer_index.h"
#include "store/catalog_writer.h"
#include "store/chunking.h"
#include "store/layout.h"
#include "store/store_lock.h"

namespace extrafs::store {

using fs::BuildEntry;
using fs::CatalogLayer;
using fs::LayerIndex;

namespace {

constexpr uint64_t kSmallFile = uint64_t{64} << 20;

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
                  std::vector<ChunkRecord>* chunks, std::string* buf) {
  uint64_t next_data = 0;  // offset of the next data region at or after the current chunk
  auto read = [&](uint64_t off, uint32_t len, char* dst, bool* hole) -> Status {
    if (next_data < off + len) {
      off_t d = ::lseek(fd, static_cast<off_t>(off), SEEK_DATA);
      next_data = d < 0 ? UINT64_MAX : static_cast<uint64_t>(d);  // ENXIO: no data until EOF
    }
    if (next_data >= off + len) {
      *hole = true;
      return ok_status();
    }
    ssize_t n = pread_all(fd, dst, len, static_cast<off_t>(off));
    if (n < 0) return Error::from_errno(static_cast<int>(-n), "read " + rel);
    if (static_cast<size_t>(n) < len) return make_error(EIO, rel + " shrank while being indexed");
    return ok_status();
  };
  auto store = [&](uint64_t off, std::string_view raw, ChunkRecord* rec) { return sink.put(builder, rel, off, raw, rec); };
  EXTRAFS_TRY(content, chunk_content(size, builder.chunk_size(), *buf, read, store));
  *chunks = std::move(content.chunks);
  return ok_status();
}

// Walks a tree into an IndexBuilder: metadata first (breadth-first), then the content of the
// regular files, in the order the options ask for.
struct Walker {
  IndexBuilder builder;
  ChunkSink& sink;
  std::map<std::pair<dev_t, ino_t>, uint32_t> links;
  std::vector<std::pair<uint32_t, std::string>> files;  // builder index, relative path
  std::string buf;

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

  // Breadth-first walk of the directory open as `dir_fd` (named `root` in messages); each
  // directory is entered with fchdir so that paths stay short, and only through a directory
  // opened with O_NOFOLLOW: a symlink in the tree is an entry, never a way out of it.
  Status walk(int dir_fd, const std::string& root, const WalkOptions& opts) {
    CwdGuard guard;
    int root_fd = ::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0) return Error::from_errno(errno, root);
    Fd rootfd(root_fd);
    if (::fchdir(root_fd) != 0) return Error::from_errno(errno, root);
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
        Fd sub(::open(comp.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!sub.valid() || ::fchdir(sub.get()) != 0) return Error::from_errno(errno, root + "/" + rel);
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

}  // namespace

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

Status ObjectSink::put(IndexBuilder& builder, const std::string&, uint64_t, std::string_view raw, ChunkRecord* rec) {
  Digest128 digest;
  std::memcpy(digest.bytes.data(), rec->digest, sizeof rec->digest);
  const StoreLayout layout(store_);
  const std::string path = layout.object(digest);
  if (!path_exists(path)) {
    if (written_ == 0) EXTRAFS_CHECK_STATUS(make_dirs(layout.objects_dir()));
    EXTRAFS_CHECK_STATUS(write_file_atomic(path, raw));
    written_++;
  }
  rec->object = builder.add_object(content_object_path(digest));
  rec->offset = 0;
  rec->stored_len = static_cast<uint32_t>(raw.size());
  rec->flags = 0;
  return ok_status();
}

Result<std::string> index_directory_at(int dir_fd, const std::string& shown, ChunkSink& sink, const WalkOptions& options) {
  Walker w(options.chunk_size, sink);
  EXTRAFS_CHECK_STATUS(w.walk(dir_fd, shown, options));
  return w.builder.serialize();
}

Result<std::string> index_directory_at(int dir_fd, const std::string& shown, const std::string& object_prefix,
                                       uint32_t chunk_size) {
  PlainFileSink sink(object_prefix);
  WalkOptions opts;
  opts.chunk_size = chunk_size;
  return index_directory_at(dir_fd, shown, sink, opts);
}

Result<std::string> index_directory(const std::string& dir, ChunkSink& sink, const WalkOptions& options) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return Error::from_errno(errno, dir);
  return index_directory_at(fd.get(), dir, sink, options);
}

Result<std::string> index_directory(const std::string& dir, const std::string& object_prefix, uint32_t chunk_size) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return Error::from_errno(errno, dir);
  return index_directory_at(fd.get(), dir, object_prefix, chunk_size);
}

Result<IndexStoreReport> index_store(const std::string& store_in, const std::function<void(const std::string&)>& progress) {
  const StoreLayout layout(store_in);
  const std::string& store = layout.root();
  auto say = [&](const std::string& s) {
    if (progress) progress(s);
  };
  // The store path itself is the operator's; everything in it is opened beneath it, never
  // through a symlink (the store may have been copied from anywhere).
  Fd root(::open(store.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root.valid()) {
    if (errno == ENOTDIR) return make_error(ENOTDIR, "store " + store + " is not a directory");
    return Error::from_errno(errno, "store " + store);
  }
  if (auto st = check_dir_beneath(root.get(), "overlay2", store); !st.ok()) {
    if (st.code() == ENOENT) return make_error(ENOENT, "store " + store + " has no overlay2/ directory (not a Hermes-style store)");
    return st.error();
  }

  IndexStoreReport report;
  EXTRAFS_CHECK_STATUS(make_dirs(layout.layers_dir()));
  EXTRAFS_CHECK_STATUS(check_dir_beneath(root.get(), "extrafs/layers", store));
  // One writer at a time (publish holds the same lock); the catalog is read under it.
  EXTRAFS_TRY(lock, StoreWriteLock::take(root.get(), store));
  EXTRAFS_TRY(sc, load_store_catalog(store));
  auto skip = [&](const std::string& name, const std::string& why) {
    report.skipped.push_back(fmt::format("skipping overlay2/{}: {}", escape_control(name), why));
  };

  EXTRAFS_TRY(overlay, open_beneath(root.get(), "overlay2", O_RDONLY | O_DIRECTORY, store));
  EXTRAFS_TRY(names, list_dir_beneath(overlay.get(), "", layout.overlay2_dir()));
  std::vector<std::string> ids;
  for (const auto& n : names) {
    if (n == "l") continue;
    // Only directories with a diff/ are layers; a symlinked diff (or a symlinked layer
    // directory) is refused, never followed.
    auto diff = open_beneath(overlay.get(), n + "/diff", O_RDONLY | O_DIRECTORY, layout.overlay2_dir());
    if (!diff.ok() && diff.code() != ELOOP) continue;
    // The catalog takes only docker cache-ids: anything else would make it unreadable.
    if (!is_cache_id(n)) {
      skip(n, "not a docker cache-id");
      continue;
    }
    if (!diff.ok()) {
      skip(n, "diff or the layer directory is a symlink; refusing to follow it");
      continue;
    }
    ids.push_back(n);
  }

  for (const auto& id : ids) {
    const std::string index_file = layout.layer_index(id);
    CatalogLayer layer;
    layer.cache_id = id;
    // link and lower: absent is fine; a symlink or anything else unreadable skips the layer.
    auto meta = [&](const char* name, std::optional<std::string>* out) -> Status {
      auto text = read_file_beneath(overlay.get(), id + "/" + name, layout.overlay2_dir(), kSmallFile);
      if (text.ok()) *out = trim_trailing(*text);
      else if (text.code() != ENOENT) return text.error();
      return ok_status();
    };
    std::optional<std::string> link;
    auto st = meta("link", &link);
    if (st.ok()) st = meta("lower", &layer.lower);
    if (!st.ok()) {
      skip(id, st.error().message);
      continue;
    }
    layer.link = link.value_or("");
    // The reader's own rules, so that the catalog written is one every mount accepts.
    if (auto valid = fs::check_catalog_layer(layer); !valid.ok()) {
      skip(id, valid.error().message);
      continue;
    }
    std::shared_ptr<const LayerIndex> index;
    if (auto existing = read_file_beneath(root.get(), fs::layer_index_path(id), store, kSmallFile); existing.ok()) {
      if (auto parsed = LayerIndex::parse(std::move(existing).value()); parsed.ok()) index = *parsed;
    }
    if (index) {
      report.layers_present++;
    } else {
      say(fmt::format("indexing layer {}", id));
      EXTRAFS_TRY(diff, open_beneath(overlay.get(), id + "/diff", O_RDONLY | O_DIRECTORY, layout.overlay2_dir()));
      EXTRAFS_TRY(bytes, index_directory_at(diff.get(), layout.overlay_dir(id) + "/diff", "overlay2/" + id + "/diff"));
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
  // Layers whose lower chain the daemon would refuse are left out of the catalog too.
  for (const auto& refused : fs::unchained_layers(sc.catalog)) {
    skip(refused.first, refused.second);
    std::erase_if(sc.catalog.layers, [&](const CatalogLayer& l) { return l.cache_id == refused.first; });
  }

  EXTRAFS_TRY(commit, commit_store_catalog(store, &sc));
  report.image_indexed = commit.image_indexed;
  report.catalog_written = commit.catalog_written;
  return report;
}

}  // namespace extrafs::store
