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
#include <set>
#include <unordered_map>
#include <vector>

#include "common/hash.h"
#include "common/posix_file.h"
#include "common/str_util.h"
#include "format/catalog.h"
#include "format/layer_index.h"
#include "store/catalog_writer.h"
#include "store/chunking.h"
#include "store/layout.h"
#include "store/publish_blob.h"
#include "store/remove_images.h"
#include "store/store_lock.h"

namespace extrafs::store {

using format::BuildEntry;
using format::CatalogLayer;
using format::LayerIndex;

namespace {

// openat() with O_NOATIME where the caller may use it (the file's owner or root): indexing must
// not change what it indexes, so re-running it changes nothing.
int openat_noatime(int dir, const char* name, int flags) {
  int fd = ::openat(dir, name, flags | O_NOATIME | O_CLOEXEC);
  if (fd < 0 && errno == EPERM) fd = ::openat(dir, name, flags | O_CLOEXEC);
  return fd;
}

// Reads the xattrs of the entry open as `fd`, an O_PATH descriptor (so that a symlink, a device
// or a FIFO is never opened for I/O), sorted by name. Linux has no flistxattr() for O_PATH
// descriptors; the descriptor's /proc/self/fd link leads to the very inode it holds (for a
// symlink, the symlink itself), whatever happened to its name since.
Result<std::vector<std::pair<std::string, std::string>>> read_xattrs(int fd, const std::string& shown) {
  const std::string path = fmt::format("/proc/self/fd/{}", fd);
  auto failed = [&](const std::string& what) {
    if (errno == ENOENT)
      return make_error(ENOENT, what + " of " + shown +
                                    ": /proc is not mounted (extended attributes are read through /proc/self/fd)");
    return Error::from_errno(errno, what + " of " + shown);
  };
  std::vector<std::pair<std::string, std::string>> out;
  ssize_t len = ::listxattr(path.c_str(), nullptr, 0);
  if (len < 0) {
    if (errno == ENOTSUP) return out;
    return failed("list xattrs");
  }
  std::string names(static_cast<size_t>(len), '\0');
  len = ::listxattr(path.c_str(), names.data(), names.size());
  if (len < 0) return failed("list xattrs");
  names.resize(static_cast<size_t>(len));
  for (size_t pos = 0; pos < names.size();) {
    std::string key(names.c_str() + pos);
    pos += key.size() + 1;
    if (key.empty()) continue;
    ssize_t vlen = ::getxattr(path.c_str(), key.c_str(), nullptr, 0);
    if (vlen < 0) {
      if (errno == ENODATA) continue;
      return failed("read xattr " + key);
    }
    std::string value(static_cast<size_t>(vlen), '\0');
    vlen = ::getxattr(path.c_str(), key.c_str(), value.data(), value.size());
    if (vlen < 0) return failed("read xattr " + key);
    value.resize(static_cast<size_t>(vlen));
    out.emplace_back(std::move(key), std::move(value));
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Opens `rel` (relative to directory fd `root`; "" is `root` itself) one component at a time,
// so that no path is ever longer than one name, however deep the tree, and no symlink is
// followed; `flags` apply to the last component.
Result<Fd> open_relative(int root, const std::string& rel, int flags, const std::string& shown) {
  if (rel.empty()) {
    Fd fd(openat_noatime(root, ".", flags));
    if (!fd.valid()) return Error::from_errno(errno, "open " + shown);
    return fd;
  }
  Fd dir;
  size_t start = 0;
  for (;;) {
    size_t end = rel.find('/', start);
    bool last = end == std::string::npos;
    std::string comp = rel.substr(start, last ? std::string::npos : end - start);
    int at = dir.valid() ? dir.get() : root;
    Fd fd(openat_noatime(at, comp.c_str(), last ? flags | O_NOFOLLOW : O_RDONLY | O_DIRECTORY | O_NOFOLLOW));
    if (!fd.valid()) return Error::from_errno(errno, "open " + shown);
    if (last) return fd;
    dir = std::move(fd);
    start = end + 1;
  }
}

// Whether `st` is the inode the walk recorded as `was` (a name replaced between the walk and a
// later open must not pair one file's attributes with another's content).
bool same_inode(const struct stat& st, const struct stat& was) {
  return st.st_dev == was.st_dev && st.st_ino == was.st_ino && (st.st_mode & S_IFMT) == (was.st_mode & S_IFMT);
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
    size_t n = 0;
    if (int e = pread_all(fd, dst, len, static_cast<off_t>(off), &n)) return Error::from_errno(e, "read " + rel);
    if (n < len) return make_error(EIO, rel + " shrank while being indexed");
    return ok_status();
  };
  auto store = [&](uint64_t off, std::string_view raw, ChunkRecord* rec) {
    return sink.put(builder, rel, off, raw, rec);
  };
  EXTRAFS_TRY(content, chunk_content(size, builder.chunk_size(), *buf, read, store));
  *chunks = std::move(content.chunks);
  return ok_status();
}

// Walks a tree into an IndexBuilder: metadata first (breadth-first), then the content of the
// regular files, in the order the options ask for. Every path is opened relative to a directory
// descriptor (openat), never through the working directory, which stays the process's.
struct Walker {
  IndexBuilder builder;
  ChunkSink& sink;
  std::map<std::pair<dev_t, ino_t>, uint32_t> links;
  std::vector<std::pair<uint32_t, std::string>> files;  // builder index, relative path
  std::string buf;

  Walker(uint32_t chunk_size, ChunkSink& s) : builder(chunk_size), sink(s) {}

  // Adds entry `name` of the directory open as `dir_fd` (`rel`: its path from the root, "" for
  // the root itself, whose `name` is ".").
  Status add_entry(int dir_fd, const char* name, uint32_t parent, const std::string& rel,
                   std::vector<std::pair<uint32_t, std::string>>* dirs) {
    const std::string shown = rel.empty() ? "." : rel;
    // One O_PATH descriptor per entry: its attributes, symlink target and xattrs all come from
    // the same inode even if the name is replaced meanwhile, and nothing is opened for I/O (not
    // a device, not a FIFO).
    Fd fd(::openat(dir_fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!fd.valid()) return Error::from_errno(errno, "open " + shown);
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return Error::from_errno(errno, "stat " + shown);
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
    EXTRAFS_TRY(xattrs, read_xattrs(fd.get(), shown));
    e.xattrs = std::move(xattrs);
    if (S_ISLNK(st.st_mode)) {
      std::string target(static_cast<size_t>(st.st_size) + 1, '\0');
      ssize_t n = ::readlinkat(fd.get(), "", target.data(), target.size());
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

  // Breadth-first walk of the directory open as `dir_fd` (named `root` in messages). Each
  // directory is opened from the root one component at a time with O_NOFOLLOW, so paths stay
  // short and a symlink in the tree is an entry, never a way out of it.
  Status walk(int dir_fd, const std::string& root, const WalkOptions& opts) {
    Fd rootfd(::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!rootfd.valid()) return Error::from_errno(errno, root);
    // Flush delayed allocation first: until written back, ext4 and xfs report st_blocks of
    // freshly written files that change later, and the index must record the settled value.
    (void)::syncfs(rootfd.get());
    std::vector<std::pair<uint32_t, std::string>> dirs;
    EXTRAFS_CHECK_STATUS(add_entry(rootfd.get(), ".", 0, "", &dirs));
    for (size_t q = 0; q < dirs.size(); ++q) {
      const auto [id, rel] = dirs[q];
      const std::string shown = rel.empty() ? root : root + "/" + rel;
      EXTRAFS_TRY(dir, open_relative(rootfd.get(), rel, O_RDONLY | O_DIRECTORY, shown));
      struct stat st;
      if (::fstat(dir.get(), &st) != 0) return Error::from_errno(errno, "stat " + shown);
      if (!same_inode(st, builder.at(id).st)) return make_error(EIO, shown + " was replaced while being indexed");
      // The listing takes a duplicate (closedir closes it): `dir` stays open for the openat()s.
      Fd list(::fcntl(dir.get(), F_DUPFD_CLOEXEC, 0));
      DIR* d = list.valid() ? ::fdopendir(list.get()) : nullptr;
      if (!d) return Error::from_errno(errno, "open directory " + shown);
      list.release();
      std::vector<std::string> names;
      while (struct dirent* de = ::readdir(d)) {
        if (std::strcmp(de->d_name, ".") == 0 || std::strcmp(de->d_name, "..") == 0) continue;
        names.emplace_back(de->d_name);
      }
      ::closedir(d);
      std::sort(names.begin(), names.end());
      for (const auto& n : names) {
        std::string child_rel = rel.empty() ? n : rel + "/" + n;
        EXTRAFS_CHECK_STATUS(add_entry(dir.get(), n.c_str(), id, child_rel, &dirs));
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
    // Files of one directory come one after another (walk order): their directory is opened
    // once for all of them.
    Fd dir;
    std::optional<std::string> dir_rel;
    for (size_t i : order) {
      auto& [id, rel] = files[i];
      const size_t slash = rel.rfind('/');
      const std::string parent = slash == std::string::npos ? "" : rel.substr(0, slash);
      const std::string name = slash == std::string::npos ? rel : rel.substr(slash + 1);
      if (dir_rel != parent) {
        EXTRAFS_TRY(d, open_relative(root_fd, parent, O_RDONLY | O_DIRECTORY, parent.empty() ? "." : parent));
        dir = std::move(d);
        dir_rel = parent;
      }
      // Non-blocking, and checked to be the regular file the walk saw: a FIFO (or anything
      // else) put in its place since must neither hang the indexer, which holds the store's
      // lock, nor be read as this file's content.
      Fd file(openat_noatime(dir.get(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK));
      if (!file.valid()) return Error::from_errno(errno, "open " + rel);
      struct stat st;
      if (::fstat(file.get(), &st) != 0) return Error::from_errno(errno, "stat " + rel);
      BuildEntry& e = builder.at(id);
      if (!same_inode(st, e.st)) return make_error(EIO, rel + " was replaced while being indexed");
      uint64_t size = static_cast<uint64_t>(e.st.st_size);
      EXTRAFS_CHECK_STATUS(sink.begin_file(builder, rel));
      std::vector<ChunkRecord> chunks;
      EXTRAFS_CHECK_STATUS(chunk_file(file.get(), rel, size, builder, sink, &chunks, &buf));
      builder.at(id).chunks = std::move(chunks);
      if (opts.on_file) opts.on_file(size);
    }
    return ok_status();
  }
};

// Why the index file `rel` beneath `root` does not hold the bytes whose xxh3-128 the catalog
// names as `want`; nullopt if it does. Opened non-blocking and read only if it is a regular
// file, in pieces (an index may be large).
std::optional<std::string> named_index_problem(int root, const std::string& rel, const std::string& shown,
                                               const Digest128& want) {
  auto fd = open_beneath(root, rel, O_RDONLY | O_NONBLOCK, shown);
  if (!fd.ok()) return fd.code() == ENOENT ? "is missing" : "cannot be opened (" + fd.error().message + ")";
  struct stat st;
  if (::fstat(fd->get(), &st) != 0) return "cannot be read (" + std::string(std::strerror(errno)) + ")";
  if (!S_ISREG(st.st_mode)) return std::string("is not a regular file");
  if (static_cast<uint64_t>(st.st_size) > format::kMaxIndexSize) return std::string("is larger than any index may be");
  Xxh3Stream hash;
  std::vector<char> buf(uint64_t{1} << 20);
  for (off_t off = 0;;) {
    size_t n = 0;
    if (int e = pread_all(fd->get(), buf.data(), buf.size(), off, &n))
      return "cannot be read (" + std::string(std::strerror(e)) + ")";
    if (n == 0) break;
    hash.update(buf.data(), n);
    off += static_cast<off_t>(n);
  }
  if (hash.finish() != want) return std::string("does not have the digest the catalog names");
  return std::nullopt;
}

}  // namespace

Status PlainFileSink::begin_file(IndexBuilder& builder, const std::string& rel) {
  object_ = builder.add_object(prefix_ + "/" + rel);
  return ok_status();
}

Status PlainFileSink::put(IndexBuilder&, const std::string&, uint64_t file_offset, std::string_view raw,
                          ChunkRecord* rec) {
  rec->object = object_;
  rec->offset = file_offset;
  rec->stored_len = static_cast<uint32_t>(raw.size());
  rec->flags = 0;
  return ok_status();
}

ObjectSink::ObjectSink(std::string store, bool compress) : store_(std::move(store)), compress_(compress) {}

ObjectSink::~ObjectSink() {
  for (const auto& [tmp, path] : staged_) ::unlink(tmp.c_str());
}

Status ObjectSink::pack(IndexBuilder& builder, std::string_view raw, ChunkRecord* rec) {
  Digest128 digest;
  std::memcpy(digest.bytes.data(), rec->digest, sizeof rec->digest);
  const std::string hex = digest.hex();
  const StoreLayout layout(store_);
  auto it = known_.find(hex);
  if (it == known_.end()) {
    const std::string path = layout.object(digest);
    Known k;
    struct stat st;
    if (::lstat(path.c_str(), &st) == 0) {
      // Taken as it is: whole and durable (see finish()).
      if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) > raw.size() || (st.st_size == 0 && !raw.empty()))
        return make_error(EBADMSG, fmt::format("{}: an object of {} bytes for a chunk of {} (the store is damaged)",
                                               path, st.st_size, raw.size()));
      k.stored_len = static_cast<uint32_t>(st.st_size);
      k.lz4 = static_cast<uint64_t>(st.st_size) < raw.size();
    } else if (errno != ENOENT) {
      return Error::from_errno(errno, path);
    } else {
      std::string_view stored = raw;
      if (compress_ && lz4_if_smaller(raw, &lz4_)) {
        stored = lz4_;
        k.lz4 = true;
      }
      k.stored_len = static_cast<uint32_t>(stored.size());
      if (written_ == 0 && staged_.empty()) EXTRAFS_CHECK_STATUS(make_dirs(layout.objects_dir()));
      const std::string tmp = path + ".tmp." + std::to_string(::getpid());
      if (::unlink(tmp.c_str()) != 0 && errno != ENOENT) return Error::from_errno(errno, "create " + tmp);
      {
        // Not fsynced one by one: finish() flushes them all at once before they go in place.
        Fd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644));
        if (!out.valid()) return Error::from_errno(errno, "create " + tmp);
        if (int e = write_all(out.get(), stored.data(), stored.size())) return Error::from_errno(e, "write " + tmp);
        if (::fchmod(out.get(), 0644) != 0) return Error::from_errno(errno, "chmod " + tmp);
        if (int e = out.close_checked()) return Error::from_errno(e, "write " + tmp);
      }
      staged_.emplace_back(tmp, path);
      written_++;
      stored_bytes_ += stored.size();
    }
    it = known_.emplace(hex, k).first;
  }
  raw_bytes_ += raw.size();
  rec->object = builder.add_object(content_object_path(digest));
  rec->offset = 0;
  rec->stored_len = it->second.stored_len;
  rec->flags = it->second.lz4 ? static_cast<uint32_t>(format::kChunkLz4) : 0u;
  return ok_status();
}

Status ObjectSink::finish() {
  if (staged_.empty()) return ok_status();
  const std::string dir = StoreLayout(store_).objects_dir();
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return Error::from_errno(errno, dir);
  // One flush of the file system instead of an fsync per object (thousands of small ones).
  if (::syncfs(fd.get()) != 0) return Error::from_errno(errno, "syncfs " + dir);
  for (const auto& [tmp, path] : staged_)
    if (::rename(tmp.c_str(), path.c_str()) != 0) return Error::from_errno(errno, "rename " + tmp);
  staged_.clear();
  return fsync_dir(dir);
}

Result<std::string> index_directory_at(int dir_fd, const std::string& shown, ChunkSink& sink,
                                       const WalkOptions& options) {
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

Result<IndexStoreReport> index_store(const std::string& store_in,
                                     const std::function<void(const std::string&)>& progress) {
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
    if (st.code() == ENOENT)
      return make_error(ENOENT, "store " + store + " has no overlay2/ directory (not a Hermes-style store)");
    return st.error();
  }

  IndexStoreReport report;
  EXTRAFS_CHECK_STATUS(make_dirs(layout.layers_dir()));
  EXTRAFS_CHECK_STATUS(check_dir_beneath(root.get(), "extrafs/layers", store));
  // One writer at a time (publish holds the same lock); the catalog is read under it.
  EXTRAFS_TRY(lock, StoreWriteLock::take(root.get(), store));
  EXTRAFS_TRY(sc, load_store_catalog(store));
  EXTRAFS_TRY(removed, removed_layers(root.get(), store));
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

  // What the catalog names is never changed (extrafs-store(5)): mounts may hold those layers'
  // indexes, so their entries stay as they are and their index files keep their bytes.
  std::set<std::string> named;
  std::map<std::string, std::string> named_links;  // link -> cache-id
  for (const auto& l : sc.catalog.layers) {
    named.insert(l.cache_id);
    if (!l.link.empty()) named_links.emplace(l.link, l.cache_id);
  }
  auto index_layer = [&](const std::string& id) -> Result<std::string> {
    EXTRAFS_TRY(diff, open_beneath(overlay.get(), id + "/diff", O_RDONLY | O_DIRECTORY, layout.overlay2_dir()));
    return index_directory_at(diff.get(), layout.overlay_dir(id) + "/diff", "overlay2/" + id + "/diff");
  };

  for (const auto& id : ids) {
    const std::string index_file = layout.layer_index(id);
    if (const CatalogLayer* known = sc.catalog.find(id)) {
      auto problem = named_index_problem(root.get(), format::layer_index_path(id), store, known->index_digest);
      if (!problem) {
        report.layers_present++;
        continue;
      }
      // An unchanged layer indexes to the same bytes: those may go back under the name, which
      // then holds what the catalog promised all along. Anything else would change an index
      // that mounts may have read.
      say(fmt::format("indexing layer {} again: {}", id, *problem));
      auto bytes = index_layer(id);
      if (bytes.ok() && xxh3_128(bytes->data(), bytes->size()) == known->index_digest) {
        EXTRAFS_CHECK_STATUS(write_file_atomic(index_file, *bytes));
        report.layers_indexed++;
        continue;
      }
      report.damaged.push_back(fmt::format(
          "overlay2/{}: its index {}, and {}; an index the catalog names is never replaced: restore it, or copy "
          "the changed layer under a new cache-id",
          escape_control(id), *problem,
          bytes.ok() ? "indexing the layer again gives other bytes (its files changed since)"
                     : "the layer cannot be indexed again (" + bytes.error().message + ")"));
      continue;
    }
    // Taken out of the catalog by `extrafs rm`: its tree stays for hosts that still read it,
    // until `extrafs gc` deletes it; it is not a new layer.
    if (removed.count(id)) {
      report.layers_removed++;
      continue;
    }
    CatalogLayer layer;
    layer.cache_id = id;
    // link and lower: absent is fine; a symlink or anything else unreadable skips the layer.
    auto meta = [&](const char* name, std::optional<std::string>* out) -> Status {
      auto text = read_file_beneath(overlay.get(), id + "/" + name, layout.overlay2_dir(), kMaxLineFileSize);
      if (text.ok())
        *out = trim_trailing(*text);
      else if (text.code() != ENOENT)
        return text.error();
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
    if (auto valid = format::check_catalog_layer(layer); !valid.ok()) {
      skip(id, valid.error().message);
      continue;
    }
    if (auto owner = named_links.find(layer.link); owner != named_links.end()) {
      skip(id, fmt::format("link {} is claimed by layer {} of the catalog", layer.link, owner->second));
      continue;
    }
    // An index no catalog names yet (left by an index or publish that stopped before its
    // catalog) is taken if it is whole; no mount has read it, so it may be replaced if not.
    std::shared_ptr<const LayerIndex> index;
    if (auto existing = read_file_beneath(root.get(), format::layer_index_path(id), store, format::kMaxIndexSize);
        existing.ok()) {
      if (auto parsed = LayerIndex::parse(std::move(existing).value()); parsed.ok()) index = *parsed;
    }
    if (index) {
      report.layers_present++;
    } else {
      say(fmt::format("indexing layer {}", id));
      EXTRAFS_TRY(bytes, index_layer(id));
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
  // New layers whose lower chain the daemon would refuse are left out of the catalog too.
  for (const auto& refused : format::unchained_layers(sc.catalog)) {
    if (named.count(refused.first)) continue;
    skip(refused.first, refused.second);
    std::erase_if(sc.catalog.layers, [&](const CatalogLayer& l) { return l.cache_id == refused.first; });
  }

  EXTRAFS_TRY(commit, commit_store_catalog(store, &sc));
  report.image_indexed = commit.image_indexed;
  report.catalog_written = commit.catalog_written;
  return report;
}

}  // namespace extrafs::store
