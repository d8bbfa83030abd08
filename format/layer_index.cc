#include "format/layer_index.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <deque>

namespace extrafs::format {

namespace {

Error bad(std::string what) { return make_error(EBADMSG, "corrupt index: " + what); }

bool valid_name(std::string_view n) {
  if (n.empty() || n.size() > kMaxNameLen || n == "." || n == "..") return false;
  return n.find('/') == std::string_view::npos && n.find('\0') == std::string_view::npos;
}

// Object paths are relative to the store root and must not escape it.
bool valid_object_path(std::string_view p) {
  if (p.empty() || p.size() > 4096 || p.front() == '/' || p.find('\0') != std::string_view::npos) return false;
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find('/', start);
    if (end == std::string_view::npos) end = p.size();
    std::string_view comp = p.substr(start, end - start);
    if (comp.empty() || comp == "." || comp == "..") return false;
    start = end + 1;
  }
  return true;
}

bool valid_type(uint32_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG:
    case S_IFDIR:
    case S_IFLNK:
    case S_IFCHR:
    case S_IFBLK:
    case S_IFIFO:
    case S_IFSOCK:
      return true;
    default:
      return false;
  }
}

// Checks that [off, off+count*size) lies inside [lo, hi) without overflow.
bool in_range(uint64_t off, uint64_t count, uint64_t size, uint64_t lo, uint64_t hi) {
  if (off < lo || off > hi) return false;
  if (count > (hi - off) / size) return false;
  return true;
}

}  // namespace

Result<std::shared_ptr<const LayerIndex>> LayerIndex::parse(std::string bytes) {
  std::shared_ptr<LayerIndex> idx(new LayerIndex());
  idx->bytes_ = std::move(bytes);
  if (auto st = idx->validate(); !st) return st.error();
  return std::shared_ptr<const LayerIndex>(std::move(idx));
}

Status LayerIndex::validate() {
  const uint64_t n = bytes_.size();
  if (n < sizeof(IndexHeader)) return bad(fmt::format("file is {} bytes, shorter than a header", n));
  std::memcpy(&header_, bytes_.data(), sizeof header_);
  if (std::memcmp(header_.magic, kIndexMagic, sizeof kIndexMagic) != 0) return bad("bad magic (not an extrafs index)");
  if (header_.version != kIndexVersion)
    return make_error(ENOTSUP, fmt::format("index version {} is not supported (this extrafs reads version {})",
                                           header_.version, kIndexVersion));
  IndexHeader h = header_;
  h.header_checksum = 0;
  // Fuzz builds skip the checksums so that the fuzzer reaches the structural checks behind them.
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
  if (xxh3_64(&h, sizeof h) != header_.header_checksum) return bad("header checksum mismatch");
#endif
  if (header_.header_size != sizeof(IndexHeader)) return bad("bad header size");
  if (header_.file_size != n) return bad(fmt::format("file is {} bytes, header says {}", n, header_.file_size));
  if (header_.flags != 0) return bad("unknown header flags");
  if (header_.chunk_size < kMinChunkSize || header_.chunk_size > kMaxChunkSize ||
      (header_.chunk_size & (header_.chunk_size - 1)) != 0)
    return bad(fmt::format("bad chunk size {}", header_.chunk_size));
  digest_ = xxh3_128(bytes_.data(), bytes_.size());
  Digest128 body = xxh3_128(bytes_.data() + sizeof(IndexHeader), n - sizeof(IndexHeader));
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
  if (std::memcmp(body.bytes.data(), header_.body_digest, 16) != 0) return bad("body checksum mismatch");
#endif

  const uint64_t lo = sizeof(IndexHeader);
  auto aligned = [](uint64_t off) { return off % 8 == 0; };
  if (!in_range(header_.entry_offset, header_.entry_count, sizeof(EntryRecord), lo, n) ||
      !aligned(header_.entry_offset))
    return bad("entry table out of bounds");
  if (!in_range(header_.chunk_offset, header_.chunk_count, sizeof(ChunkRecord), lo, n) ||
      !aligned(header_.chunk_offset))
    return bad("chunk table out of bounds");
  if (!in_range(header_.xattr_offset, header_.xattr_count, sizeof(XattrRecord), lo, n) ||
      !aligned(header_.xattr_offset))
    return bad("xattr table out of bounds");
  if (!in_range(header_.object_offset, header_.object_count, sizeof(ObjectRecord), lo, n) ||
      !aligned(header_.object_offset))
    return bad("object table out of bounds");
  if (!in_range(header_.strings_offset, header_.strings_size, 1, lo, n)) return bad("string area out of bounds");
  if (header_.entry_count == 0) return bad("no root entry");
  if (header_.entry_count > 0xfffffff0ull) return bad("too many entries");
  if (header_.object_count > 0xffffffffull) return bad("too many objects");

  entries_ = reinterpret_cast<const EntryRecord*>(bytes_.data() + header_.entry_offset);
  chunks_ = reinterpret_cast<const ChunkRecord*>(bytes_.data() + header_.chunk_offset);
  xattrs_ = reinterpret_cast<const XattrRecord*>(bytes_.data() + header_.xattr_offset);
  objects_ = reinterpret_cast<const ObjectRecord*>(bytes_.data() + header_.object_offset);
  strings_ = bytes_.data() + header_.strings_offset;
  const uint64_t ssize = header_.strings_size;
  auto str_ok = [&](uint64_t off, uint64_t len) { return off <= ssize && len <= ssize - off; };

  for (uint64_t o = 0; o < header_.object_count; ++o) {
    const auto& r = objects_[o];
    if (!str_ok(r.path_off, r.path_len) || !valid_object_path(str(r.path_off, r.path_len)))
      return bad(fmt::format("object {} has a bad path", o));
  }
  for (uint64_t x = 0; x < header_.xattr_count; ++x) {
    const auto& r = xattrs_[x];
    if (!str_ok(r.name_off, r.name_len) || !str_ok(r.value_off, r.value_len)) return bad("xattr out of bounds");
    std::string_view nm = str(r.name_off, r.name_len);
    if (nm.empty() || nm.size() > kMaxXattrNameLen || nm.find('\0') != std::string_view::npos)
      return bad("bad xattr name");
    if (r.value_len > kMaxXattrValueLen) return bad("xattr value too large");
  }
  for (uint64_t c = 0; c < header_.chunk_count; ++c) {
    const auto& r = chunks_[c];
    if (r.flags & ~kKnownChunkFlags) return bad(fmt::format("chunk {} has unknown flags", c));
    if (r.raw_len == 0 || r.raw_len > header_.chunk_size) return bad(fmt::format("chunk {} has a bad length", c));
    if (!(r.flags & kChunkZero)) {
      if (r.object >= header_.object_count) return bad(fmt::format("chunk {} names a missing object", c));
      if (r.stored_len == 0 || r.stored_len > header_.chunk_size + header_.chunk_size / 16 + 64)
        return bad(fmt::format("chunk {} has a bad stored length", c));
      if (!(r.flags & kChunkLz4) && r.stored_len != r.raw_len) return bad(fmt::format("chunk {} lengths disagree", c));
      if (r.offset > (1ull << 62)) return bad(fmt::format("chunk {} has a bad offset", c));
    }
  }

  const uint32_t count = static_cast<uint32_t>(header_.entry_count);
  uint64_t children_total = 0;
  // First pass: everything later passes read from other entries (types, names) is in bounds.
  for (uint32_t i = 0; i < count; ++i) {
    const auto& e = entries_[i];
    if (!valid_type(e.mode)) return bad(fmt::format("entry {} has a bad type", i));
    if (!str_ok(e.name_off, e.name_len)) return bad(fmt::format("entry {} name out of bounds", i));
    if (e.atime_nsec >= 1000000000u || e.mtime_nsec >= 1000000000u || e.ctime_nsec >= 1000000000u || e.reserved)
      return bad(fmt::format("entry {} has a bad time", i));
  }
  for (uint32_t i = 0; i < count; ++i) {
    const auto& e = entries_[i];
    std::string_view nm = str(e.name_off, e.name_len);
    if (i == 0) {
      if (!S_ISDIR(e.mode) || e.parent != 0 || !nm.empty()) return bad("entry 0 is not a root directory");
    } else {
      if (!valid_name(nm)) return bad(fmt::format("entry {} has a bad name", i));
      if (e.parent >= i) return bad(fmt::format("entry {} comes before its parent (cycle?)", i));
      const auto& p = entries_[e.parent];
      if (!S_ISDIR(p.mode) || i < p.child_first || i - p.child_first >= p.child_count)
        return bad(fmt::format("entry {} is not among its parent's children", i));
    }
    if (e.primary >= count) return bad(fmt::format("entry {} has a bad hard-link reference", i));
    if (e.primary != i) {
      const auto& p = entries_[e.primary];
      if (p.primary != e.primary || S_ISDIR(p.mode) || S_ISDIR(e.mode) || (p.mode & S_IFMT) != (e.mode & S_IFMT))
        return bad(fmt::format("entry {} has a bad hard-link reference", i));
      continue;  // attributes live on the primary
    }
    if (S_ISDIR(e.mode)) {
      if (e.child_count > 0) {
        if (e.child_first <= i || e.child_first > count || e.child_count > count - e.child_first)
          return bad(fmt::format("entry {} has children out of range", i));
        for (uint64_t c = e.child_first + 1; c < e.child_first + e.child_count; ++c) {
          if (!(name(static_cast<uint32_t>(c - 1)) < name(static_cast<uint32_t>(c))))
            return bad(fmt::format("directory entry {} is not sorted or has duplicate names", i));
        }
      }
      children_total += e.child_count;
    } else if (e.child_count != 0) {
      return bad(fmt::format("entry {} is not a directory but has children", i));
    }
    if (S_ISLNK(e.mode)) {
      if (e.target_len == 0 || e.target_len > kMaxTargetLen || !str_ok(e.target_off, e.target_len) ||
          std::string_view(strings_ + e.target_off, e.target_len).find('\0') != std::string_view::npos)
        return bad(fmt::format("entry {} has a bad symlink target", i));
    } else if (e.target_len != 0) {
      return bad(fmt::format("entry {} has a target but is not a symlink", i));
    }
    if (e.xattr_first > header_.xattr_count || e.xattr_count > header_.xattr_count - e.xattr_first)
      return bad(fmt::format("entry {} xattrs out of range", i));
    if (e.chunk_first > header_.chunk_count || e.chunk_count > header_.chunk_count - e.chunk_first)
      return bad(fmt::format("entry {} chunks out of range", i));
    if (S_ISREG(e.mode)) {
      uint64_t want = e.size / header_.chunk_size + (e.size % header_.chunk_size ? 1 : 0);
      if (e.chunk_count != want)
        return bad(fmt::format("entry {} has {} chunks for {} bytes", i, e.chunk_count, e.size));
      for (uint64_t c = 0; c < e.chunk_count; ++c) {
        uint64_t piece = std::min<uint64_t>(header_.chunk_size, e.size - c * header_.chunk_size);
        if (chunks_[e.chunk_first + c].raw_len != piece)
          return bad(fmt::format("entry {} chunk {} has a bad length", i, c));
      }
      content_bytes_ += e.size;
    } else if (e.chunk_count != 0) {
      return bad(fmt::format("entry {} has chunks but is not a regular file", i));
    }
  }
  if (children_total != count - 1ull) return bad("directory child counts do not add up");
  return ok_status();
}

std::optional<uint32_t> LayerIndex::lookup(uint32_t dir, std::string_view nm) const {
  const auto& d = entries_[dir];
  if (!S_ISDIR(d.mode)) return std::nullopt;
  uint64_t lo = d.child_first, hi = d.child_first + d.child_count;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    auto c = name(static_cast<uint32_t>(mid)).compare(nm);
    if (c == 0) return static_cast<uint32_t>(mid);
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return std::nullopt;
}

std::string LayerIndex::path_of(uint32_t i) const {
  std::vector<std::string_view> parts;
  while (i != 0) {
    parts.push_back(name(i));
    i = entries_[i].parent;
  }
  std::string out;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    if (!out.empty()) out += '/';
    out += *it;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

uint32_t IndexBuilder::add_object(const std::string& path) {
  auto [it, inserted] = object_ids_.try_emplace(path, static_cast<uint32_t>(objects_.size()));
  if (inserted) objects_.push_back(path);
  return it->second;
}

uint32_t IndexBuilder::add(BuildEntry e) {
  entries_.push_back(std::move(e));
  return static_cast<uint32_t>(entries_.size() - 1);
}

namespace {
struct StringArea {
  std::string data;
  uint64_t add(std::string_view s) {
    uint64_t off = data.size();
    data.append(s);
    return off;
  }
};
template <typename T>
void append_pod(std::string& out, const T* p, size_t n) {
  out.append(reinterpret_cast<const char*>(p), n * sizeof(T));
}
void pad8(std::string& out) { out.resize((out.size() + 7) & ~size_t{7}, '\0'); }
}  // namespace

Result<std::string> IndexBuilder::serialize() const {
  const size_t n = entries_.size();
  if (n == 0 || !S_ISDIR(entries_[0].st.st_mode)) return make_error(EINVAL, "index has no root directory");
  // Children lists per builder entry, sorted by name.
  std::vector<std::vector<uint32_t>> kids(n);
  for (uint32_t i = 1; i < n; ++i) {
    uint32_t p = entries_[i].parent;
    if (p >= i || !S_ISDIR(entries_[p].st.st_mode))
      return make_error(EINVAL, "entry listed before its parent directory");
    kids[p].push_back(i);
  }
  // Breadth-first order: new index of each builder entry.
  std::vector<uint32_t> order;
  order.reserve(n);
  order.push_back(0);
  std::vector<uint32_t> new_of(n, 0);
  std::vector<uint64_t> child_first(n, 0);
  for (size_t q = 0; q < order.size(); ++q) {
    uint32_t b = order[q];
    auto& k = kids[b];
    std::sort(k.begin(), k.end(), [&](uint32_t a, uint32_t c) { return entries_[a].name < entries_[c].name; });
    for (size_t j = 1; j < k.size(); ++j)
      if (entries_[k[j - 1]].name == entries_[k[j]].name)
        return make_error(EINVAL, "duplicate name '" + entries_[k[j]].name + "'");
    child_first[b] = order.size();
    for (uint32_t c : k) order.push_back(c);
  }
  for (uint32_t j = 0; j < n; ++j) new_of[order[j]] = j;

  StringArea strings;
  std::vector<EntryRecord> recs(n);
  std::vector<ChunkRecord> chunks;
  std::vector<XattrRecord> xattrs;
  for (uint32_t j = 0; j < n; ++j) {
    const BuildEntry& be = entries_[order[j]];
    EntryRecord& r = recs[j];
    std::memset(&r, 0, sizeof r);
    r.parent = new_of[be.parent];
    r.name_len = static_cast<uint32_t>(be.name.size());
    r.name_off = strings.add(be.name);
    r.mode = be.st.st_mode;
    r.uid = be.st.st_uid;
    r.gid = be.st.st_gid;
    r.nlink = static_cast<uint32_t>(be.st.st_nlink);
    r.size = S_ISREG(be.st.st_mode) || S_ISLNK(be.st.st_mode) || S_ISDIR(be.st.st_mode) ? be.st.st_size : 0;
    r.blocks = be.st.st_blocks;
    r.atime_sec = be.st.st_atim.tv_sec;
    r.atime_nsec = static_cast<uint32_t>(be.st.st_atim.tv_nsec);
    r.mtime_sec = be.st.st_mtim.tv_sec;
    r.mtime_nsec = static_cast<uint32_t>(be.st.st_mtim.tv_nsec);
    r.ctime_sec = be.st.st_ctim.tv_sec;
    r.ctime_nsec = static_cast<uint32_t>(be.st.st_ctim.tv_nsec);
    r.rdev = be.st.st_rdev;
    if (be.link_of) {
      if (*be.link_of >= n) return make_error(EINVAL, "bad hard-link reference");
      r.primary = new_of[*be.link_of];
    } else {
      r.primary = j;
    }
    if (S_ISDIR(be.st.st_mode)) {
      r.child_first = kids[order[j]].empty() ? 0 : child_first[order[j]];
      r.child_count = static_cast<uint32_t>(kids[order[j]].size());
    }
    if (r.primary != j) continue;
    if (S_ISLNK(be.st.st_mode)) {
      r.target_len = static_cast<uint32_t>(be.target.size());
      r.target_off = strings.add(be.target);
    }
    r.xattr_first = xattrs.size();
    r.xattr_count = static_cast<uint32_t>(be.xattrs.size());
    for (const auto& [name, value] : be.xattrs) {
      XattrRecord x{};
      x.name_len = static_cast<uint32_t>(name.size());
      x.value_len = static_cast<uint32_t>(value.size());
      x.name_off = strings.add(name);
      x.value_off = strings.add(value);
      xattrs.push_back(x);
    }
    r.chunk_first = chunks.size();
    r.chunk_count = be.chunks.size();
    chunks.insert(chunks.end(), be.chunks.begin(), be.chunks.end());
  }
  // The group leader may come after its links in breadth-first order; the format allows that,
  // as long as the leader is its own primary (a link to a link is refused).
  for (uint32_t j = 0; j < n; ++j) {
    if (recs[recs[j].primary].primary != recs[j].primary)
      return make_error(EINVAL, "hard-link group leader is itself a link");
  }
  std::vector<ObjectRecord> objs;
  for (const auto& p : objects_) {
    ObjectRecord o{};
    o.path_len = static_cast<uint32_t>(p.size());
    o.path_off = strings.add(p);
    objs.push_back(o);
  }

  IndexHeader h{};
  std::memcpy(h.magic, kIndexMagic, sizeof h.magic);
  h.version = kIndexVersion;
  h.header_size = sizeof(IndexHeader);
  h.chunk_size = chunk_size_;
  std::string out(sizeof(IndexHeader), '\0');
  pad8(out);
  h.entry_offset = out.size();
  h.entry_count = n;
  append_pod(out, recs.data(), recs.size());
  pad8(out);
  h.chunk_offset = out.size();
  h.chunk_count = chunks.size();
  append_pod(out, chunks.data(), chunks.size());
  pad8(out);
  h.xattr_offset = out.size();
  h.xattr_count = xattrs.size();
  append_pod(out, xattrs.data(), xattrs.size());
  pad8(out);
  h.object_offset = out.size();
  h.object_count = objs.size();
  append_pod(out, objs.data(), objs.size());
  h.strings_offset = out.size();
  h.strings_size = strings.data.size();
  out += strings.data;
  h.file_size = out.size();
  Digest128 body = xxh3_128(out.data() + sizeof(IndexHeader), out.size() - sizeof(IndexHeader));
  std::memcpy(h.body_digest, body.bytes.data(), 16);
  h.header_checksum = 0;
  h.header_checksum = xxh3_64(&h, sizeof h);
  std::memcpy(out.data(), &h, sizeof h);
  return out;
}

}  // namespace extrafs::format
