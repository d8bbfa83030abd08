// The writers' lock of a store: `extrafs publish`, `index`, `rm` and `gc` each hold an exclusive
// flock on STORE/extrafs/.publish.lock while they change the store, so that two writers never
// interleave their catalogs and generations, and gc never deletes what a publish is writing (the
// second one to start is refused at once). Readers (daemons, `verify`, `ls`) take no lock: every
// file a writer publishes is renamed into place whole. A move-only value; released when
// destroyed.
#pragma once

#include <sys/types.h>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/posix_file.h"
#include "common/result.h"

namespace extrafs::store {

class StoreWriteLock {
 public:
  // Takes the lock of the store whose root directory is open as `store_fd` (named `store` in
  // messages), then, if `remove_dead` (every writer but `gc --dry-run`, which changes nothing),
  // removes what writers that were killed left behind (see stale_temporary_pid) in the
  // directories writers write into. The lock file is created beneath the store, never through a
  // symlink; STORE/extrafs must exist. EBUSY naming the store while another writer holds it.
  static Result<StoreWriteLock> take(int store_fd, const std::string& store, bool remove_dead = true);

  StoreWriteLock() = default;
  bool held() const { return fd_.valid(); }
  void release() { fd_.reset(); }

 private:
  explicit StoreWriteLock(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
};

// A store that exists (it has STORE/extrafs/), opened and locked for writing: where `extrafs rm`
// and `extrafs gc` start (they never create a store). ENOENT naming the store if it has no
// extrafs/ (nothing was published or indexed there); EBUSY as take().
struct LockedStore {
  Fd fd;  // the store's root directory
  StoreWriteLock lock;
};
Result<LockedStore> lock_existing_store(const std::string& store, bool remove_dead = true);

// The directories (relative to the store root) where writers make temporaries: layer blobs and
// indexes, image/ objects, catalog generations and the catalog itself, docker's metadata
// (repositories.json, image configs, layerdb), the marks of removed layers. (Each
// overlay2/<cache-id>/ gets its link and lower the same way; those are many, and swept by gc.)
const std::vector<std::string>& writer_temporary_dirs();

// The pid of the writer that made `name`, if `name` is one of the temporaries writers use
// ("*.tmp.<pid>", "*.tmp-<pid>", ".tmp-*-<pid>", ".old-*-<pid>"); nullopt for anything else.
std::optional<pid_t> stale_temporary_pid(std::string_view name);

}  // namespace extrafs::store
