#include "store/save_archive.h"

#include <archive.h>
#include <archive_entry.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <zlib.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <memory>
#include <optional>

#include "common/str_util.h"
#include "store/docker_meta.h"
#include "store/publish_tar.h"

namespace extrafs::store {

namespace {
Error bad_tar(const std::string& what) { return make_error(EBADMSG, what); }
}  // namespace

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
      std::string joined =
          target && target[0] == '/' ? std::string(target) : dirname_of(p) + "/" + (target ? target : "");
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
    if (!m.is_object() || !m.contains("Config") || !m["Config"].is_string() || !m.contains("Layers") ||
        !m["Layers"].is_array())
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
      if (!sa.sizes_.count(sa.resolve(lp)))
        return bad_tar(path + ": layer " + lp + " named in manifest.json is missing");
      img.layers.push_back(lp);
    }
    auto diff_ids = parse_diff_ids(img.config);
    if (!diff_ids.ok()) return bad_tar(path + ": config " + cfg_path + " " + diff_ids.error().message);
    img.diff_ids = std::move(diff_ids).value();
    if (img.diff_ids.size() != img.layers.size())
      return bad_tar(fmt::format("{}: image {} lists {} layers but its config has {} diff_ids", path,
                                 img.id.substr(7, 12), img.layers.size(), img.diff_ids.size()));
    sa.images_.push_back(std::move(img));
  }
  return sa;
}

Result<std::string> SaveArchive::read_layer(const std::string& layer,
                                            const std::function<Status(struct archive*)>& fn) const {
  const std::string target = resolve(layer);
  EXTRAFS_TRY(outer, open_outer(path_));
  for (;;) {
    struct archive_entry* ent = nullptr;
    int r = archive_read_next_header(outer.get(), &ent);
    if (r == ARCHIVE_EOF) return make_error(ENOENT, path_ + ": layer " + layer + " is missing");
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) return bad_tar(path_ + ": " + archive_error_string(outer.get()));
    std::string p;
    if (!normalize_tar_path(archive_entry_pathname(ent) ? archive_entry_pathname(ent) : "", &p) || p != target)
      continue;
    if (archive_entry_filetype(ent) != AE_IFREG || archive_entry_hardlink(ent)) continue;
    break;
  }
  LayerStream ls;
  ls.outer = outer.get();
  ls.sha = EVP_MD_CTX_new();
  if (!ls.sha || EVP_DigestInit_ex(ls.sha, EVP_sha256(), nullptr) != 1)
    return make_error(ENOMEM, "sha256: cannot initialise");
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
