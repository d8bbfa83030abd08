#include "fs/fs_core.h"

#include "common/str_util.h"
#include "fs/index_chunks.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cstring>

namespace extrafs::fs {

using format::CatalogLayer;
using format::ChunkRecord;
using format::EntryRecord;
using format::kChunkZero;
using format::kMaxNameLen;
using format::LayerIndex;

namespace {

constexpr uint64_t kOverlayIno = 2;  // /overlay2
constexpr uint64_t kLinksIno = 3;    // /overlay2/l
// Local ids inside a layer slot.
constexpr uint32_t kLayerDir = 0;     // /overlay2/<id>
constexpr uint32_t kLinkFile = 1;     // /overlay2/<id>/link
constexpr uint32_t kLowerFile = 2;    // /overlay2/<id>/lower
constexpr uint32_t kLinkSymlink = 3;  // /overlay2/l/<link>
constexpr uint32_t kEntryBase = 16;   // index entry e has local id kEntryBase + e

Error noent() { return make_error(ENOENT, "no such entry"); }

// Chunks offered to the fetcher to read along with a missing one (see ChunkFetcher::get).
constexpr size_t kMaxFollowing = 8;

// What a hole reads as (never written: the kernel backs it with its zero page).
const std::byte kZeros[1 << 20] = {};

std::string link_target(const std::string& cache_id) { return "../" + cache_id + "/diff"; }

// Readahead across files: a read reached the end of entry `e` (a file of slot `slot_no`); if
// that is a step of a walk of its directory (Readahead::walk), the chunks of the next small
// files of the directory are queued with the fetcher, together, so that adjacent ones in the
// store come in one backend read.
void walk_ahead(Readahead& readahead, cache::ChunkFetcher& fetcher, uint32_t slot_no, const LayerIndex& idx,
                uint32_t e) {
  const uint32_t parent = idx.entry(e).parent;
  const EntryRecord& dir = idx.entry(parent);
  const auto w = readahead.walk(make_ino(slot_no, kEntryBase + parent), e, uint64_t{dir.child_first} + dir.child_count);
  if (w.from >= w.to) return;
  // The window's small files, up to its byte bound (counted from its first entry, so that a
  // refill never runs past what the whole window may hold); of them, what was not handed out
  // before.
  std::array<cache::ChunkRef, Readahead::kMaxWalkFiles> refs;
  size_t n = 0;
  uint64_t bytes = 0;
  for (uint32_t i = w.first; i < w.to && n < refs.size(); ++i) {
    const EntryRecord& r = idx.attr_entry(i);
    if (!S_ISREG(r.mode)) continue;
    if (r.size > Readahead::kWalkFileMax || bytes + r.size > Readahead::kMaxWalkBytes) break;
    bytes += r.size;
    if (i < w.from) continue;
    for (const ChunkRecord& c : idx.chunks(i))
      if (!(c.flags & kChunkZero) && n < refs.size()) refs[n++] = chunk_ref(idx, c);
  }
  fetcher.prefetch(std::span(refs.data(), n));
}

// Readahead's neighbours in the store: the chunks of the small files stored right after file
// `e` of `idx`, whose last chunk is `last`, in its directory, within Readahead's neighbour
// bounds, into `out`. Returns how many; stops where the run in the store breaks (another
// object, a gap, a hole) and at the first file that does not fit in what is left of the bounds
// (the byte bound counts file sizes: what is stored is no more).
size_t neighbours(const LayerIndex& idx, uint32_t e, const ChunkRecord& last, std::span<cache::ChunkRef> out) {
  const EntryRecord& dir = idx.entry(idx.entry(e).parent);
  const uint64_t scan_end =
      std::min<uint64_t>(uint64_t{dir.child_first} + dir.child_count, uint64_t{e} + 1 + Readahead::kNeighbourScan);
  uint64_t end = last.offset + last.stored_len, bytes = 0;
  size_t n = 0;
  uint32_t files = 0;
  for (uint64_t i = uint64_t{e} + 1; i < scan_end && files < Readahead::kNeighbourFiles; ++i) {
    const EntryRecord& r = idx.attr_entry(static_cast<uint32_t>(i));
    if (!S_ISREG(r.mode) || r.size == 0) continue;
    if (bytes + r.size > Readahead::kNeighbourBytes) break;
    const auto chunks = idx.chunks(static_cast<uint32_t>(i));
    if (n + chunks.size() > out.size()) break;
    for (const ChunkRecord& c : chunks) {
      if ((c.flags & kChunkZero) || c.object != last.object || c.offset != end) return n;
      out[n++] = chunk_ref(idx, c);
      end += c.stored_len;
    }
    bytes += r.size;
    ++files;
  }
  return n;
}

}  // namespace

FsCore::FsCore(cache::ChunkFetcher& fetcher, cache::MetaSource& meta, FsCoreOptions options)
    : fetcher_(fetcher),
      meta_(meta),
      options_(std::move(options)),
      indexes_(meta, options_.index_retry_s, options_.now) {
  clock_gettime(CLOCK_REALTIME, &start_time_);
}

void FsCore::stop() {
  view_->stop();
  if (copier_) copier_->stop();
  fetcher_.interrupt();
}

FsCore::~FsCore() {
  // The threads first: they use the rest.
  view_.reset();
  copier_.reset();
}

Result<std::unique_ptr<FsCore>> FsCore::open(cache::ChunkFetcher& fetcher, cache::MetaSource& meta,
                                             FsCoreOptions options) {
  std::unique_ptr<FsCore> core(new FsCore(fetcher, meta, std::move(options)));
  StoreViewOptions vo;
  vo.refresh_interval_s = core->options_.refresh_interval_s;
  vo.probe_generations = core->options_.probe_generations;
  EXTRAFS_TRY(view, StoreView::open(meta, core->indexes_, core->inodes_, vo));
  core->view_ = std::move(view);
  if (core->options_.whole_files)
    core->copier_ =
        std::make_unique<WholeFileCopier>(fetcher, *core->options_.whole_files, core->options_.whole_file_min);
  return core;
}

Status FsCore::refresh() { return view_->refresh(); }

size_t FsCore::layer_count() { return view_->layer_count(); }

std::optional<Digest128> FsCore::image_tree() const { return view_->image_tree(); }

void FsCore::set_on_listing_change(std::function<void(std::span<const uint64_t>)> f) {
  // A newer catalog: the directories that list layers may list others now.
  static constexpr uint64_t kListings[] = {kRootIno, kOverlayIno, kLinksIno};
  if (!f) return view_->set_on_change(nullptr);
  view_->set_on_change([f = std::move(f)] { f(kListings); });
}

std::shared_ptr<const LayerIndex> FsCore::loaded_index(const Slot& s) {
  return s.is_image ? s.index : s.lazy->loaded();
}

Result<std::shared_ptr<const LayerIndex>> FsCore::index_of(const Slot& s) {
  if (s.is_image) return s.index;
  return indexes_.get(*s.lazy);
}

std::shared_ptr<const LayerIndex> FsCore::local_index(const Slot& s) {
  return s.is_image ? s.index : indexes_.local(*s.lazy);
}

void FsCore::forget(uint64_t ino, uint64_t n) {
  if (inodes_.forget(ino, n) != 0) return;
  const uint32_t s = ino_slot(ino);
  if (s != 0 && inodes_.slot_nodes(s) == 0) view_->release_if_superseded(s);
}

NodeAttr FsCore::synthetic_attr(uint64_t ino, uint32_t mode, uint64_t size, uint32_t nlink) const {
  NodeAttr a;
  a.st.st_ino = ino;
  a.st.st_mode = mode;
  a.st.st_nlink = nlink;
  a.st.st_size = static_cast<off_t>(size);
  a.st.st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
  a.st.st_blksize = 4096;
  a.st.st_atim = a.st.st_mtim = a.st.st_ctim = start_time_;
  return a;
}

NodeAttr FsCore::entry_attr(uint32_t slot_no, const LayerIndex& idx, uint32_t entry) const {
  const EntryRecord& e = idx.attr_entry(entry);
  NodeAttr a;
  a.st.st_ino = make_ino(slot_no, kEntryBase + idx.entry(entry).primary);
  a.st.st_mode = e.mode;
  a.st.st_nlink = e.nlink;
  a.st.st_uid = e.uid;
  a.st.st_gid = e.gid;
  a.st.st_rdev = e.rdev;
  a.st.st_size = static_cast<off_t>(e.size);
  a.st.st_blocks = static_cast<blkcnt_t>(e.blocks);
  a.st.st_blksize = 4096;
  a.st.st_atim = {e.atime_sec, e.atime_nsec};
  a.st.st_mtim = {e.mtime_sec, e.mtime_nsec};
  a.st.st_ctim = {e.ctime_sec, e.ctime_nsec};
  return a;
}

Result<FsCore::Node> FsCore::resolve(uint64_t ino) {
  Node n;
  n.ino = ino;
  n.slot_no = ino_slot(ino);
  n.local = ino_local(ino);
  if (n.slot_no == 0) {
    if (ino != kRootIno && ino != kOverlayIno && ino != kLinksIno) return noent();
    return n;
  }
  n.slot = view_->slot(n.slot_no);
  if (!n.slot) return make_error(ESTALE, "stale node");
  if (n.local >= kEntryBase) {
    EXTRAFS_TRY(idx, index_of(*n.slot));
    const uint64_t e = n.local - kEntryBase;
    if (e >= idx->entry_count()) return noent();
    n.index = std::move(idx);
    n.entry = static_cast<uint32_t>(e);
    return n;
  }
  if (n.slot->is_image) return noent();
  const CatalogLayer& l = n.slot->layer;
  switch (n.local) {
    case kLayerDir:
      return n;
    case kLinkFile:
    case kLinkSymlink:
      if (l.link.empty()) return noent();
      return n;
    case kLowerFile:
      if (!l.lower) return noent();
      return n;
    default:
      return noent();
  }
}

NodeAttr FsCore::node_attr(const Node& n) const {
  if (n.index) return entry_attr(n.slot_no, *n.index, n.entry);
  if (n.slot_no == 0) {
    NodeAttr a;
    if (n.ino == kRootIno) {
      a = synthetic_attr(n.ino, S_IFDIR | 0755, 4096, view_->image_slot() ? 4 : 3);
    } else if (n.ino == kOverlayIno) {
      a = synthetic_attr(n.ino, S_IFDIR | 0710, 4096, static_cast<uint32_t>(3 + view_->layer_count()));
    } else {
      a = synthetic_attr(n.ino, S_IFDIR | 0700, 4096, 2);  // kLinksIno
    }
    a.attr_timeout = kShortTimeout;  // a new catalog changes their link counts
    return a;
  }
  const CatalogLayer& l = n.slot->layer;
  switch (n.local) {
    case kLayerDir:
      return synthetic_attr(n.ino, S_IFDIR | 0710, 4096, 3);
    case kLinkFile:
      return synthetic_attr(n.ino, S_IFREG | 0644, l.link.size(), 1);
    case kLowerFile:
      return synthetic_attr(n.ino, S_IFREG | 0644, l.lower->size(), 1);
    default:  // kLinkSymlink (resolve() lets no other through)
      return synthetic_attr(n.ino, S_IFLNK | 0777, link_target(l.cache_id).size(), 1);
  }
}

Result<NodeAttr> FsCore::getattr(uint64_t ino) {
  EXTRAFS_TRY(n, resolve(ino));
  return node_attr(n);
}

double FsCore::negative_timeout(uint64_t parent) const { return ino_slot(parent) == 0 ? kShortTimeout : kLongTimeout; }

Result<NodeAttr> FsCore::lookup(uint64_t parent, std::string_view name) {
  EXTRAFS_TRY(dir, resolve(parent));
  if (dir.index) {
    const LayerIndex& idx = *dir.index;
    if (!idx.is_dir(dir.entry)) return make_error(ENOTDIR, "not a directory");
    if (!dir.slot->is_image) ordered_.touch(dir.slot->layer, idx);
    auto child = idx.lookup(dir.entry, name);
    if (!child) return noent();
    return entry_attr(dir.slot_no, idx, *child);
  }
  // A synthetic directory: find the child's id, then resolve it as any node.
  uint64_t child = 0;
  if (dir.slot_no == 0) {
    if (parent == kRootIno) {
      if (name == "overlay2")
        child = kOverlayIno;
      else if (uint32_t img = view_->image_slot(); name == "image" && img)
        child = make_ino(img, kEntryBase);
    } else if (parent == kOverlayIno) {
      if (name == "l")
        child = kLinksIno;
      else if (uint32_t n = view_->layer_by_cache_id(name))
        child = make_ino(n, kLayerDir);
    } else if (uint32_t n = view_->layer_by_link(name)) {  // kLinksIno
      child = make_ino(n, kLinkSymlink);
    }
  } else {
    if (dir.local != kLayerDir) return make_error(ENOTDIR, "not a directory");
    if (name == "diff")
      child = make_ino(dir.slot_no, kEntryBase);
    else if (name == "link")
      child = make_ino(dir.slot_no, kLinkFile);
    else if (name == "lower")
      child = make_ino(dir.slot_no, kLowerFile);
  }
  if (!child) return noent();
  EXTRAFS_TRY(n, resolve(child));
  NodeAttr a = node_attr(n);
  if (n.index && n.slot->is_image) {
    a.entry_timeout = kShortTimeout;  // /image: a newer image/ tree may replace it
  } else if (n.index) {
    // The first look at a layer's diff/ (attach checks each layer's; overlayfs resolves its
    // lower directories) starts fetching its ordered prefix: the start-up's files are on
    // their way before the container asks for them.
    ordered_.touch(n.slot->layer, *n.index);
  }
  return a;
}

Result<std::string> FsCore::readlink(uint64_t ino) {
  EXTRAFS_TRY(n, resolve(ino));
  if (n.index) {
    if (!S_ISLNK(n.index->attr_entry(n.entry).mode)) return make_error(EINVAL, "not a symlink");
    return std::string(n.index->target(n.entry));
  }
  if (n.slot_no != 0 && n.local == kLinkSymlink) return link_target(n.slot->layer.cache_id);
  return make_error(EINVAL, "not a symlink");
}

Status FsCore::readdir(uint64_t ino, uint64_t offset,
                       const std::function<bool(const DirItem&, const NodeAttr&)>& emit) {
  EXTRAFS_TRY(dir, resolve(ino));
  if (dir.index) {
    const LayerIndex& idx = *dir.index;
    if (!idx.is_dir(dir.entry)) return make_error(ENOTDIR, "not a directory");
    const EntryRecord& d = idx.entry(dir.entry);
    for (uint64_t i = offset; i < d.child_count; ++i) {
      uint32_t c = static_cast<uint32_t>(d.child_first + i);
      NodeAttr a = entry_attr(dir.slot_no, idx, c);
      DirItem item{idx.name(c), a.st.st_ino, a.st.st_mode & S_IFMT, i + 1};
      if (!emit(item, a)) break;
    }
    return ok_status();
  }
  // Fixed and per-layer directories: build the list, then emit from `offset`.
  std::vector<std::pair<std::string, uint64_t>> items;
  if (ino == kRootIno) {
    if (uint32_t img = view_->image_slot()) items.emplace_back("image", make_ino(img, kEntryBase));
    items.emplace_back("overlay2", kOverlayIno);
  } else if (ino == kOverlayIno) {
    items.emplace_back("l", kLinksIno);
    for (const auto& l : view_->layers()) items.emplace_back(l.slot->layer.cache_id, make_ino(l.slot_no, kLayerDir));
  } else if (ino == kLinksIno) {
    for (const auto& l : view_->layers())
      if (!l.slot->layer.link.empty()) items.emplace_back(l.slot->layer.link, make_ino(l.slot_no, kLinkSymlink));
  } else {
    if (dir.local != kLayerDir) return make_error(ENOTDIR, "not a directory");
    const CatalogLayer& l = dir.slot->layer;
    items.emplace_back("diff", make_ino(dir.slot_no, kEntryBase));
    if (!l.link.empty()) items.emplace_back("link", make_ino(dir.slot_no, kLinkFile));
    if (l.lower) items.emplace_back("lower", make_ino(dir.slot_no, kLowerFile));
  }
  for (uint64_t i = offset; i < items.size(); ++i) {
    // A layer's diff/ whose index is not loaded is listed without attributes (the kernel
    // looks it up when it is used), so that listing a layer directory reads no index.
    if (dir.slot_no != 0 && ino_local(items[i].second) == kEntryBase && !loaded_index(*dir.slot)) {
      NodeAttr a;
      a.st.st_ino = items[i].second;
      a.st.st_mode = S_IFDIR;
      a.known = false;
      DirItem item{items[i].first, items[i].second, S_IFDIR, i + 1};
      if (!emit(item, a)) break;
      continue;
    }
    auto a = getattr(items[i].second);
    if (!a.ok()) continue;
    DirItem item{items[i].first, items[i].second, a->st.st_mode & S_IFMT, i + 1};
    if (!emit(item, *a)) break;
  }
  return ok_status();
}

Result<std::string> FsCore::getxattr(uint64_t ino, std::string_view name) {
  EXTRAFS_TRY(n, resolve(ino));
  if (n.index)
    for (const auto& x : n.index->xattrs(n.entry))
      if (n.index->xattr_name(x) == name) return std::string(n.index->xattr_value(x));
  return make_error(ENODATA, "no such attribute");
}

Result<std::vector<std::string>> FsCore::listxattr(uint64_t ino) {
  EXTRAFS_TRY(n, resolve(ino));
  std::vector<std::string> out;
  if (n.index)
    for (const auto& x : n.index->xattrs(n.entry)) out.emplace_back(n.index->xattr_name(x));
  return out;
}

Result<Fd> FsCore::open(uint64_t ino, int flags) {
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_TRUNC | O_CREAT | O_APPEND)))
    return make_error(EROFS, "read-only file system");
  EXTRAFS_TRY(n, resolve(ino));
  const uint32_t mode = node_attr(n).st.st_mode;
  if (S_ISDIR(mode)) return make_error(EISDIR, "is a directory");
  if (!S_ISREG(mode)) return make_error(EACCES, "not a regular file");
  if (!n.index) return Fd();  // a layer's link or lower file
  if (options_.on_first_open && !n.slot->is_image) record_access(n.slot_no, *n.slot, *n.index, n.entry);
  return copier_ ? copier_->open(n.index, n.entry) : Fd();
}

void FsCore::record_access(uint32_t slot_no, const Slot& s, const LayerIndex& idx, uint32_t entry) {
  uint64_t key = make_ino(slot_no, entry);
  MutexLock lock(&record_mu_);  // also keeps the callback's lines in first-open order
  if (!recorded_.insert(key).second) return;
  options_.on_first_open(s.layer.cache_id, entry, idx.path_of(entry));
}

Result<size_t> FsCore::read(uint64_t ino, uint64_t offset, std::span<std::byte> out) {
  thread_local std::vector<ReadPiece> pieces;
  EXTRAFS_TRY(n, read_pieces(ino, offset, out.size(), pieces));
  size_t done = 0;
  for (const auto& p : pieces) {
    std::memcpy(out.data() + done, p.bytes.data(), p.bytes.size());
    done += p.bytes.size();
  }
  pieces.clear();  // let go of the chunks
  return n;
}

Result<size_t> FsCore::read_pieces(uint64_t ino, uint64_t offset, size_t size, std::vector<ReadPiece>& pieces) {
  pieces.clear();
  auto node = resolve(ino);
  if (!node.ok()) return view_->read_failed(ino_slot(ino), node.error());  // a layer's index that cannot be loaded
  const Node& n = *node;
  if (!n.index) {
    std::string_view content;
    if (n.slot_no != 0 && n.local == kLinkFile)
      content = n.slot->layer.link;
    else if (n.slot_no != 0 && n.local == kLowerFile)
      content = *n.slot->layer.lower;
    else
      return make_error(EISDIR, "not a file");
    if (offset >= content.size()) return size_t{0};
    size_t len = std::min<size_t>(size, content.size() - offset);
    pieces.push_back({n.slot, std::as_bytes(std::span(content.data() + offset, len))});
    bytes_served_ += len;
    return len;
  }
  const LayerIndex& idx = *n.index;
  const uint32_t e = n.entry;
  const EntryRecord& rec = idx.attr_entry(e);
  if (!S_ISREG(rec.mode)) return make_error(EISDIR, "not a regular file");
  if (!n.slot->is_image) ordered_.touch(n.slot->layer, idx);
  if (offset >= rec.size) return size_t{0};
  size_t want = static_cast<size_t>(std::min<uint64_t>(size, rec.size - offset));
  auto chunks = idx.chunks(e);
  const uint64_t cs = idx.chunk_size();
  // Readahead: a reader that keeps reading where it stopped gets the next chunks fetched, a
  // window that grows with the streak.
  const unsigned window = readahead_.window(ino, offset, offset + want);
  const uint64_t last_wanted = std::min<uint64_t>((offset + want - 1) / cs + window, chunks.size() - 1);
  size_t done = 0;
  while (done < want) {
    uint64_t pos = offset + done;
    uint64_t ci = pos / cs;
    uint64_t in_chunk = pos - ci * cs;
    const ChunkRecord& c = chunks[ci];
    size_t len = static_cast<size_t>(std::min<uint64_t>(want - done, c.raw_len - in_chunk));
    if (c.flags & kChunkZero) {
      len = std::min(len, sizeof(kZeros));
      pieces.push_back({nullptr, std::span(kZeros, len)});
    } else {
      // The rest of this read and the readahead window go along: a chunk that must come from
      // the backend brings the ones right after it in the same read; so do a small file's
      // neighbours in the store once the rest of the file is in the list.
      std::array<cache::ChunkRef, kMaxFollowing + Readahead::kNeighbourFiles> following;
      size_t nf = 0;
      uint64_t fi = ci + 1;
      for (; fi <= last_wanted && nf < kMaxFollowing; ++fi) {
        if (chunks[fi].flags & kChunkZero) break;
        following[nf++] = chunk_ref(idx, chunks[fi]);
      }
      if (fi == chunks.size() && rec.size <= Readahead::kWalkFileMax)
        nf += neighbours(idx, e, chunks.back(), std::span(following).subspan(nf));
      auto data = fetcher_.get(chunk_ref(idx, c), std::span(following.data(), nf));
      if (!data.ok()) {
        // The whole request fails, even when earlier chunks of it were served: the kernel takes
        // a short read as end of file and shrinks the cached inode size to it, so one bad chunk
        // would shorten the file for every reader until the inode is forgotten. Whatever went
        // wrong below (timeout, missing object, bytes that never verify), the reader sees EIO;
        // the cause is logged and counted by the fetcher.
        pieces.clear();
        return view_->read_failed(n.slot_no, make_error(EIO, data.error().message));
      }
      pieces.push_back({*data, std::span((*data)->data() + in_chunk, len)});
    }
    done += len;
  }
  bytes_served_ += done;
  // A read that reaches the end of a large file: if this host now holds all of it (checked by
  // the copier), a local copy lets the next opens skip the daemon.
  if (offset + done == rec.size && copier_) copier_->want_copy(n.index, e);
  // A read that reaches the end of any file may be a step of a directory walk.
  if (offset + done == rec.size) walk_ahead(readahead_, fetcher_, n.slot_no, idx, e);
  // The window's chunks that the reads above did not bring are fetched in the background.
  if (window > 0) {
    uint64_t last = (offset + done - 1) / cs;
    for (uint64_t ci = last + 1; ci <= last + window && ci < chunks.size(); ++ci) {
      const ChunkRecord& c = chunks[ci];
      if (c.flags & kChunkZero) continue;
      fetcher_.prefetch(chunk_ref(idx, c));
    }
  }
  return done;
}

struct statvfs FsCore::statfs() {
  struct statvfs sv {};
  uint64_t bytes = 0, files = 0;
  // The catalog knows every layer's size; entries are counted for the indexes loaded so far.
  for (const auto& l : view_->layers()) {
    bytes += l.slot->layer.bytes;
    if (auto idx = loaded_index(*l.slot)) files += idx->entry_count();
  }
  sv.f_bsize = 4096;
  sv.f_frsize = 4096;
  sv.f_blocks = (bytes + 4095) / 4096;
  sv.f_files = files;
  sv.f_namemax = kMaxNameLen;
  sv.f_flag = ST_RDONLY;
  return sv;
}

Result<std::string> FsCore::read_path(std::string_view path, uint64_t max) {
  const std::string shown(path);
  std::vector<std::string_view> parts;
  if (!split_path(path, &parts)) return make_error(EINVAL, shown + ": '..' in the path");
  uint64_t ino = kRootIno;
  for (std::string_view name : parts) {
    auto a = lookup(ino, name);
    if (!a.ok()) return make_error(a.code(), shown + ": " + a.error().message);
    ino = a->st.st_ino;
  }
  auto node = resolve(ino);
  if (!node.ok()) return make_error(node.code(), shown + ": " + node.error().message);
  if (!node->index) return make_error(EISDIR, shown + ": not a file of an index");
  const std::shared_ptr<const LayerIndex>& idx = node->index;
  const uint32_t e = node->entry;
  const EntryRecord& rec = idx->attr_entry(e);
  if (!S_ISREG(rec.mode)) return make_error(EISDIR, shown + ": not a regular file");
  if (rec.size > max)
    return make_error(EFBIG, fmt::format("{}: {} bytes, more than the {} expected", shown, rec.size, max));
  std::string out;
  out.reserve(rec.size);
  // The daemon's own reads (ChunkFetcher::get_own): not a reader's hits, misses or fetches, and
  // not bytes_served.
  for (const ChunkRecord& c : idx->chunks(e)) {
    if (c.flags & kChunkZero) {
      out.append(c.raw_len, '\0');
      continue;
    }
    auto data = fetcher_.get_own(chunk_ref(*idx, c));
    if (!data.ok()) return make_error(EIO, shown + ": " + data.error().message);
    out.append(reinterpret_cast<const char*>((*data)->data()), c.raw_len);
  }
  if (out.size() != rec.size) return make_error(EIO, shown + ": its chunks do not add up to its size");
  return out;
}

FsStatistics FsCore::statistics() {
  // Fetched chunks reach the disk cache from a background writer; waiting for it (at most the
  // writer's short queue) makes cache_bytes, bytes_cached and `extrafs cache stat` agree with
  // what has been read.
  fetcher_.flush_cache_writes();
  FsStatistics st;
  st.fetcher = fetcher_.stats();
  st.cache_bytes = fetcher_.cached_bytes();
  if (options_.whole_files) st.whole_files = options_.whole_files->stats();
  st.bytes_served = bytes_served_.load();
  st.open_requests = open_requests_.load();
  st.opendir_requests = opendir_requests_.load();
  st.passthrough = passthrough_.load();
  st.passthrough_opens = passthrough_opens_.load();
  st.removed_layer_errors = view_->removed_layer_errors();
  st.inodes = inodes_.size();
  st.source = meta_.describe();
  for (const auto& [sn, s, removed] : view_->layers()) {
    // A layer whose index this host never read (nor kept) has had nothing read through it.
    auto idx = local_index(*s);
    if (!idx) {
      st.layers.push_back({s->layer.cache_id, s->layer.bytes, 0, false, removed});
      continue;
    }
    uint64_t cached = 0;
    for (const auto& c : idx->all_chunks()) {
      if (c.flags & kChunkZero) {
        cached += c.raw_len;
        continue;
      }
      if (fetcher_.is_cached(chunk_digest(c))) cached += c.raw_len;
    }
    // Chunks of a hard-link group are listed once (on its primary entry), as bytes_total counts it.
    st.layers.push_back(
        {s->layer.cache_id, idx->content_bytes(), std::min(cached, idx->content_bytes()), true, removed});
  }
  return st;
}

void FsCore::set_passthrough(bool on) {
  passthrough_.store(on, std::memory_order_relaxed);
  if (copier_) copier_->set_passthrough(on);
}

}  // namespace extrafs::fs
