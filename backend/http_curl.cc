#include "backend/http_curl.h"

#include <signal.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>
#include <mutex>

#include "backend/url.h"
#include "common/str_util.h"

namespace extrafs::backend::http {

namespace {
constexpr int64_t kMaxRetryAfterS = 3600;
std::once_flag g_curl_init;
}  // namespace

void init_curl() {
  std::call_once(g_curl_init, [] {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct sigaction sa {};
    if (::sigaction(SIGPIPE, nullptr, &sa) == 0 && sa.sa_handler == SIG_DFL) ::signal(SIGPIPE, SIG_IGN);
  });
}

void set_tls(CURL* e, const HttpSource& s) {
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  if (!s.cacert.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, s.cacert.c_str());
}

void set_s3_signing(CURL* e, const HttpSource& s, std::string_view payload_sha256, curl_slist** headers) {
  if (s.sigv4.empty()) return;
  curl_easy_setopt(e, CURLOPT_AWS_SIGV4, s.sigv4.c_str());
  curl_easy_setopt(e, CURLOPT_USERNAME, s.credentials.access_key.c_str());
  curl_easy_setopt(e, CURLOPT_PASSWORD, s.credentials.secret_key.c_str());
  *headers = curl_slist_append(*headers, ("x-amz-content-sha256: " + std::string(payload_sha256)).c_str());
  if (!s.credentials.session_token.empty())
    *headers = curl_slist_append(*headers, ("x-amz-security-token: " + s.credentials.session_token).c_str());
}

std::string make_s3_query(std::vector<std::pair<std::string, std::string>> params) {
  std::sort(params.begin(), params.end());
  std::string q;
  for (const auto& [k, v] : params) {
    if (!q.empty()) q += '&';
    q += percent_encode_segment(k) + "=" + percent_encode_segment(v);
  }
  return q;
}

std::string s3_error_code(const std::string& body) {
  size_t a = body.find("<Code>");
  if (a == std::string::npos) return "";
  size_t b = body.find("</Code>", a);
  if (b == std::string::npos || b - a > 70) return "";
  return escape_control(body.substr(a + 6, b - a - 6));
}

std::optional<std::string> xml_element(std::string_view xml, std::string_view tag, size_t* pos) {
  const std::string open = "<" + std::string(tag) + ">", close = "</" + std::string(tag) + ">";
  size_t a = xml.find(open, *pos);
  if (a == std::string_view::npos) return std::nullopt;
  a += open.size();
  size_t b = xml.find(close, a);
  if (b == std::string_view::npos) return std::nullopt;
  *pos = b + close.size();
  std::string_view raw = xml.substr(a, b - a);
  std::string out;
  out.reserve(raw.size());
  static constexpr std::pair<std::string_view, char> kEntities[] = {
      {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
  for (size_t i = 0; i < raw.size();) {
    bool done = false;
    if (raw[i] == '&') {
      for (const auto& [name, c] : kEntities) {
        if (raw.substr(i, name.size()) == name) {
          out += c;
          i += name.size();
          done = true;
          break;
        }
      }
    }
    if (!done) out += raw[i++];
  }
  return out;
}

std::optional<int64_t> retry_after_s(const std::string& v) {
  if (v.empty()) return std::nullopt;
  int64_t s = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), s);
  if (ec == std::errc() && p == v.data() + v.size()) return std::clamp<int64_t>(s, 0, kMaxRetryAfterS);
  time_t t = curl_getdate(v.c_str(), nullptr);
  if (t < 0) return std::nullopt;
  return std::clamp<int64_t>(static_cast<int64_t>(t - ::time(nullptr)), 0, kMaxRetryAfterS);
}

bool header_is(std::string_view line, std::string_view name) {
  if (line.size() < name.size()) return false;
  for (size_t i = 0; i < name.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(line[i])) != name[i]) return false;
  return true;
}

std::string_view trim_header(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

}  // namespace extrafs::backend::http
