#include "fs/whole_file_copier.h"

#include <sys/stat.h>

#include <spdlog/spdlog.h>

#include <string>
#include <vector>

#include "fs/index_chunks.h"

namespace extrafs::fs {

using format::ChunkRecord;
using format::EntryRecord;
using format::kChunkZero;
using format::LayerIndex;

namespace {
using Clock = std::chrono::steady_clock;
constexpr size_t kMaxQueued = 64;    // copies or open-wanted checks waiting
constexpr size_t kMaxSettling = 64;  // copies just written waiting to be hashed
// A copy changed a moment ago: its identity settles within 2 s (whole seconds of a coarse clock:
// 3 s to be sure).
constexpr auto kSettle = std::chrono::seconds(3);
}  // namespace

Digest128 whole_file_key(const LayerIndex& idx, uint32_t e) {
  std::string buf;
  auto put = [&](uint64_t v, int n) {
    for (int i = 0; i < n; ++i) buf.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  put(idx.attr_entry(e).size, 8);
  put(idx.chunk_size(), 4);
  for (const ChunkRecord& c : idx.chunks(e)) {
    const bool zero = (c.flags & kChunkZero) != 0;
    put(zero ? 1 : 0, 1);
    put(c.raw_len, 4);
    if (!zero) buf.append(reinterpret_cast<const char*>(c.digest), 16);
  }
  return xxh3_128(buf.data(), buf.size());
}

WholeFileCopier::WholeFileCopier(cache::ChunkFetcher& fetcher, cache::WholeFiles& files, uint64_t min_size)
    : fetcher_(fetcher), files_(files), min_size_(min_size), thread_([this] { loop(); }) {}

WholeFileCopier::~WholeFileCopier() {
  stop();
  if (thread_.joinable()) thread_.join();
}

void WholeFileCopier::stop() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  cv_.notify_all();
}

bool WholeFileCopier::stopped() {
  MutexLock lock(&mu_);
  return stop_;
}

void WholeFileCopier::set_passthrough(bool on) {
  {
    MutexLock lock(&mu_);
    mode_ = on ? Mode::kOn : Mode::kOff;
  }
  cv_.notify_all();
}

void WholeFileCopier::want_copy(std::shared_ptr<const LayerIndex> idx, uint32_t e) {
  if (idx->attr_entry(e).size < min_size_) return;
  const Digest128 key = whole_file_key(*idx, e);
  // While the copier takes the copies in (the kernel agreed, on() is not yet true) the job is
  // queued all the same, for after that (copy() asks has() then): a file read whole in that
  // moment still gets its copy.
  if (on() && files_.has(key)) return;
  {
    MutexLock lock(&mu_);
    if (stop_ || mode_ != Mode::kOn || copy_queue_.size() >= kMaxQueued || !copy_pending_.insert(key).second) return;
    copy_queue_.push_back({key, std::move(idx), e});
  }
  cv_.notify_one();
}

Fd WholeFileCopier::open(std::shared_ptr<const LayerIndex> idx, uint32_t e) {
  if (!on()) return Fd();
  const EntryRecord& rec = idx->attr_entry(e);
  if (!S_ISREG(rec.mode) || rec.size < min_size_) return Fd();
  const Digest128 key = whole_file_key(*idx, e);
  if (!files_.has(key)) return Fd();
  auto fd = files_.open_checked(key, rec.size);
  if (fd.ok()) return std::move(fd).value();
  // Not hashed by this mount yet, or changed since: this open is served the usual way, and the
  // copier hashes the copy for the next one, ahead of the copies settling.
  if (fd.code() != EAGAIN) return Fd();
  {
    MutexLock lock(&mu_);
    if (stop_ || check_queue_.size() >= kMaxQueued || !check_pending_.insert(key).second) return Fd();
    check_queue_.push_front({key, std::move(idx), e, Clock::now()});
  }
  cv_.notify_one();
  return Fd();
}

void WholeFileCopier::loop() {
  Mode mode;
  {
    MutexLock lock(&mu_);
    while (!stop_ && mode_ == Mode::kUndecided) cv_.wait(&mu_);
    if (stop_) return;
    mode = mode_;
  }
  if (mode == Mode::kOff) {
    auto freed = files_.discard();
    if (!freed.ok())
      spdlog::warn("whole-file copies: {}", freed.error().message);
    else if (*freed)
      spdlog::info("passthrough is off: removed {} bytes of whole-file copies from the cache", *freed);
    return;
  }
  if (auto st = files_.load(); !st.ok()) {
    spdlog::warn("whole-file copies not used: {}", st.error().message);
    return;
  }
  on_.store(true, std::memory_order_relaxed);
  for (;;) {
    Job job;
    bool is_check = false;
    {
      MutexLock lock(&mu_);
      for (;;) {
        if (stop_) return;
        if (!copy_queue_.empty()) {
          job = std::move(copy_queue_.front());
          copy_queue_.pop_front();
          break;
        }
        if (!check_queue_.empty() && check_queue_.front().due <= Clock::now()) {
          job = std::move(check_queue_.front());
          check_queue_.pop_front();
          is_check = true;
          break;
        }
        if (check_queue_.empty())
          cv_.wait(&mu_);
        else
          cv_.wait_until(&mu_, check_queue_.front().due);
      }
    }
    if (is_check)
      check(std::move(job));
    else
      copy(std::move(job));
  }
}

void WholeFileCopier::check(Job job) {
  const LayerIndex& idx = *job.idx;
  std::vector<cache::ExpectedChunk> want;
  for (const ChunkRecord& c : idx.chunks(job.entry))
    want.push_back({chunk_digest(c), c.raw_len, (c.flags & kChunkZero) != 0});
  Status st = files_.check(job.key, idx.attr_entry(job.entry).size, idx.chunk_size(), want);
  if (!st.ok()) spdlog::debug("whole-file copy {} not taken: {}", job.key.hex(), st.error().message);
  MutexLock lock(&mu_);
  // Changed a moment ago: once more when it has settled; after that the next open asks again.
  if (st.code() == EAGAIN && !job.retried) {
    job.retried = true;
    job.due = Clock::now() + kSettle;
    check_queue_.push_back(std::move(job));  // every other job is due no later
  } else {
    check_pending_.erase(job.key);
  }
}

void WholeFileCopier::copy(Job job) {
  const LayerIndex& idx = *job.idx;
  const uint64_t size = idx.attr_entry(job.entry).size;
  bool written = false;
  Status st = [&]() -> Status {
    if (files_.has(job.key)) return ok_status();
    // Only a file read whole: every chunk already here or on its way (a reader's READ of an
    // earlier part can still be fetching when the one that reached the end has been answered:
    // the kernel sends READs of one file in parallel; get() below then waits for that fetch).
    // So a copy costs the store nothing, unless the cache evicts a chunk meanwhile; that one
    // is fetched again.
    for (const ChunkRecord& c : idx.chunks(job.entry))
      if (!(c.flags & kChunkZero) && !fetcher_.held(chunk_digest(c)))
        return make_error(ENOENT, "not all chunks are cached");
    EXTRAFS_TRY(w, files_.begin(job.key, size));
    uint64_t off = 0;
    for (const ChunkRecord& c : idx.chunks(job.entry)) {
      if (stopped()) return make_error(ECANCELED, "unmounting");
      if (!(c.flags & kChunkZero)) {  // zeros: the file was made that long, sparse
        // Verified on the way in, as every chunk a reader gets.
        EXTRAFS_TRY(data, fetcher_.get(chunk_ref(idx, c)));
        EXTRAFS_CHECK_STATUS(w->write(off, std::span(data->data(), data->size())));
      }
      off += c.raw_len;
    }
    EXTRAFS_CHECK_STATUS(w->commit());
    written = true;
    return ok_status();
  }();
  if (!st.ok()) spdlog::debug("whole-file copy {} not made: {}", job.key.hex(), st.error().message);
  MutexLock lock(&mu_);
  copy_pending_.erase(job.key);
  // A copy written now is hashed once its identity can be trusted, before any open hands it
  // out; a bounded number wait for that (the others: at their first open).
  if (written && check_queue_.size() < kMaxSettling && check_pending_.insert(job.key).second) {
    job.due = Clock::now() + kSettle;
    check_queue_.push_back(std::move(job));
  }
}

}  // namespace extrafs::fs
