#include "cache/prefetch_scheduler.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <tuple>

namespace extrafs::cache {

PrefetchScheduler::PrefetchScheduler(PrefetchOptions options, PrefetchSource source)
    : options_(options), source_(std::move(source)) {
  for (unsigned i = 0; i < options_.threads; ++i) workers_.emplace_back([this] { worker(); });
}

PrefetchScheduler::~PrefetchScheduler() {
  stop();
  for (auto& t : workers_) t.join();
}

void PrefetchScheduler::stop() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    queue_.clear();
    drop_runs_locked();
  }
  work_cv_.notify_all();
  idle_cv_.notify_all();
}

size_t PrefetchScheduler::drop_runs_locked() {
  const size_t dropped = runs_.size() + waiting_.size();
  for (const auto& r : runs_) runs_bytes_ -= r.second;
  runs_.clear();
  waiting_.clear();
  waiting_bytes_ = 0;
  return dropped;
}

size_t PrefetchScheduler::readahead(std::vector<ReadaheadItem> items) {
  if (workers_.empty() || items.empty()) return 0;
  size_t queued = 0;
  {
    MutexLock lock(&mu_);
    for (auto& item : items) {
      if (stopping_ || queue_.size() >= options_.queue_limit) break;
      const Digest128& d = item.chunk.ref.digest;
      if (std::any_of(queue_.begin(), queue_.end(), [&](const ReadaheadItem& q) { return q.chunk.ref.digest == d; }))
        continue;
      queue_.push_back(std::move(item));
      ++queued;
    }
  }
  if (queued == 1)
    work_cv_.notify_one();
  else if (queued > 1)
    work_cv_.notify_all();
  return queued;
}

size_t PrefetchScheduler::sequence(std::vector<OwnedChunkRef> chunks) {
  if (workers_.empty()) return 0;
  size_t queued = 0;
  {
    MutexLock lock(&mu_);
    if (stopping_) return 0;
    std::vector<OwnedChunkRef> run;
    uint64_t run_stored = 0, run_raw = 0;
    auto close_run = [&]() REQUIRES(mu_) {
      if (run.empty()) return;
      waiting_bytes_ += run_raw;
      waiting_.emplace_back(std::move(run), run_raw);
      run.clear();
      run_stored = run_raw = 0;
    };
    for (auto& c : chunks) {
      if (c.ref.stored_len == 0) continue;
      if (runs_bytes_ + waiting_bytes_ + run_raw + c.ref.raw_len > options_.sequence_budget + options_.wait_limit)
        break;
      const bool adjacent = !run.empty() && run.back().object == c.object &&
                            run.back().ref.offset + run.back().ref.stored_len == c.ref.offset;
      // A run is one backend read, and within the budget (so that it can always be admitted).
      if (!adjacent || run_stored + c.ref.stored_len > kMaxCoalescedRead ||
          run_raw + c.ref.raw_len > options_.sequence_budget)
        close_run();
      run_stored += c.ref.stored_len;
      run_raw += c.ref.raw_len;
      run.push_back(std::move(c));
      queued++;
    }
    close_run();
    admit_waiting_locked();
  }
  work_cv_.notify_all();
  return queued;
}

void PrefetchScheduler::admit_waiting_locked() {
  while (!waiting_.empty() && (runs_bytes_ == 0 || runs_bytes_ + waiting_.front().second <= options_.sequence_budget)) {
    runs_bytes_ += waiting_.front().second;
    waiting_bytes_ -= waiting_.front().second;
    runs_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

bool PrefetchScheduler::idle_locked() const {
  return queue_.empty() && runs_.empty() && waiting_.empty() && busy_ == 0;
}

void PrefetchScheduler::wait_idle() {
  MutexLock lock(&mu_);
  while (!stopping_ && !idle_locked()) idle_cv_.wait(&mu_);
}

PrefetchScheduler::Load PrefetchScheduler::load() const {
  MutexLock lock(&mu_);
  return {queue_.size(), runs_.size(), waiting_.size(), runs_bytes_, waiting_bytes_};
}

void PrefetchScheduler::worker() {
  for (;;) {
    OwnedChunkRef job;
    std::vector<OwnedChunkRef> following;
    std::vector<OwnedChunkRef> run;
    uint64_t run_raw = 0;
    {
      MutexLock lock(&mu_);
      while (!stopping_ && queue_.empty() && runs_.empty()) work_cv_.wait(&mu_);
      if (stopping_) return;
      ++busy_;
      if (!queue_.empty()) {  // readahead first: a reader is at the end of what it has
        const bool job_on_disk = queue_.front().on_disk;
        job = std::move(queue_.front().chunk);
        queue_.pop_front();
        // Queued chunks that follow this one in its object go along, so that get() can read
        // them in the same backend read, up to the first one on disk. None when this one is on
        // disk: get() reads it from there and takes no followers. (Taken with the job, under the
        // lock: another worker must not take the job's followers one by one meanwhile.)
        uint64_t end = job.ref.offset + job.ref.stored_len, total = job.ref.stored_len;
        for (auto it = queue_.begin(); !job_on_disk && it != queue_.end();) {
          if (it->chunk.object == job.object && it->chunk.ref.offset == end &&
              total + it->chunk.ref.stored_len <= kMaxCoalescedRead) {
            if (it->on_disk) break;
            end += it->chunk.ref.stored_len;
            total += it->chunk.ref.stored_len;
            following.push_back(std::move(it->chunk));
            it = queue_.erase(it);
            it = queue_.begin();  // the next one may sit earlier in the queue
          } else {
            ++it;
          }
        }
      } else {
        std::tie(run, run_raw) = std::move(runs_.front());
        runs_.pop_front();
      }
    }
    if (run.empty())
      fetch_readahead(job, following);
    else
      fetch_run(run, run_raw);
    bool idle;
    {
      MutexLock lock(&mu_);
      --busy_;
      idle = idle_locked();
    }
    if (idle) idle_cv_.notify_all();
  }
}

void PrefetchScheduler::fetch_readahead(OwnedChunkRef& job, std::vector<OwnedChunkRef>& following) {
  job.ref.object = job.object;
  std::vector<ChunkRef> refs;
  refs.reserve(following.size());
  for (auto& f : following) {
    f.ref.object = f.object;
    refs.push_back(f.ref);
  }
  if (source_.in_memory(job.ref.digest)) return;
  prefetches_ += 1 + refs.size();
  (void)source_.get(job.ref, refs);
}

void PrefetchScheduler::fetch_run(std::vector<OwnedChunkRef>& run, uint64_t raw) {
  std::vector<ChunkRef> refs;
  refs.reserve(run.size());
  for (auto& c : run) {
    c.ref.object = c.object;
    refs.push_back(c.ref);
  }
  // get() reads the first chunk not held together with those right after it that are not held
  // either; the loop then skips what that read brought (it is held now).
  for (size_t i = 0; i < refs.size(); ++i) {
    if (source_.held(refs[i].digest)) continue;
    size_t missing = 1;
    while (i + missing < refs.size() && !source_.held(refs[i + missing].digest)) missing++;
    const bool ok = source_.get(refs[i], std::span(refs).subspan(i + 1));
    size_t brought = ok ? 1 : 0;
    for (size_t j = i + 1; j < i + missing && source_.held(refs[j].digest); ++j) brought++;
    prefetches_ += brought;
    if (!ok) {
      // The backend is failing: queued runs would each wait for it again, keeping the workers
      // from readahead. Readers fetch (and report) what they need.
      size_t dropped;
      {
        MutexLock lock(&mu_);
        dropped = drop_runs_locked();
      }
      if (dropped) spdlog::warn("prefetch of {} stopped after a failed read; {} reads dropped", run[i].object, dropped);
      break;
    }
  }
  {
    MutexLock lock(&mu_);
    runs_bytes_ -= raw;
    admit_waiting_locked();
  }
  work_cv_.notify_all();
}

}  // namespace extrafs::cache
