// The S3 writer of `extrafs push` (object_writer.h) over libcurl, sharing the set-up and signing
// of HttpBackend (http_curl.h).
//
// Requests: HEAD, GET, PUT (a file's bytes read with pread as curl asks for them), DELETE,
// listings (ListObjectsV2 with encoding-type=url, so any key survives the XML) and multipart
// uploads (initiate, one PUT per part, complete; aborted if anything fails). Each request is
// signed with SigV4 over the real SHA-256 of its body, so the service rejects a body that was
// not the one hashed (XAmzContentSHA256Mismatch) instead of storing it: the file is read twice,
// once to hash and once to send.
//
// Each call takes a curl easy handle from a pool (an easy handle is used by one thread at a
// time; curl_easy_reset keeps its connections, DNS and TLS session caches, so a kept handle
// reuses its connection). No proxy is forced: unlike the daemon, push is a command run by an
// operator, and follows https_proxy and friends from the environment as curl does.
//
// Retries: transport errors, 500, 502, 503, 504 and 429 are tried again (kAttempts in all, with
// a growing back-off, Retry-After honoured up to kMaxWaitS); any other answer is final. A
// transfer stalled for kStallS seconds (no byte either way) fails the attempt.
#include <curl/curl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "backend/http_curl.h"
#include "backend/object_writer.h"
#include "backend/url.h"
#include "common/posix_file.h"
#include "common/str_util.h"
#include "common/thread_annotations.h"

namespace extrafs::backend {
namespace {

constexpr int kAttempts = 6;
constexpr int kFirstBackoffMs = 250;
constexpr int kMaxBackoffMs = 8000;
constexpr int64_t kMaxWaitS = 60;
constexpr long kConnectTimeoutMs = 15000;
constexpr long kStallS = 60;
constexpr size_t kAnswerKeep = size_t{4} << 20;  // of an answer's body (a listing page: ~300 KB)
constexpr size_t kMaxKeyBytes = 1024;            // S3's limit on a key
constexpr int kMaxListPages = 1000000;

// A request: what to send, and how much of the answer's body to keep.
struct Call {
  const char* method = "GET";  // HEAD, GET, PUT, POST, DELETE
  std::string url;
  std::string what;  // "PUT s3://bucket/prefix/key", for messages
  std::vector<std::string> headers;
  const PutBody* body = nullptr;  // PUT and POST: bytes [offset, offset + length) of it
  uint64_t offset = 0, length = 0;
  uint64_t keep = 64 << 10;
  const std::function<void(int64_t)>* on_bytes = nullptr;
};

struct Answer {
  long status = 0;
  std::string status_text;
  std::string body;
  bool body_too_big = false;
  std::string etag;
  int64_t content_length = -1;
  std::string retry_after;
};

// One attempt's state, shared with curl's callbacks.
struct Transfer {
  const Call* call = nullptr;
  Answer answer;
  uint64_t pos = 0;  // next body byte to send (relative to call->offset)
  int64_t sent = 0;  // body bytes reported to on_bytes in this attempt
  int read_error = 0;
};

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t total = size * n;
  std::string_view line(data, total);
  Answer& a = t->answer;
  if (line.substr(0, 5) == "HTTP/") {  // a new response (after a 100 Continue): start again
    long code = 0;
    size_t sp = line.find(' ');
    if (sp != std::string_view::npos) {
      std::string_view rest = line.substr(sp + 1);
      auto [p, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), code);
      a.status = ec == std::errc() ? code : 0;
      a.status_text = std::string(http::trim_header(std::string_view(p, rest.data() + rest.size() - p)));
    }
    a.etag.clear();
    a.content_length = -1;
    a.retry_after.clear();
    return total;
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return total;
  std::string_view value = http::trim_header(line.substr(colon + 1));
  if (http::header_is(line, "etag:")) {
    a.etag = value;
  } else if (http::header_is(line, "content-length:")) {
    int64_t v = -1;
    auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    a.content_length = ec == std::errc() && p == value.data() + value.size() ? v : -1;
  } else if (http::header_is(line, "retry-after:")) {
    a.retry_after = value;
  }
  return total;
}

size_t on_body(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t total = size * n;
  Answer& a = t->answer;
  if (a.body.size() + total > t->call->keep) {
    a.body_too_big = true;
    return 0;  // aborts the transfer
  }
  a.body.append(data, total);
  return total;
}

size_t on_read(char* buf, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const Call& c = *t->call;
  const uint64_t want = std::min<uint64_t>(size * n, c.length - t->pos);
  if (want == 0) return 0;
  size_t got = static_cast<size_t>(want);
  if (c.body->fd >= 0) {
    size_t r = 0;
    const int e = pread_all(c.body->fd, buf, got, static_cast<off_t>(c.offset + t->pos), &r);
    if (e != 0 || r == 0) {
      t->read_error = e != 0 ? e : EIO;  // nothing read: the file shrank
      return CURL_READFUNC_ABORT;
    }
    got = r;
  } else {
    std::memcpy(buf, c.body->bytes.data() + c.offset + t->pos, got);
  }
  t->pos += got;
  t->sent += static_cast<int64_t>(got);
  if (c.on_bytes && *c.on_bytes) (*c.on_bytes)(static_cast<int64_t>(got));
  return got;
}

int on_seek(void* user, curl_off_t offset, int origin) {
  auto* t = static_cast<Transfer*>(user);
  if (origin != SEEK_SET || offset < 0 || static_cast<uint64_t>(offset) > t->call->length)
    return CURL_SEEKFUNC_CANTSEEK;
  if (t->call->on_bytes && *t->call->on_bytes) (*t->call->on_bytes)(static_cast<int64_t>(offset) - t->sent);
  t->sent = offset;
  t->pos = static_cast<uint64_t>(offset);
  return CURL_SEEKFUNC_OK;
}

// Hex SHA-256 of bytes [offset, offset + length) of `body`.
Result<std::string> body_sha256(const PutBody& body, uint64_t offset, uint64_t length, const std::string& what) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
    return make_error(ENOMEM, "SHA-256 unavailable");
  if (body.fd < 0) {
    EVP_DigestUpdate(ctx.get(), body.bytes.data() + offset, length);
  } else {
    std::string buf(std::min<uint64_t>(length, 1 << 20), '\0');
    for (uint64_t done = 0; done < length;) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), length - done));
      size_t r = 0;
      if (int e = pread_all(body.fd, buf.data(), want, static_cast<off_t>(offset + done), &r))
        return Error::from_errno(e, what + ": read");
      if (r < want) return make_error(EIO, what + ": the file shrank while being read");
      EVP_DigestUpdate(ctx.get(), buf.data(), want);
      done += want;
    }
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

constexpr std::string_view kEmptySha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    i += n;
  }
  return true;
}

// A key listed with encoding-type=url: %XX decoded, '+' is a space (AWS writes spaces so).
std::string url_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

int status_errno(long status) {
  switch (status) {
    case 401:
    case 403:
      return EACCES;
    case 404:
      return ENOENT;
    case 400:
      return EINVAL;
    default:
      return EIO;
  }
}

class S3Writer final : public ObjectWriter {
 public:
  S3Writer(std::string destination, HttpSource src, const S3WriterOptions& options)
      : destination_(std::move(destination)), src_(std::move(src)), options_(options) {}

  ~S3Writer() override {
    for (CURL* e : idle_) curl_easy_cleanup(e);
  }

  Result<std::optional<uint64_t>> head(std::string_view path) override {
    EXTRAFS_TRY(c, call_for("HEAD", path));
    EXTRAFS_TRY(a, perform(c, /*ok_404=*/true));
    if (a.status == 404) return std::optional<uint64_t>();
    if (a.content_length < 0) return make_error(EIO, c.what + ": answer without Content-Length");
    return std::optional<uint64_t>(static_cast<uint64_t>(a.content_length));
  }

  Result<std::string> get(std::string_view path, uint64_t limit) override {
    EXTRAFS_TRY(c, call_for("GET", path));
    c.keep = limit;
    EXTRAFS_TRY(a, perform(c, /*ok_404=*/true));
    if (a.status == 404) return make_error(ENOENT, c.what + ": no such object");
    return std::move(a.body);
  }

  Status put(std::string_view path, const PutBody& body, std::string_view cache_control,
             const std::function<void(int64_t)>& on_bytes) override {
    EXTRAFS_TRY(c, call_for("PUT", path));
    const uint64_t size = body.fd >= 0 ? body.size : body.bytes.size();
    if (size > options_.multipart_threshold) return put_multipart(path, c.url, body, size, cache_control, on_bytes);
    c.headers = {"Cache-Control: " + std::string(cache_control), "Content-Type: application/octet-stream"};
    c.body = &body;
    c.length = size;
    c.on_bytes = &on_bytes;
    EXTRAFS_TRY(a, perform(c, false));
    (void)a;
    return ok_status();
  }

  Status remove(std::string_view path) override {
    EXTRAFS_TRY(c, call_for("DELETE", path));
    EXTRAFS_TRY(a, perform(c, /*ok_404=*/true));
    (void)a;
    return ok_status();
  }

  Result<std::vector<ListedObject>> list(std::string_view prefix) override {
    const std::string base = key_prefix();
    std::vector<ListedObject> out;
    std::string token;
    for (int page = 0; page < kMaxListPages; ++page) {
      std::vector<std::pair<std::string, std::string>> q = {
          {"list-type", "2"}, {"encoding-type", "url"}, {"prefix", base + std::string(prefix)}};
      if (!token.empty()) q.emplace_back("continuation-token", token);
      Call c;
      c.url = bucket_url() + "?" + http::make_s3_query(std::move(q));
      c.what = "list " + shown(prefix);
      c.keep = kAnswerKeep;
      EXTRAFS_TRY(a, perform(c, false));
      size_t pos = 0;
      while (auto entry = http::xml_element(a.body, "Contents", &pos)) {
        size_t p = 0;
        auto key = http::xml_element(*entry, "Key", &p);
        p = 0;
        auto size = http::xml_element(*entry, "Size", &p);
        if (!key || !size) return make_error(EIO, c.what + ": a listed object without Key or Size");
        std::string k = url_decode(*key);
        if (k.compare(0, base.size(), base) != 0) continue;  // not ours (cannot happen with prefix=)
        uint64_t n = 0;
        auto [e, ec] = std::from_chars(size->data(), size->data() + size->size(), n);
        if (ec != std::errc() || e != size->data() + size->size())
          return make_error(EIO, c.what + ": bad Size '" + escape_control(*size) + "'");
        out.push_back(ListedObject{k.substr(base.size()), n});
      }
      pos = 0;
      auto truncated = http::xml_element(a.body, "IsTruncated", &pos);
      if (!truncated || *truncated != "true") return out;
      pos = 0;
      auto next = http::xml_element(a.body, "NextContinuationToken", &pos);
      if (!next || next->empty())
        return make_error(EIO, c.what + ": a truncated listing without NextContinuationToken");
      token = *next;
    }
    return make_error(EIO, "list " + shown(prefix) + ": more than " + std::to_string(kMaxListPages) + " pages");
  }

  std::string describe() const override { return destination_; }

 private:
  std::string bucket_url() const { return src_.bucket_urls[0]; }
  // The key prefix with its trailing '/' ("" for none).
  std::string key_prefix() const { return src_.key_prefixes[0].empty() ? "" : src_.key_prefixes[0] + "/"; }
  std::string shown(std::string_view path) const {
    return escape_control(destination_ + (destination_.back() == '/' ? "" : "/") + std::string(path));
  }

  Result<std::string> key_url(std::string_view path) const {
    const std::string key = key_prefix() + std::string(path);
    if (!valid_utf8(key)) return make_error(EINVAL, shown(path) + ": not valid UTF-8, which an S3 key must be");
    if (key.size() > kMaxKeyBytes)
      return make_error(EINVAL, shown(path) + ": longer than an S3 key may be (1024 bytes)");
    EXTRAFS_TRY(encoded, percent_encode_path(key));
    if (encoded.empty()) return make_error(EINVAL, "an empty object path");
    return bucket_url() + encoded;
  }

  // A request `method` of the object at `path`: its URL, and its name in messages.
  Result<Call> call_for(const char* method, std::string_view path) const {
    EXTRAFS_TRY(url, key_url(path));
    Call c;
    c.method = method;
    c.url = std::move(url);
    c.what = std::string(method) + " " + shown(path);
    return c;
  }

  CURL* lease() {
    {
      MutexLock lock(&mu_);
      if (!idle_.empty()) {
        CURL* e = idle_.back();
        idle_.pop_back();
        return e;
      }
    }
    return curl_easy_init();
  }

  void release(CURL* e) {
    MutexLock lock(&mu_);
    idle_.push_back(e);
  }

  // One attempt; the answer, or the transport error (curl's code and words).
  std::pair<CURLcode, std::string> attempt(const Call& c, const std::string& payload_sha, Transfer* t) {
    CURL* e = lease();
    if (e == nullptr) return {CURLE_OUT_OF_MEMORY, "cannot create a curl handle"};
    curl_easy_reset(e);
    char errbuf[CURL_ERROR_SIZE] = {};
    curl_easy_setopt(e, CURLOPT_URL, c.url.c_str());
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, kConnectTimeoutMs);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, kStallS);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "extrafs-push/0.1");
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    http::set_tls(e, src_);
    const std::string_view m = c.method;
    if (m == "HEAD") {
      curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (m == "PUT" || m == "POST") {
      curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
      curl_easy_setopt(e, CURLOPT_READDATA, t);
      curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, on_seek);
      curl_easy_setopt(e, CURLOPT_SEEKDATA, t);
      if (m == "PUT") {
        curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(c.length));
      } else {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(c.length));
      }
    } else if (m == "DELETE") {
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
    }
    curl_slist* headers = nullptr;
    for (const auto& h : c.headers) headers = curl_slist_append(headers, h.c_str());
    http::set_s3_signing(e, src_, payload_sha, &headers);
    if (headers != nullptr) curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    CURLcode rc = curl_easy_perform(e);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, nullptr);
    curl_slist_free_all(headers);
    release(e);
    std::string detail = errbuf[0] != '\0' ? escape_control(errbuf) : curl_easy_strerror(rc);
    if (t->read_error != 0) detail = std::string("reading the file: ") + std::strerror(t->read_error);
    return {rc, detail};
  }

  // The call, tried again on transport errors and on answers that ask for it (429, 5xx). With
  // ok_404, a 404 is an answer like a 2xx (the caller says what it means).
  Result<Answer> perform(const Call& c, bool ok_404) {
    std::string payload_sha(kEmptySha256);
    if (c.body != nullptr) {
      if (src_.sigv4.empty()) {
        payload_sha = "UNSIGNED-PAYLOAD";
      } else {
        EXTRAFS_TRY(sha, body_sha256(*c.body, c.offset, c.length, c.what));
        payload_sha = std::move(sha);
      }
    }
    Error last{EIO, c.what + ": no attempt made"};
    int backoff_ms = kFirstBackoffMs;
    for (int i = 0; i < kAttempts; ++i) {
      Transfer t;
      t.call = &c;
      auto [rc, detail] = attempt(c, payload_sha, &t);
      Answer& a = t.answer;
      int64_t wait_ms = backoff_ms;
      bool retry = false;
      if (t.read_error != 0) return Error::from_errno(t.read_error, c.what + ": " + detail);
      if (a.body_too_big)
        return make_error(EFBIG, c.what + ": the answer is larger than " + std::to_string(c.keep) + " bytes");
      if (rc != CURLE_OK) {
        switch (rc) {
          case CURLE_COULDNT_RESOLVE_HOST:
          case CURLE_COULDNT_RESOLVE_PROXY:
          case CURLE_COULDNT_CONNECT:
          case CURLE_SEND_ERROR:
          case CURLE_RECV_ERROR:
          case CURLE_GOT_NOTHING:
          case CURLE_PARTIAL_FILE:
          case CURLE_OPERATION_TIMEDOUT:
          case CURLE_SSL_CONNECT_ERROR:
          case CURLE_HTTP2:
          case CURLE_HTTP2_STREAM:
            retry = true;
            break;
          default:
            break;
        }
        const int code = rc == CURLE_OPERATION_TIMEDOUT         ? ETIMEDOUT
                         : rc == CURLE_COULDNT_CONNECT          ? ECONNREFUSED
                         : rc == CURLE_PEER_FAILED_VERIFICATION ? EACCES
                                                                : EIO;
        last = Error{code, c.what + ": " + detail};
      } else if ((a.status >= 200 && a.status < 300) || (ok_404 && a.status == 404)) {
        return std::move(a);
      } else {
        std::string msg = fmt::format("{}: {} {}", c.what, a.status, escape_control(a.status_text));
        const std::string code = http::s3_error_code(a.body);
        if (!code.empty()) msg += " (" + code + ")";
        if (code == "NoSuchBucket") msg += ": the bucket does not exist";
        last = Error{status_errno(a.status), msg};
        if (a.status == 429 || a.status == 500 || a.status == 502 || a.status == 503 || a.status == 504) {
          retry = true;
          if (auto s = http::retry_after_s(a.retry_after)) {
            if (*s > kMaxWaitS) return make_error(EAGAIN, msg + fmt::format(", Retry-After: {} s", *s));
            wait_ms = std::max<int64_t>(wait_ms, *s * 1000);
          }
        }
      }
      if (c.on_bytes && *c.on_bytes && t.sent != 0) (*c.on_bytes)(-t.sent);
      if (!retry || i + 1 == kAttempts) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
      backoff_ms = std::min(backoff_ms * 2, kMaxBackoffMs);
    }
    return last;
  }

  // Multipart: stale uploads of this key (a push killed before) aborted, then initiate, the
  // parts, complete; the upload aborted if a step fails.
  Status put_multipart(std::string_view path, const std::string& url, const PutBody& body, uint64_t size,
                       std::string_view cache_control, const std::function<void(int64_t)>& on_bytes) {
    uint64_t part = std::max(options_.part_size, (size + kMaxParts - 1) / kMaxParts);
    part = std::max(part, kMinPartSize);
    abort_stale_uploads(path);
    Call init;
    init.method = "POST";
    init.url = url + "?" + http::make_s3_query({{"uploads", ""}});
    init.what = "start a multipart upload of " + shown(path);
    init.headers = {"Cache-Control: " + std::string(cache_control), "Content-Type: application/octet-stream"};
    const PutBody empty;
    init.body = &empty;
    EXTRAFS_TRY(a, perform(init, false));
    size_t pos = 0;
    auto id = http::xml_element(a.body, "UploadId", &pos);
    if (!id || id->empty()) return make_error(EIO, init.what + ": no UploadId in the answer");
    const std::string upload = *id;
    auto abort_upload = [&] {
      Call c;
      c.method = "DELETE";
      c.url = url + "?" + http::make_s3_query({{"uploadId", upload}});
      c.what = "abort the multipart upload of " + shown(path);
      (void)perform(c, true);
    };
    std::string complete = "<CompleteMultipartUpload>";
    int number = 0;
    for (uint64_t off = 0; off < size; off += part) {
      ++number;
      Call c;
      c.method = "PUT";
      c.url = url + "?" + http::make_s3_query({{"partNumber", std::to_string(number)}, {"uploadId", upload}});
      c.what = fmt::format("PUT part {} of {}", number, shown(path));
      c.body = &body;
      c.offset = off;
      c.length = std::min(part, size - off);
      c.on_bytes = &on_bytes;
      auto r = perform(c, false);
      if (!r.ok() || r->etag.empty()) {
        abort_upload();
        return r.ok() ? make_error(EIO, c.what + ": no ETag in the answer") : r.error();
      }
      std::string etag = r->etag;
      for (auto [from, to] :
           {std::pair<std::string_view, std::string_view>{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}}) {
        for (size_t p = etag.find(from); p != std::string::npos; p = etag.find(from, p + to.size()))
          etag.replace(p, from.size(), to);
      }
      complete += fmt::format("<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>", number, etag);
    }
    complete += "</CompleteMultipartUpload>";
    Call fin;
    fin.method = "POST";
    fin.url = url + "?" + http::make_s3_query({{"uploadId", upload}});
    fin.what = "complete the multipart upload of " + shown(path);
    fin.headers = {"Content-Type: application/xml"};
    const PutBody xml{-1, 0, complete};
    fin.body = &xml;
    fin.length = complete.size();
    auto done = perform(fin, false);
    // S3 may answer 200 and still report an error in the body.
    if (!done.ok() || done->body.find("<Error>") != std::string::npos) {
      abort_upload();
      if (!done.ok()) return done.error();
      const std::string code = http::s3_error_code(done->body);
      return make_error(EIO, fin.what + ": " + (code.empty() ? std::string("failed") : code));
    }
    return ok_status();
  }

  // Aborts the multipart uploads of `path` that a killed push left (they hold parts, and cost
  // storage, until aborted). Best effort: a service that does not list them is left alone.
  void abort_stale_uploads(std::string_view path) {
    const std::string key = key_prefix() + std::string(path);
    Call c;
    c.url = bucket_url() + "?" + http::make_s3_query({{"uploads", ""}, {"prefix", key}});
    c.what = "list the multipart uploads of " + shown(path);
    c.keep = kAnswerKeep;
    auto a = perform(c, true);
    if (!a.ok() || a->status == 404) return;
    size_t pos = 0;
    while (auto u = http::xml_element(a->body, "Upload", &pos)) {
      size_t p = 0;
      auto k = http::xml_element(*u, "Key", &p);
      p = 0;
      auto id = http::xml_element(*u, "UploadId", &p);
      if (!k || !id || *k != key) continue;
      Call d;
      d.method = "DELETE";
      auto url = key_url(path);
      if (!url.ok()) return;
      d.url = *url + "?" + http::make_s3_query({{"uploadId", *id}});
      d.what = "abort a stale multipart upload of " + shown(path);
      (void)perform(d, true);
    }
  }

  const std::string destination_;
  const HttpSource src_;
  const S3WriterOptions options_;
  Mutex mu_;
  std::vector<CURL*> idle_ GUARDED_BY(mu_);  // easy handles kept for their connections
};

}  // namespace

Result<std::unique_ptr<ObjectWriter>> make_s3_writer(const std::string& destination, const S3WriterOptions& options) {
  if (destination.rfind("s3://", 0) != 0)
    return make_error(EINVAL, "destination '" + escape_control(destination) + "' is not an s3://BUCKET[/PREFIX] URL");
  if (destination.find(';') != std::string::npos)
    return make_error(EINVAL, "push writes one bucket: give one s3:// URL, not mirrors separated by ';'");
  if (options.part_size < kMinPartSize) return make_error(EINVAL, "part size below S3's minimum of 5 MiB");
  if (options.multipart_threshold > kMaxSinglePut)
    return make_error(EINVAL, "multipart threshold above S3's single-PUT limit of 5 GiB");
  HttpOptions http = options.http;
  if (!http.proxy.empty())
    return make_error(EINVAL, "push takes no proxy= (it follows https_proxy from the environment)");
  EXTRAFS_TRY(src, resolve_http_source(destination, http));
  http::init_curl();
  return std::unique_ptr<ObjectWriter>(std::make_unique<S3Writer>(destination, std::move(src), options));
}

}  // namespace extrafs::backend
