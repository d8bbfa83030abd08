// `extrafs verify STORE`: reads every chunk of every layer (and of the image/ tree) from the
// store and checks it against its digest, reporting each bad chunk by layer, path and offset.
// A store-level check run by the tools, not by a mount: it reads through a backend (a local
// directory or NFS) with a fetcher that caches nothing, as the read side does (cache/ChunkFetcher,
// the index and catalog readers), and uses nothing of the write side, so it sits with the
// commands rather than in store/. Single-threaded.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "common/result.h"

namespace extrafs::tools {

struct VerifyReport {
  uint64_t layers = 0;
  uint64_t chunks = 0;  // chunks read and checked
  uint64_t bytes = 0;   // raw bytes checked
  uint64_t bad_chunks = 0;
  std::vector<std::string> problems;  // one line each (bad chunks, unreadable indexes)
};

// Fails only if the catalog itself cannot be read; everything else is a problem in the report.
// `progress` (may be empty) is called after each layer with its cache-id.
Result<VerifyReport> verify_store(backend::Backend& backend, const std::function<void(const std::string&)>& progress);

}  // namespace extrafs::tools
