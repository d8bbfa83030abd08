// WholeFileCopier: the local whole-file copies the kernel reads by itself once it agreed to
// FUSE passthrough (cache::WholeFiles keeps them; FsCore::open hands them out). It owns one
// thread, the copier, which
//   - waits for the kernel's answer (set_passthrough): if it refused, removes the copies the
//     cache holds (nothing would read them, and they take room from the chunks) and ends; else
//     takes them in (WholeFiles::load) and only then are copies made and handed out (on());
//   - makes the copies want_copy() queues (a read reached the end of a large file) from chunks
//     all cached on this host or being fetched for it (ChunkFetcher::held), each verified on the
//     way in, so a copy costs the store nothing;
//   - hashes copies before their first hand-out (the settle queue): those an open asked for
//     (due at once) and those just written (due once their identity can be trusted,
//     FileIdentity::settled), so that no open waits for a hash.
//
// Thread-safety: every public method may be called from any thread (FUSE workers; the FUSE
// adapter at INIT for set_passthrough). Lock: `mu_`, a leaf: WholeFiles and the ChunkFetcher are
// called outside it. Lock order: PassthroughShim314::mu_ -> WholeFileCopier::mu_ (the shim's
// on_decided calls set_passthrough). The fetcher and the WholeFiles must outlive the copier.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <thread>
#include <unordered_set>

#include "cache/chunk_fetcher.h"
#include "cache/whole_files.h"
#include "common/hash.h"
#include "common/posix_file.h"
#include "common/thread_annotations.h"
#include "format/layer_index.h"

namespace extrafs::fs {

// What names the content of entry `e` of `idx` for cache::WholeFiles: the xxh3-128 of its size,
// the index's chunk size and its chunk table (digests, lengths, zero flags).
Digest128 whole_file_key(const format::LayerIndex& idx, uint32_t e);

class WholeFileCopier {
 public:
  // Copies are made of regular files of at least `min_size` bytes. Starts the copier thread.
  WholeFileCopier(cache::ChunkFetcher& fetcher, cache::WholeFiles& files, uint64_t min_size);
  ~WholeFileCopier();  // stop(), then joins the thread
  WholeFileCopier(const WholeFileCopier&) = delete;
  WholeFileCopier& operator=(const WholeFileCopier&) = delete;

  // The copier takes no new work and ends after the copy in progress's current chunk.
  void stop() EXCLUDES(mu_);
  // The kernel's answer to passthrough (called once, when INIT is answered).
  void set_passthrough(bool on) EXCLUDES(mu_);
  // Whether copies are made and handed out: the kernel agreed and they were taken in.
  bool on() const { return on_.load(std::memory_order_relaxed); }
  // A read reached the end of entry `e` of `idx`: queues a copy of it if it is large enough,
  // has none and the kernel agreed to passthrough (bounded queue; dropped when full). Never
  // waits for I/O.
  void want_copy(std::shared_ptr<const format::LayerIndex> idx, uint32_t e) EXCLUDES(mu_);
  // Entry `e`'s copy, open read-only and checked by this mount, for an open; invalid if copies
  // are off, it has none, or it still has to be hashed (then queued for that, ahead of the
  // copies settling).
  Fd open(std::shared_ptr<const format::LayerIndex> idx, uint32_t e) EXCLUDES(mu_);

 private:
  struct Job {
    Digest128 key;
    std::shared_ptr<const format::LayerIndex> idx;
    uint32_t entry = 0;
    std::chrono::steady_clock::time_point due{};  // check_queue_: not before then
    bool retried = false;                         // check_queue_: once more after EAGAIN
  };
  enum class Mode { kUndecided, kOn, kOff };  // set_passthrough's answer

  void loop() EXCLUDES(mu_);
  // Hashes the copy of `job` (WholeFiles::check); requeues it once if it changed a moment ago.
  void check(Job job) EXCLUDES(mu_);
  // Makes the copy of `job` from the cached chunks; then queues its check.
  void copy(Job job) EXCLUDES(mu_);
  bool stopped() EXCLUDES(mu_);

  cache::ChunkFetcher& fetcher_;
  cache::WholeFiles& files_;
  const uint64_t min_size_;
  std::atomic<bool> on_{false};

  Mutex mu_;
  CondVar cv_;
  Mode mode_ GUARDED_BY(mu_) = Mode::kUndecided;
  std::deque<Job> copy_queue_ GUARDED_BY(mu_);
  // Copies to hash before they are handed out, in order of `due`: those an open wanted (due at
  // once, at the front) and those just written (due once their identity can be trusted).
  std::deque<Job> check_queue_ GUARDED_BY(mu_);
  std::unordered_set<Digest128, Digest128Hash> copy_pending_ GUARDED_BY(mu_);
  std::unordered_set<Digest128, Digest128Hash> check_pending_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;

  std::thread thread_;  // last: started once everything above is built
};

}  // namespace extrafs::fs
