// Docker's overlay2 image metadata, read from ROOT/image/overlay2 where ROOT is a dockerd
// data-root, a store, or an extrafs mount (all three have the same shape):
//   repositories.json                             {"Repositories": {"busybox": {"busybox:latest": "sha256:<id>"}}}
//   imagedb/content/sha256/<id>                   the image config (its sha256 is <id>)
//   layerdb/sha256/<chainID>/{diff,size,cache-id,parent[,tar-split.json.gz]}
// and ROOT/overlay2/<cache-id>/{link,lower}.
//
// Used by publish (reading a data-root), docker attach (reading a mount), detach, ls, prefetch and
// the daemon (the image names of `extrafs stats`, read from its own image/ tree). What it reads
// is store content: a tag or image id that docker's reference grammar refuses is left out on
// load (with one warning line, see load()), so no caller ever sees one.
// Not thread-safe; a value type.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace extrafs::store {

struct DockerLayer {
  std::string diff_id;   // "sha256:<hex>" of the uncompressed layer tar
  std::string chain_id;  // "sha256:<hex>", the layerdb directory name
  std::string cache_id;  // overlay2 directory name
  uint64_t size = 0;     // layerdb size file (bytes of the layer's files)
  bool has_tar_split = false;
};

struct DockerImage {
  std::string id;                   // "sha256:<hex>" of the config
  std::vector<std::string> tags;    // "name:tag" references pointing at it
  std::string config;               // raw config JSON bytes
  std::vector<DockerLayer> layers;  // base first
};

// How DockerMeta reads ROOT: the whole content of the file at a path relative to ROOT
// ("image/overlay2/repositories.json"; ENOENT if there is none), refusing anything but a regular
// file and a file over `limit` bytes before reading it (DockerMeta passes each file's cap from
// store/layout.h), and whether a path exists.
struct MetaFiles {
  std::function<Result<std::string>(const std::string& rel, uint64_t limit)> read;
  std::function<bool(const std::string& rel)> exists;
};

class DockerMeta {
 public:
  // Reads repositories.json under ROOT/image/overlay2. A missing repositories.json is an empty
  // set of references; one that is not a JSON object with an object "Repositories" is an error
  // naming the file. Entries that docker would not have written are left out, each with one
  // warning through the default logger (said once per process): a tag that check_reference()
  // refuses or that is listed under another repository than its own name, an image id that is
  // not "sha256:" and 64 lowercase hex digits, a repository whose value is not an object.
  // Digest references ("name@sha256:...") are not tags and are left out silently.
  static Result<DockerMeta> load(const std::string& root);
  // The same through `files`; `root` only names things in messages.
  static Result<DockerMeta> load(MetaFiles files, const std::string& root);

  const std::string& root() const { return root_; }
  // Every "name:tag" reference with its image id, sorted.
  const std::map<std::string, std::string>& refs() const { return refs_; }
  // Resolves "name:tag" (or "name", meaning "name:latest", or "sha256:<id>") to an image with
  // its layers resolved through layerdb. ENOENT with a message naming what is missing.
  Result<DockerImage> image(const std::string& ref) const;

 private:
  std::string root_;
  MetaFiles files_;
  std::map<std::string, std::string> refs_;
};

// "sha256:" + lowercase hex of SHA-256(data).
std::string sha256_digest(std::string_view data);
// "sha256:" + lowercase hex of a SHA-256 digest computed elsewhere (e.g. over a stream).
std::string sha256_digest_string(const unsigned char* md, unsigned len);
// Chain IDs of a list of diff IDs: chain[0] = diff[0]; chain[i] = sha256(chain[i-1] + " " + diff[i]).
std::vector<std::string> chain_ids(const std::vector<std::string>& diff_ids);
// Whether `ref` is a "name:tag" that docker accepts (its reference grammar): name is
// [domain "/"] path-component ("/" path-component)*, a path-component is [a-z0-9]+ joined by
// "." or "_" or "__" or runs of "-", the first component is a domain (letters, digits, "-", ".",
// an optional ":port") when it holds a "." or ":", is "localhost" or has an uppercase letter, the
// name is at most 255 characters, the tag [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}. EINVAL with a
// message quoting `ref` (escaped) and saying what is wrong.
Status check_reference(std::string_view ref);
// "busybox" -> "busybox:latest"; "name:tag" and "sha256:..." unchanged.
std::string normalize_ref(const std::string& ref);
// The rootfs.diff_ids of an image config (base first), each "sha256:<64 hex>". EBADMSG with a
// message to put after the config's name: "has no rootfs.diff_ids" (not JSON, or no such list)
// or "has a bad diff_id".
Result<std::vector<std::string>> parse_diff_ids(std::string_view config);

}  // namespace extrafs::store
