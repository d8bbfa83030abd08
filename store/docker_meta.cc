#include "store/docker_meta.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include <mutex>
#include <set>

#include "common/posix_file.h"
#include "common/str_util.h"
#include "store/layout.h"

namespace extrafs::store {

std::string sha256_digest_string(const unsigned char* md, unsigned len) {
  static const char* kHex = "0123456789abcdef";
  std::string out = "sha256:";
  for (unsigned i = 0; i < len; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

std::string sha256_digest(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return sha256_digest_string(md, len);
}

std::vector<std::string> chain_ids(const std::vector<std::string>& diff_ids) {
  std::vector<std::string> out;
  for (const auto& d : diff_ids) out.push_back(out.empty() ? d : sha256_digest(out.back() + " " + d));
  return out;
}

std::string normalize_ref(const std::string& ref) {
  if (ref.rfind("sha256:", 0) == 0) return ref;
  auto slash = ref.rfind('/');
  auto colon = ref.rfind(':');
  if (colon == std::string::npos || (slash != std::string::npos && colon < slash)) return ref + ":latest";
  return ref;
}

namespace {

bool lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool word_char(char c) { return lower_alnum(c) || (c >= 'A' && c <= 'Z') || c == '_'; }

// path-component: alpha-numeric runs joined by one separator ("." "_" "__" or "-"+).
bool path_component(std::string_view c) {
  size_t i = 0;
  for (;;) {
    size_t start = i;
    while (i < c.size() && lower_alnum(c[i])) ++i;
    if (i == start) return false;  // empty, or starts/ends with a separator, or two in a row
    if (i == c.size()) return true;
    if (c[i] == '.') {
      ++i;
    } else if (c[i] == '_') {
      i += (i + 1 < c.size() && c[i + 1] == '_') ? 2 : 1;
    } else if (c[i] == '-') {
      while (i < c.size() && c[i] == '-') ++i;
    } else {
      return false;
    }
  }
}

// domain: domain-component ("." domain-component)* [":" port], a component being letters and
// digits with inner "-".
bool domain(std::string_view d) {
  auto colon = d.find(':');
  std::string_view host = d.substr(0, colon);
  if (colon != std::string_view::npos) {
    std::string_view port = d.substr(colon + 1);
    if (port.empty()) return false;
    for (char c : port)
      if (c < '0' || c > '9') return false;
  }
  size_t start = 0;
  while (start <= host.size()) {
    size_t end = host.find('.', start);
    if (end == std::string_view::npos) end = host.size();
    std::string_view comp = host.substr(start, end - start);
    if (comp.empty() || comp.front() == '-' || comp.back() == '-') return false;
    for (char c : comp)
      if (!(lower_alnum(c) || (c >= 'A' && c <= 'Z') || c == '-')) return false;
    start = end + 1;
  }
  return true;
}

}  // namespace

Status check_reference(std::string_view ref) {
  auto refuse = [&](const std::string& why) {
    // Appended, not "'" + ...: GCC 12 -O3 sees a -Wrestrict false positive in that form.
    std::string msg(1, '\'');
    msg += escape_control(ref);
    msg += "' is not a docker image name:tag (";
    msg += why;
    msg += ')';
    return make_error(EINVAL, msg);
  };
  auto colon = ref.rfind(':');
  auto slash = ref.rfind('/');
  if (colon == std::string_view::npos || (slash != std::string_view::npos && colon < slash)) return refuse("no tag");
  std::string_view name = ref.substr(0, colon), tag = ref.substr(colon + 1);
  if (tag.empty() || tag.size() > 128) return refuse("a tag has 1 to 128 characters");
  if (!word_char(tag.front())) return refuse("a tag starts with a letter, digit or '_'");
  for (char c : tag)
    if (!word_char(c) && c != '.' && c != '-') return refuse("a tag holds only letters, digits, '_', '.' and '-'");
  if (name.empty()) return refuse("no name");
  if (name.size() > 255) return refuse("a name has at most 255 characters");
  size_t first_end = name.find('/');
  std::string_view rest = name;
  if (first_end != std::string_view::npos) {
    std::string_view first = name.substr(0, first_end);
    bool upper = false;
    for (char c : first) upper |= c >= 'A' && c <= 'Z';
    if (first.find_first_of(".:") != std::string_view::npos || first == "localhost" || upper) {
      if (!domain(first)) return refuse("bad registry host '" + escape_control(first) + "'");
      rest = name.substr(first_end + 1);
    }
  }
  size_t start = 0;
  while (start <= rest.size()) {
    size_t end = rest.find('/', start);
    if (end == std::string_view::npos) end = rest.size();
    if (!path_component(rest.substr(start, end - start)))
      return refuse("a name is made of lowercase letters, digits and single separators between them");
    start = end + 1;
  }
  return ok_status();
}

namespace {
bool valid_digest(const std::string& d) {
  return d.rfind("sha256:", 0) == 0 && is_hex64(std::string_view(d).substr(7));
}
}  // namespace

Result<std::vector<std::string>> parse_diff_ids(std::string_view config) {
  auto j = nlohmann::json::parse(config, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("rootfs") || !j["rootfs"].is_object() ||
      !j["rootfs"].contains("diff_ids") || !j["rootfs"]["diff_ids"].is_array())
    return make_error(EBADMSG, "has no rootfs.diff_ids");
  std::vector<std::string> diffs;
  for (const auto& d : j["rootfs"]["diff_ids"]) {
    if (!d.is_string() || !valid_digest(d.get<std::string>())) return make_error(EBADMSG, "has a bad diff_id");
    diffs.push_back(d.get<std::string>());
  }
  return diffs;
}

namespace {

// Says `message` once per process through the default logger: a store's metadata is loaded again
// and again (every command, every new image/ tree), its flaws are the same each time.
void warn_once(const std::string& message) {
  static std::mutex mu;
  static std::set<std::string> said;
  {
    std::lock_guard lock(mu);
    if (said.size() >= 4096 || !said.insert(message).second) return;
  }
  spdlog::warn("{}", message);
}

}  // namespace

Result<DockerMeta> DockerMeta::load(const std::string& root) {
  MetaFiles files;
  files.read = [root](const std::string& rel, uint64_t limit) { return read_file(root + "/" + rel, limit); };
  files.exists = [root](const std::string& rel) { return ::access((root + "/" + rel).c_str(), F_OK) == 0; };
  return load(std::move(files), root);
}

Result<DockerMeta> DockerMeta::load(MetaFiles files, const std::string& root) {
  DockerMeta m;
  m.root_ = root;
  m.files_ = std::move(files);
  const std::string path = root + "/image/overlay2/repositories.json";
  auto text = m.files_.read("image/overlay2/repositories.json", kMaxRepositoriesSize);
  if (!text.ok()) {
    if (text.code() == ENOENT) return m;
    return text.error();
  }
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(EBADMSG, path + " is not valid JSON");
  if (!j.contains("Repositories")) return m;
  if (!j["Repositories"].is_object()) return make_error(EBADMSG, path + ": Repositories is not an object");
  // Docker writes each tag as "name:tag" under the repository "name", pointing at an image id:
  // anything else did not come from docker, and a name or tag outside its grammar could reach a
  // terminal, a metrics scraper or a data-root. Left out, the rest of the store is served.
  auto skip = [&](const std::string& what) { warn_once(path + ": skipping " + what); };
  for (const auto& [repo, refs] : j["Repositories"].items()) {
    if (!refs.is_object()) {
      skip("repository '" + escape_control(repo) + "': not an object of tags");
      continue;
    }
    for (const auto& [ref, id] : refs.items()) {
      if (ref.find('@') != std::string::npos) continue;  // digest references: not a tag
      if (auto valid = check_reference(ref); !valid.ok()) {
        skip(valid.error().message);
        continue;
      }
      if (std::string_view(ref).substr(0, ref.rfind(':')) != repo) {
        skip("'" + escape_control(ref) + "': listed under another repository ('" + escape_control(repo) + "')");
        continue;
      }
      if (!id.is_string() || !valid_digest(id.get<std::string>())) {
        skip("'" + ref + "': its image id is not sha256: and 64 lowercase hex digits");
        continue;
      }
      m.refs_[ref] = id.get<std::string>();
    }
  }
  return m;
}

Result<DockerImage> DockerMeta::image(const std::string& ref_in) const {
  std::string ref = normalize_ref(ref_in);
  DockerImage img;
  if (ref.rfind("sha256:", 0) == 0) {
    img.id = ref;
  } else {
    auto it = refs_.find(ref);
    if (it == refs_.end()) return make_error(ENOENT, "no image " + ref + " in " + root_);
    img.id = it->second;
  }
  if (!valid_digest(img.id)) return make_error(EINVAL, "bad image id " + img.id);
  for (const auto& [r, id] : refs_)
    if (id == img.id) img.tags.push_back(r);
  const std::string base = "image/overlay2";
  const std::string cfg_rel = base + "/imagedb/content/sha256/" + img.id.substr(7);
  const std::string cfg_path = root_ + "/" + cfg_rel;
  EXTRAFS_TRY(cfg, files_.read(cfg_rel, kMaxImageConfigSize));
  if (sha256_digest(cfg) != img.id) return make_error(EBADMSG, cfg_path + " does not match its digest");
  img.config = cfg;
  auto parsed = parse_diff_ids(cfg);
  if (!parsed.ok()) return make_error(parsed.code(), cfg_path + " " + parsed.error().message);
  const std::vector<std::string>& diffs = *parsed;
  auto chains = chain_ids(diffs);
  for (size_t i = 0; i < diffs.size(); ++i) {
    DockerLayer l;
    l.diff_id = diffs[i];
    l.chain_id = chains[i];
    const std::string dir = base + "/layerdb/sha256/" + chains[i].substr(7);
    EXTRAFS_TRY(cache_id, files_.read(dir + "/cache-id", kMaxLineFileSize));
    l.cache_id = trim_trailing(cache_id);
    if (!is_cache_id(l.cache_id)) return make_error(EBADMSG, root_ + "/" + dir + "/cache-id is not a valid cache id");
    if (auto size = files_.read(dir + "/size", kMaxLineFileSize); size.ok())
      l.size = parse_uint(trim_trailing(*size)).value_or(0);
    l.has_tar_split = files_.exists(dir + "/tar-split.json.gz");
    img.layers.push_back(std::move(l));
  }
  return img;
}

}  // namespace extrafs::store
