// NfsBackend: the store over NFS through libnfs 4.0 (the only file that includes libnfs).
//
// Facts about libnfs 4.0.0 (Debian 12) this code is built on, checked against its source and by
// experiment against nfs-ganesha 4.3:
// - No thread support: an nfs_context may be used by one thread at a time. We keep a pool of up to
//   kMaxContexts contexts, created lazily, each leased to one caller at a time.
// - We use only the async API driven by our own poll() loop, bounded by the call's deadline. The
//   sync API runs its own loop, and with auto-reconnect (on by default: -1 = forever) a sync call
//   against a dead server may keep reconnecting. nfs_set_timeout() exists in 4.0.0 (whole seconds
//   only, per the header) but we do not need it: our loop enforces the deadline. Auto-reconnect is switched off;
//   a context that sees a transport error or a timeout is destroyed (nfs_destroy_context cancels
//   every pending RPC, calling its callback with an error while our state is still alive) and a
//   fresh one is connected on next use. After a server restart the next call thus succeeds alone.
// - nfs_set_nfsport/nfs_set_mountport do not exist in 4.0.0; the only way to set the ports is the
//   URL parser (nfs_parse_url_*: "nfsport=", "mountport=", "version=" options, parsed with atoi and
//   unknown options silently ignored). So we validate the user's URL ourselves, then feed libnfs a
//   synthesized URL holding only the port options. libnfs does not understand "host:port" either.
// - An NFSv4 READ above about 1 MiB returns 0 bytes and breaks the connection, and libnfs does not
//   split v4 reads (nfs_get_readmax() is 0 for v4). So every READ is capped at 1 MiB (or the v3
//   rtmax when smaller) and big requests are pipelined: several READs in flight on one context.
// - nfs_init_context() names the NFSv4 client "Libnfs pid:P T" (T in seconds) with a verifier from
//   the time and pid, so contexts created in the same second would look like one client to the
//   server, whose SETCLIENTID from one context could disturb the open state of another. Each
//   context therefore gets a unique name + verifier (NFSv4 only).
// - Callbacks on failure: RPC errors arrive as -EFAULT, cancels/timeouts as -EINTR; NFS status
//   errors are mapped to errno (-ENOENT, -EACCES, -ESTALE, ...). Data passed to a callback (stat
//   results, READ payload) is only valid during the callback.
// - When the server closes the socket, nfs_service() returns -1 without an errno; when a connect
//   is refused it reports POLLERR and we read SO_ERROR ourselves to give a proper errno.
// - NFSv4 open-owner seqids: libnfs keeps one seqid per context and bumps it by the compound
//   status; against ganesha an OPEN after a failed OPEN gets the replayed error, and an OPEN after
//   a CLOSE fails with NFS4ERR_BAD_SEQID. See forget_handle() for how we avoid both.
// - Small leaks inside libnfs: nfs4_set_client_name() does not free the previous name, and a
//   mount cancelled mid-connect (nfs_destroy_context on a hung server) leaks its connect data
//   (~200 bytes). Both are per connect, not per read.
// - nfs-ganesha caches attributes and lookups (MDCACHE, Attr_Expiration_Time, 60 s by default), so
//   a file replaced behind its back can be served stale; tests/nfs/ganesha.sh sets it to 0. We
//   reopen a cached handle after any stat() of its path, which is how read_all() sees a
//   rewritten catalog.
// - NFSv4 attributes carry no rdev and readdir no inode; neither matters here (metadata comes from
//   the index). The dircache is disabled so new directory entries (new layers) show up at once.
#include "backend/nfs_backend.h"

#include <fcntl.h>
#include <nfsc/libnfs.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>  // must precede libnfs.h
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "backend/url.h"
#include "common/lru.h"
#include "common/posix_file.h"
#include "common/str_util.h"
#include "common/thread_annotations.h"

namespace extrafs::backend {
namespace {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

constexpr uint64_t kMaxReadRpc = 1u << 20;  // see the v4 fact above
constexpr int kMaxContexts = 8;             // pool size (contexts are created on demand)
constexpr size_t kMaxCachedHandles = 256;   // open file handles kept per context
constexpr size_t kReadWindow = 8;           // READs in flight per call
constexpr int kPollSliceMs = 100;           // poll() granularity (libnfs timeout scan)
constexpr int kFirstBackoffMs = 10;
constexpr int kMaxBackoffMs = 500;
constexpr int kStatGenerations = 256;

int ms_left(Deadline deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() <= 0 ? 0 : static_cast<int>(std::min<int64_t>(left.count(), INT32_MAX));
}

// Errors that no retry can fix: returned at once.
bool is_permanent(int code) {
  switch (code) {
    case ENOENT:
    case ENOTDIR:
    case EISDIR:
    case EACCES:
    case EPERM:
    case ENAMETOOLONG:
    case ELOOP:
    case EINVAL:
      return true;
    default:
      return false;
  }
}

// Maps a libnfs callback status (negative errno) to a positive errno that means something to a user.
int cb_errno(int err) {
  int code = -err;
  if (code <= 0 || code > 4095 || code == EFAULT || code == EINTR) return EIO;
  return code;
}

std::string cb_message(int err, void* data) {
  if (data != nullptr) {
    const char* s = static_cast<const char*>(data);
    if (*s != '\0') return s;
  }
  return std::strerror(cb_errno(err));
}

// libnfs' error string for the last failure of `nfs` (never null).
std::string last_error(struct nfs_context* nfs) {
  const char* msg = nfs != nullptr ? nfs_get_error(nfs) : nullptr;
  return msg != nullptr && *msg != '\0' ? msg : "unknown libnfs error";
}

Error bad_url(std::string msg) { return Error{EINVAL, std::move(msg)}; }

// ---- async plumbing -------------------------------------------------------------------------

struct CbState {
  bool done = false;
  int err = 0;
  std::string message;
};

void status_cb(int err, struct nfs_context* /*nfs*/, void* data, void* private_data) {
  auto* st = static_cast<CbState*>(private_data);
  st->done = true;
  st->err = err;
  if (err < 0) st->message = cb_message(err, data);
}

struct OpenState : CbState {
  struct nfsfh* fh = nullptr;
};

void open_cb(int err, struct nfs_context* nfs, void* data, void* private_data) {
  auto* st = static_cast<OpenState*>(private_data);
  status_cb(err, nfs, data, private_data);
  if (err >= 0) st->fh = static_cast<struct nfsfh*>(data);
}

struct StatState : CbState {
  struct nfs_stat_64 st {};
};

void stat_cb(int err, struct nfs_context* nfs, void* data, void* private_data) {
  auto* st = static_cast<StatState*>(private_data);
  status_cb(err, nfs, data, private_data);
  if (err >= 0 && data != nullptr) st->st = *static_cast<struct nfs_stat_64*>(data);
}

struct DirState : CbState {
  struct nfsdir* dir = nullptr;
};

void opendir_cb(int err, struct nfs_context* nfs, void* data, void* private_data) {
  auto* st = static_cast<DirState*>(private_data);
  status_cb(err, nfs, data, private_data);
  if (err >= 0) st->dir = static_cast<struct nfsdir*>(data);
}

void ignore_cb(int, struct nfs_context*, void*, void*) {}

// One READ of a pipelined read() call.
struct ReadCall;
struct Piece {
  ReadCall* call = nullptr;
  std::byte* dst = nullptr;
  uint64_t offset = 0;
  size_t len = 0;
  size_t got = 0;
  int err = 0;
  std::string message;
  bool inflight = false;
  bool eof = false;
  bool finished() const { return err != 0 || eof || got == len; }
};

struct ReadCall {
  size_t inflight = 0;
  uint64_t completions = 0;
};

void pread_cb(int err, struct nfs_context* /*nfs*/, void* data, void* private_data) {
  auto* p = static_cast<Piece*>(private_data);
  p->inflight = false;
  p->call->inflight--;
  p->call->completions++;
  if (err < 0) {
    p->err = err;
    p->message = cb_message(err, data);
  } else if (err == 0) {
    p->eof = true;
  } else {
    size_t n = std::min<size_t>(static_cast<size_t>(err), p->len - p->got);
    if (data != nullptr) std::memcpy(p->dst + p->got, data, n);
    p->got += n;
  }
}

// A pooled libnfs context with its cache of open file handles.
struct Conn {
  struct nfs_context* nfs = nullptr;
  uint64_t read_cap = kMaxReadRpc;
  bool broken = false;                 // saw a transport error/timeout: tear down before reuse
  bool reset_after = false;            // NFSv4 open-owner state is doubtful: reconnect after this call
  std::vector<struct nfsfh*> retired;  // NFSv4 handles replaced but not closed (freed at teardown)
  int sock_errno = 0;                  // errno of the last socket failure, if known
  std::string sock_error;              // libnfs' words for it
  struct Handle {
    struct nfsfh* fh = nullptr;
    uint32_t gen = 0;
  };
  Lru<std::string, Handle> handles;                // open handles by full path
  const std::atomic<bool>* interrupted = nullptr;  // the backend's: set, the loop gives up
};

enum class Loop { kDone, kTimeout, kBroken, kInterrupted };

// Drives the context until done() or the deadline; never blocks past the deadline.
template <typename Done>
Loop run_loop(Conn& c, Done done, Deadline deadline) {
  while (!done()) {
    if (c.interrupted != nullptr && c.interrupted->load()) return Loop::kInterrupted;
    int left = ms_left(deadline);
    if (left <= 0) return Loop::kTimeout;
    struct pollfd pfd {};
    pfd.fd = nfs_get_fd(c.nfs);
    pfd.events = static_cast<short>(nfs_which_events(c.nfs));
    int n = ::poll(&pfd, 1, std::min(left, kPollSliceMs));
    if (n < 0) {
      if (errno == EINTR) continue;
      c.sock_errno = errno;
      c.sock_error = std::string("poll: ") + std::strerror(errno);
      return Loop::kBroken;
    }
    int revents = n > 0 ? pfd.revents : 0;
    if (revents & POLLNVAL) revents = POLLERR;
    if ((revents & (POLLERR | POLLHUP)) && pfd.fd >= 0) {
      int e = 0;
      socklen_t len = sizeof e;
      if (::getsockopt(pfd.fd, SOL_SOCKET, SO_ERROR, &e, &len) == 0 && e != 0) c.sock_errno = e;
    }
    if (nfs_service(c.nfs, revents) < 0) {
      if (c.sock_errno == 0) c.sock_errno = ECONNRESET;
      c.sock_error = last_error(c.nfs);
      return Loop::kBroken;
    }
  }
  return Loop::kDone;
}

// Errors that mean the server could not be reached (as opposed to a bad export or path).
bool is_transport_error(int code) {
  return code == ECONNREFUSED || code == ECONNRESET || code == ETIMEDOUT || code == EHOSTUNREACH ||
         code == ENETUNREACH || code == EPIPE;
}

class NfsBackend final : public Backend {
 public:
  NfsBackend(std::string url, NfsUrl parsed, int timeout_ms)
      : url_(std::move(url)), u_(std::move(parsed)), timeout_ms_(std::max(timeout_ms, 1)) {
    mount_path_ = u_.path;
    client_salt_ =
        static_cast<uint64_t>(Clock::now().time_since_epoch().count()) ^ (static_cast<uint64_t>(::getpid()) << 40);
    try {
      std::random_device rd;
      client_salt_ ^= (static_cast<uint64_t>(rd()) << 32) ^ rd();
    } catch (...) {
      // no entropy source: the clock and pid above are unique enough
    }
    for (auto& g : stat_gen_) g.store(0, std::memory_order_relaxed);
  }

  ~NfsBackend() override {
    // Close handles politely (NFSv4 CLOSE frees server state), one at a time and bounded.
    Deadline deadline = Clock::now() + std::chrono::milliseconds(500);
    for (auto& c : conns_) {
      if (c->nfs == nullptr) continue;
      while (!c->broken && c->nfs != nullptr && !c->handles.empty()) {
        drop_handle(*c, std::string(c->handles.oldest().first), deadline);
      }
      teardown(*c);
    }
  }

  // Connects one context now, so that a bad server/export is reported by make_nfs_backend.
  Status connect_first() {
    Deadline deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
    EXTRAFS_TRY(c, acquire(deadline, ""));
    Status s = connect(*c, deadline, /*probe_prefixes=*/true);
    if (s.ok()) {
      // The store root must be a directory (NFSv4 happily "mounts" a file).
      Result<ObjectInfo> root = stat_on(*c, prefix_.empty() ? "/" : prefix_, deadline);
      if (!root.ok()) {
        s = root.error();
      } else if (!root->is_dir) {
        s = Error{ENOTDIR, "cannot mount " + u_.path + " from " + server_name() + ": not a directory"};
      }
      if (!s.ok()) teardown(*c);
    }
    release(c);
    return s;
  }

  Result<size_t> read(std::string_view path, uint64_t offset, std::span<std::byte> buf) override {
    EXTRAFS_TRY(full, full_path(path));
    return with_retries<size_t>("read", path, full,
                                [&](Conn& c, Deadline d) { return read_on(c, full, offset, buf, d); });
  }

  Result<ObjectInfo> stat(std::string_view path) override {
    EXTRAFS_TRY(full, full_path(path));
    // A stat is how upper layers notice a replaced object (e.g. the catalog rewritten by rename):
    // handles cached before it are reopened on their next use.
    stat_gen_[gen_slot(full)].fetch_add(1, std::memory_order_acq_rel);
    return with_retries<ObjectInfo>("stat", path, full, [&](Conn& c, Deadline d) { return stat_on(c, full, d); });
  }

  Result<std::vector<std::string>> list(std::string_view path) override {
    EXTRAFS_TRY(full, full_path(path));
    return with_retries<std::vector<std::string>>("list", path, full,
                                                  [&](Conn& c, Deadline d) { return list_on(c, full, d); });
  }

  std::string describe() const override { return url_; }

  void interrupt() override {
    {
      MutexLock lk(&mu_);
      interrupted_.store(true);
    }
    cv_.notify_all();
    pause_cv_.notify_all();
  }

 private:
  Result<std::string> full_path(std::string_view path) const {
    std::vector<std::string_view> parts;
    if (!split_path(path, &parts)) {
      return Error{EINVAL, "path '" + std::string(path) + "' contains '..'"};
    }
    std::string full = prefix_;
    for (auto p : parts) {
      full += '/';
      full += p;
    }
    if (full.empty()) full = "/";
    return full;
  }

  size_t gen_slot(const std::string& full) const { return std::hash<std::string>{}(full) % kStatGenerations; }

  // ---- pool ----

  Result<Conn*> acquire(Deadline deadline, const std::string& key) {
    MutexLock lk(&mu_);
    for (;;) {
      if (!idle_.empty()) {
        // Prefer a context that has the file open, then any connected one.
        size_t best = 0;
        int best_score = -1;
        for (size_t i = 0; i < idle_.size(); ++i) {
          Conn* c = idle_[i];
          int score = c->nfs == nullptr ? 0 : 1;
          if (score == 1 && !key.empty() && c->handles.contains(key)) score = 2;
          if (score > best_score) {
            best_score = score;
            best = i;
          }
        }
        Conn* c = idle_[best];
        idle_.erase(idle_.begin() + static_cast<ptrdiff_t>(best));
        return c;
      }
      if (conns_.size() < static_cast<size_t>(kMaxContexts)) {
        conns_.push_back(std::make_unique<Conn>());
        conns_.back()->interrupted = &interrupted_;
        return conns_.back().get();
      }
      if (interrupted_.load()) return Error{ECANCELED, "cancelled: shutting down"};
      if (!cv_.wait_until(&mu_, deadline) && idle_.empty()) {
        return Error{ETIMEDOUT,
                     "all " + std::to_string(kMaxContexts) + " NFS connections stayed busy until the deadline"};
      }
    }
  }

  void release(Conn* c) {
    {
      MutexLock lk(&mu_);
      idle_.push_back(c);
    }
    cv_.notify_one();
  }

  void close_all_handles(Conn& c) {
    for (auto& [path, h] : c.handles) c.retired.push_back(h.fh);
    for (struct nfsfh* fh : c.retired) {
      if (nfs_close_async(c.nfs, fh, ignore_cb, nullptr) != 0) {
        spdlog::debug("nfs: close not queued: {}", last_error(c.nfs));
      }
    }
    c.retired.clear();
    c.handles.clear();
  }

  // Destroys the context. Pending RPCs are cancelled (their callbacks run now, with an error).
  void teardown(Conn& c) {
    if (c.nfs != nullptr) {
      // Queued closes are freed by the cancel (v4) or immediately (v3).
      close_all_handles(c);
      nfs_destroy_context(c.nfs);
      c.nfs = nullptr;
    }
    c.handles.clear();
    c.retired.clear();
    c.broken = false;
    c.reset_after = false;
    c.sock_errno = 0;
    c.sock_error.clear();
  }

  // Describes a transport failure of `c` in one line and returns its errno.
  Error transport_error(Conn& c, Loop loop, const std::string& what) {
    c.broken = true;
    if (loop == Loop::kTimeout) {
      return Error{ETIMEDOUT, what + ": no answer from " + server_name() + " before the deadline"};
    }
    if (loop == Loop::kInterrupted) return Error{ECANCELED, what + ": cancelled: shutting down"};
    int code = c.sock_errno != 0 ? c.sock_errno : ECONNRESET;
    std::string msg = what + ": " + server_name() + ": " + std::strerror(code);
    if (c.sock_errno == 0 || code == ECONNRESET) msg += " (connection lost)";
    return Error{code, msg};
  }

  std::string server_name() const {
    std::string h = u_.host.find(':') != std::string::npos ? "[" + u_.host + "]" : u_.host;
    if (u_.nfsport != 0) return h + ":" + std::to_string(u_.nfsport);
    return h;
  }

  void set_v4_identity(Conn& c) {
    uint64_t n = next_client_id_.fetch_add(1) + 1;
    std::string name = "extrafs-" + std::to_string(::getpid()) + "-" + std::to_string(client_salt_ & 0xffffffffu) +
                       "-" + std::to_string(n);
    nfs4_set_client_name(c.nfs, name.c_str());
    uint64_t v =
        client_salt_ ^ (n * 0x9E3779B97F4A7C15ull) ^ static_cast<uint64_t>(Clock::now().time_since_epoch().count());
    char verifier[8];
    std::memcpy(verifier, &v, sizeof verifier);
    nfs4_set_verifier(c.nfs, verifier);
  }

  Status mount_once(Conn& c, const std::string& path, Deadline deadline) {
    c.nfs = nfs_init_context();
    if (c.nfs == nullptr) return Error{ENOMEM, "cannot create an NFS context"};
    c.broken = false;
    c.sock_errno = 0;
    c.sock_error.clear();
    // Ports can only be set through the URL parser in libnfs 4.0.0 (see top of file).
    if (u_.nfsport != 0 || u_.mountport != 0) {
      std::string opts = "nfs://h/p?";
      if (u_.nfsport != 0) opts += "nfsport=" + std::to_string(u_.nfsport) + "&";
      if (u_.mountport != 0) opts += "mountport=" + std::to_string(u_.mountport) + "&";
      opts.pop_back();
      struct nfs_url* parsed = nfs_parse_url_dir(c.nfs, opts.c_str());
      if (parsed == nullptr) {
        std::string msg = last_error(c.nfs);
        teardown(c);
        return Error{EINVAL, "libnfs rejected the port options: " + msg};
      }
      nfs_destroy_url(parsed);
    }
    if (nfs_set_version(c.nfs, u_.version) != 0) {
      teardown(c);
      return Error{EINVAL, "libnfs does not support NFS version " + std::to_string(u_.version)};
    }
    // Unique NFSv4 identity per context (see top of file). nfs4_set_client_name leaks the previous
    // name (a few bytes per NFSv4 connect), which is acceptable.
    if (u_.version == 4) set_v4_identity(c);
    nfs_set_autoreconnect(c.nfs, 0);
    nfs_set_dircache(c.nfs, 0);

    CbState st;
    std::string what = "cannot mount " + path + " from " + server_name() + " (NFSv" + std::to_string(u_.version) + ")";
    if (nfs_mount_async(c.nfs, u_.host.c_str(), path.c_str(), status_cb, &st) != 0) {
      // Queuing fails before any I/O: in practice the host name does not resolve.
      std::string msg = last_error(c.nfs);
      teardown(c);
      return Error{EHOSTUNREACH, what + ": " + msg};
    }
    Loop loop = run_loop(
        c, [&] { return st.done; }, deadline);
    if (loop != Loop::kDone || st.err < 0) {
      Error e = loop != Loop::kDone ? transport_error(c, loop, what)
                : c.sock_errno != 0 ? Error{c.sock_errno, what + ": " + std::strerror(c.sock_errno)}
                                    : Error{cb_errno(st.err), what + ": " + st.message};
      teardown(c);  // cancels the pending mount while `st` is alive
      return e;
    }
    uint64_t readmax = nfs_get_readmax(c.nfs);
    c.read_cap = readmax > 0 ? std::min<uint64_t>(readmax, kMaxReadRpc) : kMaxReadRpc;
    return ok_status();
  }

  // Connects `c`. On the first connect of an NFSv3 backend whose full path the server refuses to
  // MOUNT, shorter prefixes are tried and the rest becomes prefix_ (EXPORT vs SUBDIR).
  Status connect(Conn& c, Deadline deadline, bool probe_prefixes) {
    Status s = mount_once(c, mount_path_, deadline);
    if (s.ok() || !probe_prefixes || u_.version != 3 || is_transport(s.code())) return s;
    std::vector<std::string_view> parts;
    split_path(u_.path, &parts);
    for (size_t keep = parts.size(); keep-- > 1;) {
      std::string mount;
      std::string rest;
      for (size_t i = 0; i < parts.size(); ++i) (i < keep ? mount : rest) += "/" + std::string(parts[i]);
      Status t = mount_once(c, mount, deadline);
      if (t.ok()) {
        // Check the subdirectory exists before adopting the split.
        StatState st;
        if (nfs_stat64_async(c.nfs, rest.c_str(), stat_cb, &st) != 0) {
          teardown(c);
          return s;
        }
        Loop loop = run_loop(
            c, [&] { return st.done; }, deadline);
        if (loop != Loop::kDone) {
          Error e = transport_error(c, loop, "stat " + rest);
          teardown(c);
          return e;
        }
        if (st.err < 0 || !S_ISDIR(static_cast<mode_t>(st.st.nfs_mode))) {
          teardown(c);
          int code = st.err < 0 ? cb_errno(st.err) : ENOTDIR;
          return Error{code, "cannot mount " + u_.path + " from " + server_name() + ": " + rest +
                                 (st.err < 0 ? ": " + st.message : " is not a directory") + " (in export " + mount +
                                 ")"};
        }
        spdlog::debug("nfs: {}: mounted {} with subdirectory {}", url_, mount, rest);
        mount_path_ = mount;
        prefix_ = rest;
        return ok_status();
      }
      if (is_transport(t.code())) return t;
    }
    return s;
  }

  static bool is_transport(int code) { return is_transport_error(code); }

  template <typename T, typename Fn>
  Result<T> with_retries(const char* op, std::string_view path, const std::string& key, Fn fn) {
    auto start = Clock::now();
    Deadline deadline = start + std::chrono::milliseconds(timeout_ms_);
    int backoff_ms = kFirstBackoffMs;
    int stale_retries = 0;
    Error last{ETIMEDOUT, "no attempt finished"};
    for (int attempt = 0;; ++attempt) {
      if (interrupted_.load())
        return Error{ECANCELED, "nfs " + std::string(op) + " of '" + std::string(path) + "' cancelled: shutting down"};
      auto lease = acquire(deadline, key);
      if (!lease.ok()) {
        last = lease.error();
        break;
      }
      Conn* c = *lease;
      Result<T> r = Error{EIO, ""};
      if (c->nfs == nullptr) {
        Status s = connect(*c, deadline, false);
        if (!s.ok()) r = s.error();
      }
      if (c->nfs != nullptr) r = fn(*c, deadline);
      if (c->broken) {
        spdlog::debug("nfs: {}: dropping connection: {}", url_, r.ok() ? "" : r.error().message);
        teardown(*c);
      } else if (c->reset_after) {
        teardown(*c);  // fresh NFSv4 client and open-owner on next use
      }
      release(c);
      if (r.ok()) {
        if (attempt > 0) spdlog::info("nfs: {}: {} of '{}' succeeded after {} retries", url_, op, path, attempt);
        return r;
      }
      last = r.error();
      if (is_permanent(last.code) || last.code == ECANCELED) return last;
      if (last.code == ESTALE && stale_retries++ < 3) continue;  // handle was dropped: reopen
      int left = ms_left(deadline);
      if (left <= 2) break;
      spdlog::debug("nfs: {}: {} of '{}' failed ({}), retrying", url_, op, path, last.message);
      {
        MutexLock lk(&mu_);
        const auto until = Clock::now() + std::chrono::milliseconds(std::min(backoff_ms, left - 1));
        while (!interrupted_.load() && pause_cv_.wait_until(&mu_, until)) {
        }
      }
      backoff_ms = std::min(backoff_ms * 2, kMaxBackoffMs);
    }
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
    std::string msg = "nfs " + std::string(op) + " of '" + std::string(path) + "' from " + url_ + " failed for " +
                      std::to_string(ms) + " ms: " + last.message;
    spdlog::warn("{}", msg);
    return Error{ETIMEDOUT, msg};
  }

  // ---- operations on one leased, connected context ----

  Result<struct nfsfh*> get_handle(Conn& c, const std::string& full, Deadline deadline) {
    uint32_t gen = stat_gen_[gen_slot(full)].load(std::memory_order_acquire);
    if (Conn::Handle* h = c.handles.find(full)) {
      if (h->gen == gen) return c.handles.touch(full)->fh;
      forget_handle(c, full, deadline);
      if (c.nfs == nullptr || c.broken) return Error{EIO, "cannot close " + full + " on " + server_name()};
    }
    // The type from the attributes first: an export may hold a FIFO or a device where a store
    // object should be, and an OPEN or READ of one could block (here or in the server) or act on
    // the device. One GETATTR per handle opened, not per read.
    EXTRAFS_TRY(info, stat_on(c, full, deadline));
    if (info.is_dir) return not_a_regular_file(full, S_IFDIR);
    if (info.special) return not_a_regular_file(full, info.special);
    OpenState st;
    if (nfs_open_async(c.nfs, full.c_str(), O_RDONLY, open_cb, &st) != 0) {
      c.broken = true;
      return Error{EIO, "cannot open " + full + ": " + last_error(c.nfs)};
    }
    Loop loop = run_loop(
        c, [&] { return st.done; }, deadline);
    if (loop != Loop::kDone) {
      Error e = transport_error(c, loop, "open " + full);
      teardown(c);  // cancels the open while `st` is alive
      return e;
    }
    if (st.err < 0) {
      int code = cb_errno(st.err);
      if (!is_permanent(code) && code != ESTALE) c.broken = true;
      if (u_.version == 4) c.reset_after = true;  // see forget_handle
      return Error{code, "cannot open " + full + ": " + st.message};
    }
    c.handles.insert(full, Conn::Handle{st.fh, gen});
    struct nfsfh* fh = st.fh;
    if (c.handles.size() > kMaxCachedHandles && u_.version == 4) {
      c.reset_after = true;  // drop them all at once after this call (see forget_handle)
    }
    while (c.handles.size() > kMaxCachedHandles && u_.version != 4 && c.nfs != nullptr && !c.broken) {
      drop_handle(c, std::string(c.handles.oldest().first), deadline);
    }
    if (c.nfs == nullptr) return Error{ETIMEDOUT, "close on " + server_name() + " timed out"};
    return fh;
  }

  // Forgets a cached handle that must not be used any more (replaced file, ESTALE).
  // NFSv4 in libnfs 4.0.0 keeps one open-owner seqid per context and bumps it by the compound's
  // status, which does not always match what ganesha does: observed here, an OPEN that fails
  // (NFS4ERR_NOENT) makes the next OPEN get the replayed NOENT, and an OPEN after a CLOSE fails
  // with NFS4ERR_BAD_SEQID. So on NFSv4 we never CLOSE-then-OPEN on a live context and never
  // OPEN after a failed OPEN: the handle is retired and the context reset after the call (a fresh
  // SETCLIENTID, about 1 ms on loopback). NFSv3 has no open state: the handle is just freed.
  void forget_handle(Conn& c, const std::string& full, Deadline deadline) {
    if (u_.version != 4) {
      drop_handle(c, full, deadline);
      return;
    }
    if (auto h = c.handles.take(full)) c.retired.push_back(h->fh);
    c.reset_after = true;
  }

  // Closes and forgets a cached handle. NFSv3: freed at once. NFSv4: waits for the CLOSE, because
  // libnfs 4.0 pipelines OPEN/CLOSE of one open-owner, and an OPEN sent while a CLOSE is in flight
  // can reach ganesha first and fail with NFS4ERR_BAD_SEQID. A CLOSE that does not finish by the
  // deadline marks the context broken (teardown frees the handle).
  void drop_handle(Conn& c, const std::string& full, Deadline deadline) {
    auto h = c.handles.take(full);
    if (!h) return;
    struct nfsfh* fh = h->fh;
    CbState st;
    if (nfs_close_async(c.nfs, fh, status_cb, &st) != 0) {
      c.broken = true;
      return;
    }
    if (run_loop(
            c, [&] { return st.done; }, deadline) != Loop::kDone) {
      c.broken = true;
      teardown(c);  // cancels the CLOSE while `st` is alive
    }
  }

  Result<size_t> read_on(Conn& c, const std::string& full, uint64_t offset, std::span<std::byte> buf,
                         Deadline deadline) {
    EXTRAFS_TRY(fh, get_handle(c, full, deadline));
    if (buf.empty()) return size_t{0};

    ReadCall call;
    std::vector<Piece> pieces((buf.size() + c.read_cap - 1) / c.read_cap);
    for (size_t i = 0; i < pieces.size(); ++i) {
      Piece& p = pieces[i];
      p.call = &call;
      p.dst = buf.data() + i * c.read_cap;
      p.offset = offset + i * c.read_cap;
      p.len = std::min<size_t>(c.read_cap, buf.size() - i * c.read_cap);
    }
    bool failed = false;
    for (;;) {
      // Submit unfinished pieces (new ones, or the rest of a short READ) up to the window, in
      // order; nothing past a piece that hit end of file.
      if (!failed) {
        for (auto& p : pieces) {
          if (call.inflight >= kReadWindow) break;
          if (p.eof) break;
          if (p.finished() || p.inflight) continue;
          p.inflight = true;
          call.inflight++;
          if (nfs_pread_async(c.nfs, fh, p.offset + p.got, p.len - p.got, pread_cb, &p) != 0) {
            p.inflight = false;
            call.inflight--;
            p.err = -EIO;
            p.message = std::string("READ not queued: ") + last_error(c.nfs);
            c.broken = true;
            failed = true;
            break;
          }
        }
      }
      if (call.inflight == 0) break;
      uint64_t seen = call.completions;
      Loop loop = run_loop(
          c, [&] { return call.completions != seen; }, deadline);
      if (loop != Loop::kDone) {
        Error e = transport_error(c, loop, "read " + full);
        teardown(c);  // cancels the READs in flight while `pieces` is alive
        return e;
      }
      for (auto& p : pieces) failed = failed || p.err != 0;
    }

    size_t total = 0;
    for (auto& p : pieces) {
      if (p.err != 0) {
        int code = cb_errno(p.err);
        if (code == ESTALE) {
          if (c.handles.contains(full)) forget_handle(c, full, deadline);
        } else if (!is_permanent(code)) {
          c.broken = true;
        }
        return Error{code, "read of " + full + " at " + std::to_string(p.offset + p.got) + " failed: " + p.message};
      }
      total += p.got;
      if (p.got < p.len) break;  // end of file
    }
    return total;
  }

  Result<ObjectInfo> stat_on(Conn& c, const std::string& full, Deadline deadline) {
    StatState st;
    if (nfs_stat64_async(c.nfs, full.c_str(), stat_cb, &st) != 0) {
      c.broken = true;
      return Error{EIO, "cannot stat " + full + ": " + last_error(c.nfs)};
    }
    Loop loop = run_loop(
        c, [&] { return st.done; }, deadline);
    if (loop != Loop::kDone) {
      Error e = transport_error(c, loop, "stat " + full);
      teardown(c);
      return e;
    }
    if (st.err < 0) {
      int code = cb_errno(st.err);
      if (!is_permanent(code) && code != ESTALE) c.broken = true;
      return Error{code, "cannot stat " + full + ": " + st.message};
    }
    ObjectInfo info;
    const auto mode = static_cast<mode_t>(st.st.nfs_mode);
    info.size = st.st.nfs_size;
    info.is_dir = S_ISDIR(mode);
    if (!S_ISDIR(mode) && !S_ISREG(mode)) info.special = mode & S_IFMT;
    info.mtime_ns = static_cast<int64_t>(st.st.nfs_mtime) * 1000000000 + static_cast<int64_t>(st.st.nfs_mtime_nsec);
    info.file_id = st.st.nfs_ino;
    info.ctime_ns = static_cast<int64_t>(st.st.nfs_ctime) * 1000000000 + static_cast<int64_t>(st.st.nfs_ctime_nsec);
    return info;
  }

  Result<std::vector<std::string>> list_on(Conn& c, const std::string& full, Deadline deadline) {
    DirState st;
    if (nfs_opendir_async(c.nfs, full.c_str(), opendir_cb, &st) != 0) {
      c.broken = true;
      return Error{EIO, "cannot list " + full + ": " + last_error(c.nfs)};
    }
    Loop loop = run_loop(
        c, [&] { return st.done; }, deadline);
    if (loop != Loop::kDone) {
      Error e = transport_error(c, loop, "list " + full);
      teardown(c);
      return e;
    }
    if (st.err < 0) {
      int code = cb_errno(st.err);
      if (!is_permanent(code) && code != ESTALE) c.broken = true;
      return Error{code, "cannot list " + full + ": " + st.message};
    }
    std::vector<std::string> names;
    while (struct nfsdirent* e = nfs_readdir(c.nfs, st.dir)) {  // local: never blocks
      std::string_view name = e->name;
      if (name == "." || name == "..") continue;
      names.emplace_back(name);
    }
    nfs_closedir(c.nfs, st.dir);
    return names;
  }

  const std::string url_;
  const NfsUrl u_;
  const int timeout_ms_;
  // Fixed by connect_first() before the backend is shared.
  std::string mount_path_;
  std::string prefix_;
  uint64_t client_salt_ = 0;
  std::atomic<uint64_t> next_client_id_{0};
  std::array<std::atomic<uint32_t>, kStatGenerations> stat_gen_;

  Mutex mu_;
  CondVar cv_;                                                // a context was released
  CondVar pause_cv_;                                          // interrupt() ends back-offs (with mu_)
  std::vector<std::unique_ptr<Conn>> conns_ GUARDED_BY(mu_);  // grows only
  std::vector<Conn*> idle_ GUARDED_BY(mu_);
  std::atomic<bool> interrupted_{false};  // interrupt(): every call fails at once
};

}  // namespace

Result<NfsUrl> parse_nfs_url(const std::string& url) {
  constexpr std::string_view kScheme = "nfs://";
  if (url.compare(0, kScheme.size(), kScheme) != 0) {
    size_t p = url.find("://");
    if (p != std::string::npos && p > 0) {
      return bad_url("unsupported URL scheme '" + url.substr(0, p) + "' (expected nfs://)");
    }
    return bad_url("'" + url + "' is not an nfs:// URL");
  }
  std::string_view rest = std::string_view(url).substr(kScheme.size());
  if (rest.find('#') != std::string_view::npos) return bad_url("nfs URL must not contain '#'");
  std::string_view query;
  if (size_t q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  EXTRAFS_TRY(auth, parse_url_authority(authority, "nfs URL"));
  NfsUrl out;
  out.host = std::move(auth.host);
  const bool has_port = auth.port != 0;
  const int port = auth.port;

  std::vector<std::string_view> parts;
  if (!split_path(path, &parts)) return bad_url("nfs URL path must not contain '..'");
  if (parts.empty()) return bad_url("nfs URL has no export path (nfs://HOST/EXPORT)");
  for (auto p : parts) {
    out.path += '/';
    out.path += p;
  }

  bool seen_version = false, seen_nfsport = false, seen_mountport = false;
  size_t i = 0;
  while (i <= query.size() && !query.empty()) {
    size_t amp = query.find('&', i);
    if (amp == std::string_view::npos) amp = query.size();
    std::string_view opt = query.substr(i, amp - i);
    i = amp + 1;
    if (opt.empty()) continue;
    size_t eq = opt.find('=');
    std::string key(opt.substr(0, eq));
    if (key != "version" && key != "nfsport" && key != "mountport") {
      return bad_url("unknown nfs URL option '" + key + "' (known: version, nfsport, mountport)");
    }
    if (eq == std::string_view::npos || eq + 1 == opt.size()) {
      return bad_url("nfs URL option '" + key + "' has no value");
    }
    std::string_view val = opt.substr(eq + 1);
    bool* seen = key == "version" ? &seen_version : key == "nfsport" ? &seen_nfsport : &seen_mountport;
    if (*seen) return bad_url("nfs URL option '" + key + "' is given twice");
    *seen = true;
    if (key == "version") {
      if (val == "3") {
        out.version = 3;
      } else if (val == "4") {
        out.version = 4;
      } else {
        return bad_url("unsupported NFS version '" + std::string(val) + "' in nfs URL (use 3 or 4)");
      }
    } else {
      int* dst = key == "nfsport" ? &out.nfsport : &out.mountport;
      if (!parse_port(val, dst)) {
        return bad_url("bad " + key + " '" + std::string(val) + "' in nfs URL (expected 1-65535)");
      }
    }
  }
  if (has_port) {
    if (out.nfsport != 0 && out.nfsport != port) {
      return bad_url("nfs URL port " + std::to_string(port) + " and nfsport=" + std::to_string(out.nfsport) +
                     " disagree");
    }
    out.nfsport = port;
  }
  return out;
}

Result<std::unique_ptr<Backend>> make_nfs_backend(const std::string& url, int timeout_ms, bool allow_offline) {
  EXTRAFS_TRY(parsed, parse_nfs_url(url));
  if (timeout_ms <= 0) return Error{EINVAL, "nfs timeout must be positive"};
  auto backend = std::make_unique<NfsBackend>(url, std::move(parsed), timeout_ms);
  Status s = backend->connect_first();
  if (!s.ok()) {
    // Server unreachable: an offline backend still serves whatever the caller has cached, and
    // connects on first use once the server is back (mounting the whole URL path).
    if (!allow_offline || !is_transport_error(s.code())) return s.error();
    spdlog::warn("nfs: {} is unreachable ({}); starting offline", url, s.error().message);
    return std::unique_ptr<Backend>(std::move(backend));
  }
  spdlog::debug("nfs: connected to {}", url);
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace extrafs::backend
