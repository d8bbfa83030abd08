// fs/passthrough_shim_314.h fed canned INIT bytes through pipes: what the kernel sends is read
// through the shim, what libfuse writes goes through the shim into a pipe, and the test compares
// what came out with what libfuse wrote.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/posix_file.h"
#include "fs/passthrough_shim_314.h"
#include "test_util.h"

namespace extrafs::fs {
namespace {

using Bytes = std::vector<uint8_t>;

Bytes hex(const std::string& s) {
  Bytes out;
  for (size_t i = 0; i < s.size();) {
    if (s[i] == ' ') {
      ++i;
      continue;
    }
    out.push_back(static_cast<uint8_t>(std::stoul(s.substr(i, 2), nullptr, 16)));
    i += 2;
  }
  return out;
}

void put32(Bytes& b, size_t at, uint32_t v) { std::memcpy(b.data() + at, &v, 4); }
Bytes padded(Bytes b, size_t size) {
  b.resize(size, 0);
  return b;
}

uint32_t get32(const Bytes& b, size_t at) {
  uint32_t v;
  std::memcpy(&v, b.data() + at, 4);
  return v;
}

// Captured with strace from `extrafs mount` on kernel 6.18 (protocol 7.45) with Debian 12's
// libfuse 3.14: the kernel's INIT request (a 40-byte fuse_in_header, unique 2, then a 64-byte
// fuse_init_in: flags 0x73fffffb with FUSE_INIT_EXT, flags2 0x5fd with FUSE_PASSTHROUGH, bit 5)...
const Bytes kInit = padded(hex("68000000 1a000000 0200000000000000 0000000000000000 00000000 00000000 00000000 00000000"
                               "07000000 2d000000 00000200 fbffff73 fd050000"),
                           104);
// ... and libfuse's reply, as it writes it (with EXTRAFS_PASSTHROUGH=0, so not rewritten): the
// 16-byte fuse_out_header, then a 64-byte fuse_init_out (flags 0x40c0a029, max_background 24,
// max_pages 256, flags2 0 at byte 32, the max_stack_depth word 0 at byte 36, zeros after it).
const Bytes kInitReplyHeader = hex("50000000 00000000 0200000000000000");
const Bytes kInitReplyBody =
    padded(hex("07000000 1f000000 00001000 29a0c040 1800 1200 00001000 01000000 0001 0000 00000000"), 64);
constexpr size_t kInitFlags = 40 + 12, kInitFlags2 = 40 + 16;                 // in kInit
constexpr size_t kOutUnique = 8, kOutError = 4, kOutLen = 0;                  // in kInitReplyHeader
constexpr size_t kReplyFlags = 12, kReplyFlags2 = 32, kReplyStackDepth = 36;  // in kInitReplyBody

Bytes cat(const std::vector<Bytes>& parts) {
  Bytes out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// The reply as the kernel must see it when passthrough is taken: flags2 |= FUSE_PASSTHROUGH,
// max_stack_depth 1, FUSE_INIT_EXT kept in flags, every other byte libfuse's.
Bytes taken_reply() {
  Bytes body = kInitReplyBody;
  put32(body, kReplyFlags2, 1u << 5);
  put32(body, kReplyStackDepth, 1);
  return cat({kInitReplyHeader, body});
}

struct Pipe {
  Fd r, w;
  Pipe() {
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0);
    r.reset(p[0]);
    w.reset(p[1]);
  }
  size_t pending() const {
    int n = 0;
    REQUIRE(::ioctl(r.get(), FIONREAD, &n) == 0);
    return static_cast<size_t>(n);
  }
  Bytes drain() {
    Bytes out(pending());
    if (!out.empty()) REQUIRE(::read(r.get(), out.data(), out.size()) == static_cast<ssize_t>(out.size()));
    return out;
  }
};

// A shim between a pretend kernel (two pipes) and a pretend libfuse (the test).
struct Session {
  Pipe from_kernel, to_kernel;
  std::vector<bool> decisions;
  std::vector<size_t> bytes_sent_at_decision;  // what the kernel had received when it was decided
  PassthroughShim314 shim;

  explicit Session(bool allowed = true)
      : shim(allowed, [this](bool agreed) {
          decisions.push_back(agreed);
          bytes_sent_at_decision.push_back(to_kernel.pending());
        }) {}

  // The kernel sends `request`; libfuse reads it through the shim, unchanged.
  void kernel_sends(const Bytes& request) {
    REQUIRE(::write(from_kernel.w.get(), request.data(), request.size()) == static_cast<ssize_t>(request.size()));
    Bytes buf(1 << 20, 0xee);
    const ssize_t n = shim.read(from_kernel.r.get(), buf.data(), buf.size());
    REQUIRE(n == static_cast<ssize_t>(request.size()));
    buf.resize(static_cast<size_t>(n));
    REQUIRE(buf == request);
  }

  // libfuse writes `parts` as one writev; returns what reached the kernel. libfuse's buffers
  // must come back untouched.
  Bytes libfuse_writes(const std::vector<Bytes>& parts) {
    std::vector<Bytes> bufs = parts;
    std::vector<iovec> iov;
    for (auto& b : bufs) iov.push_back({b.data(), b.size()});
    const ssize_t n = shim.writev(to_kernel.w.get(), iov.data(), static_cast<int>(iov.size()));
    REQUIRE(n == static_cast<ssize_t>(cat(parts).size()));
    REQUIRE(bufs == parts);
    return to_kernel.drain();
  }
};

TEST_CASE("an INIT offering passthrough gets libfuse's reply with passthrough taken, decided before it is written",
          "[passthrough]") {
  Session s;
  s.kernel_sends(kInit);
  CHECK(s.decisions.empty());  // not before the reply
  CHECK(s.libfuse_writes({kInitReplyHeader, kInitReplyBody}) == taken_reply());
  REQUIRE(s.decisions == std::vector<bool>{true});
  CHECK(s.bytes_sent_at_decision == std::vector<size_t>{0});
  CHECK(s.shim.agreed());

  // Every later request and reply passes untouched, even one shaped like INIT's.
  Bytes lookup = kInit;
  put32(lookup, 4, 1);  // FUSE_LOOKUP
  lookup[8] = 4;        // unique 4
  s.kernel_sends(lookup);
  Bytes header = kInitReplyHeader;
  header[kOutUnique] = 4;
  CHECK(s.libfuse_writes({header, kInitReplyBody}) == cat({header, kInitReplyBody}));
  Bytes again = kInit;
  again[8] = 6;
  s.kernel_sends(again);
  header[kOutUnique] = 6;
  CHECK(s.libfuse_writes({header, kInitReplyBody}) == cat({header, kInitReplyBody}));
  CHECK(s.decisions.size() == 1);
}

TEST_CASE("without passthrough offered or allowed, INIT's reply is written as libfuse wrote it", "[passthrough]") {
  bool allowed = true;
  Bytes init = kInit;
  SECTION("the kernel does not offer it (no FUSE_PASSTHROUGH in flags2)") {
    put32(init, kInitFlags2, get32(init, kInitFlags2) & ~(1u << 5));
  }
  SECTION("flags2 is not valid (no FUSE_INIT_EXT in flags)") {
    put32(init, kInitFlags, get32(init, kInitFlags) & ~(1u << 30));
  }
  SECTION("a kernel before 7.36: a 24-byte fuse_init_in without flags2") {
    init.resize(40 + 16);
    put32(init, 0, 40 + 16);
  }
  SECTION("EXTRAFS_PASSTHROUGH=0") { allowed = false; }
  Session s(allowed);
  s.kernel_sends(init);
  REQUIRE(s.decisions == std::vector<bool>{false});
  CHECK(s.libfuse_writes({kInitReplyHeader, kInitReplyBody}) == cat({kInitReplyHeader, kInitReplyBody}));
  CHECK(s.decisions.size() == 1);
  CHECK_FALSE(s.shim.agreed());
}

TEST_CASE("a reply libfuse did not shape as expected leaves passthrough off and its bytes as libfuse wrote them",
          "[passthrough]") {
  const Bytes& h = kInitReplyHeader;
  const Bytes& b = kInitReplyBody;
  std::vector<Bytes> parts;
  std::string why;
  SECTION("one iovec holding header and body") {
    parts = {cat({h, b})};
    why = "not two iovecs";
  }
  SECTION("three iovecs") {
    parts = {h, Bytes(b.begin(), b.begin() + 32), Bytes(b.begin() + 32, b.end())};
    why = "not two iovecs";
  }
  SECTION("a short body (the 24-byte reply of protocol 7.22)") {
    Bytes h24 = h;
    put32(h24, kOutLen, 16 + 24);
    parts = {h24, Bytes(b.begin(), b.begin() + 24)};
    why = "not a whole 64-byte fuse_init_out";
  }
  SECTION("a longer header") {
    parts = {cat({h, Bytes(8, 0)}), b};
    why = "out header is not 16 bytes";
  }
  SECTION("the first reply answers another request") {
    Bytes other = h;
    other[kOutUnique] = 4;
    parts = {other, b};
    why = "answers another request";
  }
  SECTION("INIT refused (an error reply, header only)") {
    Bytes err = h;
    put32(err, kOutLen, 16);
    put32(err, kOutError, static_cast<uint32_t>(-EPROTO));
    parts = {err};
    why = "not two iovecs";
  }
  SECTION("an error with a body") {
    Bytes err = h;
    put32(err, kOutError, static_cast<uint32_t>(-EPROTO));
    parts = {err, b};
    why = "an error";
  }
  SECTION("a length field that disagrees with the reply's size") {
    Bytes bad = h;
    put32(bad, kOutLen, 16 + 64 + 8);
    parts = {bad, b};
    why = "length field";
  }
  SECTION("the writeback cache asked for") {
    Bytes wb = b;
    put32(wb, kReplyFlags, get32(wb, kReplyFlags) | (1u << 16));
    parts = {h, wb};
    why = "writeback cache";
  }
  SECTION("the max_stack_depth word already set") {
    Bytes set = b;
    put32(set, kReplyStackDepth, 2);
    parts = {h, set};
    why = "max_stack_depth";
  }
  testing::CapturedLog log;
  Session s;
  s.kernel_sends(kInit);
  CHECK(s.libfuse_writes(parts) == cat(parts));
  REQUIRE(s.decisions == std::vector<bool>{false});
  CHECK(s.bytes_sent_at_decision == std::vector<size_t>{0});
  CHECK_FALSE(s.shim.agreed());
  CHECK(log.lines_with("passthrough off").size() == 1);
  CHECK(log.lines_with(why).size() == 1);
  // The INIT reply libfuse may still write later is not rewritten either.
  CHECK(s.libfuse_writes({h, b}) == cat({h, b}));
  CHECK(s.decisions.size() == 1);
}

TEST_CASE("another request before INIT leaves passthrough off", "[passthrough]") {
  testing::CapturedLog log;
  Session s;
  Bytes lookup = kInit;
  put32(lookup, 4, 1);  // FUSE_LOOKUP
  s.kernel_sends(lookup);
  REQUIRE(s.decisions == std::vector<bool>{false});
  CHECK(log.lines_with("not INIT").size() == 1);
  s.kernel_sends(kInit);
  CHECK(s.libfuse_writes({kInitReplyHeader, kInitReplyBody}) == cat({kInitReplyHeader, kInitReplyBody}));
  CHECK(s.decisions.size() == 1);
  CHECK_FALSE(s.shim.agreed());
}

TEST_CASE("failed reads and writes keep the system's result and errno", "[passthrough]") {
  testing::CapturedLog log;
  Session s;
  char buf[256];
  errno = 0;
  CHECK(s.shim.read(s.from_kernel.r.get(), buf, sizeof buf) == -1);  // nothing sent yet
  CHECK(errno == EAGAIN);
  errno = 0;
  CHECK(s.shim.read(-1, buf, sizeof buf) == -1);
  CHECK(errno == EBADF);
  CHECK(s.decisions.empty());  // still waiting for INIT
  s.kernel_sends(kInit);
  iovec iov{buf, 8};
  errno = 0;
  CHECK(s.shim.writev(-1, &iov, 1) == -1);  // the reply decides, whatever becomes of it
  CHECK(errno == EBADF);
  CHECK(s.decisions == std::vector<bool>{false});
  errno = 0;
  CHECK(s.shim.writev(-1, &iov, 1) == -1);
  CHECK(errno == EBADF);
}

TEST_CASE("an OPEN reply handing a backing file is the kernel's fuse_open_out with FOPEN_PASSTHROUGH and the id",
          "[passthrough]") {
  const PassthroughShim314::OpenOut out = PassthroughShim314::open_reply(7);
  Bytes bytes(sizeof out);
  std::memcpy(bytes.data(), &out, sizeof out);
  CHECK(bytes == hex("0000000000000000 80000000 07000000"));
}

TEST_CASE("a backing file the device refuses is an error, not an id", "[passthrough]") {
  Pipe p;  // not a FUSE device
  auto id = PassthroughShim314::open_backing(p.r.get(), p.w.get());
  REQUIRE_FALSE(id.ok());
  CHECK(id.code() == ENOTTY);
  CHECK(id.error().message.find("FUSE_DEV_IOC_BACKING_OPEN") != std::string::npos);
  auto st = PassthroughShim314::close_backing(p.r.get(), 3);
  REQUIRE_FALSE(st.ok());
  CHECK(st.code() == ENOTTY);
}

}  // namespace
}  // namespace extrafs::fs
