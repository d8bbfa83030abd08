#include "cache/cache_writer.h"
#include "common/thread_annotations.h"

namespace extrafs::cache {

CacheWriter::CacheWriter(BlockCache& disk, size_t max_pending, ErrorSink on_error)
    : disk_(disk), max_pending_(max_pending < 1 ? 1 : max_pending), on_error_(std::move(on_error)) {
  thread_ = std::thread([this] { run(); });
}

CacheWriter::~CacheWriter() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  thread_.join();
}

void CacheWriter::put(const Digest128& d, ChunkData data) {
  {
    MutexLock lock(&mu_);
    if (pending_.count(d)) return;
    // Room is handed out in the order callers asked for it (a ticket each): under sustained
    // overload a caller that waits never loses its turn to callers that came later. (A plain
    // "wait until there is room" lets newcomers take every slot that opens; a FUSE request could
    // then wait as long as the overload lasts.)
    const uint64_t ticket = next_ticket_++;
    ++waiting_;
    while (ticket != turn_ || queue_.size() >= max_pending_) room_cv_.wait(&mu_);
    --waiting_;
    ++turn_;
    if (!pending_.count(d)) {  // else queued by someone else while we waited
      pending_.emplace(d, data);
      queue_.emplace_back(d, std::move(data));
      ++queued_seq_;
    }
  }
  room_cv_.notify_all();  // the next ticket may find room too
  work_cv_.notify_one();
}

size_t CacheWriter::waiting_for_room() {
  MutexLock lock(&mu_);
  return waiting_;
}

ChunkData CacheWriter::pending(const Digest128& d) {
  MutexLock lock(&mu_);
  auto it = pending_.find(d);
  return it == pending_.end() ? nullptr : it->second;
}

void CacheWriter::flush() {
  MutexLock lock(&mu_);
  uint64_t target = queued_seq_;
  while (written_seq_ < target) room_cv_.wait(&mu_);
}

size_t CacheWriter::pending_count() {
  MutexLock lock(&mu_);
  return pending_.size();
}

void CacheWriter::run() {
  for (;;) {
    std::pair<Digest128, ChunkData> job;
    {
      MutexLock lock(&mu_);
      // On stop, the queue is still drained: an unmount leaves every fetched chunk on disk.
      while (!stopping_ && queue_.empty()) work_cv_.wait(&mu_);
      if (queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    room_cv_.notify_all();
    Status st = disk_.put(job.first, job.second->span());
    if (!st.ok() && on_error_) on_error_(st.error());
    {
      MutexLock lock(&mu_);
      pending_.erase(job.first);
      ++written_seq_;
    }
    room_cv_.notify_all();
  }
}

}  // namespace extrafs::cache
