// The statistics channel of a mount: how `extrafs stats`, `ls`, `prefetch` and `unmount` reach the
// daemon serving a mount, whatever the size of its store (a stats object grows with the layers; an
// extended attribute, which the kernel caps at 64 KiB, does not carry one of a few hundred).
//
// Each daemon answers HTTP/1.0 on a unix stream socket named after its mount's device number
// (MAJOR:MINOR as in /proc/self/mountinfo, unique among live mounts):
//
//   /run/extrafs/<MAJOR>:<MINOR>.sock    (a daemon not run by root: $XDG_RUNTIME_DIR/extrafs/)
//   GET /stats            the statistics object (fs::FsCore::stats()) as JSON
//   GET /stats?images=1   the same, each layer with the image names using it (mount_images.h)
//
// A client finds the socket from the mount table alone, never touching the mount, so a hung or
// dead daemon costs it at most its own timeout. The daemon's pid comes from the socket's peer
// credentials (SO_PEERCRED), which the kernel hands over at connect even while the daemon is
// stopped. Who may ask: root and the daemon's own user, or everybody on a mount with
// allow_other (who can read the mount then anyway): the socket's mode says so, and the daemon
// checks each peer's uid too.
//
// A daemon binds its socket under a temporary name before it mounts (so a mount that could not
// offer statistics is refused), and renames it to the mount's name once the mount is made,
// replacing whatever a killed daemon of a former mount with that device number left there. It
// removes its socket when it exits. A killed daemon's socket refuses connections; `extrafs
// unmount` of its mount removes it, and so does the next daemon that starts.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/posix_file.h"
#include "common/result.h"

namespace extrafs::tools {

// The one way JSON reaches a terminal or a client: ASCII only (everything else \u-escaped, so no
// control character of any kind is ever printed raw), invalid UTF-8 replaced by U+FFFD instead of
// throwing. `indent` as nlohmann's dump (-1: one line).
std::string json_text(const nlohmann::json& j, int indent = -1);

// The daemon's end. Not thread-safe; the handler runs on the server's own thread, one request
// at a time.
class StatsServer {
 public:
  // Answers one request: the body for `target` (the request's path and query), setting *status
  // (200 unless set otherwise).
  using Handler = std::function<std::string(std::string_view target, int* status)>;

  // Creates the run directory if needed (it must then be a directory of the daemon's user that
  // nobody else may write), removes the sockets of dead daemons in it, and binds and listens on
  // a socket under a temporary name: mode 0600, 0666 with `allow_other`. Every error is one
  // line naming the path.
  static Result<std::unique_ptr<StatsServer>> open(bool allow_other);
  // Names the socket after the mount with device `dev` ("MAJOR:MINOR") and starts answering.
  Status serve(const std::string& dev, Handler handler);
  // Stops answering and removes the socket (if it is still this server's).
  ~StatsServer();

 private:
  StatsServer() = default;
  void loop();
  void answer(int conn);

  bool allow_other_ = false;
  std::string dir_, temp_path_, path_;
  dev_t path_dev_ = 0;
  ino_t path_ino_ = 0;
  Fd listen_;
  Fd stop_read_, stop_write_;
  Handler handler_;
  std::thread thread_;
};

// The statistics object of the extrafs mount at `mountpoint` (with each layer's "images" if
// `with_images`). Errors, one line naming the mount point: EINVAL "is not an extrafs mount",
// ENOENT no socket (its daemon is gone or older than this extrafs), ECONNREFUSED or ECONNRESET (its
// daemon is gone), EACCES, ETIMEDOUT (no answer within 10 s), EBADMSG (an unreadable answer).
Result<nlohmann::json> read_mount_stats(const std::string& mountpoint, bool with_images = false);

// The pid of the daemon serving the extrafs mount at `mountpoint` (resolved, a mount point), or 0
// if none listens on its socket (then a leftover socket is removed when `remove_stale`). Never
// waits on the daemon: the pid comes with the connection.
pid_t mount_daemon_pid(const std::string& mountpoint, bool remove_stale);

}  // namespace extrafs::tools
