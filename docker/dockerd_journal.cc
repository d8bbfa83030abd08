#include "docker/dockerd_journal.h"

#include <unistd.h>

#include <ctime>
#include <initializer_list>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/posix_file.h"
#include "common/str_util.h"
#include "docker/dockerd_probe.h"

namespace extrafs::docker {

namespace {

constexpr const char* kJournalName = "extrafs-restart.json";
// A journal is a few KiB (a command line and an environment); anything far larger is not ours.
constexpr uint64_t kJournalMaxBytes = uint64_t{1} << 20;

nlohmann::json encode_all(const std::vector<std::string>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& s : v) a.push_back(journal_encode(s));
  return a;
}

// Reads the string `key` of `j` (absent: empty) into `out`, decoding it.
Status get_string(const nlohmann::json& j, const char* key, std::string* out) {
  out->clear();
  if (!j.contains(key)) return ok_status();
  if (!j[key].is_string()) return make_error(EBADMSG, std::string(key) + " is not a string");
  EXTRAFS_TRY(d, journal_decode(j[key].get<std::string>()));
  *out = std::move(d);
  return ok_status();
}

// Reads the list of strings `key` of `j` (absent: empty) into `out`, decoding each.
Status get_strings(const nlohmann::json& j, const char* key, std::vector<std::string>* out) {
  out->clear();
  if (!j.contains(key)) return ok_status();
  if (!j[key].is_array()) return make_error(EBADMSG, std::string(key) + " is not a list");
  for (const auto& s : j[key]) {
    if (!s.is_string()) return make_error(EBADMSG, std::string(key) + " holds a non-string");
    EXTRAFS_TRY(d, journal_decode(s.get<std::string>()));
    out->push_back(std::move(d));
  }
  return ok_status();
}

Result<RestartJournal> parse(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(EBADMSG, "not a JSON object");
  RestartJournal r;
  if (!j.contains("version") || !j["version"].is_number_integer() || j["version"].get<int>() != 1)
    return make_error(EBADMSG, "unknown version");
  if (!j.contains("dockerd") || !j["dockerd"].is_object()) return make_error(EBADMSG, "no dockerd");
  const auto& d = j["dockerd"];
  DockerdLaunch& l = r.dockerd;
  for (const auto& [key, field] : std::initializer_list<std::pair<const char*, std::string*>>{
           {"boot_id", &r.boot_id}, {"stopped_at", &r.stopped_at}, {"by", &r.by}})
    EXTRAFS_CHECK_STATUS(get_string(j, key, field));
  for (const auto& [key, field] :
       std::initializer_list<std::pair<const char*, std::string*>>{{"unit", &l.unit},
                                                                   {"exe", &l.exe},
                                                                   {"cwd", &l.cwd},
                                                                   {"stdout", &l.stdout_file},
                                                                   {"stderr", &l.stderr_file},
                                                                   {"api_socket", &l.api_socket}})
    EXTRAFS_CHECK_STATUS(get_string(d, key, field));
  for (const auto& [key, field] : std::initializer_list<std::pair<const char*, std::vector<std::string>*>>{
           {"sockets", &l.sockets}, {"argv", &l.argv}, {"env", &l.env}})
    EXTRAFS_CHECK_STATUS(get_strings(d, key, field));
  if (j.contains("by_pid") && j["by_pid"].is_number_integer()) r.by_pid = j["by_pid"].get<long>();
  if (d.contains("pid") && d["pid"].is_number_integer()) l.pid = d["pid"].get<long>();
  if (l.api_socket.empty()) return make_error(EBADMSG, "no api_socket");
  if (l.unit.empty() && (l.exe.empty() || l.argv.empty() || l.exe.front() != '/'))
    return make_error(EBADMSG, "neither a unit nor an executable and command line");
  if (!l.unit.empty() && (l.unit.find('/') != std::string::npos || l.unit.front() == '-'))
    return make_error(EBADMSG, "bad unit name");
  for (const auto& s : l.sockets)
    if (s.empty() || s.find('/') != std::string::npos || s.front() == '-')
      return make_error(EBADMSG, "bad socket unit name");
  return r;
}

}  // namespace

std::string restart_journal_path(const std::string& data_root) { return data_root + "/" + kJournalName; }

std::string journal_encode(const std::string& s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f && c != '%') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

Result<std::string> journal_decode(const std::string& s) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return make_error(EBADMSG, "truncated %XX");
    const int hi = hex(s[i + 1]), lo = hex(s[i + 2]);
    if (hi < 0 || lo < 0) return make_error(EBADMSG, "bad %XX");
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

std::string current_boot_id() {
  auto id = read_file("/proc/sys/kernel/random/boot_id", 4096);
  return id.ok() ? trim_trailing(*id) : "";
}

std::string own_command_line() {
  auto cmdline = read_file("/proc/self/cmdline", 1 << 20);
  std::string out;
  if (!cmdline.ok()) return out;
  for (const auto& a : split_cmdline(*cmdline)) out += (out.empty() ? "" : " ") + a;
  return out;
}

Status write_restart_journal(const std::string& data_root, const DockerdLaunch& l) {
  char at[32] = "";
  const std::time_t now = std::time(nullptr);
  struct tm tm;
  if (::gmtime_r(&now, &tm)) std::strftime(at, sizeof(at), "%Y-%m-%dT%H:%M:%SZ", &tm);
  nlohmann::json d = {{"pid", l.pid},
                      {"unit", journal_encode(l.unit)},
                      {"sockets", encode_all(l.sockets)},
                      {"exe", journal_encode(l.exe)},
                      {"argv", encode_all(l.argv)},
                      {"env", encode_all(l.env)},
                      {"cwd", journal_encode(l.cwd)},
                      {"stdout", journal_encode(l.stdout_file)},
                      {"stderr", journal_encode(l.stderr_file)},
                      {"api_socket", journal_encode(l.api_socket)}};
  nlohmann::json j = {{"version", 1},
                      {"what",
                       "dockerd was stopped by extrafs docker --restart; if this file is still here, "
                       "the next extrafs docker command on this data-root starts it again"},
                      {"boot_id", journal_encode(current_boot_id())},
                      {"stopped_at", journal_encode(at)},
                      {"by_pid", static_cast<long>(::getpid())},
                      {"by", journal_encode(own_command_line())},
                      {"dockerd", d}};
  return write_file_atomic(restart_journal_path(data_root), j.dump(2) + "\n", 0600);
}

Result<std::optional<RestartJournal>> read_restart_journal(const std::string& data_root) {
  const std::string path = restart_journal_path(data_root);
  if (!path_exists(path)) return std::optional<RestartJournal>();
  EXTRAFS_TRY(text, read_file(path, kJournalMaxBytes));
  auto r = parse(text);
  if (!r.ok()) return make_error(EBADMSG, path + " cannot be read as a restart journal (" + r.error().message + ")");
  return std::optional<RestartJournal>(std::move(*r));
}

Status remove_restart_journal(const std::string& data_root) {
  const std::string path = restart_journal_path(data_root);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return ok_status();
    return Error::from_errno(errno, path);
  }
  return fsync_dir(data_root);
}

}  // namespace extrafs::docker
