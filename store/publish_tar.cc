#include "store/publish_tar.h"

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

#include "common/posix_file.h"
#include "common/str_util.h"
#include "fs/layer_index.h"
#include "store/chunking.h"
#include "store/docker_meta.h"

namespace extrafs::store {

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

namespace {

// One layer tar into an index: read_entries() builds the tree (content packed as it streams by,
// or spooled for the files to pack first), pack_first_files() packs the spooled files in the
// order asked for and the rest behind them, emit() settles sizes, link counts and xattrs and
// writes the index breadth-first.
class LayerTarConverter {
 public:
  LayerTarConverter(struct archive* a, BlobWriter& blob, const LayerTarOptions& opts)
      : a_(a), blob_(blob), opts_(opts), builder_(opts.chunk_size) {
    for (const auto& p : opts.first) first_rank_.emplace(p, first_rank_.size());
  }

  Result<LayerTarResult> run() {
    if (ordered()) {
      // The files to pack first are spooled raw; the rest is packed into `back_`; at the end the
      // first files are packed into the blob in order and `back_` is appended behind them.
      EXTRAFS_TRY(b, BlobWriter::create_scratch(opts_.scratch_dir));
      EXTRAFS_TRY(s, BlobWriter::create_scratch(opts_.scratch_dir));
      back_ = std::move(b);
      spool_ = std::move(s);
    }
    EXTRAFS_CHECK_STATUS(read_entries());
    if (ordered()) EXTRAFS_CHECK_STATUS(pack_first_files());
    return emit();
  }

 private:
  struct archive* a_;
  BlobWriter& blob_;
  const LayerTarOptions& opts_;
  fs::IndexBuilder builder_;
  TarTree tree_;
  std::unordered_map<std::string, size_t> first_rank_;
  std::unique_ptr<BlobWriter> back_, spool_;
  std::map<uint32_t, Spooled> spooled_;  // node -> where its content is in the spool
  uint64_t spool_end_ = 0;
  std::string buf_;
  LayerTarResult result_;

  bool ordered() const { return !first_rank_.empty(); }

  Status read_entries() {
    for (;;) {
      struct archive_entry* ent = nullptr;
      int r = archive_read_next_header(a_, &ent);
      if (r == ARCHIVE_EOF) return ok_status();
      if (r == ARCHIVE_WARN) r = ARCHIVE_OK;
      if (r != ARCHIVE_OK) return bad_tar(std::string("bad layer tar: ") + archive_error_string(a_));
      result_.entries++;
      EXTRAFS_CHECK_STATUS(add_entry(ent));
    }
  }

  // The owner and times of a header.
  static struct stat header_stat(struct archive_entry* ent) {
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
    return st;
  }

  static std::vector<std::pair<std::string, std::string>> header_xattrs(struct archive_entry* ent) {
    std::vector<std::pair<std::string, std::string>> out;
    archive_entry_xattr_reset(ent);
    const char* xn;
    const void* xv;
    size_t xs;
    while (archive_entry_xattr_next(ent, &xn, &xv, &xs) == ARCHIVE_OK) {
      if (!xn || !*xn) continue;
      out.emplace_back(xn, std::string(static_cast<const char*>(xv), xs));
    }
    return out;
  }

  // One header: a whiteout, an opaque marker, the root, a hard link or a new node.
  Status add_entry(struct archive_entry* ent) {
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
    EXTRAFS_TRY(parent, tree_.dir(parent_path));
    const struct stat st = header_stat(ent);

    if (base == kOpaqueMarker) {
      EXTRAFS_TRY(d, tree_.dir(parent_path));
      tree_.nodes()[d].opaque = true;
      return ok_status();
    }
    if (base.size() > kWhiteoutPrefix.size() && base.compare(0, kWhiteoutPrefix.size(), kWhiteoutPrefix) == 0) {
      // What overlay2 makes of a whiteout: mknod(S_IFCHR, 0), chowned to the header's owner.
      Node n;
      n.st = st;
      n.st.st_mode = S_IFCHR;
      n.st.st_rdev = makedev(0, 0);
      tree_.place(parent, base.substr(kWhiteoutPrefix.size()), std::move(n));
      return ok_status();
    }
    if (path.empty()) {
      Node& root = tree_.nodes()[0];
      root.st = st;
      root.st.st_mode = S_IFDIR | (archive_entry_perm(ent) & 07777);
      root.xattrs.clear();
      archive_entry_xattr_reset(ent);
      const char* xn;
      const void* xv;
      size_t xs;
      while (archive_entry_xattr_next(ent, &xn, &xv, &xs) == ARCHIVE_OK)
        root.xattrs.emplace_back(xn, std::string(static_cast<const char*>(xv), xs));
      return ok_status();
    }

    Node n;
    n.st = st;
    if (const char* hl = archive_entry_hardlink(ent)) {
      std::string tp;
      if (!normalize_tar_path(hl, &tp)) return bad_tar("hard link '" + path + "' has a bad target");
      auto t = tree_.find(tp);
      if (!t || *t == 0) return bad_tar("hard link '" + path + "' names '" + tp + "', which is not in the layer before it");
      const Node& tn = tree_.nodes()[*t];
      if (S_ISDIR(tn.st.st_mode)) return bad_tar("hard link '" + path + "' names a directory");
      uint32_t leader = tn.link_of.value_or(*t);
      n.st = tree_.nodes()[leader].st;
      n.link_of = leader;
      tree_.place(parent, base, std::move(n));
      return ok_status();
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
    n.xattrs = header_xattrs(ent);
    uint32_t id = tree_.place(parent, base, std::move(n));
    if (type != AE_IFREG) return ok_status();
    const uint64_t size = archive_entry_size_is_set(ent) ? static_cast<uint64_t>(archive_entry_size(ent)) : 0;
    return read_content(id, path, size);
  }

  // Exactly `len` bytes of the current entry's content into `dst`. archive_read_data gives holes
  // of sparse entries as zeros; zero chunks are not stored.
  Status read_data(const std::string& path, char* dst, uint32_t len) {
    size_t got = 0;
    while (got < len) {
      la_ssize_t n = archive_read_data(a_, dst + got, len - got);
      if (n < 0) return bad_tar(std::string("bad layer tar: ") + archive_error_string(a_));
      if (n == 0) return bad_tar("layer tar ends inside '" + path + "'");
      got += static_cast<size_t>(n);
    }
    if (opts_.on_bytes) opts_.on_bytes(len);
    return ok_status();
  }

  // A regular file's content: spooled raw if it is to be packed first, else chunked and packed.
  Status read_content(uint32_t id, const std::string& path, uint64_t size) {
    const uint32_t cs = opts_.chunk_size;
    Node& node = tree_.nodes()[id];
    node.st.st_size = static_cast<off_t>(size);
    if (ordered() && first_rank_.count(path)) {
      buf_.resize(cs);
      for (uint64_t off = 0; off < size; off += cs) {
        const uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(cs, size - off));
        EXTRAFS_CHECK_STATUS(read_data(path, buf_.data(), len));
        EXTRAFS_CHECK_STATUS(spool_->put_raw(std::string_view(buf_.data(), len)));
      }
      spooled_[id] = Spooled{spool_end_, size};
      spool_end_ += size;
      return ok_status();
    }
    BlobWriter& dst = ordered() ? *back_ : blob_;
    auto read = [&](uint64_t, uint32_t len, char* out, bool*) { return read_data(path, out, len); };
    auto store = [&](uint64_t, std::string_view raw, fs::ChunkRecord* rec) { return dst.pack(builder_, raw, rec); };
    EXTRAFS_TRY(content, chunk_content(size, cs, buf_, read, store));
    Node& n = tree_.nodes()[id];
    n.chunks = std::move(content.chunks);
    n.st.st_blocks = static_cast<blkcnt_t>(blocks_for(content.stored_raw));
    return ok_status();
  }

  // The first files in the order asked for, then everything else behind them.
  Status pack_first_files() {
    auto& nodes = tree_.nodes();
    EXTRAFS_CHECK_STATUS(spool_->finish());
    std::vector<std::pair<size_t, uint32_t>> order;
    for (const auto& [id, sp] : spooled_) {
      std::string p;
      for (uint32_t cur = id; cur != 0; cur = nodes[cur].parent) p = nodes[cur].name + (p.empty() ? "" : "/" + p);
      auto it = first_rank_.find(p);
      order.emplace_back(it == first_rank_.end() ? first_rank_.size() : it->second, id);
    }
    std::sort(order.begin(), order.end());
    for (auto [rank, id] : order) {
      const Spooled& sp = spooled_[id];
      auto read = [&](uint64_t off, uint32_t len, char* out, bool*) -> Status {
        ssize_t n = pread_all(spool_->fd(), out, len, static_cast<off_t>(sp.offset + off));
        if (n < 0 || static_cast<size_t>(n) < len) return Error::from_errno(n < 0 ? static_cast<int>(-n) : EIO, "read back the scratch file");
        return ok_status();
      };
      auto store = [&](uint64_t, std::string_view raw, fs::ChunkRecord* rec) { return blob_.pack(builder_, raw, rec); };
      EXTRAFS_TRY(content, chunk_content(sp.size, opts_.chunk_size, buf_, read, store));
      nodes[id].chunks = std::move(content.chunks);
      nodes[id].st.st_blocks = static_cast<blkcnt_t>(blocks_for(content.stored_raw));
    }
    EXTRAFS_CHECK_STATUS(back_->finish());
    EXTRAFS_TRY(base, blob_.append(*back_));
    uint32_t obj = builder_.add_object(blob_.object_path());
    for (uint32_t id = 0; id < nodes.size(); ++id) {
      if (spooled_.count(id)) continue;
      for (auto& c : nodes[id].chunks) {
        if (c.flags & fs::kChunkZero) continue;
        c.offset += base;
        c.object = obj;
      }
    }
    return ok_status();
  }

  // Directory sizes and link counts as a local file system shows them, the opaque xattr, xattrs
  // sorted and unique; hard-link group sizes in *group_size.
  Status settle_attributes(const std::vector<uint32_t>& order, std::map<uint32_t, uint32_t>* group_size) {
    auto& nodes = tree_.nodes();
    for (uint32_t id : order)
      if (nodes[id].link_of) (*group_size)[*nodes[id].link_of]++;
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
    for (auto& [leader, count] : *group_size) {
      if (!reachable[leader]) return bad_tar("hard link to '" + nodes[leader].name + "', which a later entry replaced");
      nodes[leader].st.st_nlink = static_cast<nlink_t>(count + 1);
    }
    return ok_status();
  }

  // Emits the tree breadth-first; hard-link groups counted and sized once.
  Result<LayerTarResult> emit() {
    auto& nodes = tree_.nodes();
    std::vector<uint32_t> order{0};
    for (size_t q = 0; q < order.size(); ++q)
      for (const auto& [name, kid] : nodes[order[q]].kids) order.push_back(kid);
    std::map<uint32_t, uint32_t> group_size;  // leader -> members reached
    EXTRAFS_CHECK_STATUS(settle_attributes(order, &group_size));
    // The first member of a hard-link group in breadth-first order holds the group's data; the
    // others (the tar's first occurrence included, if it comes later) link to it.
    std::vector<uint32_t> builder_of(nodes.size(), UINT32_MAX);
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
        if (!S_ISDIR(e.st.st_mode) && e.st.st_size > 0) result_.docker_size += static_cast<uint64_t>(e.st.st_size);
      }
      builder_of[id] = builder_.add(std::move(e));
      if (grouped && it == primary_of.end()) primary_of.emplace(key, builder_of[id]);
    }
    EXTRAFS_TRY(bytes, builder_.serialize());
    result_.index = std::move(bytes);
    return std::move(result_);
  }
};

}  // namespace

Result<LayerTarResult> convert_layer_tar(struct archive* a, BlobWriter& blob, const LayerTarOptions& opts) {
  LayerTarConverter c(a, blob, opts);
  return c.run();
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
    auto diff_ids = parse_diff_ids(img.config);
    if (!diff_ids.ok()) return bad_tar(path + ": config " + cfg_path + " " + diff_ids.error().message);
    img.diff_ids = std::move(diff_ids).value();
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

}  // namespace extrafs::store
