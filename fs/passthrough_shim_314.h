// FUSE passthrough for a libfuse without an API for it (3.14 to 3.16; Debian 12 has 3.14). A
// build against libfuse >= 3.17 asks for passthrough through libfuse's own API
// (FUSE_CAP_PASSTHROUGH, fuse_passthrough_open/close) and never uses this; fs/fuse_adapter.cc
// chooses by FUSE_VERSION.
//
// Passthrough (kernel >= 6.9, protocol 7.40): OPEN may answer with a local file that the kernel
// then reads by itself, without a READ reaching the daemon. The kernel offers it in its INIT
// request (FUSE_PASSTHROUGH in flags2); the daemon takes it in its INIT reply (the same bit and a
// max_stack_depth, which these libfuse versions leave zero), registers each backing file with an
// ioctl on the device and answers OPEN with {fh, FOPEN_PASSTHROUGH, backing id}. libfuse
// builds the INIT reply itself, so the shim sits in the session's custom I/O
// (fuse_session_custom_io): read() sees the requests the kernel sends, writev() the replies
// libfuse writes, and the one INIT reply is rewritten on its way out.
//
// The shim trusts nothing about libfuse's writes beyond what it checks. It rewrites a reply only
// if it is the answer to the kernel's INIT (same `unique`), successful, shaped as libfuse 3.14
// to 3.16 shape it (two iovecs: the 16-byte out header and a whole 64-byte fuse_init_out,
// lengths that agree), without FUSE_WRITEBACK_CACHE (which the kernel does not combine with
// passthrough) and with the max_stack_depth word still zero. Anything else (another shape,
// another request first, an INIT not offering passthrough) leaves passthrough off and every byte
// written as libfuse gave it. libfuse's buffers are never written to: a rewritten reply goes out
// from a copy.
//
// Ownership and threads: the adapter owns one shim per session and hands it to the custom I/O
// callbacks through their userdata. read() and writev() may be called from any of libfuse's
// worker threads at once (on the session's descriptor or cloned ones); outside INIT they cost
// one atomic load. The decision is reported once through `on_decided`, on the thread that writes
// the INIT reply (or read a first request that was not INIT), before that reply reaches the
// kernel, so before any OPEN can come.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <functional>

#include "common/result.h"
#include "common/thread_annotations.h"

namespace extrafs::fs {

class PassthroughShim314 {
 public:
  // `allowed` false: never takes passthrough (EXTRAFS_PASSTHROUGH=0); replies pass untouched.
  // `on_decided(agreed)` is called exactly once (see above); libfuse's INIT reply waits for it.
  PassthroughShim314(bool allowed, std::function<void(bool agreed)> on_decided);

  PassthroughShim314(const PassthroughShim314&) = delete;
  PassthroughShim314& operator=(const PassthroughShim314&) = delete;

  // The custom I/O's read and writev: ::read and ::writev on `fd`, their results and errno as
  // the system gave them; the INIT request is looked at, the INIT reply rewritten when
  // passthrough is taken.
  ssize_t read(int fd, void* buf, size_t len) EXCLUDES(mu_);
  ssize_t writev(int fd, const struct iovec* iov, int count) EXCLUDES(mu_);

  // True once the INIT reply taking passthrough is on its way to the kernel (set before it is
  // written: a failed write fails the mount).
  bool agreed() const { return agreed_.load(std::memory_order_relaxed); }

  // FUSE_DEV_IOC_BACKING_OPEN on the session's device `dev_fd`: registers `fd` as a backing
  // file; its id (> 0) for open_reply, or the kernel's refusal. Only once agreed().
  static Result<int> open_backing(int dev_fd, int fd);
  // FUSE_DEV_IOC_BACKING_CLOSE: the kernel drops the id (files open with it keep reading).
  static Status close_backing(int dev_fd, int backing_id);

  // The body of an OPEN reply handing `backing_id` to the kernel (the kernel's struct
  // fuse_open_out with FOPEN_PASSTHROUGH), which the adapter sends with fuse_reply_buf where it
  // would call fuse_reply_open.
  struct OpenOut {
    uint64_t fh;
    uint32_t open_flags;
    int32_t backing_id;
  };
  static OpenOut open_reply(int backing_id);

 private:
  enum class Phase { kAwaitInit, kAwaitReply, kDone };
  void look_at_request(const void* buf, size_t n) EXCLUDES(mu_);
  void decide(bool agreed) REQUIRES(mu_);  // phase_ just set to kDone

  const bool allowed_;
  const std::function<void(bool)> on_decided_;
  // Read without mu_ to keep the requests and replies after INIT off the lock; changed under it.
  std::atomic<Phase> phase_{Phase::kAwaitInit};
  Mutex mu_;                                  // taken only while INIT is undecided
  uint64_t init_unique_ GUARDED_BY(mu_) = 0;  // the INIT request's id, once phase_ > kAwaitInit
  std::atomic<bool> agreed_{false};
};

}  // namespace extrafs::fs
