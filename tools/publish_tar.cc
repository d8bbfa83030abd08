#include "tools/publish_tar.h"

#include <archive.h>
#include <archive_entry.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <zlib.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <deque>
#include <unordered_map>

#include "common/str_util.h"
#include "fs/indexer.h"
#include "fs/layer_index.h"
#include "tools/docker_meta.h"

namespace extrafs::tools {

namespace {

constexpr std::string_view kWhiteoutPrefix = ".wh.";
constexpr std::string_view kOpaqueMarker = ".wh..wh..opq";
constexpr const char* kOpaqueXattr = "trusted.overlay.opaque";

Error bad_tar(const std::string& what) { return make_error(EBADMSG, what); }

struct Node {
  std::string name;
  uint32_t parent = 0;
  struct stat st {};
  std::string target;
  std::vector<std::pair<std::string, std::string>> xattrs;
  std::vector<fs::ChunkRecord> chunks;
  std::optional<uint32_t> link_of;  // node id of the hard-link group leader
  std::map<std::string, uint32_t> kids;
  bool opaque = false;
};

// Where the content of one file went while the tar streamed by (ordered mode).
struct Spooled {
  uint64_t offset = 0;  // in the spool
  uint64_t size = 0;
};

class TarTree {
 public:
  TarTree() {
    Node root;
    implicit_dir(&root.st);
    nodes_.push_back(std::move(root));
  }

  std::vector<Node>& nodes() { return nodes_; }

  // The node of directory `path` (creating implicit parents). EBADMSG if a non-directory is in the way.
  Result<uint32_t> dir(const std::string& path) {
    uint32_t cur = 0;
    size_t start = 0;
    while (start < path.size()) {
      size_t end = path.find('/', start);
      if (end == std::string::npos) end = path.size();
      std::string comp = path.substr(start, end - start);
      auto it = nodes_[cur].kids.find(comp);
      if (it == nodes_[cur].kids.end()) {
        Node n;
        n.name = comp;
        n.parent = cur;
        implicit_dir(&n.st);
        uint32_t id = static_cast<uint32_t>(nodes_.size());
        nodes_[cur].kids.emplace(comp, id);
        nodes_.push_back(std::move(n));
        cur = id;
      } else {
        cur = it->second;
        if (!S_ISDIR(nodes_[cur].st.st_mode)) return bad_tar("'" + path + "' is used as a directory but is not one");
      }
      start = end + 1;
    }
    return cur;
  }

  std::optional<uint32_t> find(const std::string& path) const {
    uint32_t cur = 0;
    size_t start = 0;
    while (start < path.size()) {
      size_t end = path.find('/', start);
      if (end == std::string::npos) end = path.size();
      auto it = nodes_[cur].kids.find(path.substr(start, end - start));
      if (it == nodes_[cur].kids.end()) return std::nullopt;
      cur = it->second;
      start = end + 1;
    }
    return cur;
  }

  // Puts a new node named `name` into directory `parent`, replacing what was there (a directory
  // replaced by a directory keeps its children and opaque marker).
  uint32_t place(uint32_t parent, const std::string& name, Node n) {
    n.name = name;
    n.parent = parent;
    auto it = nodes_[parent].kids.find(name);
    if (it != nodes_[parent].kids.end()) {
      Node& old = nodes_[it->second];
      if (S_ISDIR(old.st.st_mode) && S_ISDIR(n.st.st_mode)) {
        n.kids = std::move(old.kids);
        n.opaque = old.opaque;
        old = std::move(n);
        return it->second;
      }
    }
    uint32_t id = static_cast<uint32_t>(nodes_.size());
    nodes_.push_back(std::move(n));
    nodes_[parent].kids[name] = id;
    return id;
  }

  static void implicit_dir(struct stat* st) {
    std::memset(st, 0, sizeof *st);
    st->st_mode = S_IFDIR | 0755;
  }

 private:
  std::vector<Node> nodes_;
};

uint64_t blocks_for(uint64_t bytes) { return (bytes + 4095) / 4096 * 8; }

}  // namespace

bool normalize_tar_path(std::string_view in, std::string* out) {
  out->clear();
  size_t start = 0;
  while (start <= in.size()) {
    size_t end = in.find('/', start);
    if (end == std::string_view::npos) end = in.size();
    std::string_view comp = in.substr(start, end - start);
    if (comp == "..") return false;
    if (!comp.empty() && comp != ".") {
      if (comp.size() > fs::kMaxNameLen || comp.find('\0') != std::string_view::npos) return false;
      if (!out->empty()) *out += '/';
      out->append(comp);
    }
    start = end + 1;
  }
  return true;
}

Result<LayerTarResult> convert_layer_tar(struct archive* a, BlobWriter& blob, const LayerTarOptions& opts) {
  const uint32_t cs = opts.chunk_size;
  TarTree tree;
  fs::IndexBuilder builder(cs);
  std::unordered_map<std::string, size_t> first_rank;
  for (const auto& p : opts.first) first_rank.emplace(p, first_rank.size());
  const bool ordered = !first_rank.empty();
  // Ordered mode: the files to pack first are spooled raw; the rest is packed into `back`; at the
  // end the first files are packed into `blob` in order and `back` is appended behind them.
  std::unique_ptr<BlobWriter> back, spool;
  std::map<uint32_t, Spooled> spooled;  // node -> where its content is in the spool
  if (ordered) {
    EXTRAFS_TRY(b, BlobWriter::create_scratch(opts.scratch_dir));
    EXTRAFS_TRY(s, BlobWriter::create_scratch(opts.scratch_dir));
    back = std::move(b);
    spool = std::move(s);
  }
  std::string buf(cs, '\0');
  uint64_t spool_end = 0;
  LayerTarResult result;

  for (;;) {
    struct archive_entry* ent = nullptr;
    int r = archive_read_next_header(a, &ent);
    if (r == ARCHIVE_EOF) break;
    if (r == ARCHIVE_WARN) r = ARCHIVE_OK;
    if (r != ARCHIVE_OK) return bad_tar(std::string("bad layer tar: ") + archive_error_string(a));
    result.entries++;
    const char* raw_path = archive_entry_pathname(ent);
    std::string path;
    if (!raw_path || !normalize_tar_path(raw_path, &path))
      return bad_tar(std::string("layer tar entry with a bad path '") + (raw_path ? raw_path : "") + "'");
    size_t slash = path.rfind('/');
    std::string parent_path = slash == std::string::npos ? "" : path.substr(0, slash);
    std::string base = slash == std::string::npos ? path : path.substr(slash + 1);

    if (path.empty()) {  // "./": the layer root's own attributes
      if (archive_entry_filetype(ent) != AE_IFDIR) return bad_tar("the layer tar's root is not a directory");
    }
    EXTRAFS_TRY(parent, tree.dir(parent_path));

    struct stat st {};
    st.st_uid = static_cast<uid_t>(archive_entry_uid(ent));
    st.st_gid = static_cast<gid_t>(archive_entry_gid(ent));
    st.st_mtim.tv_sec = archive_entry_mtime(ent);
    st.st_mtim.tv_nsec = archive_entry_mtime_nsec(ent);
    st.st_atim = st.st_mtim;
    st.st_ctim = st.st_mtim;
    if (archive_entry_atime_is_set(ent)) {
      st.st_atim.tv_sec = archive_entry_atime(ent);
      st.st_atim.tv_nsec = archive_entry_atime_nsec(ent);
    }
    if (archive_entry_ctime_is_set(ent)) {
      st.st_ctim.tv_sec = archive_entry_ctime(ent);
      st.st_ctim.tv_nsec = archive_entry_ctime_nsec(ent);
    }

    if (base == kOpaqueMarker) {
      EXTRAFS_TRY(d, tree.dir(parent_path));
      tree.nodes()[d].opaque = true;
      continue;
    }
    if (base.size() > kWhiteoutPrefix.size() && base.compare(0, kWhiteoutPrefix.size(), kWhiteoutPrefix) == 0) {
      // What overlay2 makes of a whiteout: mknod(S_IFCHR, 0), chowned to the header's owner.
      Node n;
      n.st = st;
      n.st.st_mode = S_IFCHR;
      n.st.st_rdev = makedev(0, 0);
      tree.place(parent, base.substr(kWhiteoutPrefix.size()), std::move(n));
      continue;
    }
    if (path.empty()) {
      Node& root = tree.nodes()[0];
      root.st = st;
      root.st.st_mode = S_IFDIR | (archive_entry_perm(ent) & 07777);
      root.xattrs.clear();
      archive_entry_xattr_reset(ent);
      const char* xn;
      const void* xv;
      size_t xs;
      while (archive_entry_xattr_next(ent, &xn, &xv, &xs) == ARCHIVE_OK)
        root.xattrs.emplace_back(xn, std::string(static_cast<const char*>(xv), xs));
      continue;
    }

    Node n;
    n.st = st;
    if (const char* hl = archive_entry_hardlink(ent)) {
      std::string tp;
      if (!normalize_tar_path(hl, &tp)) return bad_tar("hard link '" + path + "' has a bad target");
      auto t = tree.find(tp);
      if (!t || *t == 0) return bad_tar("hard link '" + path + "' names '" + tp + "', which is not in the layer before it");
      const Node& tn = tree.nodes()[*t];
      if (S_ISDIR(tn.st.st_mode)) return bad_tar("hard link '" + path + "' names a directory");
      uint32_t leader = tn.link_of.value_or(*t);
      n.st = tree.nodes()[leader].st;
      n.link_of = leader;
      tree.place(parent, base, std::move(n));
      continue;
    }
    mode_t type = archive_entry_filetype(ent);
    n.st.st_mode = type | (archive_entry_perm(ent) & 07777);
    switch (type) {
      case AE_IFREG: case AE_IFDIR: case AE_IFLNK: case AE_IFCHR: case AE_IFBLK: case AE_IFIFO:
        break;
      default:
        return bad_tar(fmt::format("layer tar entry '{}' has unsupported type {:o}", path, type));
    }
    if (type == AE_IFCHR || type == AE_IFBLK) n.st.st_rdev = makedev(archive_entry_rdevmajor(ent), archive_entry_rdevminor(ent));
    if (type == AE_IFLNK) {
      const char* t = archive_entry_symlink(ent);
      n.target = t ? t : "";
      if (n.target.empty() || n.target.size() > fs::kMaxTargetLen) return bad_tar("symlink '" + path + "' has a bad target");
    }
    archive_entry_xattr_reset(ent);
    const char* xn;
    const void* xv;
    size_t xs;
    while (archive_entry_xattr_next(ent, &xn, &xv, &xs) == ARCHIVE_OK) {
      if (!xn || !*xn) continue;
      n.xattrs.emplace_back(xn, std::string(static_cast<const char*>(xv), xs));
    }
    uint32_t id = tree.place(parent, base, std::move(n));
    if (type != AE_IFREG) continue;

    // Content: archive_read_data gives holes of sparse entries as zeros; zero chunks are not stored.
    const uint64_t size = archive_entry_size_is_set(ent) ? static_cast<uint64_t>(archive_entry_size(ent)) : 0;
    bool to_spool = ordered && first_rank.count(path);
    std::vector<fs::ChunkRecord> chunks;
    uint64_t stored_raw = 0;
    for (uint64_t off = 0; off < size; off += cs) {
      uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(cs, size - off));
      size_t got = 0;
      while (got < len) {
        la_ssize_t n2 = archive_read_data(a, buf.data() + got, len - got);
        if (n2 < 0) return bad_tar(std::string("bad layer tar: ") + archive_error_string(a));
        if (n2 == 0) return bad_tar("layer tar ends inside '" + path + "'");
        got += static_cast<size_t>(n2);
      }
      if (opts.on_bytes) opts.on_bytes(len);
      std::string_view raw(buf.data(), len);
      if (to_spool) {
        EXTRAFS_CHECK_STATUS(spool->put_raw(raw));
        continue;
      }
      fs::ChunkRecord rec{};
      if (!fs::describe_chunk(raw, &rec)) {
        EXTRAFS_CHECK_STATUS((ordered ? *back : blob).pack(builder, raw, &rec));
        stored_raw += len;
      }
      chunks.push_back(rec);
    }
    Node& node = tree.nodes()[id];
    node.st.st_size = static_cast<off_t>(size);
    if (to_spool) {
      spooled[id] = Spooled{spool_end, size};
      spool_end += size;
    } else {
      node.chunks = std::move(chunks);
      node.st.st_blocks = static_cast<blkcnt_t>(blocks_for(stored_raw));
    }
  }

  auto& nodes = tree.nodes();
  if (ordered) {
    // The first files in the order asked for, then everything else behind them.
    EXTRAFS_CHECK_STATUS(spool->finish());
    std::vector<std::pair<size_t, uint32_t>> order;
    for (const auto& [id, sp] : spooled) {
      std::string p;
      for (uint32_t cur = id; cur != 0; cur = nodes[cur].parent) p = nodes[cur].name + (p.empty() ? "" : "/" + p);
      auto it = first_rank.find(p);
      order.emplace_back(it == first_rank.end() ? first_rank.size() : it->second, id);
    }
    std::sort(order.begin(), order.end());
    for (auto [rank, id] : order) {
      const Spooled& sp = spooled[id];
      std::vector<fs::ChunkRecord> chunks;
      uint64_t stored_raw = 0;
      for (uint64_t off = 0; off < sp.size; off += cs) {
        uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(cs, sp.size - off));
        size_t got = 0;
        while (got < len) {
          ssize_t n2 = ::pread(spool->fd(), buf.data() + got, len - got, static_cast<off_t>(sp.offset + off + got));
          if (n2 < 0 && errno == EINTR) continue;
          if (n2 <= 0) return Error::from_errno(n2 < 0 ? errno : EIO, "read back the scratch file");
          got += static_cast<size_t>(n2);
        }
        std::string_view raw(buf.data(), len);
        fs::ChunkRecord rec{};
        if (!fs::describe_chunk(raw, &rec)) {
          EXTRAFS_CHECK_STATUS(blob.pack(builder, raw, &rec));
          stored_raw += len;
        }
        chunks.push_back(rec);
      }
      nodes[id].chunks = std::move(chunks);
      nodes[id].st.st_blocks = static_cast<blkcnt_t>(blocks_for(stored_raw));
    }
    EXTRAFS_CHECK_STATUS(back->finish());
    EXTRAFS_TRY(base, blob.append(*back));
    uint32_t obj = builder.add_object(blob.object_path());
    for (uint32_t id = 0; id < nodes.size(); ++id) {
      if (spooled.count(id)) continue;
      for (auto& c : nodes[id].chunks) {
        if (c.flags & fs::kChunkZero) continue;
        c.offset += base;
        c.object = obj;
      }
    }
  }

  // Emit breadth-first; hard-link groups counted and sized once.
  std::vector<uint32_t> order{0};
  std::vector<uint32_t> builder_of(nodes.size(), UINT32_MAX);
  std::map<uint32_t, uint32_t> group_size;  // leader -> members reached
  for (size_t q = 0; q < order.size(); ++q) {
    for (const auto& [name, kid] : nodes[order[q]].kids) {
      order.push_back(kid);
      if (nodes[kid].link_of) group_size[*nodes[kid].link_of]++;
    }
  }
  std::vector<bool> reachable(nodes.size(), false);
  for (uint32_t id : order) reachable[id] = true;
  for (uint32_t id : order) {
    Node& n = nodes[id];
    if (S_ISDIR(n.st.st_mode)) {
      n.st.st_size = 4096;
      n.st.st_blocks = 8;
      n.st.st_nlink = 2;
      for (const auto& [name, kid] : n.kids)
        if (S_ISDIR(nodes[kid].st.st_mode)) n.st.st_nlink++;
      if (n.opaque) {
        std::erase_if(n.xattrs, [](const auto& x) { return x.first == kOpaqueXattr; });
        n.xattrs.emplace_back(kOpaqueXattr, "y");
      }
    } else if (S_ISLNK(n.st.st_mode)) {
      n.st.st_size = static_cast<off_t>(n.target.size());
      n.st.st_nlink = 1;
    } else {
      n.st.st_nlink = 1;
      if (!S_ISREG(n.st.st_mode)) n.st.st_size = 0;
    }
    std::sort(n.xattrs.begin(), n.xattrs.end());
    n.xattrs.erase(std::unique(n.xattrs.begin(), n.xattrs.end(),
                               [](const auto& x, const auto& y) { return x.first == y.first; }),
                   n.xattrs.end());
  }
  for (auto& [leader, count] : group_size) {
    if (!reachable[leader]) return bad_tar("hard link to '" + nodes[leader].name + "', which a later entry replaced");
    nodes[leader].st.st_nlink = static_cast<nlink_t>(count + 1);
  }
  // The first member of a hard-link group in breadth-first order holds the group's data; the
  // others (the tar's first occurrence included, if it comes later) link to it.
  std::map<uint32_t, uint32_t> primary_of;  // group key (leader node) -> builder index
  for (uint32_t id : order) {
    const Node& n = nodes[id];
    uint32_t key = n.link_of.value_or(id);
    bool grouped = n.link_of || group_size.count(id);
    const Node& src = nodes[key];
    fs::BuildEntry e;
    e.name = id == 0 ? "" : n.name;
    e.parent = id == 0 ? 0 : builder_of[n.parent];
    e.st = src.st;
    auto it = grouped ? primary_of.find(key) : primary_of.end();
    if (it != primary_of.end()) {
      e.link_of = it->second;
    } else {
      e.xattrs = src.xattrs;
      e.target = src.target;
      e.chunks = src.chunks;
      if (!S_ISDIR(e.st.st_mode) && e.st.st_size > 0) result.docker_size += static_cast<uint64_t>(e.st.st_size);
    }
    builder_of[id] = builder.add(std::move(e));
    if (grouped && it == primary_of.end()) primary_of.emplace(key, builder_of[id]);
  }
  EXTRAFS_TRY(bytes, builder.serialize());
  result.index = std::move(bytes);
  return result;
}

namespace {

struct ArchiveCloser {
  void operator()(struct archive* a) const { archive_read_free(a); }
};
using ArchivePtr = std::unique_ptr<struct archive, ArchiveCloser>;

Result<ArchivePtr> open_outer(const std::string& path) {
  ArchivePtr a(archive_read_new());
  if (!a) return make_error(ENOMEM, "libarchive: out of memory");
  archive_read_support_format_tar(a.get());
  archive_read_support_filter_none(a.get());
  if (archive_read_open_filename(a.get(), path.c_str(), 1 << 16) != ARCHIVE_OK) {
    int e = archive_errno(a.get());
    if (e > 0 && e != EINVAL && e != EILSEQ) return Error::from_errno(e, path);
    return bad_tar(path + " is not a tar archive (" + archive_error_string(a.get()) + ")");
  }
  return a;
}

Result<std::string> read_entry_data(struct archive* a, const std::string& what, uint64_t limit) {
  std::string out;
  char buf[65536];
  for (;;) {
    la_ssize_t n = archive_read_data(a, buf, sizeof buf);
    if (n < 0) return bad_tar(what + ": " + archive_error_string(a));
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > limit) return make_error(EFBIG, what + " is too large");
  }
  return out;
}

std::string dirname_of(const std::string& p) {
  auto s = p.rfind('/');
  return s == std::string::npos ? "" : p.substr(0, s);
}

// The uncompressed stream of one layer: raw from the outer archive, or inflated if gzip; hashed
// as it goes.
struct LayerStream {
  struct archive* outer = nullptr;
  EVP_MD_CTX* sha = nullptr;
  bool started = false, gzip = false, eof = false, z_open = false;
  z_stream z{};
  std::string in, out;
  size_t in_len = 0;
  std::string error;

  ~LayerStream() {
    if (z_open) inflateEnd(&z);
    if (sha) EVP_MD_CTX_free(sha);
  }

  // Raw bytes from the outer entry; 0 at its end, -1 on error.
  la_ssize_t read_outer() {
    la_ssize_t n = archive_read_data(outer, in.data(), in.size());
    if (n < 0) error = archive_error_string(outer);
    return n;
  }

  // Next piece of uncompressed stream: its length (0 at the end, -1 on error) at out.data().
  la_ssize_t next() {
    if (!started) {
      started = true;
      in.resize(1 << 20);
      out.resize(1 << 20);
      la_ssize_t n = read_outer();
      if (n < 0) return -1;
      in_len = static_cast<size_t>(n);
      gzip = in_len >= 2 && static_cast<unsigned char>(in[0]) == 0x1f && static_cast<unsigned char>(in[1]) == 0x8b;
      if (in_len >= 4 && std::memcmp(in.data(), "\x28\xb5\x2f\xfd", 4) == 0) {
        error = "zstd-compressed layers are not supported";
        return -1;
      }
      if (gzip) {
        if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) {
          error = "zlib: cannot initialise";
          return -1;
        }
        z_open = true;
        z.next_in = reinterpret_cast<Bytef*>(in.data());
        z.avail_in = static_cast<uInt>(in_len);
      } else {
        if (in_len == 0) eof = true;
        EVP_DigestUpdate(sha, in.data(), in_len);
        std::swap(in, out);
        return static_cast<la_ssize_t>(in_len);
      }
    }
    if (eof) return 0;
    if (!gzip) {
      la_ssize_t n = archive_read_data(outer, out.data(), out.size());
      if (n < 0) {
        error = archive_error_string(outer);
        return -1;
      }
      if (n == 0) eof = true;
      EVP_DigestUpdate(sha, out.data(), static_cast<size_t>(n));
      return n;
    }
    for (;;) {
      if (z.avail_in == 0) {
        la_ssize_t n = read_outer();
        if (n < 0) return -1;
        if (n == 0) {
          eof = true;
          return 0;
        }
        z.next_in = reinterpret_cast<Bytef*>(in.data());
        z.avail_in = static_cast<uInt>(n);
      }
      z.next_out = reinterpret_cast<Bytef*>(out.data());
      z.avail_out = static_cast<uInt>(out.size());
      int r = inflate(&z, Z_NO_FLUSH);
      if (r == Z_STREAM_END) {
        inflateReset(&z);  // concatenated gzip members
      } else if (r != Z_OK && r != Z_BUF_ERROR) {
        error = std::string("gzip: ") + (z.msg ? z.msg : "corrupt data");
        return -1;
      }
      size_t produced = out.size() - z.avail_out;
      if (produced > 0) {
        EVP_DigestUpdate(sha, out.data(), produced);
        return static_cast<la_ssize_t>(produced);
      }
    }
  }

  static la_ssize_t read_cb(struct archive* inner, void* self, const void** buf) {
    auto* s = static_cast<LayerStream*>(self);
    la_ssize_t n = s->next();
    if (n < 0) archive_set_error(inner, EIO, "%s", s->error.c_str());
    *buf = s->out.data();
    return n;
  }
};

}  // namespace

std::string SaveArchive::resolve(const std::string& p) const {
  std::string cur = p;
  for (int hops = 0; hops < 16; ++hops) {
    auto it = links_.find(cur);
    if (it == links_.end()) return cur;
    cur = it->second;
  }
  return cur;
}

uint64_t SaveArchive::layer_size(const std::string& layer) const {
  auto it = sizes_.find(resolve(layer));
  return it == sizes_.end() ? 0 : it->second;
}

Result<SaveArchive> SaveArchive::open(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return Error::from_errno(errno, "archive " + path);
  if (!S_ISREG(st.st_mode)) return make_error(EINVAL, "archive " + path + " is not a regular file");
  EXTRAFS_TRY(a, open_outer(path));
  SaveArchive sa;
  sa.path_ = path;
  std::map<std::string, std::string> jsons;
  std::optional<std::string> manifest;
  bool any = false;
  for (;;) {
    struct archive_entry* ent = nullptr;
    int r = archive_read_next_header(a.get(), &ent);
    if (r == ARCHIVE_EOF) break;
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
      if (!any) return bad_tar(path + " is not a tar archive (" + archive_error_string(a.get()) + ")");
      return bad_tar(path + ": " + archive_error_string(a.get()));
    }
    any = true;
    std::string p;
    if (!normalize_tar_path(archive_entry_pathname(ent) ? archive_entry_pathname(ent) : "", &p)) continue;
    if (const char* hl = archive_entry_hardlink(ent)) {
      std::string t;
      if (normalize_tar_path(hl, &t)) sa.links_[p] = t;
      continue;
    }
    if (archive_entry_filetype(ent) == AE_IFLNK) {
      std::string t;
      const char* target = archive_entry_symlink(ent);
      std::string joined = target && target[0] == '/' ? std::string(target) : dirname_of(p) + "/" + (target ? target : "");
      // Resolve ".." against the directory of the link (docker links duplicate layers as ../<id>/layer.tar).
      std::vector<std::string> parts;
      size_t start = 0;
      while (start <= joined.size()) {
        size_t end = joined.find('/', start);
        if (end == std::string::npos) end = joined.size();
        std::string c = joined.substr(start, end - start);
        if (c == "..") {
          if (!parts.empty()) parts.pop_back();
        } else if (!c.empty() && c != ".") {
          parts.push_back(c);
        }
        start = end + 1;
      }
      for (const auto& c : parts) t += (t.empty() ? "" : "/") + c;
      sa.links_[p] = t;
      continue;
    }
    if (archive_entry_filetype(ent) != AE_IFREG) continue;
    sa.sizes_[p] = static_cast<uint64_t>(archive_entry_size(ent));
    if (p == "manifest.json") {
      EXTRAFS_TRY(text, read_entry_data(a.get(), path + ": manifest.json", 64u << 20));
      manifest = std::move(text);
    } else if (p.size() > 5 && p.compare(p.size() - 5, 5, ".json") == 0 && archive_entry_size(ent) < (64 << 20)) {
      EXTRAFS_TRY(text, read_entry_data(a.get(), path + ": " + p, 64u << 20));
      jsons[p] = std::move(text);
    }
  }
  if (!any) return bad_tar(path + " is not a tar archive (it is empty)");
  if (!manifest) return bad_tar(path + " is not a 'docker save' archive (no manifest.json)");
  auto j = nlohmann::json::parse(*manifest, nullptr, false);
  if (j.is_discarded() || !j.is_array() || j.empty()) return bad_tar(path + ": manifest.json is not a list of images");
  for (const auto& m : j) {
    if (!m.is_object() || !m.contains("Config") || !m["Config"].is_string() || !m.contains("Layers") || !m["Layers"].is_array())
      return bad_tar(path + ": manifest.json has an entry without Config or Layers");
    SavedImage img;
    std::string cfg_path;
    normalize_tar_path(m["Config"].get<std::string>(), &cfg_path);
    auto cit = jsons.find(sa.resolve(cfg_path));
    if (cit == jsons.end()) return bad_tar(path + ": config " + cfg_path + " named in manifest.json is missing");
    img.config = cit->second;
    img.id = sha256_digest(img.config);
    // docker names the config <hex>.json; when it does, the name must match the content.
    std::string stem = cfg_path.substr(cfg_path.rfind('/') == std::string::npos ? 0 : cfg_path.rfind('/') + 1);
    if (stem.size() == 69 && is_hex64(std::string_view(stem).substr(0, 64)) && "sha256:" + stem.substr(0, 64) != img.id)
      return bad_tar(path + ": config " + cfg_path + " does not match its digest");
    if (m.contains("RepoTags") && m["RepoTags"].is_array())
      for (const auto& t : m["RepoTags"])
        if (t.is_string()) img.tags.push_back(t.get<std::string>());
    for (const auto& l : m["Layers"]) {
      std::string lp;
      if (!l.is_string() || !normalize_tar_path(l.get<std::string>(), &lp) || lp.empty())
        return bad_tar(path + ": manifest.json has a bad layer path");
      if (!sa.sizes_.count(sa.resolve(lp))) return bad_tar(path + ": layer " + lp + " named in manifest.json is missing");
      img.layers.push_back(lp);
    }
    auto cj = nlohmann::json::parse(img.config, nullptr, false);
    if (cj.is_discarded() || !cj.is_object() || !cj.contains("rootfs") || !cj["rootfs"].is_object() ||
        !cj["rootfs"].contains("diff_ids") || !cj["rootfs"]["diff_ids"].is_array())
      return bad_tar(path + ": config " + cfg_path + " has no rootfs.diff_ids");
    for (const auto& d : cj["rootfs"]["diff_ids"]) {
      if (!d.is_string() || d.get<std::string>().rfind("sha256:", 0) != 0 || !is_hex64(d.get<std::string>().substr(7)))
        return bad_tar(path + ": config " + cfg_path + " has a bad diff_id");
      img.diff_ids.push_back(d.get<std::string>());
    }
    if (img.diff_ids.size() != img.layers.size())
      return bad_tar(fmt::format("{}: image {} lists {} layers but its config has {} diff_ids", path, img.id.substr(7, 12),
                                 img.layers.size(), img.diff_ids.size()));
    sa.images_.push_back(std::move(img));
  }
  return sa;
}

Result<std::string> SaveArchive::read_layer(const std::string& layer, const std::function<Status(struct archive*)>& fn) const {
  const std::string target = resolve(layer);
  EXTRAFS_TRY(outer, open_outer(path_));
  for (;;) {
    struct archive_entry* ent = nullptr;
    int r = archive_read_next_header(outer.get(), &ent);
    if (r == ARCHIVE_EOF) return make_error(ENOENT, path_ + ": layer " + layer + " is missing");
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) return bad_tar(path_ + ": " + archive_error_string(outer.get()));
    std::string p;
    if (!normalize_tar_path(archive_entry_pathname(ent) ? archive_entry_pathname(ent) : "", &p) || p != target) continue;
    if (archive_entry_filetype(ent) != AE_IFREG || archive_entry_hardlink(ent)) continue;
    break;
  }
  LayerStream ls;
  ls.outer = outer.get();
  ls.sha = EVP_MD_CTX_new();
  if (!ls.sha || EVP_DigestInit_ex(ls.sha, EVP_sha256(), nullptr) != 1) return make_error(ENOMEM, "sha256: cannot initialise");
  ArchivePtr inner(archive_read_new());
  archive_read_support_format_tar(inner.get());
  archive_read_support_format_empty(inner.get());
  archive_read_support_filter_none(inner.get());
  if (archive_read_open(inner.get(), &ls, nullptr, &LayerStream::read_cb, nullptr) != ARCHIVE_OK) {
    if (!ls.error.empty()) return bad_tar(path_ + ": layer " + layer + ": " + ls.error);
    return bad_tar(path_ + ": layer " + layer + " is not a tar (" + archive_error_string(inner.get()) + ")");
  }
  Status st = fn(inner.get());
  if (!st.ok()) {
    if (!ls.error.empty()) return bad_tar(path_ + ": layer " + layer + ": " + ls.error);
    return make_error(st.code(), path_ + ": layer " + layer + ": " + st.error().message);
  }
  // The diffID covers the whole stream, also what the tar reader did not need (end blocks, padding).
  for (;;) {
    la_ssize_t n = ls.next();
    if (n < 0) return bad_tar(path_ + ": layer " + layer + ": " + ls.error);
    if (n == 0) break;
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ls.sha, md, &len);
  return sha256_digest_string(md, len);
}

}  // namespace extrafs::tools
