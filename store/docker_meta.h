// Docker's overlay2 image metadata, read from ROOT/image/overlay2 where ROOT is a dockerd
// data-root, a store, or an extrafs mount (all three have the same shape):
//   repositories.json                             {"Repositories": {"busybox": {"busybox:latest": "sha256:<id>"}}}
//   imagedb/content/sha256/<id>                   the image config (its sha256 is <id>)
//   layerdb/sha256/<chainID>/{diff,size,cache-id,parent[,tar-split.json.gz]}
// and ROOT/overlay2/<cache-id>/{link,lower}.
//
// Used by publish (reading a data-root), docker attach (reading a mount), detach, ls and prefetch.
// Not thread-safe; a value type.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace extrafs::store {

struct DockerLayer {
  std::string diff_id;      // "sha256:<hex>" of the uncompressed layer tar
  std::string chain_id;     // "sha256:<hex>", the layerdb directory name
  std::string cache_id;     // overlay2 directory name
  uint64_t size = 0;        // layerdb size file (bytes of the layer's files)
  bool has_tar_split = false;
};

struct DockerImage {
  std::string id;                  // "sha256:<hex>" of the config
  std::vector<std::string> tags;   // "name:tag" references pointing at it
  std::string config;              // raw config JSON bytes
  std::vector<DockerLayer> layers; // base first
};

class DockerMeta {
 public:
  // Reads repositories.json under ROOT/image/overlay2. A missing repositories.json is an empty
  // set of references; a malformed one is an error naming the file.
  static Result<DockerMeta> load(const std::string& root);

  const std::string& root() const { return root_; }
  // Every "name:tag" reference with its image id, sorted.
  const std::map<std::string, std::string>& refs() const { return refs_; }
  // Resolves "name:tag" (or "name", meaning "name:latest", or "sha256:<id>") to an image with
  // its layers resolved through layerdb. ENOENT with a message naming what is missing.
  Result<DockerImage> image(const std::string& ref) const;

 private:
  std::string root_;
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
