// HttpBackend: the store over HTTP(S) and S3 through libcurl 7.88 (the only file that includes
// curl).
//
// Facts about libcurl 7.88 (Debian 12) this code is built on:
// - An easy handle, a multi handle and a share handle may each be used by one thread at a time.
//   Here one thread (CurlLoop) owns the multi handle, the share handle and every easy handle:
//   it sets them up, drives them and frees them; callers only hand it a Request and wait. So no
//   curl lock callbacks are needed, and a caller whose deadline passed waits for the loop to
//   take its transfer out before its buffer goes away (the loop never blocks: the threaded
//   resolver and non-blocking TLS keep it responsive).
// - Connections, and HTTP/2 multiplexing over them, belong to the multi handle; the DNS cache
//   and TLS session ids are shared through a share handle (CURL_LOCK_DATA_DNS, _SSL_SESSION),
//   so a new connection to a server seen before resumes its TLS session.
// - S3 requests are signed by CURLOPT_AWS_SIGV4 (set_s3_signing in http_curl.h, which says
//   what 7.88 signs); reads send x-amz-content-sha256: UNSIGNED-PAYLOAD (they have no body).
// - CURLOPT_PROXY "" disables every proxy, also those of http_proxy and friends in the
//   environment, which the daemon must not follow.
// - CURLOPT_REDIR_PROTOCOLS_STR "https" makes a redirect from https to http fail with
//   CURLE_UNSUPPORTED_PROTOCOL; CURLOPT_MAXREDIRS bounds the hops (CURLE_TOO_MANY_REDIRECTS).
// - A write callback that returns less than it was given aborts the transfer
//   (CURLE_WRITE_ERROR): how a 200 to a range request is stopped at its first bytes.
// - With CURLOPT_NOSIGNAL (needed in a threaded process) curl leaves signals alone, and OpenSSL
//   writing to a connection the peer closed raises SIGPIPE, which would kill the process (a
//   mirror stopped mid-transfer): http::init_curl() ignores it if nothing handles it yet.
// - radosgw answers a range past the end with 416 without Content-Range, nginx with
//   "bytes */N" (measured). Either way the read fails: the index names only bytes that exist.
#include "backend/http_backend.h"

#include <curl/curl.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "backend/http_curl.h"
#include "backend/url.h"
#include "common/hash.h"
#include "common/str_util.h"
#include "common/thread_annotations.h"

namespace extrafs::backend {
namespace {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

constexpr size_t kMaxTransfers = 8;                   // in flight at once (NFS: 8 connections)
constexpr auto kAvoidFor = std::chrono::seconds(60);  // a failed mirror or proxy is skipped this long
constexpr long kMaxRedirects = 3;
constexpr size_t kErrorBodyKeep = 4096;  // of an error answer, for its S3 <Code>
constexpr int kFirstBackoffMs = 10;
constexpr int kMaxBackoffMs = 500;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

int ms_left(Deadline deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() <= 0 ? 0 : static_cast<int>(std::min<int64_t>(left.count(), INT32_MAX));
}

// Who is to blame for a failed attempt, which decides what is tried next.
enum class Blame {
  kNone,
  kProxy,        // the proxy could not be reached or broke the connection: next proxy
  kMirror,       // the server failed (down, 5xx, broken answer): avoid it, next mirror
  kMirrorFinal,  // the server's definite answer for this object (404, 403, 416, a protocol
                 // violation): do not ask it again in this call, but do not avoid it either
};

// One attempt: one request to one mirror through one proxy (or none). Set up by the caller,
// then owned by the loop thread until `done`.
struct Request {
  enum class Kind { kHead, kRange, kWhole };
  Kind kind = Kind::kHead;
  std::string url;
  std::string proxy;  // "" = DIRECT
  bool https_only = false;
  bool revalidate = false;
  bool whole_object = false;  // kRange at offset 0 of an object read whole: no Range header
  int revalidate_after_s = 0;
  const HttpSource* source = nullptr;
  Deadline deadline;
  long connect_ms = 0;
  long stall_s = 0;
  // kRange: bytes [offset, offset + len) into dst.
  uint64_t offset = 0;
  std::byte* dst = nullptr;
  size_t len = 0;
  // kWhole: the body into *whole, at most `limit` bytes.
  std::string* whole = nullptr;
  uint64_t limit = 0;

  // The answer (written by the loop thread).
  long status = 0;
  std::string status_text;
  std::string content_range;
  int64_t content_length = -1;
  std::string retry_after;
  std::string etag;
  std::string last_modified;
  bool body_checked = false;
  uint64_t expected = 0;  // body bytes the answer announced (range and whole)
  size_t got = 0;         // body bytes stored
  std::string error_body;
  Blame abort_blame = Blame::kNone;
  int abort_code = 0;
  std::string abort_reason;
  CURLcode result = CURLE_OK;
  char errbuf[CURL_ERROR_SIZE] = {};

  // Loop bookkeeping.
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  std::atomic<bool> cancel{false};
  bool done = false;  // guarded by CurlLoop::mu_

  bool is_final_status() const { return status < 300 || status >= 400; }
  void reset_headers() {
    content_range.clear();
    content_length = -1;
    retry_after.clear();
    etag.clear();
    last_modified.clear();
  }
  size_t abort(Blame blame, int code, std::string reason) {
    abort_blame = blame;
    abort_code = code;
    abort_reason = std::move(reason);
    return 0;  // less than given: curl aborts the transfer
  }
};

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto* r = static_cast<Request*>(user);
  const size_t total = size * n;
  std::string_view line(data, total);
  if (line.substr(0, 5) == "HTTP/") {
    // A new response (after a redirect, or a 100 Continue): forget the previous one's headers.
    r->reset_headers();
    size_t sp = line.find(' ');
    if (sp != std::string_view::npos) {
      std::string_view rest = line.substr(sp + 1);
      long code = 0;
      auto [p, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), code);
      if (ec == std::errc()) r->status = code;
      r->status_text = std::string(http::trim_header(std::string_view(p, rest.data() + rest.size() - p)));
    }
    return total;
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return total;
  std::string_view value = http::trim_header(line.substr(colon + 1));
  if (http::header_is(line, "content-range:")) {
    r->content_range = value;
  } else if (http::header_is(line, "content-length:")) {
    int64_t v = -1;
    auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    r->content_length = (ec == std::errc() && p == value.data() + value.size() && v >= 0) ? v : -2;
  } else if (http::header_is(line, "retry-after:")) {
    r->retry_after = value;
  } else if (http::header_is(line, "etag:")) {
    r->etag = value;
  } else if (http::header_is(line, "last-modified:")) {
    r->last_modified = value;
  }
  return total;
}

// "bytes FIRST-LAST/TOTAL" (TOTAL may be '*').
bool parse_content_range(std::string_view v, uint64_t* first, uint64_t* last, int64_t* total) {
  if (v.substr(0, 6) != "bytes ") return false;
  v.remove_prefix(6);
  size_t dash = v.find('-'), slash = v.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || dash > slash) return false;
  auto num = [](std::string_view s, uint64_t* out) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
    return !s.empty() && ec == std::errc() && p == s.data() + s.size();
  };
  if (!num(v.substr(0, dash), first) || !num(v.substr(dash + 1, slash - dash - 1), last)) return false;
  std::string_view t = v.substr(slash + 1);
  uint64_t tv = 0;
  if (t == "*") {
    *total = -1;
  } else if (num(t, &tv)) {
    *total = static_cast<int64_t>(tv);
  } else {
    return false;
  }
  return *first <= *last && (*total < 0 || *last < static_cast<uint64_t>(*total));
}

// Checks the final answer's headers at its first body bytes (or at its end when it has none).
// Returns false (after abort()) if the body must not be taken.
bool check_answer(Request* r) {
  r->body_checked = true;
  if (r->status < 200 || r->status >= 300) return true;  // kept as error_body
  if (r->content_length == -2) {
    r->abort(Blame::kMirror, EIO, "bad Content-Length");
    return false;
  }
  switch (r->kind) {
    case Request::Kind::kHead:
      return true;
    case Request::Kind::kWhole:
      if (r->status != 200) {
        r->abort(Blame::kMirrorFinal, EIO, fmt::format("answered {} to a plain GET", r->status));
        return false;
      }
      if (r->content_length >= 0 && static_cast<uint64_t>(r->content_length) > r->limit) {
        r->abort(Blame::kMirrorFinal, EFBIG, fmt::format("object is larger than {} bytes", r->limit));
        return false;
      }
      r->expected = r->content_length >= 0 ? static_cast<uint64_t>(r->content_length) : r->limit;
      return true;
    case Request::Kind::kRange: {
      if (r->status == 200) {
        // The whole object: fine when that is what was asked for and it fits (a server may
        // answer 200 to a range covering everything); otherwise never read on.
        if (r->offset == 0 && r->content_length >= 0 && static_cast<uint64_t>(r->content_length) <= r->len) {
          r->expected = static_cast<uint64_t>(r->content_length);
          return true;
        }
        if (r->whole_object) {
          r->abort(Blame::kMirrorFinal, EIO,
                   fmt::format("the object is larger than the {} bytes the store's index gives", r->len));
          return false;
        }
        r->abort(Blame::kMirrorFinal, EIO, "server ignores Range (answered 200 to a range request)");
        return false;
      }
      if (r->status != 206) {
        r->abort(Blame::kMirrorFinal, EIO, fmt::format("answered {} to a range request", r->status));
        return false;
      }
      uint64_t first = 0, last = 0;
      int64_t total = 0;
      if (!parse_content_range(r->content_range, &first, &last, &total)) {
        r->abort(Blame::kMirrorFinal, EIO,
                 r->content_range.empty() ? std::string("206 without Content-Range")
                                          : "bad Content-Range '" + escape_control(r->content_range) + "'");
        return false;
      }
      const uint64_t want_last = r->offset + r->len - 1;
      // Shorter than asked only where the object ends.
      bool ok = first == r->offset && last <= want_last &&
                (last == want_last || (total >= 0 && last + 1 == static_cast<uint64_t>(total)));
      if (!ok) {
        r->abort(Blame::kMirrorFinal, EIO,
                 fmt::format("Content-Range '{}' does not match the range asked for ({}-{})",
                             escape_control(r->content_range), r->offset, want_last));
        return false;
      }
      r->expected = last - first + 1;
      if (r->content_length >= 0 && static_cast<uint64_t>(r->content_length) != r->expected) {
        r->abort(Blame::kMirrorFinal, EIO, "Content-Length does not match Content-Range");
        return false;
      }
      return true;
    }
  }
  return true;
}

size_t on_body(char* data, size_t size, size_t n, void* user) {
  auto* r = static_cast<Request*>(user);
  const size_t total = size * n;
  if (!r->is_final_status()) return total;  // the body of a redirect being followed
  if (!r->body_checked && !check_answer(r)) return 0;
  if (r->status < 200 || r->status >= 300) {
    size_t keep = std::min(total, kErrorBodyKeep - std::min(kErrorBodyKeep, r->error_body.size()));
    r->error_body.append(data, keep);
    return total;
  }
  if (r->got + total > r->expected) {
    return r->abort(Blame::kMirrorFinal, r->kind == Request::Kind::kWhole && r->content_length < 0 ? EFBIG : EIO,
                    r->kind == Request::Kind::kWhole && r->content_length < 0
                        ? fmt::format("object is larger than {} bytes", r->limit)
                        : "more bytes than the answer announced");
  }
  if (r->kind == Request::Kind::kRange) {
    std::memcpy(r->dst + r->got, data, total);
  } else if (r->kind == Request::Kind::kWhole) {
    r->whole->append(data, total);
  }
  r->got += total;
  return total;
}

// The thread that drives every transfer of one backend (see the top of the file).
class CurlLoop {
 public:
  CurlLoop() {
    multi_ = curl_multi_init();
    share_ = curl_share_init();
    EXTRAFS_INVARIANT(multi_ != nullptr && share_ != nullptr, "curl_multi_init/curl_share_init failed");
    curl_share_setopt(share_, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(share_, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_multi_setopt(multi_, CURLMOPT_PIPELINING, static_cast<long>(CURLPIPE_MULTIPLEX));
    curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, static_cast<long>(2 * kMaxTransfers));
    thread_ = std::thread([this] { loop(); });
  }

  ~CurlLoop() {
    {
      MutexLock lock(&mu_);
      stop_ = true;
    }
    curl_multi_wakeup(multi_);
    thread_.join();
    curl_multi_cleanup(multi_);
    curl_share_cleanup(share_);
  }

  // Runs `r` and returns once it is over: curl's own timeouts end it by its deadline; should
  // the deadline pass anyway, it is cancelled, and the loop takes it out at once.
  void run(Request& r) {
    {
      MutexLock lock(&mu_);
      if (cancelled_) {
        r.result = CURLE_ABORTED_BY_CALLBACK;
        r.done = true;
        return;
      }
      pending_.push_back(&r);
    }
    curl_multi_wakeup(multi_);
    MutexLock lock(&mu_);
    const auto give_up = r.deadline + std::chrono::seconds(2);
    while (!r.done && done_cv_.wait_until(&mu_, give_up)) {
    }
    if (!r.done) {
      r.cancel.store(true);
      lock.unlock();
      curl_multi_wakeup(multi_);
      lock.lock();
      while (!r.done) done_cv_.wait(&mu_);
    }
  }

  // Ends every transfer in progress and every one asked for later (CURLE_ABORTED_BY_CALLBACK)
  // at once. Irreversible (Backend::interrupt).
  void cancel_all() {
    {
      MutexLock lock(&mu_);
      cancelled_ = true;
    }
    curl_multi_wakeup(multi_);
  }

 private:
  void loop() {
    std::vector<Request*> active;
    for (;;) {
      std::vector<Request*> added;
      {
        MutexLock lock(&mu_);
        if (stop_ || cancelled_) break;
        while (!pending_.empty() && active.size() + added.size() < kMaxTransfers) {
          added.push_back(pending_.front());
          pending_.pop_front();
        }
      }
      for (Request* r : added) {
        if (start(r)) active.push_back(r);
      }
      int running = 0;
      curl_multi_perform(multi_, &running);
      int left = 0;
      while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
        if (msg->msg != CURLMSG_DONE) continue;
        Request* r = nullptr;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char**>(&r));
        r->result = msg->data.result;
        active.erase(std::find(active.begin(), active.end(), r));
        finish(r);
      }
      for (size_t i = 0; i < active.size();) {
        if (active[i]->cancel.load()) {
          Request* r = active[i];
          active.erase(active.begin() + static_cast<ptrdiff_t>(i));
          r->result = CURLE_OPERATION_TIMEDOUT;
          finish(r);
        } else {
          ++i;
        }
      }
      curl_multi_poll(multi_, nullptr, 0, 1000, nullptr);
    }
    for (Request* r : active) {
      r->result = CURLE_ABORTED_BY_CALLBACK;
      finish(r);
    }
    MutexLock lock(&mu_);
    for (Request* r : pending_) {
      r->result = CURLE_ABORTED_BY_CALLBACK;
      r->done = true;
    }
    pending_.clear();
    done_cv_.notify_all();
  }

  // Sets up r's easy handle and adds it; false (r finished) if that failed or it is too late.
  bool start(Request* r) {
    const int left = ms_left(r->deadline);
    CURL* e = curl_easy_init();
    if (left <= 0 || e == nullptr) {
      if (e != nullptr) curl_easy_cleanup(e);
      r->result = left <= 0 ? CURLE_OPERATION_TIMEDOUT : CURLE_OUT_OF_MEMORY;
      finish_unstarted(r);
      return false;
    }
    r->easy = e;
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_SHARE, share_);
    curl_easy_setopt(e, CURLOPT_URL, r->url.c_str());
    curl_easy_setopt(e, CURLOPT_PROXY, r->proxy.c_str());
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, r->https_only ? "https" : "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, kMaxRedirects);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(left));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, std::min<long>(left, r->connect_ms));
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, r->stall_s);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 256L << 10);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "extrafs/0.1");
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    http::set_tls(e, *r->source);
    std::string range;
    if (r->kind == Request::Kind::kHead) {
      curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (r->kind == Request::Kind::kRange && !r->whole_object) {
      range = fmt::format("{}-{}", r->offset, r->offset + r->len - 1);
      curl_easy_setopt(e, CURLOPT_RANGE, range.c_str());  // copied by curl
    }
    if (r->revalidate) {
      r->headers =
          curl_slist_append(r->headers, fmt::format("Cache-Control: max-age={}", r->revalidate_after_s).c_str());
    }
    http::set_s3_signing(e, *r->source, "UNSIGNED-PAYLOAD", &r->headers);
    if (r->headers != nullptr) curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    if (curl_multi_add_handle(multi_, e) != CURLM_OK) {
      r->result = CURLE_FAILED_INIT;
      finish_unstarted(r);
      return false;
    }
    return true;
  }

  void finish(Request* r) {
    curl_multi_remove_handle(multi_, r->easy);
    // An answer without body bytes (HEAD, an empty object) is checked here, by the thread that
    // owns the request until it is done.
    if (r->result == CURLE_OK && !r->body_checked && r->abort_blame == Blame::kNone) check_answer(r);
    finish_unstarted(r);
  }

  void finish_unstarted(Request* r) {
    if (r->easy != nullptr) curl_easy_cleanup(r->easy);
    r->easy = nullptr;
    curl_slist_free_all(r->headers);
    r->headers = nullptr;
    MutexLock lock(&mu_);
    r->done = true;
    done_cv_.notify_all();
  }

  CURLM* multi_ = nullptr;
  CURLSH* share_ = nullptr;
  std::thread thread_;
  Mutex mu_;
  CondVar done_cv_;
  std::deque<Request*> pending_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;
  bool cancelled_ GUARDED_BY(mu_) = false;  // the loop has ended (cancel_all)
};

// How an attempt ended.
struct Outcome {
  Blame blame = Blame::kNone;  // kNone: success
  int code = 0;
  std::string message;
  int64_t not_before_ns = 0;  // Retry-After
};

Outcome classify(const Request& r) {
  Outcome o;
  if (r.abort_blame != Blame::kNone) {
    o.blame = r.abort_blame;
    o.code = r.abort_code;
    o.message = r.abort_reason;
    return o;
  }
  const bool via_proxy = !r.proxy.empty();
  if (r.result != CURLE_OK) {
    std::string detail = r.errbuf[0] != '\0' ? escape_control(r.errbuf) : curl_easy_strerror(r.result);
    o.code = EIO;
    o.message = detail;
    switch (r.result) {
      case CURLE_COULDNT_RESOLVE_PROXY:
        o.blame = Blame::kProxy;
        break;
      case CURLE_COULDNT_CONNECT:
      case CURLE_SEND_ERROR:
      case CURLE_RECV_ERROR:
      case CURLE_GOT_NOTHING:
        // Through a proxy, the connection is the proxy's.
        o.blame = via_proxy ? Blame::kProxy : Blame::kMirror;
        o.code = r.result == CURLE_COULDNT_CONNECT ? ECONNREFUSED : ECONNRESET;
        break;
      case CURLE_OPERATION_TIMEDOUT:
        o.blame = via_proxy && r.status == 0 ? Blame::kProxy : Blame::kMirror;
        o.code = ETIMEDOUT;
        break;
      case CURLE_UNSUPPORTED_PROTOCOL:
        o.blame = Blame::kMirrorFinal;
        o.message = r.https_only ? "refused a redirect away from https (" + detail + ")"
                                 : "refused a redirect (" + detail + ")";
        break;
      case CURLE_TOO_MANY_REDIRECTS:
        o.blame = Blame::kMirrorFinal;
        o.message = fmt::format("more than {} redirects", kMaxRedirects);
        break;
      case CURLE_PEER_FAILED_VERIFICATION:
      case CURLE_SSL_CACERT_BADFILE:
      case CURLE_SSL_CERTPROBLEM:
      case CURLE_SSL_ISSUER_ERROR:
      case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        o.blame = Blame::kMirrorFinal;
        o.code = EACCES;
        o.message = "TLS: " + detail;
        break;
      case CURLE_COULDNT_RESOLVE_HOST:
        o.blame = Blame::kMirror;
        o.code = EHOSTUNREACH;
        break;
      default:
        o.blame = Blame::kMirror;  // a cut transfer (PARTIAL_FILE), TLS, HTTP/2 errors, ...
        break;
    }
    return o;
  }
  const long st = r.status;
  std::string what = fmt::format("{} {}", st, escape_control(r.status_text));
  if (st >= 200 && st < 300) {
    if (r.kind == Request::Kind::kHead) {
      if (r.content_length < 0) return Outcome{Blame::kMirror, EIO, "HEAD answer without Content-Length", 0};
      return o;
    }
    if (r.kind == Request::Kind::kWhole && r.content_length < 0) return o;  // ended by the close
    if (r.got != r.expected) {
      return Outcome{Blame::kMirror, EIO, fmt::format("short body: {} of {} bytes", r.got, r.expected), 0};
    }
    return o;
  }
  std::string code = http::s3_error_code(r.error_body);
  if (!code.empty()) what += " (" + code + ")";
  if (st == 404 || st == 410) return Outcome{Blame::kMirrorFinal, ENOENT, what, 0};
  if (st == 401 || st == 403) return Outcome{Blame::kMirrorFinal, EACCES, what, 0};
  if (st == 416)
    return Outcome{Blame::kMirrorFinal, EIO, what + ": the object is shorter than the store's index says", 0};
  if (st == 429 || st == 503) {
    o = Outcome{Blame::kMirror, EAGAIN, what, 0};
    if (auto s = http::retry_after_s(r.retry_after)) {
      o.not_before_ns = now_ns() + *s * 1000000000;
      o.message += fmt::format(", Retry-After: {} s", *s);
    }
    return o;
  }
  if (st == 407) return Outcome{Blame::kProxy, EACCES, what, 0};
  if (st >= 500) return Outcome{Blame::kMirror, EIO, what, 0};
  return Outcome{Blame::kMirrorFinal, EIO, what, 0};
}

// When a mirror or a proxy may be asked again.
struct Health {
  std::atomic<int64_t> avoid_until{0};  // soft: used again when nothing else is left
  std::atomic<int64_t> not_before{0};   // hard: Retry-After
  std::atomic<bool> warned_range{false};
};

class HttpBackend final : public Backend {
 public:
  HttpBackend(std::string source, HttpSource src, HttpOptions options, int timeout_ms)
      : source_(std::move(source)),
        src_(std::move(src)),
        options_(std::move(options)),
        timeout_ms_(std::max(timeout_ms, 1)),
        mirrors_(src_.mirrors.size()) {
    for (const auto& g : src_.proxy_groups) proxies_.emplace_back(g.size());
  }

  Result<size_t> read(std::string_view path, uint64_t offset, std::span<std::byte> buf) override {
    if (buf.empty()) return size_t{0};
    size_t done = 0;
    EXTRAFS_TRY(r, perform(
                       "GET", path,
                       [&](Request& q) {
                         q.kind = Request::Kind::kRange;
                         q.offset = offset + done;
                         q.dst = buf.data() + done;
                         q.len = buf.size() - done;
                         q.whole_object = q.offset == 0 && matches(options_.whole_object_paths, path);
                       },
                       [&](const Request& q, const Outcome& o) {
                         // The bytes of an answer cut short are in place: the next attempt (on another mirror,
                         // if this one failed) asks for the rest. A broken answer's bytes are not trusted.
                         if (o.blame != Blame::kMirrorFinal) done += q.got;
                         return done == buf.size();
                       }));
    (void)r;
    return done;
  }

  Result<std::string> read_object(std::string_view path, uint64_t limit, std::optional<ObjectInfo>* info) override {
    std::string body;
    EXTRAFS_TRY(r, perform(
                       "GET", path,
                       [&](Request& q) {
                         q.kind = Request::Kind::kWhole;
                         body.clear();
                         q.whole = &body;
                         q.limit = limit;
                       },
                       nullptr));
    if (info) *info = info_of(r, body.size());
    return body;
  }

  Result<ObjectInfo> stat(std::string_view path) override {
    EXTRAFS_TRY(r, perform(
                       "HEAD", path, [&](Request& q) { q.kind = Request::Kind::kHead; }, nullptr));
    return info_of(r, static_cast<uint64_t>(r.content_length));
  }

  Result<std::vector<std::string>> list(std::string_view path) override {
    return make_error(ENOTSUP, "cannot list '" + std::string(path) + "' of " + source_ +
                                   ": http(s) and s3 sources have no directory listing");
  }

  std::string describe() const override { return source_; }

  void interrupt() override {
    {
      MutexLock lock(&pause_mu_);
      interrupted_.store(true);
    }
    pause_cv_.notify_all();
    loop_.cancel_all();
  }

 private:
  static Error interrupted_error(const char* method, std::string_view path) {
    return Error{ECANCELED, fmt::format("http {} of '{}' cancelled: shutting down", method, path)};
  }

  // Waits `d` (a back-off, a Retry-After), or less if interrupt() comes meanwhile.
  template <typename Duration>
  void pause(Duration d) {
    MutexLock lock(&pause_mu_);
    const auto until = std::chrono::steady_clock::now() + d;
    while (!interrupted_.load() && pause_cv_.wait_until(&pause_mu_, until)) {
    }
  }

  // What a finished attempt left for the caller (the parts of Request it needs).
  struct Answer {
    int64_t content_length = -1;
    std::string last_modified;
    std::string etag;
  };

  // The attributes an answer gives of an object of `size` bytes: Last-Modified, the ETag's hash.
  static ObjectInfo info_of(const Answer& r, uint64_t size) {
    ObjectInfo info;
    info.size = size;
    if (!r.last_modified.empty()) {
      time_t t = curl_getdate(r.last_modified.c_str(), nullptr);
      if (t > 0) info.mtime_ns = static_cast<int64_t>(t) * 1000000000;
    }
    if (!r.etag.empty()) info.version_tag = xxh3_64(r.etag.data(), r.etag.size());
    return info;
  }

  // Whether `path` is one of `paths` (an exact path, or a prefix ending in '/').
  static bool matches(const std::vector<std::string>& paths, std::string_view path) {
    for (const auto& p : paths) {
      if (path == p) return true;
      if (!p.empty() && p.back() == '/' && path.substr(0, p.size()) == p) return true;
    }
    return false;
  }

  Result<std::string> object_url(size_t mirror, std::string_view path) const {
    EXTRAFS_TRY(encoded, percent_encode_path(path));
    return src_.mirrors[mirror] + encoded;
  }

  // The mirror to ask next: the first one not excluded and not avoided; else the first one not
  // excluded whose Retry-After has passed (avoided ones are tried again rather than fail);
  // nullopt with `wait_ns` set if the only ones left asked us to wait, or none is left at all.
  std::optional<size_t> pick_mirror(const std::vector<bool>& excluded, int64_t* wait_ns) const {
    const int64_t now = now_ns();
    std::optional<size_t> fallback;
    int64_t earliest = INT64_MAX;
    for (size_t i = 0; i < mirrors_.size(); ++i) {
      if (excluded[i]) continue;
      const int64_t nb = mirrors_[i].not_before.load(std::memory_order_relaxed);
      if (nb > now) {
        earliest = std::min(earliest, nb);
        continue;
      }
      if (mirrors_[i].avoid_until.load(std::memory_order_relaxed) <= now) return i;
      if (!fallback) fallback = i;
    }
    if (fallback) return fallback;
    *wait_ns = earliest == INT64_MAX ? -1 : earliest - now;
    return std::nullopt;
  }

  // The proxy to use for `path`: in the first group that has a proxy not avoided, the one at the
  // path's slot or the next not avoided after it; if every proxy is avoided, the first group's
  // slot (tried again rather than fail). Returns {group, index}.
  std::pair<size_t, size_t> pick_proxy(std::string_view path) const {
    const int64_t now = now_ns();
    for (size_t g = 0; g < proxies_.size(); ++g) {
      const size_t n = proxies_[g].size();
      const size_t slot = proxy_slot(path, n);
      for (size_t k = 0; k < n; ++k) {
        size_t i = (slot + k) % n;
        if (proxies_[g][i].avoid_until.load(std::memory_order_relaxed) <= now) return {g, i};
      }
    }
    return {0, proxy_slot(path, proxies_[0].size())};
  }

  std::string proxy_name(size_t g, size_t i) const {
    const std::string& p = src_.proxy_groups[g][i];
    return p.empty() ? "DIRECT" : p;
  }

  void avoid_mirror(size_t m, const Outcome& o) {
    Health& h = mirrors_[m];
    const int64_t now = now_ns();
    const int64_t until = now + std::chrono::duration_cast<std::chrono::nanoseconds>(kAvoidFor).count();
    if (o.not_before_ns > 0) h.not_before.store(o.not_before_ns, std::memory_order_relaxed);
    if (h.avoid_until.exchange(until) <= now && mirrors_.size() > 1) {
      spdlog::warn("http: mirror {} failed ({}); trying the other mirrors first for {} s", src_.mirror_names[m],
                   o.message, kAvoidFor.count());
    }
  }

  void avoid_proxy(size_t g, size_t i, const Outcome& o) {
    Health& h = proxies_[g][i];
    const int64_t now = now_ns();
    const int64_t until = now + std::chrono::duration_cast<std::chrono::nanoseconds>(kAvoidFor).count();
    if (h.avoid_until.exchange(until) <= now) {
      spdlog::warn("http: proxy {} failed ({}); using the next proxy for {} s", proxy_name(g, i), o.message,
                   kAvoidFor.count());
    }
  }

  // One call: attempts on mirrors and proxies until an answer, a definite failure or the
  // deadline. `setup` fills in what to ask (again, for each attempt); `progress` (may be null)
  // sees every attempt that ended, successful or not, and returns true when the call has all it
  // needs even though the attempt failed.
  template <typename Setup>
  Result<Answer> perform(const char* method, std::string_view path, Setup setup,
                         const std::function<bool(const Request&, const Outcome&)>& progress) {
    const auto start = Clock::now();
    const Deadline deadline = start + std::chrono::milliseconds(timeout_ms_);
    std::vector<bool> excluded(mirrors_.size(), false);
    std::vector<std::pair<size_t, std::string>> tried;  // (mirror, proxy) pairs that failed in this call
    std::optional<Error> final_error;                   // a mirror's definite answer
    Error last{ETIMEDOUT, "no attempt finished"};
    int backoff_ms = kFirstBackoffMs;
    for (int attempt = 0; attempt < 1000; ++attempt) {
      if (interrupted_.load()) return interrupted_error(method, path);
      int64_t wait_ns = 0;
      auto m = pick_mirror(excluded, &wait_ns);
      if (!m) {
        if (wait_ns < 0) break;  // every mirror gave its definite answer
        // Only mirrors that asked us to wait are left: wait if that fits in the time left.
        if (wait_ns / 1000000 >= ms_left(deadline)) {
          last = Error{EAGAIN,
                       fmt::format("every mirror asked (Retry-After) not to be asked again for {} s, longer than the "
                                   "time left",
                                   (wait_ns + 999999999) / 1000000000)};
          break;
        }
        pause(std::chrono::nanoseconds(wait_ns));
        continue;
      }
      auto [g, pi] = pick_proxy(path);
      const std::string& proxy = src_.proxy_groups[g][pi];
      if (std::find(tried.begin(), tried.end(), std::make_pair(*m, proxy)) != tried.end()) {
        // Everything usable failed once already: back off before asking the same again.
        int left = ms_left(deadline);
        if (left <= 2) break;
        pause(std::chrono::milliseconds(std::min(backoff_ms, left - 1)));
        backoff_ms = std::min(backoff_ms * 2, kMaxBackoffMs);
      }
      if (ms_left(deadline) <= 0) break;
      EXTRAFS_TRY(url, object_url(*m, path));
      Request r;
      r.url = std::move(url);
      r.proxy = proxy;
      r.https_only = r.url.rfind("https://", 0) == 0;
      r.revalidate = matches(options_.revalidate_paths, path);
      r.revalidate_after_s = options_.revalidate_after_s;
      r.source = &src_;
      r.deadline = deadline;
      // One server that does not answer must leave time for the others.
      r.connect_ms = std::max<long>(1000, timeout_ms_ / 4);
      r.stall_s = std::max<long>(1, timeout_ms_ / 4000);
      setup(r);
      loop_.run(r);
      if (interrupted_.load()) return interrupted_error(method, path);
      Outcome o = classify(r);
      const bool complete = progress && progress(r, o);
      if (o.blame == Blame::kNone || complete) {
        if (attempt > 0) spdlog::info("http: {} of '{}' succeeded after {} retries", method, path, attempt);
        return Answer{r.content_length, r.last_modified, r.etag};
      }
      const std::string where = src_.mirror_names[*m] + (proxy.empty() ? "" : " through proxy " + proxy);
      last = Error{o.code, fmt::format("{} {}: {}", method, r.url, o.message)};
      spdlog::debug("http: {} of '{}' from {} failed: {}", method, path, where, o.message);
      switch (o.blame) {
        case Blame::kProxy:
          avoid_proxy(g, pi, o);
          tried.emplace_back(*m, proxy);
          break;
        case Blame::kMirror:
          avoid_mirror(*m, o);
          tried.emplace_back(*m, proxy);
          break;
        case Blame::kMirrorFinal:
          if (o.message.find("ignores Range") != std::string::npos && !mirrors_[*m].warned_range.exchange(true)) {
            spdlog::warn("http: {}: server ignores Range (answered 200 to a range request); reads from it fail",
                         src_.mirror_names[*m]);
          }
          excluded[*m] = true;
          // The first mirror's definite answer is the call's, unless another mirror serves.
          if (!final_error || (final_error->code == ENOENT && o.code != ENOENT)) final_error = last;
          break;
        case Blame::kNone:
          break;
      }
    }
    if (final_error && std::all_of(excluded.begin(), excluded.end(), [](bool b) { return b; })) {
      Error e = *final_error;
      if (e.code != ENOENT) spdlog::warn("http: {}", e.message);
      return e;
    }
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
    Error e{ETIMEDOUT, fmt::format("http {} of '{}' from {} failed for {} ms: {}", method, path, source_, ms,
                                   final_error ? final_error->message : last.message)};
    if (last.code == EAGAIN) e.code = EAGAIN;
    spdlog::warn("{}", e.message);
    return e;
  }

  const std::string source_;
  const HttpSource src_;
  const HttpOptions options_;
  const int timeout_ms_;
  mutable std::vector<Health> mirrors_;
  mutable std::vector<std::vector<Health>> proxies_;
  std::atomic<bool> interrupted_{false};
  Mutex pause_mu_;
  CondVar pause_cv_;  // interrupt() ends every pause()
  CurlLoop loop_;     // last: stopped first, while everything it uses is alive
};

}  // namespace

Result<std::unique_ptr<Backend>> make_http_backend(const std::string& source, const HttpOptions& options,
                                                   int timeout_ms) {
  if (timeout_ms <= 0) return Error{EINVAL, "http timeout must be positive"};
  EXTRAFS_TRY(src, resolve_http_source(source, options));
  http::init_curl();
  return std::unique_ptr<Backend>(std::make_unique<HttpBackend>(source, std::move(src), options, timeout_ms));
}

}  // namespace extrafs::backend
