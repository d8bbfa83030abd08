#include "store/publish_tar.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <optional>
#include <unordered_map>

#include "common/posix_file.h"
#include "common/str_util.h"
#include "format/layer_index.h"
#include "store/chunking.h"

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
  std::vector<format::ChunkRecord> chunks;
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
      if (comp.size() > format::kMaxNameLen || comp.find('\0') != std::string_view::npos) return false;
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
  LayerTarConverter(struct archive* a, ChunkPacker& out, const LayerTarOptions& opts)
      : a_(a), out_(out), blob_(dynamic_cast<BlobWriter*>(&out)), opts_(opts), builder_(opts.chunk_size) {
    for (const auto& p : opts.first) first_rank_.emplace(p, first_rank_.size());
  }

  Result<LayerTarResult> run() {
    if (ordered() && blob_ == nullptr)
      return make_error(EINVAL, "a packing order needs a blob to order (not chunk objects)");
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
  ChunkPacker& out_;
  BlobWriter* blob_;  // out_ if it is a blob (what ordered packing needs), else null
  const LayerTarOptions& opts_;
  format::IndexBuilder builder_;
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
      if (!t || *t == 0)
        return bad_tar("hard link '" + path + "' names '" + tp + "', which is not in the layer before it");
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
      case AE_IFREG:
      case AE_IFDIR:
      case AE_IFLNK:
      case AE_IFCHR:
      case AE_IFBLK:
      case AE_IFIFO:
        break;
      default:
        return bad_tar(fmt::format("layer tar entry '{}' has unsupported type {:o}", path, type));
    }
    if (type == AE_IFCHR || type == AE_IFBLK)
      n.st.st_rdev = makedev(archive_entry_rdevmajor(ent), archive_entry_rdevminor(ent));
    if (type == AE_IFLNK) {
      const char* t = archive_entry_symlink(ent);
      n.target = t ? t : "";
      if (n.target.empty() || n.target.size() > format::kMaxTargetLen)
        return bad_tar("symlink '" + path + "' has a bad target");
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
    ChunkPacker& dst = ordered() ? static_cast<ChunkPacker&>(*back_) : out_;
    auto read = [&](uint64_t, uint32_t len, char* out, bool*) { return read_data(path, out, len); };
    auto store = [&](uint64_t, std::string_view raw, format::ChunkRecord* rec) { return dst.pack(builder_, raw, rec); };
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
        size_t n = 0;
        const int e = pread_all(spool_->fd(), out, len, static_cast<off_t>(sp.offset + off), &n);
        if (e != 0 || n < len) return Error::from_errno(e != 0 ? e : EIO, "read back the scratch file");
        return ok_status();
      };
      auto store = [&](uint64_t, std::string_view raw, format::ChunkRecord* rec) {
        return blob_->pack(builder_, raw, rec);
      };
      EXTRAFS_TRY(content, chunk_content(sp.size, opts_.chunk_size, buf_, read, store));
      nodes[id].chunks = std::move(content.chunks);
      nodes[id].st.st_blocks = static_cast<blkcnt_t>(blocks_for(content.stored_raw));
    }
    EXTRAFS_CHECK_STATUS(back_->finish());
    EXTRAFS_TRY(base, blob_->append(*back_));
    uint32_t obj = builder_.add_object(blob_->object_path());
    for (uint32_t id = 0; id < nodes.size(); ++id) {
      if (spooled_.count(id)) continue;
      for (auto& c : nodes[id].chunks) {
        if (c.flags & format::kChunkZero) continue;
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
      format::BuildEntry e;
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

Result<LayerTarResult> convert_layer_tar(struct archive* a, ChunkPacker& out, const LayerTarOptions& opts) {
  LayerTarConverter c(a, out, opts);
  return c.run();
}

}  // namespace extrafs::store
