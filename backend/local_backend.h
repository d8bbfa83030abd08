// LocalBackend: a store in a local directory (the embedded default). Keeps a bounded set of open
// file descriptors so that a chunk read is one pread(). A file replaced by rename (how the
// catalog moves to a new version) keeps being read through the old descriptor until a stat() of
// its path notices the new file and drops it, as NfsBackend reopens its handles after a stat();
// read_all() stats first, so it always reads the current file. Likewise a store directory
// removed and made again at the same path (a store rebuilt from scratch): a stat() that finds
// another directory at the root's path moves every later call to it. Only regular files are
// opened, never through a symlink and never outside the root (open_regular_beneath): a FIFO or a
// device put where a store object should be is refused, not waited on.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

#include "backend/backend.h"
#include "common/lru.h"
#include "common/thread_annotations.h"

namespace extrafs::backend {

class LocalBackend : public Backend {
 public:
  // `root` must be an absolute path to an existing directory.
  static Result<std::unique_ptr<Backend>> open(const std::string& root);
  ~LocalBackend() override;

  Result<size_t> read(std::string_view path, uint64_t offset, std::span<std::byte> buf) override;
  Result<ObjectInfo> stat(std::string_view path) override;
  Result<std::vector<std::string>> list(std::string_view path) override;
  std::string describe() const override { return root_; }

 private:
  LocalBackend(std::string root, std::shared_ptr<int> root_fd, dev_t dev, ino_t ino)
      : root_(std::move(root)), root_fd_(std::move(root_fd)), root_dev_(dev), root_ino_(ino) {}
  // Returns a shared handle to an open fd for `path` (opened relative to the root).
  Result<std::shared_ptr<int>> fd_for(std::string_view path);
  // The directory fd of the root, held by the caller for as long as it uses it.
  std::shared_ptr<int> root_fd();
  // If the root's path names another directory now (the store made again), opens it and drops
  // the fds of the old one; the old root stays open for whoever holds it.
  void follow_root();

  std::string root_;
  static constexpr size_t kMaxOpen = 256;
  Mutex mu_;
  std::shared_ptr<int> root_fd_ GUARDED_BY(mu_);
  dev_t root_dev_ GUARDED_BY(mu_) = 0;  // identity of the directory root_fd_ is open on
  ino_t root_ino_ GUARDED_BY(mu_) = 0;
  struct Open {
    std::shared_ptr<int> fd;
    dev_t dev = 0;  // identity of the file the fd is open on
    ino_t ino = 0;
  };
  Lru<std::string, Open> fds_ GUARDED_BY(mu_);  // at most kMaxOpen; the least recently read closed first
};

}  // namespace extrafs::backend
