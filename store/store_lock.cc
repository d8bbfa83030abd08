#include "store/store_lock.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "common/str_util.h"

namespace extrafs::store {

namespace {

// Removes the temporaries in `rel` of writers whose process is gone. Best effort: a directory
// that is missing, or a symlink, is left alone (the writer refuses it later with a clear error).
void remove_dead_temporaries(int store_fd, const char* rel, const std::string& store) {
  auto dir = open_beneath(store_fd, rel, O_RDONLY | O_DIRECTORY, store);
  if (!dir.ok()) return;
  auto names = list_dir_beneath(dir->get(), "", store + "/" + rel);
  if (!names.ok()) return;
  for (const auto& n : *names) {
    auto pid = stale_temporary_pid(n);
    if (!pid || *pid == ::getpid()) continue;
    if (::kill(*pid, 0) == 0 || errno == EPERM) continue;  // still running (here)
    struct stat st;
    if (::fstatat(dir->get(), n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISDIR(st.st_mode))
      (void)remove_tree(store + "/" + rel + "/" + n);
    else
      ::unlinkat(dir->get(), n.c_str(), 0);
  }
}

}  // namespace

const std::vector<std::string>& writer_temporary_dirs() {
  static const std::vector<std::string> dirs = {"extrafs",
                                                "extrafs/layers",
                                                "extrafs/objects",
                                                "extrafs/catalog.d",
                                                "extrafs/removed",
                                                "image/overlay2",
                                                "image/overlay2/imagedb/content/sha256",
                                                "image/overlay2/layerdb/sha256"};
  return dirs;
}

std::optional<pid_t> stale_temporary_pid(std::string_view n) {
  bool temp = n.find(".tmp-") != std::string_view::npos || n.find(".tmp.") != std::string_view::npos ||
              n.rfind(".old-", 0) == 0;
  if (!temp) return std::nullopt;
  size_t sep = n.find_last_of("-.");
  auto pid = parse_uint(n.substr(sep + 1));
  if (!pid || *pid == 0 || *pid > 0x7fffffff) return std::nullopt;
  return static_cast<pid_t>(*pid);
}

Result<StoreWriteLock> StoreWriteLock::take(int store_fd, const std::string& store, bool remove_dead) {
  EXTRAFS_TRY(fd, open_beneath(store_fd, "extrafs/.publish.lock", O_RDWR | O_CREAT, store, 0644));
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      return make_error(EBUSY, "store " + store + " is being written by another extrafs publish, index, rm or gc");
    return Error::from_errno(errno, "store " + store + ": lock file");
  }
  if (remove_dead)
    for (const auto& rel : writer_temporary_dirs()) remove_dead_temporaries(store_fd, rel.c_str(), store);
  return StoreWriteLock(std::move(fd));
}

Result<LockedStore> lock_existing_store(const std::string& store, bool remove_dead) {
  LockedStore out;
  out.fd.reset(::open(store.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!out.fd.valid()) return Error::from_errno(errno, "store " + store);
  if (auto st = check_dir_beneath(out.fd.get(), "extrafs", store); !st.ok()) {
    if (st.code() == ENOENT)
      return make_error(ENOENT, "store " + store + " has no extrafs catalog (nothing was published or indexed there)");
    return st.error();
  }
  EXTRAFS_TRY(lock, StoreWriteLock::take(out.fd.get(), store, remove_dead));
  out.lock = std::move(lock);
  return out;
}

}  // namespace extrafs::store
