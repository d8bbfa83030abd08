// MemoryObjectWriter: a destination for `extrafs push` held in memory, for unit tests. A real
// implementation of ObjectWriter (not a mock): objects are kept whole with their Cache-Control,
// and every call is recorded in order ("HEAD p", "GET p", "PUT p", "DELETE p", "LIST p") so that
// tests can check what was written when. fail_after(n) makes every call after the next n PUTs
// fail with EIO, as a push killed at that point would stop writing.
//
// Test-only: built into the extrafs_backend_testing library, never into the tools.
// Thread-safety: every method may be called from any thread concurrently.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "backend/object_writer.h"
#include "common/thread_annotations.h"

namespace extrafs::backend {

class MemoryObjectWriter : public ObjectWriter {
 public:
  struct Object {
    std::string bytes;
    std::string cache_control;
  };

  Result<std::optional<uint64_t>> head(std::string_view path) override;
  Result<std::string> get(std::string_view path, uint64_t limit) override;
  Status put(std::string_view path, const PutBody& body, std::string_view cache_control,
             const std::function<void(int64_t)>& on_bytes) override;
  Status remove(std::string_view path) override;
  Result<std::vector<ListedObject>> list(std::string_view prefix) override;
  std::string describe() const override { return "memory://dst"; }

  // Every call after `puts` more successful PUTs fails with EIO; nullopt: none fails.
  void fail_after(std::optional<int> puts);
  // Puts an object directly (not recorded).
  void set(const std::string& path, std::string bytes);
  std::map<std::string, Object> objects() const;
  std::vector<std::string> calls() const;
  void clear_calls();

 private:
  Status check_failing() REQUIRES(mu_);

  mutable Mutex mu_;
  std::map<std::string, Object, std::less<>> objects_ GUARDED_BY(mu_);
  std::vector<std::string> calls_ GUARDED_BY(mu_);
  std::optional<int> puts_left_ GUARDED_BY(mu_);
};

}  // namespace extrafs::backend
