// The only includer of fuse_lowlevel.h. Reply discipline: every op replies exactly once, never
// while holding a lock (FsCore releases its locks before returning), and no exception crosses
// into libfuse (FsCore does not throw; allocation failure aborts, as everywhere).
#include "fs/fuse_adapter.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <vector>

#include "common/mountinfo.h"
#include "common/posix_file.h"
#include "common/thread_annotations.h"
#include "fs/inode_table.h"

// libfuse >= 3.17 has an API for FUSE passthrough; for an older one the adapter uses its own shim.
#define EXTRAFS_LIBFUSE_PASSTHROUGH (FUSE_VERSION >= FUSE_MAKE_VERSION(3, 17))
#if !EXTRAFS_LIBFUSE_PASSTHROUGH
#include "fs/passthrough_shim_314.h"
#endif

namespace extrafs::fs {

namespace {

// The kernel's readahead for the mount, asked for in INIT. One chunk: a sequential reader then gets
// one READ per chunk.
constexpr unsigned kMaxReadahead = 1u << 20;
constexpr unsigned kMaxBackground = 24;  // see op_init

// Open files by node id, as OPEN and RELEASE come: the kernel has one I/O mode per inode (all of
// its open files read through the page cache, or all through the one backing file) and refuses
// an open in the other mode with EIO; so a node keeps the mode of its first open until its last
// release. Any worker thread. The lock is held across the backing file's registration (so that a
// second open cannot pass a first one still registering) but never across a reply.
class NodeModes {
 public:
  // Joins the node's mode or, on its first open, registers `backing` (if valid) through
  // `open_backing(fd)`, which returns a backing id or -1. Returns the backing id to answer with,
  // or -1 for an open of the usual kind.
  template <typename OpenBacking>
  int join(uint64_t ino, const Fd& backing, OpenBacking&& open_backing) EXCLUDES(mu_) {
    MutexLock lock(&mu_);
    Node& n = nodes_[ino];
    if (n.opens++ > 0) return n.backing_id;
    n.backing_id = backing.valid() ? open_backing(backing.get()) : -1;
    return n.backing_id;
  }
  // One open of `ino` ended; after its last, `close_backing(id)` if its first registered one.
  template <typename CloseBacking>
  void leave(uint64_t ino, CloseBacking&& close_backing) EXCLUDES(mu_) {
    MutexLock lock(&mu_);
    auto it = nodes_.find(ino);
    if (it == nodes_.end() || --it->second.opens > 0) return;
    if (it->second.backing_id >= 0) close_backing(it->second.backing_id);
    nodes_.erase(it);
  }

 private:
  struct Node {
    unsigned opens = 0;
    int backing_id = -1;  // -1: opened the usual way
  };
  Mutex mu_;
  std::unordered_map<uint64_t, Node> nodes_ GUARDED_BY(mu_);
};

// What the session's userdata points to: the core and what INIT agreed. Owned by run_fuse for
// the life of the session; read by every op, from any worker thread.
struct Mount {
  Mount(FsCore& c, bool pt_allowed) : core(c), passthrough_allowed(pt_allowed) {}

  FsCore& core;
  const bool passthrough_allowed;  // EXTRAFS_PASSTHROUGH is not 0
  // Set while INIT is answered, before the first request after it. no_open: the kernel takes
  // ENOSYS from OPEN as "open without asking" (op_open); no_opendir: the same for OPENDIR.
  std::atomic<bool> no_open{false};
  std::atomic<bool> no_opendir{false};
  std::atomic<bool> passthrough{false};  // the kernel agreed to FUSE passthrough (op_open)
  NodeModes modes;                       // only used with passthrough
#if EXTRAFS_LIBFUSE_PASSTHROUGH
  // Backing ids whose last open ended in a failed reply, to close with the next request.
  Mutex orphans_mu;
  std::vector<int> orphan_ids GUARDED_BY(orphans_mu);
  std::atomic<bool> has_orphans{false};
#else
  int dev_fd = -1;  // the session's descriptor, for the shim's ioctls
  std::unique_ptr<PassthroughShim314> shim;
#endif

  // Called once, when the kernel's INIT is answered: the adapter and the core learn together.
  void set_passthrough(bool on) {
    passthrough.store(on, std::memory_order_relaxed);
    core.set_passthrough(on);
  }
};

Mount& mount_of(fuse_req_t req) { return *static_cast<Mount*>(fuse_req_userdata(req)); }
FsCore& core_of(fuse_req_t req) { return mount_of(req).core; }

fuse_entry_param to_entry(const NodeAttr& a) {
  fuse_entry_param e;
  std::memset(&e, 0, sizeof e);
  e.ino = a.st.st_ino;
  e.generation = 1;
  e.attr = a.st;
  e.attr_timeout = a.attr_timeout;
  e.entry_timeout = a.entry_timeout;
  return e;
}

// EXTRAFS_PASSTHROUGH=0 in the daemon's environment turns it off (extrafs-mount(8)).
bool passthrough_allowed() {
  const char* v = std::getenv("EXTRAFS_PASSTHROUGH");
  return !(v && std::string_view(v) == "0");
}

// Asks for capability `cap` if the kernel offers it. libfuse >= 3.17 keeps the capabilities in
// 64 bits behind fuse_set_feature_flag and refuses INIT if `want` is changed beside them.
bool want(fuse_conn_info* conn, uint64_t cap) {
#if EXTRAFS_LIBFUSE_PASSTHROUGH
  return fuse_set_feature_flag(conn, cap);
#else
  if (!(conn->capable & cap)) return false;
  conn->want |= static_cast<unsigned>(cap);
  return true;
#endif
}

void unwant(fuse_conn_info* conn, uint64_t cap) {
#if EXTRAFS_LIBFUSE_PASSTHROUGH
  fuse_unset_feature_flag(conn, cap);
#else
  conn->want &= ~static_cast<unsigned>(cap);
#endif
}

// FUSE passthrough (kernel >= 6.9): OPEN may answer with a local file that the kernel then reads
// by itself, as it reads any file of that file system (its page cache, its readahead), without a
// READ reaching the daemon. libfuse >= 3.17 has an API for it; with an older one (Debian 12 has
// 3.14) the shim of fs/passthrough_shim_314.h takes it in INIT, registers the backing files and
// shapes the OPEN reply.
#if EXTRAFS_LIBFUSE_PASSTHROUGH
int open_backing(Mount&, fuse_req_t req, int fd) {
  const int id = fuse_passthrough_open(req, fd);  // libfuse logs a refusal
  return id > 0 ? id : -1;
}
// fuse_passthrough_close needs a request: without one (after a failed reply) the id waits for
// the next OPEN or RELEASE.
void close_backing(Mount& m, fuse_req_t req, int id) {
  if (req) {
    fuse_passthrough_close(req, id);  // libfuse logs a failure
    return;
  }
  MutexLock lock(&m.orphans_mu);
  m.orphan_ids.push_back(id);
  m.has_orphans.store(true, std::memory_order_release);
}
void close_orphans(Mount& m, fuse_req_t req) {
  if (!m.has_orphans.load(std::memory_order_acquire)) return;
  std::vector<int> ids;
  {
    MutexLock lock(&m.orphans_mu);
    ids.swap(m.orphan_ids);
    m.has_orphans.store(false, std::memory_order_relaxed);
  }
  for (int id : ids) fuse_passthrough_close(req, id);
}
int reply_backing_open(fuse_req_t req, fuse_file_info* fi, int id) {
  fi->backing_id = id;
  fi->keep_cache = 0;  // the kernel reads the backing file's pages, not the mount's
  return fuse_reply_open(req, fi);
}
#else
int open_backing(Mount& m, fuse_req_t, int fd) {
  auto id = PassthroughShim314::open_backing(m.dev_fd, fd);
  if (id.ok()) return *id;
  spdlog::debug("passthrough refused: {}", id.error().message);
  return -1;
}
void close_backing(Mount& m, fuse_req_t, int id) {
  if (auto st = PassthroughShim314::close_backing(m.dev_fd, id); !st.ok()) spdlog::debug("{}", st.error().message);
}
void close_orphans(Mount&, fuse_req_t) {}  // the shim closes without a request
int reply_backing_open(fuse_req_t req, fuse_file_info*, int id) {
  const PassthroughShim314::OpenOut out = PassthroughShim314::open_reply(id);
  return fuse_reply_buf(req, reinterpret_cast<const char*>(&out), sizeof out);
}
// The session's custom I/O: its userdata is the session's, the Mount.
ssize_t shim_read(int fd, void* buf, size_t len, void* userdata) {
  return static_cast<Mount*>(userdata)->shim->read(fd, buf, len);
}
ssize_t shim_writev(int fd, struct iovec* iov, int count, void* userdata) {
  return static_cast<Mount*>(userdata)->shim->writev(fd, iov, count);
}
#endif

// One open of `ino` ended. `req` is null after a failed reply (which frees the request).
void release_node(Mount& m, fuse_req_t req, fuse_ino_t ino) {
  m.modes.leave(ino, [&](int id) { close_backing(m, req, id); });
}

void op_init(void* userdata, fuse_conn_info* conn) {
  Mount& m = *static_cast<Mount*>(userdata);
  // Content is immutable: let the kernel cache everything it can.
  want(conn, FUSE_CAP_CACHE_SYMLINKS);
  want(conn, FUSE_CAP_READDIRPLUS);
  // Always readdirplus: attributes cost nothing here (they are in the index), and one READDIRPLUS
  // saves a LOOKUP round trip per entry for `ls -l`, `find` and overlayfs alike.
  unwant(conn, FUSE_CAP_READDIRPLUS_AUTO);
  want(conn, FUSE_CAP_PARALLEL_DIROPS);
  want(conn, FUSE_CAP_ASYNC_READ);
  unwant(conn, FUSE_CAP_AUTO_INVAL_DATA);  // nothing ever changes under a node id
  unwant(conn, FUSE_CAP_WRITEBACK_CACHE);  // and the kernel does not combine it with passthrough
  conn->max_readahead = kMaxReadahead;
  // Readahead READs are the kernel's background requests, of which only max_background may be
  // outstanding (12 by default); a reader past that waits for a slot while holding the page locks
  // of its readahead range, and freed slots go to whoever asks, not in order, so under load one
  // reader could starve (RELIABILITY.md). 24 ended that in the load test (longest wait 15-19 s
  // instead of 49-60 s under ThreadSanitizer) and still lets readers fail after `timeout` in a
  // server outage; 64 did not (readers then waited the outage out behind queued readahead).
  conn->max_background = kMaxBackground;
  m.no_open.store(want(conn, FUSE_CAP_NO_OPEN_SUPPORT), std::memory_order_relaxed);
  m.no_opendir.store(want(conn, FUSE_CAP_NO_OPENDIR_SUPPORT), std::memory_order_relaxed);
#if EXTRAFS_LIBFUSE_PASSTHROUGH
  // The backing files sit on a plain file system (stacking depth 0), so the mount is one level
  // deep and overlayfs may still stack on it.
  conn->max_backing_stack_depth = 0;
  m.set_passthrough(m.passthrough_allowed && want(conn, FUSE_CAP_PASSTHROUGH));
#endif
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  FsCore& core = core_of(req);
  auto a = core.lookup(parent, name);
  if (!a.ok()) {
    if (a.code() == ENOENT) {
      // Negative entry: the kernel caches "no such name" for the timeout.
      fuse_entry_param e;
      std::memset(&e, 0, sizeof e);
      e.entry_timeout = core.negative_timeout(parent);
      fuse_reply_entry(req, &e);
      return;
    }
    fuse_reply_err(req, a.code());
    return;
  }
  core.inodes().ref(a->st.st_ino);
  auto e = to_entry(*a);
  if (fuse_reply_entry(req, &e) != 0) core.forget(a->st.st_ino, 1);
}

void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  core_of(req).forget(ino, nlookup);
  fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  FsCore& core = core_of(req);
  for (size_t i = 0; i < count; ++i) core.forget(forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  auto a = core_of(req).getattr(ino);
  if (!a.ok()) {
    fuse_reply_err(req, a.code());
    return;
  }
  fuse_reply_attr(req, &a->st, a->attr_timeout);
}

void op_readlink(fuse_req_t req, fuse_ino_t ino) {
  auto t = core_of(req).readlink(ino);
  if (!t.ok()) {
    fuse_reply_err(req, t.code());
    return;
  }
  fuse_reply_readlink(req, t->c_str());
}

void op_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  FsCore& core = core_of(req);
  core.count_opendir_request();
  // ENOSYS (with FUSE_CAP_NO_OPENDIR_SUPPORT agreed) tells the kernel to open every directory of
  // this mount from now on without asking, as if answered keep_cache and cache_readdir: a walk
  // of a tree it has listed before then sends nothing at all (it sent an OPENDIR per directory,
  // round trips that made a warm `find` 1.4-1.8x ext4). The directories whose listings can
  // change (the top ones, when the store gains layers) are invalidated in the kernel by the
  // catalog refresh instead (run_fuse).
  if (mount_of(req).no_opendir.load(std::memory_order_relaxed)) {
    fuse_reply_err(req, ENOSYS);
    return;
  }
  auto a = core.getattr(ino);
  if (!a.ok()) {
    fuse_reply_err(req, a.code());
    return;
  }
  if (!S_ISDIR(a->st.st_mode)) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  // Listings of layer directories never change; the top-level ones can (new layers).
  bool immutable = ino_slot(ino) != 0;
  fi->cache_readdir = immutable;
  fi->keep_cache = immutable;
  fuse_reply_open(req, fi);
}

void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus) {
  FsCore& core = core_of(req);
  std::vector<char> buf(size);
  size_t used = 0;
  auto st = core.readdir(ino, static_cast<uint64_t>(off), [&](const DirItem& item, const NodeAttr& a) {
    std::string name(item.name);
    size_t n;
    if (plus) {
      auto e = to_entry(a);
      if (!a.known) e.ino = 0;  // a name and a type only: the kernel makes no node of it
      n = fuse_add_direntry_plus(req, buf.data() + used, size - used, name.c_str(), &e,
                                 static_cast<off_t>(item.next_offset));
    } else {
      struct stat st {};
      st.st_ino = item.ino;
      st.st_mode = item.mode;
      n = fuse_add_direntry(req, buf.data() + used, size - used, name.c_str(), &st,
                            static_cast<off_t>(item.next_offset));
    }
    if (n > size - used) return false;
    // An item without attributes creates no kernel node, so no reference either.
    if (plus && a.known) core.inodes().ref(item.ino);
    used += n;
    return true;
  });
  if (!st.ok()) {
    fuse_reply_err(req, st.code());
    return;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  do_readdir(req, ino, size, off, false);
}

void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  do_readdir(req, ino, size, off, true);
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Mount& m = mount_of(req);
  FsCore& core = m.core;
  core.count_open_request();
  // Without a first-open recorder there is nothing to do at open: the mount is read-only (the
  // kernel refuses write opens), the kernel opens only regular files through OPEN, and content
  // never changes. ENOSYS (with FUSE_CAP_NO_OPEN_SUPPORT agreed in INIT) tells the kernel to open
  // every file of this mount from now on without an OPEN or a RELEASE round trip, keeping the page
  // cache across opens as keep_cache does: two fewer requests per file a container opens.
  // With passthrough opens are answered instead: one of a file with a whole-file copy hands the
  // copy to the kernel.
  const bool pt = m.passthrough.load(std::memory_order_relaxed);
  if (m.no_open.load(std::memory_order_relaxed) && !core.wants_opens() && !pt) {
    fuse_reply_err(req, ENOSYS);
    return;
  }
  if (pt) close_orphans(m, req);
  auto backing = core.open(ino, fi->flags);
  if (!backing.ok()) {
    fuse_reply_err(req, backing.code());
    return;
  }
  if (pt) {
    const int id = m.modes.join(ino, *backing, [&](int fd) { return open_backing(m, req, fd); });
    if (id >= 0) {
      if (reply_backing_open(req, fi, id) == 0)
        core.count_passthrough_open();
      else
        release_node(m, nullptr, ino);  // interrupted: no RELEASE will come
      return;
    }
  }
  fi->keep_cache = 1;  // content is immutable: keep the page cache across opens
  if (fuse_reply_open(req, fi) != 0 && pt) release_node(m, nullptr, ino);
}

void op_release(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  Mount& m = mount_of(req);
  if (m.passthrough.load(std::memory_order_relaxed)) {
    close_orphans(m, req);
    release_node(m, req, ino);
  }
  fuse_reply_err(req, 0);
}

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  // The reply is written to the kernel straight from the chunks (one writev): no copy in between.
  thread_local std::vector<FsCore::ReadPiece> pieces;
  thread_local std::vector<iovec> iov;
  auto n = core_of(req).read_pieces(ino, static_cast<uint64_t>(off), size, pieces);
  if (!n.ok()) {
    fuse_reply_err(req, n.code());
    return;
  }
  iov.clear();
  for (const auto& p : pieces) iov.push_back({const_cast<std::byte*>(p.bytes.data()), p.bytes.size()});
  if (iov.empty())
    fuse_reply_buf(req, nullptr, 0);  // end of file
  else
    fuse_reply_iov(req, iov.data(), static_cast<int>(iov.size()));
  pieces.clear();  // let go of the chunks
}

void op_statfs(fuse_req_t req, fuse_ino_t) {
  struct statvfs sv = core_of(req).statfs();
  fuse_reply_statfs(req, &sv);
}

void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  auto v = core_of(req).getxattr(ino, name);
  if (!v.ok()) {
    fuse_reply_err(req, v.code());
    return;
  }
  if (size == 0)
    fuse_reply_xattr(req, v->size());
  else if (size < v->size())
    fuse_reply_err(req, ERANGE);
  else
    fuse_reply_buf(req, v->data(), v->size());
}

void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  auto names = core_of(req).listxattr(ino);
  if (!names.ok()) {
    fuse_reply_err(req, names.code());
    return;
  }
  std::string out;
  for (const auto& n : *names) {
    out += n;
    out += '\0';
  }
  if (size == 0)
    fuse_reply_xattr(req, out.size());
  else if (size < out.size())
    fuse_reply_err(req, ERANGE);
  else
    fuse_reply_buf(req, out.data(), out.size());
}

void op_access(fuse_req_t req, fuse_ino_t ino, int mask) {
  auto a = core_of(req).getattr(ino);
  if (!a.ok())
    fuse_reply_err(req, a.code());
  else
    fuse_reply_err(req, (mask & W_OK) ? EROFS : 0);
}

// Every call that would change something.
void erofs(fuse_req_t req) { fuse_reply_err(req, EROFS); }
void op_setattr(fuse_req_t req, fuse_ino_t, struct stat*, int, fuse_file_info*) { erofs(req); }
void op_mknod(fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) { erofs(req); }
void op_mkdir(fuse_req_t req, fuse_ino_t, const char*, mode_t) { erofs(req); }
void op_unlink(fuse_req_t req, fuse_ino_t, const char*) { erofs(req); }
void op_symlink(fuse_req_t req, const char*, fuse_ino_t, const char*) { erofs(req); }
void op_rename(fuse_req_t req, fuse_ino_t, const char*, fuse_ino_t, const char*, unsigned) { erofs(req); }
void op_link(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) { erofs(req); }
void op_write(fuse_req_t req, fuse_ino_t, const char*, size_t, off_t, fuse_file_info*) { erofs(req); }
void op_create(fuse_req_t req, fuse_ino_t, const char*, mode_t, fuse_file_info*) { erofs(req); }
void op_setxattr(fuse_req_t req, fuse_ino_t, const char*, const char*, size_t, int) { erofs(req); }
void op_removexattr(fuse_req_t req, fuse_ino_t, const char*) { erofs(req); }
void op_fallocate(fuse_req_t req, fuse_ino_t, int, off_t, off_t, fuse_file_info*) { erofs(req); }

fuse_lowlevel_ops make_ops() {
  fuse_lowlevel_ops ops;
  std::memset(&ops, 0, sizeof ops);
  ops.init = op_init;
  ops.lookup = op_lookup;
  ops.forget = op_forget;
  ops.forget_multi = op_forget_multi;
  ops.getattr = op_getattr;
  ops.readlink = op_readlink;
  ops.opendir = op_opendir;
  ops.readdir = op_readdir;
  ops.readdirplus = op_readdirplus;
  ops.open = op_open;
  ops.release = op_release;
  ops.read = op_read;
  ops.statfs = op_statfs;
  ops.getxattr = op_getxattr;
  ops.listxattr = op_listxattr;
  ops.access = op_access;
  ops.setattr = op_setattr;
  ops.mknod = op_mknod;
  ops.mkdir = op_mkdir;
  ops.unlink = op_unlink;
  ops.rmdir = op_unlink;
  ops.symlink = op_symlink;
  ops.rename = op_rename;
  ops.link = op_link;
  ops.write = op_write;
  ops.create = op_create;
  ops.setxattr = op_setxattr;
  ops.removexattr = op_removexattr;
  ops.fallocate = op_fallocate;
  return ops;
}

// The kernel bounds a FUSE mount's readahead by its bdi's read_ahead_kb as well as by
// max_readahead, and that starts at 128 KiB: a sequential reader of the page cache then sends
// READs of 128-256 KiB, several per chunk, each a round trip through the daemon. Raised to
// kMaxReadahead right after the mount, before INIT is answered (the kernel then keeps the lower
// of the two). Needs root; without it the mount just keeps the kernel's default.
void raise_readahead(const std::string& mountpoint, const std::string& dev) {
  if (dev.empty()) {
    spdlog::debug("readahead of {} left as it is: not in /proc/self/mountinfo", mountpoint);
    return;
  }
  const std::string path = "/sys/class/bdi/" + dev + "/read_ahead_kb";
  const std::string kb = std::to_string(kMaxReadahead >> 10);
  Fd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  int err = fd.valid() ? write_all(fd.get(), kb.data(), kb.size()) : errno;
  if (err == 0) err = fd.close_checked();
  if (err != 0)
    spdlog::debug("readahead of {} left as it is: cannot write {}: {}", mountpoint, path,
                  std::generic_category().message(err));
}

std::string escape_opt(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == ',' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

int run_fuse(FsCore& core, const FuseConfig& config, const std::function<void(const std::string&)>& on_mounted) {
  std::string opts = "ro,default_permissions,subtype=extrafs,fsname=" + escape_opt(config.fsname);
  if (config.allow_other) opts += ",allow_other";
  for (const auto& o : config.extra_opts) opts += "," + o;
  std::vector<std::string> argv_s = {"extrafs", "-o", opts};
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());

  static const fuse_lowlevel_ops ops = make_ops();
  Mount mount(core, passthrough_allowed());
  fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, &mount);
  if (!se) {
    on_mounted("cannot start a FUSE session with options '" + opts + "'");
    return 1;
  }
  if (fuse_set_signal_handlers(se) != 0) {
    fuse_session_destroy(se);
    on_mounted("cannot install signal handlers");
    return 1;
  }
  if (fuse_session_mount(se, config.mountpoint.c_str()) != 0) {
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    on_mounted("cannot mount on " + config.mountpoint + " (is /dev/fuse available and are you root?)");
    return 1;
  }
  std::string dev;
  for (const auto& m : read_mounts())
    if (m.point == config.mountpoint && m.fstype == "fuse.extrafs") dev = m.dev;  // the last: the mount just made
  raise_readahead(config.mountpoint, dev);
  if (config.after_mount) {
    if (auto st = config.after_mount(dev); !st.ok()) {
      fuse_session_unmount(se);
      fuse_remove_signal_handlers(se);
      fuse_session_destroy(se);
      on_mounted(st.error().message);
      return 1;
    }
  }
#if !EXTRAFS_LIBFUSE_PASSTHROUGH
  // The shim reads and writes the session's descriptor for libfuse (libfuse copies `io`).
  mount.dev_fd = fuse_session_fd(se);
  mount.shim =
      std::make_unique<PassthroughShim314>(mount.passthrough_allowed, [&mount](bool on) { mount.set_passthrough(on); });
  fuse_custom_io io;
  std::memset(&io, 0, sizeof io);
  io.read = shim_read;
  io.writev = shim_writev;
  if (fuse_session_custom_io(se, &io, mount.dev_fd) != 0) {
    spdlog::debug("no custom I/O: passthrough off");
    mount.set_passthrough(false);
  }
#endif
  // A newer catalog may list other layers: the kernel drops its cached listings (and attributes)
  // of the directories that list them. ENOENT (a directory the kernel never saw) is fine.
  core.set_on_listing_change([se](std::span<const uint64_t> inos) {
    for (uint64_t ino : inos) fuse_lowlevel_notify_inval_inode(se, ino, 0, 0);
  });
  on_mounted("");
  fuse_loop_config* cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(cfg, 1);
  if (config.threads) {
    fuse_loop_cfg_set_max_threads(cfg, config.threads);
    fuse_loop_cfg_set_idle_threads(cfg, config.threads);
  }
  int rc = fuse_session_loop_mt(se, cfg);
  fuse_loop_cfg_destroy(cfg);
  // An unmount ends the loop with 0; SIGINT/SIGTERM/SIGHUP with the signal's number (libfuse's
  // signal handler stores it as the session error): both are clean stops.
  bool clean = rc >= 0;
  // Nothing is served any more: a refresh waiting on the store (which holds the lock that
  // set_on_listing_change takes) ends at once instead of after its timeouts.
  core.stop();
  core.set_on_listing_change({});  // the session goes away; the refresh thread may still run
  fuse_session_unmount(se);
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  spdlog::info("unmounted {}", config.mountpoint);
  if (!clean) spdlog::error("FUSE session ended with error {}", rc);
  return clean ? 0 : 1;
}

}  // namespace extrafs::fs
