// NfsBackend: reads the store from an NFS server through libnfs (no kernel NFS client needed).
//
// SOURCE syntax (extrafs-mount(8); docs/DESIGN.md section 2):
//   nfs://HOST[:PORT]/EXPORT[/SUBDIR][?version=3|4&nfsport=N&mountport=N]
// - HOST: an IPv4 address, a host name, or a bracketed IPv6 address ("[::1]").
// - PORT (or nfsport=N, which must agree with PORT when both are given): the NFS port. Without it
//   NFSv4 uses 2049 and NFSv3 asks the portmapper (rpcbind) of HOST.
// - mountport=N: the MOUNT protocol port (NFSv3 only); without it NFSv3 asks the portmapper.
// - version: the default is 4, because NFSv4 needs only one TCP port and no rpcbind/mountd, and
//   it is what a stock NFS server (ganesha, knfsd) always offers. version=3 selects NFSv3
//   (libnfs' own default), which is somewhat faster on loopback; both are fully supported.
// - /EXPORT/SUBDIR is mounted as one path (NFSv4 walks it in the pseudo file system; an NFSv3
//   server is asked to MOUNT the whole path, and if it refuses, successively shorter prefixes are
//   tried and the rest becomes a directory prefix). Paths given to read/stat/list are relative to
//   it (the store root), e.g. "extrafs/catalog". ".." components are refused (EINVAL).
//
// Behaviour (see nfs_backend.cc for the details and the libnfs 4.0.0 facts behind them):
// - thread-safe: a pool of up to 8 libnfs contexts (libnfs is not thread-safe), each used by one
//   thread at a time and created lazily, so concurrent callers have concurrent READs in flight;
// - only regular files are opened: a file's type is taken from its attributes (one GETATTR)
//   before its OPEN, so a FIFO or device on the server is refused (EINVAL), never opened or read;
// - open file handles are cached per context (bounded LRU), so a read costs one READ RPC;
//   READs are at most 1 MiB each and a large request is pipelined over several READs;
// - every call is bounded by `timeout_ms` (retries with backoff included), after which it fails
//   with ETIMEDOUT naming the last underlying error; ENOENT/ENOTDIR/EACCES fail at once;
//   a context that saw a transport error is torn down and transparently reconnected on next use.
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"
#include "common/result.h"

namespace extrafs::backend {

// A parsed nfs:// SOURCE.
struct NfsUrl {
  std::string host;   // without brackets for IPv6
  std::string path;   // "/EXPORT[/SUBDIR]", normalized: no trailing or doubled '/'
  int version = 4;    // 3 or 4
  int nfsport = 0;    // 0 = default (2049 for v4, portmapper for v3)
  int mountport = 0;  // 0 = portmapper (v3 only)
};

// Validates and parses an nfs:// URL without touching the network. EINVAL with a one-line message
// naming what is wrong ("nfs URL has no host", "bad port '99999' in nfs URL", ...).
Result<NfsUrl> parse_nfs_url(const std::string& url);

// Parses and connects an nfs:// SOURCE; one-line error (EINVAL for a bad URL naming what is wrong,
// e.g. "nfs URL has no host", "unknown nfs URL option 'foo'", "bad port"; ECONNREFUSED/EHOSTUNREACH/
// ETIMEDOUT etc. for an unreachable server) on failure.
// With `allow_offline`, a server that cannot be reached (a transport error, not a bad export)
// still yields a backend, which connects on first use.
Result<std::unique_ptr<Backend>> make_nfs_backend(const std::string& url, int timeout_ms, bool allow_offline = false);

}  // namespace extrafs::backend
