#include "fs/passthrough_shim_314.h"

#include <linux/fuse.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>
#include <utility>

namespace extrafs::fs {

namespace {

// The kernel's ABI (include/uapi/linux/fuse.h). The structures come from the system's header;
// what protocol 7.40 added (passthrough) is spelled out here, since Debian 12's header (7.38)
// predates it.
constexpr uint32_t kFlags2Passthrough = 1u << (37 - 32);  // FUSE_PASSTHROUGH, in flags2
constexpr uint32_t kOpenPassthrough = 1u << 7;            // FOPEN_PASSTHROUGH
// In 7.40 the word after flags2 in fuse_init_out (unused[0] before) is max_stack_depth.
constexpr size_t kMaxStackDepthAt = offsetof(fuse_init_out, flags2) + sizeof(uint32_t);
// 1: the mount itself is one level of stacking, its backing files sit on a plain file system,
// and overlayfs may still stack on the mount (the kernel allows two levels).
constexpr uint32_t kMaxStackDepth = 1;
struct BackingMap {  // struct fuse_backing_map
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};
constexpr unsigned long kIocBackingOpen = _IOW(229, 1, BackingMap);  // FUSE_DEV_IOC_BACKING_OPEN
constexpr unsigned long kIocBackingClose = _IOW(229, 2, uint32_t);   // FUSE_DEV_IOC_BACKING_CLOSE

static_assert(sizeof(fuse_in_header) == 40 && sizeof(fuse_out_header) == 16);
static_assert(sizeof(fuse_init_out) == 64 && kMaxStackDepthAt + sizeof(uint32_t) <= sizeof(fuse_init_out));
static_assert(sizeof(BackingMap) == 16);
static_assert(sizeof(PassthroughShim314::OpenOut) == sizeof(fuse_open_out) &&
              offsetof(PassthroughShim314::OpenOut, open_flags) == offsetof(fuse_open_out, open_flags) &&
              offsetof(PassthroughShim314::OpenOut, backing_id) == offsetof(fuse_open_out, padding));

// Whether the kernel's INIT request (`n` bytes at `buf`, its header already read) offers
// passthrough. An INIT too short to hold flags2 (a kernel before 7.36) does not.
bool init_offers_passthrough(const std::byte* buf, size_t n) {
  constexpr size_t kNeed = sizeof(fuse_in_header) + offsetof(fuse_init_in, flags2) + sizeof(uint32_t);
  if (n < kNeed) return false;
  fuse_init_in in{};
  std::memcpy(&in, buf + sizeof(fuse_in_header), std::min(n - sizeof(fuse_in_header), sizeof in));
  return (in.flags & FUSE_INIT_EXT) && (in.flags2 & kFlags2Passthrough);
}

// `out`: libfuse's INIT reply body taking passthrough, if `iov` is that reply shaped as libfuse
// 3.14 to 3.16 shape it; otherwise why not (for the log).
const char* rewrite_init_reply(const struct iovec* iov, int count, uint64_t init_unique, fuse_init_out& out) {
  if (count != 2) return "not two iovecs";
  if (iov[0].iov_len != sizeof(fuse_out_header)) return "the out header is not 16 bytes";
  if (iov[1].iov_len != sizeof(fuse_init_out)) return "the body is not a whole 64-byte fuse_init_out";
  fuse_out_header h;
  std::memcpy(&h, iov[0].iov_base, sizeof h);
  if (h.unique != init_unique) return "the first reply answers another request";
  if (h.error != 0) return "INIT answered with an error";
  if (h.len != sizeof(fuse_out_header) + sizeof(fuse_init_out)) return "its length field disagrees with its size";
  std::memcpy(&out, iov[1].iov_base, sizeof out);
  if (out.flags & FUSE_WRITEBACK_CACHE) return "it asks for the writeback cache";
  uint32_t depth;
  std::memcpy(&depth, reinterpret_cast<const char*>(&out) + kMaxStackDepthAt, sizeof depth);
  if (depth != 0) return "its max_stack_depth word is set already";
  out.flags |= FUSE_INIT_EXT;
  out.flags2 |= kFlags2Passthrough;
  std::memcpy(reinterpret_cast<char*>(&out) + kMaxStackDepthAt, &kMaxStackDepth, sizeof kMaxStackDepth);
  return nullptr;
}

}  // namespace

PassthroughShim314::PassthroughShim314(bool allowed, std::function<void(bool agreed)> on_decided)
    : allowed_(allowed), on_decided_(std::move(on_decided)) {}

void PassthroughShim314::decide(bool agreed) {
  agreed_.store(agreed, std::memory_order_relaxed);
  if (on_decided_) on_decided_(agreed);
}

ssize_t PassthroughShim314::read(int fd, void* buf, size_t len) {
  const ssize_t n = ::read(fd, buf, len);
  if (n > 0 && phase_.load(std::memory_order_acquire) == Phase::kAwaitInit) {
    const int saved = errno;
    look_at_request(buf, static_cast<size_t>(n));
    errno = saved;
  }
  return n;
}

void PassthroughShim314::look_at_request(const void* buf, size_t n) {
  MutexLock lock(&mu_);
  if (phase_.load(std::memory_order_relaxed) != Phase::kAwaitInit) return;
  fuse_in_header h{};
  if (n >= sizeof h) std::memcpy(&h, buf, sizeof h);
  if (n < sizeof h || h.opcode != FUSE_INIT) {
    spdlog::warn("FUSE passthrough off: the first request from the kernel is not INIT (opcode {}, {} bytes)", h.opcode,
                 n);
  } else if (!allowed_) {
    spdlog::debug("FUSE passthrough off: EXTRAFS_PASSTHROUGH=0");
  } else if (!init_offers_passthrough(static_cast<const std::byte*>(buf), n)) {
    spdlog::debug("FUSE passthrough off: the kernel does not offer it");
  } else {
    init_unique_ = h.unique;
    phase_.store(Phase::kAwaitReply, std::memory_order_release);
    return;
  }
  phase_.store(Phase::kDone, std::memory_order_release);
  decide(false);
}

ssize_t PassthroughShim314::writev(int fd, const struct iovec* iov, int count) {
  if (phase_.load(std::memory_order_acquire) != Phase::kAwaitReply) return ::writev(fd, iov, count);
  fuse_init_out out{};
  const char* why = "";
  {
    MutexLock lock(&mu_);
    if (phase_.load(std::memory_order_relaxed) != Phase::kAwaitReply) return ::writev(fd, iov, count);
    why = rewrite_init_reply(iov, count, init_unique_, out);
    if (why) spdlog::warn("FUSE passthrough off: libfuse's INIT reply is not shaped as this daemon expects ({})", why);
    phase_.store(Phase::kDone, std::memory_order_release);
    decide(why == nullptr);
  }
  if (why) return ::writev(fd, iov, count);
  const struct iovec rewritten[2] = {iov[0], {&out, sizeof out}};
  return ::writev(fd, rewritten, 2);
}

Result<int> PassthroughShim314::open_backing(int dev_fd, int fd) {
  BackingMap m{fd, 0, 0};
  const int id = ::ioctl(dev_fd, kIocBackingOpen, &m);
  if (id < 0) return Error::from_errno(errno, "FUSE_DEV_IOC_BACKING_OPEN");
  if (id == 0) return make_error(EPROTO, "FUSE_DEV_IOC_BACKING_OPEN returned backing id 0");
  return id;
}

Status PassthroughShim314::close_backing(int dev_fd, int backing_id) {
  uint32_t id = static_cast<uint32_t>(backing_id);
  if (::ioctl(dev_fd, kIocBackingClose, &id) != 0)
    return Error::from_errno(errno, "FUSE_DEV_IOC_BACKING_CLOSE " + std::to_string(backing_id));
  return ok_status();
}

PassthroughShim314::OpenOut PassthroughShim314::open_reply(int backing_id) {
  return OpenOut{0, kOpenPassthrough, backing_id};
}

}  // namespace extrafs::fs
