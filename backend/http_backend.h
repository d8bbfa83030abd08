// HttpBackend: the store over HTTP(S) or S3 through libcurl (http_backend.cc is the only file
// that includes curl, as nfs_backend.cc is for libnfs). What the SOURCE and options mean is in
// http_source.h; the behaviour, in short (details and the reasons in http_backend.cc):
//
// - Requests: a chunk run is one range GET, a whole small object (read_all, read_object) one
//   plain GET, stat one HEAD. list() is not possible over HTTP and fails with ENOTSUP: nothing on
//   the read side of a published or indexed store needs it.
// - Connections: one libcurl multi handle driven by one thread owned by the backend, shared by
//   every caller: connections kept alive and reused, HTTP/2 (multiplexed) when an https server
//   offers it, DNS answers and TLS sessions shared (curl's share interface). At most 8 transfers
//   are in flight at once, as the NFS backend has at most 8 connections.
// - Failover: mirrors are tried in the order given; a mirror that fails (no connection, a 5xx, a
//   broken answer) is avoided for 60 s, then tried again; a read in flight when its mirror fails
//   continues where it stopped on the next one. Proxies: the group's proxy for an object is
//   chosen by a stable hash of the object's path (proxy_slot), the next proxy of the group takes
//   over when it fails, the next group when the whole group failed; a failed proxy is avoided
//   for 60 s too. 429 and 503 answers' Retry-After is honoured.
// - Bounds: every call is bounded by `timeout_ms` (retries, waits and failovers included), then
//   fails with ETIMEDOUT naming the last problem; ENOENT (404 from every mirror), EACCES (401,
//   403) and broken answers from every mirror fail at once.
// - Strict answers: a 206 must carry the Content-Range asked for and exactly that many bytes; a
//   200 to a range request is taken only when it is the whole object and fits the buffer (else
//   the transfer is aborted at its first bytes and "server ignores Range" logged once per
//   mirror); short and over-long bodies, 416, redirects from https to http or more than 3 of
//   them fail the attempt. TLS is always verified (the system's CA store or cacert=FILE).
// - Nothing secret (S3 keys, session token) is ever put in a URL, a message or a log line.
//
// Thread-safety: every method may be called from any thread concurrently.
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"
#include "backend/http_source.h"
#include "common/result.h"

namespace extrafs::backend {

// Builds the backend for an http://, https:// or s3:// SOURCE (one or several mirrors). Reads the
// S3 credentials now; touches no network (the first read does), so that a daemon with a cached
// catalog starts while the store is unreachable, as an NFS mount started with allow_offline.
// EINVAL etc. with one line for a bad source, option or credentials file.
Result<std::unique_ptr<Backend>> make_http_backend(const std::string& source, const HttpOptions& options,
                                                   int timeout_ms);

}  // namespace extrafs::backend
