#include "store/push.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "common/posix_file.h"
#include "common/str_util.h"
#include "format/catalog.h"
#include "format/index_format.h"
#include "format/layer_index.h"
#include "store/catalog_writer.h"

namespace extrafs::store {

namespace {

// The top directories of a store: what --prune looks at in the destination (never anything
// else that may share the bucket or prefix).
constexpr const char* kStoreDirs[] = {"extrafs/", "overlay2/", "image/"};

struct Item {
  std::string path;  // relative to the store root
  uint64_t size = 0;
};

class Pusher {
 public:
  explicit Pusher(const PushRequest& req) : req_(req), dst_(*req.destination) {}

  Result<PushReport> run() {
    root_.reset(::open(req_.store.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root_.valid()) return Error::from_errno(errno, "store " + req_.store);
    EXTRAFS_TRY(sc, load_store_catalog(req_.store));
    if (sc.text.empty())
      return make_error(ENOENT,
                        "store " + req_.store + " has no catalog (extrafs publish or extrafs index writes one)");
    catalog_ = std::move(sc.catalog);
    catalog_text_ = std::move(sc.text);
    report_.generation = catalog_.generation;
    EXTRAFS_CHECK_STATUS(collect());
    EXTRAFS_CHECK_STATUS(check_destination_catalog());
    EXTRAFS_CHECK_STATUS(upload_all());
    EXTRAFS_CHECK_STATUS(upload_catalog());
    if (req_.prune) EXTRAFS_CHECK_STATUS(prune());
    return report_;
  }

 private:
  const PushRequest& req_;
  backend::ObjectWriter& dst_;
  Fd root_;
  format::Catalog catalog_;
  std::string catalog_text_;
  std::vector<Item> items_;  // step 1, in catalog order
  std::set<std::string> named_;
  bool same_catalog_up_ = false;  // the destination has this very catalog already
  PushReport report_;
  std::mutex progress_mu_;
  PushProgress progress_;
  std::atomic<uint64_t> uploaded_{0}, uploaded_bytes_{0}, present_{0};

  // The size of the regular file `rel` of the store (never through a symlink).
  Result<uint64_t> local_size(const std::string& rel) {
    EXTRAFS_TRY(fd, open_regular_beneath(root_.get(), rel, req_.store));
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return Error::from_errno(errno, req_.store + "/" + rel);
    return static_cast<uint64_t>(st.st_size);
  }

  void add(std::string path) {
    if (named_.insert(path).second) items_.push_back(Item{std::move(path), 0});
  }

  // The index at `rel`, which must have `digest`, and every object it names.
  Status add_index(const std::string& rel, const Digest128& digest, const std::string& what) {
    EXTRAFS_TRY(bytes, read_file_beneath(root_.get(), rel, req_.store, format::kMaxIndexSize));
    if (xxh3_128(bytes.data(), bytes.size()) != digest)
      return make_error(EBADMSG, fmt::format("{}/{}: the index of {} does not have the digest its catalog gives "
                                             "(extrafs verify {} says more)",
                                             req_.store, rel, what, req_.store));
    EXTRAFS_TRY(idx, format::LayerIndex::parse(std::move(bytes)));
    for (uint32_t o = 0; o < idx->object_count(); ++o) add(std::string(idx->object_path(o)));
    add(rel);
    return ok_status();
  }

  Status collect() {
    for (const auto& l : catalog_.layers)
      EXTRAFS_CHECK_STATUS(add_index(format::layer_index_path(l.cache_id), l.index_digest, "layer " + l.cache_id));
    if (catalog_.image_index)
      EXTRAFS_CHECK_STATUS(add_index(format::image_index_path(*catalog_.image_index), *catalog_.image_index, "image/"));
    // Everything named must be here before anything is written.
    for (auto& it : items_) {
      auto size = local_size(it.path);
      if (!size.ok())
        return make_error(size.code(), "the catalog of " + req_.store + " names " + escape_control(it.path) +
                                           ", which the store cannot give: " + size.error().message);
      it.size = *size;
    }
    report_.objects_named = items_.size();
    progress_.objects_total = items_.size();
    return ok_status();
  }

  // A catalog in the destination that hosts hold is never replaced by one they would ignore.
  Status check_destination_catalog() {
    auto have = dst_.get(format::kCatalogPath, uint64_t{64} << 20);
    if (!have.ok()) {
      if (have.code() == ENOENT) return ok_status();
      return have.error();
    }
    if (*have == catalog_text_) {
      same_catalog_up_ = true;
      return ok_status();
    }
    const std::string where = dst_.describe() + "/" + format::kCatalogPath;
    auto theirs = format::Catalog::parse(*have);
    if (!theirs.ok())
      return make_error(EEXIST,
                        where + " is not an extrafs catalog (" + theirs.error().message + "); refusing to replace it");
    if (theirs->generation > catalog_.generation ||
        (theirs->generation == catalog_.generation && theirs->generation > 0))
      return make_error(
          EEXIST, fmt::format("{} is generation {}, {} the store's ({}): mounted hosts would ignore this "
                              "catalog (push a newer store, or into an empty prefix)",
                              where, theirs->generation,
                              theirs->generation == catalog_.generation ? "another catalog of the same generation as"
                                                                        : "newer than",
                              catalog_.generation));
    return ok_status();
  }

  void tick(uint64_t objects, int64_t bytes) {
    if (!req_.progress) return;
    std::lock_guard lock(progress_mu_);
    progress_.objects_done += objects;
    progress_.bytes_done = static_cast<uint64_t>(static_cast<int64_t>(progress_.bytes_done) + bytes);
    req_.progress(progress_);
  }

  // One object of step 1: HEAD, and the upload if the destination lacks it.
  Status push_one(const Item& it) {
    EXTRAFS_TRY(have, dst_.head(it.path));
    if (have && *have == it.size) {
      present_++;
      tick(1, 0);
      return ok_status();
    }
    EXTRAFS_TRY(fd, open_regular_beneath(root_.get(), it.path, req_.store));
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return Error::from_errno(errno, req_.store + "/" + it.path);
    if (static_cast<uint64_t>(st.st_size) != it.size)
      return make_error(EAGAIN, req_.store + "/" + escape_control(it.path) + " changed size while being pushed");
    {
      std::lock_guard lock(progress_mu_);
      progress_.bytes_total += it.size;
    }
    backend::PutBody body{fd.get(), it.size, {}};
    EXTRAFS_CHECK_STATUS(dst_.put(it.path, body, kImmutableCacheControl, [&](int64_t n) { tick(0, n); }));
    uploaded_++;
    uploaded_bytes_ += it.size;
    tick(1, 0);
    return ok_status();
  }

  Status upload_all() {
    std::atomic<size_t> next{0};
    std::mutex err_mu;
    std::optional<Error> first_error;
    auto worker = [&] {
      for (;;) {
        {
          std::lock_guard lock(err_mu);
          if (first_error) return;
        }
        const size_t i = next++;
        if (i >= items_.size()) return;
        Status st = push_one(items_[i]);
        if (!st.ok()) {
          std::lock_guard lock(err_mu);
          if (!first_error) first_error = st.error();
          return;
        }
      }
    };
    const size_t n =
        std::clamp<size_t>(static_cast<size_t>(std::max(req_.jobs, 1)), 1, std::max<size_t>(items_.size(), 1));
    std::vector<std::thread> threads;
    for (size_t t = 1; t < n; ++t) threads.emplace_back(worker);
    worker();
    for (auto& t : threads) t.join();
    report_.objects_uploaded = uploaded_;
    report_.bytes_uploaded = uploaded_bytes_;
    report_.objects_present = present_;
    if (first_error) return *first_error;
    return ok_status();
  }

  Status upload_catalog() {
    const backend::PutBody text{-1, 0, catalog_text_};
    if (catalog_.generation > 0) {
      const std::string gen = format::catalog_generation_path(catalog_.generation);
      auto have = dst_.head(gen);
      if (!have.ok()) return have.error();
      if (!*have || **have != catalog_text_.size()) EXTRAFS_CHECK_STATUS(dst_.put(gen, text, kCatalogCacheControl, {}));
      named_.insert(gen);
    }
    named_.insert(format::kCatalogPath);
    if (same_catalog_up_) return ok_status();
    EXTRAFS_CHECK_STATUS(dst_.put(format::kCatalogPath, text, kCatalogCacheControl, {}));
    report_.catalog_uploaded = true;
    return ok_status();
  }

  // Whether the local store has something at `rel` (any type: what it has, it has).
  bool local_has(const std::string& rel) {
    std::vector<std::string_view> parts;
    if (!split_path(rel, &parts) || parts.empty()) return true;  // a name we would not delete
    struct stat st;
    return ::fstatat(root_.get(), rel.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 || (errno != ENOENT && errno != ENOTDIR);
  }

  Status prune() {
    for (const char* dir : kStoreDirs) {
      EXTRAFS_TRY(listed, dst_.list(dir));
      std::sort(listed.begin(), listed.end(), [](const auto& a, const auto& b) { return a.path < b.path; });
      for (const auto& o : listed) {
        if (named_.count(o.path) || local_has(o.path)) continue;
        EXTRAFS_CHECK_STATUS(dst_.remove(o.path));
        report_.objects_deleted++;
        report_.bytes_deleted += o.size;
      }
    }
    return ok_status();
  }
};

}  // namespace

Result<PushReport> push_store(const PushRequest& request) {
  if (request.destination == nullptr) return make_error(EINVAL, "push: no destination");
  Pusher p(request);
  return p.run();
}

}  // namespace extrafs::store
