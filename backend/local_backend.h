// LocalBackend: a store in a local directory (the embedded default). Keeps a bounded set of open
// file descriptors so that a chunk read is one pread().
#pragma once

#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "backend/backend.h"

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
  explicit LocalBackend(std::string root, int root_fd) : root_(std::move(root)), root_fd_(root_fd) {}
  // Returns a shared handle to an open fd for `path` (opened relative to the root).
  Result<std::shared_ptr<int>> fd_for(std::string_view path);

  std::string root_;
  int root_fd_;
  static constexpr size_t kMaxOpen = 256;
  std::mutex mu_;  // guards lru_, fds_
  std::list<std::string> lru_;
  struct Open {
    std::shared_ptr<int> fd;
    std::list<std::string>::iterator pos;
  };
  std::unordered_map<std::string, Open> fds_;
};

}  // namespace extrafs::backend
