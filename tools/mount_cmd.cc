#include "tools/mount_cmd.h"

#include <malloc.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <set>

#include "backend/backend.h"
#include "backend/http_source.h"
#include "backend/nfs_backend.h"
#include "cache/block_cache.h"
#include "cache/chunk_fetcher.h"
#include "cache/whole_files.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/mountinfo.h"
#include "common/posix_file.h"
#include "common/str_util.h"
#include "format/catalog.h"
#include "fs/fs_core.h"
#include "fs/fuse_adapter.h"
#include "fs/stats_json.h"
#include "store/layout.h"
#include "store/trace.h"
#include "tools/mount_images.h"
#include "tools/mount_stats.h"

namespace extrafs::tools {

namespace {

Error usage(std::string msg) { return make_error(EINVAL, std::move(msg)); }

// How long a stats request for image names waits for the daemon's first reading of a new image/
// tree (mount_images.h): long enough for a store that answers, short for one that does not.
constexpr std::chrono::milliseconds kImageNamesWait{2000};

// Options of mount(8) and fstab that concern mount(8) itself or change nothing here: accepted and
// not passed on. "rw" is among them because mount(8) passes it unless told "ro"; the mount is
// read-only whatever it says.
const std::set<std::string> kIgnoredOpts = {
    "defaults",    "auto",       "noauto",   "user",     "nouser",     "users",   "_netdev",
    "nofail",      "ro",         "rw",       "async",    "atime",      "noatime", "relatime",
    "strictatime", "nodiratime", "diratime", "lazytime", "nolazytime", "loud",    "silent"};
// Options handed to the kernel/libfuse as they are.
const std::set<std::string> kPassedOpts = {"dev",    "nodev",      "suid",         "nosuid", "exec",
                                           "noexec", "allow_root", "auto_unmount", "sync",   "dirsync"};
const std::set<std::string> kPassedValueOpts = {"max_read", "blksize"};

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  if (::realpath(p.c_str(), buf)) return buf;
  return p;
}

std::string default_cache_dir(const std::string& source) {
  // One cache per source: the cache directory is locked by the daemon using it.
  uint64_t h = xxh3_64(source.data(), source.size());
  return fmt::format("/var/cache/extrafs/{:016x}", h);
}

// Runs in the process that will serve. `notify` reports "" once mounted, else the reason.
int serve(const MountRequest& req, const std::function<void(const std::string&)>& notify) {
  // Chunks are 1 MiB buffers allocated and freed all the time. Above glibc's mmap threshold each
  // would be a fresh mmap: page faults and kernel zeroing of every page, then munmap. Keep them in
  // the heap, and keep up to 64 MiB of freed heap (the memory LRU's size) instead of trimming it.
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 64 << 20);
  // The cache first: if it holds this source's catalog, the mount can serve it while the server
  // is unreachable, so an unreachable server is then no reason to refuse the mount.
  std::unique_ptr<cache::BlockCache> disk;
  std::unique_ptr<cache::WholeFiles> whole;
  {
    std::string dir = req.cache_dir.empty() ? default_cache_dir(req.source) : req.cache_dir;
    if (req.cache_dir.empty()) ::mkdir("/var/cache/extrafs", 0700);
    auto bc = cache::BlockCache::open(dir, req.cache_size);
    if (!bc.ok()) {
      notify(bc.error().message);
      return 1;
    }
    disk = std::move(bc).value();
    // Whole-file copies (FUSE passthrough) take at most a quarter of cache_size, counted against
    // the same bound as the chunks.
    auto wf = cache::WholeFiles::open(dir, req.cache_size / 4, [d = disk.get()](uint64_t b) { d->set_external(b); });
    if (!wf.ok()) {
      notify(wf.error().message);
      return 1;
    }
    whole = std::move(wf).value();
  }
  bool have_catalog = disk->get_meta(format::catalog_cache_name(req.source)).ok();
  const int refresh_s = req.refresh_s > 0 ? req.refresh_s : default_refresh_s(req.source);
  backend::BackendOptions bopts;
  bopts.timeout_ms = req.timeout_s * 1000;
  bopts.allow_offline = have_catalog;
  bopts.http = req.http;
  // What may change in a store: a caching proxy must ask the origin for these again once per
  // refresh interval (and not cache a 404 for the next generation longer).
  bopts.http.revalidate_paths = {format::kCatalogPath, std::string(format::kCatalogGenerationsDir) + "/"};
  bopts.http.revalidate_after_s = refresh_s;
  // Chunk objects are read whole: plainly requested, so that any proxy caches them.
  bopts.http.whole_object_paths = {std::string(store::kObjectsDir) + "/"};
  auto backend = backend::open_backend(req.source, bopts);
  if (!backend.ok()) {
    notify(backend.error().message);
    return 1;
  }
  cache::FetcherOptions fopts;
  fopts.disk = disk.get();
  cache::ChunkFetcher fetcher(**backend, fopts);
  fs::FsCoreOptions copts;
  copts.whole_files = whole.get();
  copts.refresh_interval_s = refresh_s;
  copts.probe_generations = !backend::is_http_source(req.source);
  std::unique_ptr<store::TraceWriter> trace;  // outlives the core, which calls it
  if (!req.record_dir.empty()) {
    auto w = store::TraceWriter::create(req.record_dir);
    if (!w.ok()) {
      notify(w.error().message);
      return 1;
    }
    trace = std::move(w).value();
    copts.on_first_open = [t = trace.get()](std::string_view cache_id, uint32_t entry, std::string_view path) {
      t->record(cache_id, entry, path);
    };
  }
  auto core = fs::FsCore::open(fetcher, /*meta=*/fetcher, copts);
  if (!core.ok()) {
    notify(core.error().message);
    return 1;
  }
  // The statistics channel is bound before the mount is made: a mount nobody could ask for its
  // statistics (or whose daemon `extrafs unmount` could not find) is refused.
  MountImages images(**core, disk.get(), req.mountpoint);
  auto server = StatsServer::open(req.allow_other);
  if (!server.ok()) {
    notify(server.error().message);
    return 1;
  }
  fs::FuseConfig fc;
  fc.mountpoint = req.mountpoint;
  fc.fsname = req.source;
  fc.allow_other = req.allow_other;
  fc.threads = req.threads;
  fc.extra_opts = req.fuse_opts;
  fc.after_mount = [&](const std::string& dev) {
    return (*server)->serve(dev, [&](std::string_view target, int* status) -> std::string {
      if (target != "/stats" && target != "/stats?images=1") {
        *status = 404;
        return "unknown request; ask GET /stats or GET /stats?images=1\n";
      }
      nlohmann::json j = fs::stats_json((*core)->statistics());
      if (target == "/stats?images=1") images.annotate(j, kImageNamesWait);
      return json_text(j);
    });
  };
  spdlog::info("serving {} on {} ({} layers)", req.source, req.mountpoint, (*core)->layer_count());
  return fs::run_fuse(**core, fc, notify);
}

}  // namespace

Status apply_mount_options(const std::string& list, MountRequest* req) {
  for (const std::string& opt : split_options(list)) {
    if (opt.empty()) continue;
    auto eq = opt.find('=');
    std::string key = opt.substr(0, eq);
    std::string val = eq == std::string::npos ? "" : opt.substr(eq + 1);
    bool has_val = eq != std::string::npos;
    auto need_val = [&]() -> Status {
      if (!has_val || val.empty()) return usage("mount option '" + key + "' needs a value");
      return ok_status();
    };
    if (key == "cache") {
      EXTRAFS_CHECK_STATUS(need_val());
      if (val.front() != '/') return usage("cache=" + val + ": the cache directory must be an absolute path");
      req->cache_dir = val;
    } else if (key == "cache_size") {
      EXTRAFS_CHECK_STATUS(need_val());
      auto v = parse_size(val);
      if (!v || *v < (1u << 20))
        return usage("cache_size=" + val +
                     ": expected a size of at least 1M, like 512M, 20G or 1.5G (a whole number of bytes)");
      req->cache_size = *v;
    } else if (key == "timeout" || key == "refresh") {
      EXTRAFS_CHECK_STATUS(need_val());
      auto v = parse_uint(val);
      if (!v || *v == 0 || *v > 86400) return usage(key + "=" + val + ": expected whole seconds between 1 and 86400");
      (key == "timeout" ? req->timeout_s : req->refresh_s) = static_cast<int>(*v);
    } else if (key == "threads") {
      EXTRAFS_CHECK_STATUS(need_val());
      auto v = parse_uint(val);
      if (!v || *v == 0 || *v > 1024) return usage("threads=" + val + ": expected a number between 1 and 1024");
      req->threads = static_cast<unsigned>(*v);
    } else if (key == "allow_other") {
      if (has_val) return usage("mount option 'allow_other' takes no value");
      req->allow_other = true;
    } else if (key == "record") {
      EXTRAFS_CHECK_STATUS(need_val());
      if (val.front() != '/') return usage("record=" + val + ": the trace directory must be an absolute path");
      req->record_dir = val;
    } else if (key == "log_level") {
      EXTRAFS_CHECK_STATUS(need_val());
      spdlog::level::level_enum lvl;
      if (!parse_log_level(val, &lvl))
        return usage("log_level=" + val + ": expected trace, debug, info, warn or error");
      req->log_level = val;
    } else if (key == "proxy") {
      EXTRAFS_CHECK_STATUS(need_val());
      if (auto groups = backend::parse_proxy_spec(val); !groups.ok()) return usage(groups.error().message);
      req->http.proxy = val;
    } else if (key == "cacert" || key == "s3_credentials") {
      EXTRAFS_CHECK_STATUS(need_val());
      if (val.front() != '/') return usage(key + "=" + val + ": expected an absolute path");
      (key == "cacert" ? req->http.cacert : req->http.s3_credentials) = val;
    } else if (key == "s3_endpoint") {
      EXTRAFS_CHECK_STATUS(need_val());
      req->http.s3_endpoint = val;
    } else if (key == "s3_region") {
      EXTRAFS_CHECK_STATUS(need_val());
      req->http.s3_region = val;
    } else if (key == "s3_profile") {
      EXTRAFS_CHECK_STATUS(need_val());
      req->http.s3_profile = val;
    } else if (kIgnoredOpts.count(key) || key.rfind("x-", 0) == 0 || key == "comment") {
      continue;
    } else if (kPassedOpts.count(key) && !has_val) {
      req->fuse_opts.push_back(key);
    } else if (kPassedValueOpts.count(key) && has_val) {
      // libfuse and the kernel read these as 32-bit numbers; pass on only what they read right.
      auto v = parse_uint(val);
      bool pow2 = v && (*v & (*v - 1)) == 0;
      if (!v || *v == 0 || *v > UINT32_MAX || (key == "blksize" && (!pow2 || *v < 512)))
        return usage(key == "blksize" ? "blksize=" + val + ": expected a power of two of at least 512"
                                      : key + "=" + val + ": expected a number between 1 and 4294967295");
      req->fuse_opts.push_back(key + "=" + std::to_string(*v));
    } else {
      return usage("unknown mount option '" + opt + "'");
    }
  }
  return ok_status();
}

int default_refresh_s(const std::string& source) { return backend::is_http_source(source) ? 60 : 1; }

int run_mount(MountRequest req) {
  auto fail = [](const std::string& msg, int code) {
    print_error("extrafs", msg);
    return code;
  };
  if (!backend::is_source(req.source))
    return fail(
        "source '" + req.source + "' must be an absolute directory path or an nfs://, http://, https:// or s3:// URL",
        2);
  if (req.source.rfind("nfs://", 0) == 0) {
    if (auto url = backend::parse_nfs_url(req.source); !url.ok()) return fail(url.error().message, 2);
  }
  if (backend::is_http_source(req.source)) {
    if (auto st = backend::check_http_source(req.source); !st.ok()) return fail(st.error().message, 2);
  }
  if (auto st = backend::check_http_options(req.source, req.http); !st.ok()) return fail(st.error().message, 2);
  if (req.source.front() == '/') {
    struct stat st;
    if (::stat(req.source.c_str(), &st) != 0)
      return fail(fmt::format("store {}: {}", req.source, std::strerror(errno)), 1);
    if (!S_ISDIR(st.st_mode)) return fail("store " + req.source + " is not a directory", 1);
    req.source = real_path(req.source);
  }
  struct stat st;
  if (::stat(req.mountpoint.c_str(), &st) != 0)
    return fail(fmt::format("mountpoint {}: {}", req.mountpoint, std::strerror(errno)), 1);
  if (!S_ISDIR(st.st_mode)) return fail("mountpoint " + req.mountpoint + " is not a directory", 1);
  req.mountpoint = real_path(req.mountpoint);
  const std::string busy = "mountpoint " + req.mountpoint + " is busy: ";
  if (is_mount_point(req.mountpoint, nullptr)) return fail(busy + "something is already mounted there", 1);
  // Two mounts started at once would both see an empty mount point and stack. Each takes a lock
  // on the directory it is about to cover, held by the daemon while it lives (it inherits the
  // descriptor): the second one is refused. One that opens the path after the first mount was
  // made locks the mount's root instead, and the check below (after the lock) refuses it.
  Fd mount_lock(::open(req.mountpoint.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!mount_lock.valid()) return fail(fmt::format("mountpoint {}: {}", req.mountpoint, std::strerror(errno)), 1);
  if (::flock(mount_lock.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) return fail(busy + "another extrafs mount is starting there", 1);
    // A file system without locks (ENOLCK): only the guard against a race is lost.
    spdlog::debug("mountpoint {}: flock: {}; mounting without the lock", req.mountpoint, std::strerror(errno));
  }
  if (is_mount_point(req.mountpoint, nullptr)) return fail(busy + "something is already mounted there", 1);
  if (!req.record_dir.empty()) {
    struct stat rs;
    if (::stat(req.record_dir.c_str(), &rs) != 0 || !S_ISDIR(rs.st_mode))
      return fail("record=" + req.record_dir + " is not a directory", 1);
  }
  spdlog::level::level_enum level = spdlog::level::info;
  parse_log_level(req.log_level, &level);

  if (req.foreground) {
    init_logging(level, /*to_syslog=*/false);
    std::string failure;
    int rc = serve(req, [&](const std::string& reason) { failure = reason; });
    if (!failure.empty()) return fail(failure, 1);
    return rc;
  }

  // Background: the child serves; the parent waits for "mounted" or a reason on a pipe.
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return fail(fmt::format("pipe: {}", std::strerror(errno)), 1);
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return fail(fmt::format("fork: {}", std::strerror(errno)), 1);
  if (pid == 0) {
    ::close(pipefd[0]);
    ::setsid();
    if (::chdir("/") != 0) _exit(1);
    init_logging(level, /*to_syslog=*/true);
    int wfd = pipefd[1];
    int rc = serve(req, [&](const std::string& reason) {
      std::string msg = reason.empty() ? "OK" : "ERR " + reason;
      if (::write(wfd, msg.data(), msg.size()) < 0) {
        // The parent is gone; nothing to tell.
      }
      ::close(wfd);
      wfd = -1;
      if (reason.empty()) {
        int devnull = ::open("/dev/null", O_RDWR);
        if (devnull >= 0) {
          ::dup2(devnull, 0);
          ::dup2(devnull, 1);
          ::dup2(devnull, 2);
          if (devnull > 2) ::close(devnull);
        }
      }
    });
    _exit(rc);
  }
  ::close(pipefd[1]);
  std::string msg;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(pipefd[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    msg.append(buf, static_cast<size_t>(n));
  }
  ::close(pipefd[0]);
  if (msg == "OK") return 0;
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (msg.rfind("ERR ", 0) == 0) return fail(msg.substr(4), 1);
  if (WIFSIGNALED(status)) return fail(fmt::format("the daemon died during start-up (signal {})", WTERMSIG(status)), 1);
  return fail("the daemon exited during start-up", 1);
}

namespace {

// Whether process `pid` is a live extrafs daemon: not a process that reused its pid, and not a
// zombie (an exited daemon whose parent has not reaped it, as under a container's init that
// reaps nothing).
bool is_live_extrafs_process(pid_t pid) {
  auto comm = read_file("/proc/" + std::to_string(pid) + "/comm");
  return comm.ok() && trim_trailing(*comm).rfind("extrafs", 0) == 0 && process_running(pid);
}

}  // namespace

int run_unmount(const std::string& mountpoint) {
  std::string mp = real_path(mountpoint);
  std::string fstype;
  if (!is_mount_point(mp, &fstype)) {
    print_error("extrafs", mountpoint + " is not mounted");
    return 1;
  }
  if (fstype != "fuse.extrafs") {
    print_error("extrafs", mountpoint + " is not an extrafs mount (it is " + fstype + ")");
    return 1;
  }
  // The daemon keeps its block cache (and the cache directory's lock) until it exits, a moment
  // after the unmount, once its pending cache writes are done: wait for it, so that a mount
  // started right after this command returns finds the cache free and complete. Its pid comes
  // with a connection to its statistics socket, which never waits on the daemon (it may be
  // stopped or hung); a socket nobody listens on is a killed daemon's, removed here.
  const pid_t daemon = mount_daemon_pid(mp, /*remove_stale=*/true);
  if (::umount2(mp.c_str(), 0) == 0) {
    if (daemon == 0 || daemon == ::getpid()) return 0;
    constexpr auto kDaemonExitWait = std::chrono::seconds(30);
    const auto deadline = std::chrono::steady_clock::now() + kDaemonExitWait;
    while (::kill(daemon, 0) == 0 && is_live_extrafs_process(daemon)) {
      if (std::chrono::steady_clock::now() >= deadline) {
        print_error("extrafs",
                    fmt::format("warning: {} is unmounted, but its daemon (pid {}) has not exited after {} s",
                                mountpoint, daemon, kDaemonExitWait.count()));
        return 0;
      }
      ::usleep(10 * 1000);
    }
    return 0;
  }
  if (errno == EPERM) {
    // Not root: the setuid helper may unmount a mount of this user.
    execlp("fusermount3", "fusermount3", "-u", mp.c_str(), static_cast<char*>(nullptr));
  }
  print_error("extrafs", "unmount " + mountpoint + ": " + std::strerror(errno));
  return 1;
}

}  // namespace extrafs::tools
