// Small parsing helpers shared by the tools and the daemon.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace extrafs {

// "512M", "20G", "4096", "1.5G" -> bytes (binary units: K, M, G, T, optional trailing B/iB; a
// bare B). The whole string must match; a fraction is taken exactly and must come to a whole
// number of bytes ("1.1G" is refused); nullopt on anything else or on overflow.
std::optional<uint64_t> parse_size(std::string_view s);
// Decimal unsigned integer (no sign, no spaces), whole string, at most UINT64_MAX.
std::optional<uint64_t> parse_uint(std::string_view s);
// "7d", "12h", "30m", "45s", "0" -> seconds: decimal digits followed by one unit (s, m, h, d), or
// a bare "0". The whole string must match (no sign, space, fraction or second unit); nullopt on
// anything else, on a bare number other than 0, and on overflow.
std::optional<uint64_t> parse_duration(std::string_view s);
// "1.5 GiB" style rendering.
std::string format_size(uint64_t bytes);
// Splits "a,b\,c" on unescaped commas (FUSE -o syntax), unescaping "\,".
std::vector<std::string> split_options(std::string_view s);
// Whether `s` is 64 lowercase hex digits (a digest's hex).
bool is_hex64(std::string_view s);
// Whether `s` is a docker overlay2 cache-id: 64 lowercase hex digits, optionally followed by
// "-init" (a container's init layer). The one rule for every cache-id read from a store, a
// catalog or a data-root; it also keeps a cache-id safe as a single path component.
bool is_cache_id(std::string_view s);
// `s` without trailing ASCII whitespace (space, \t, \r, \n): the content of a one-line
// metadata file (docker's cache-id, link, lower, parent; a pid file; /proc/PID/comm).
std::string trim_trailing(std::string_view s);
// The components of the '/'-separated `path`, without empty and "." ones; false if one is "..".
// A leading '/' is not reported (callers that refuse absolute paths check it themselves).
bool split_path(std::string_view path, std::vector<std::string_view>* out);
// `s` made safe for a terminal or a log line, so that text that quotes user input or store
// content (a URL, a path, an option, a tag, a file's content) stays one printable line and
// cannot move the cursor or forge a row: "\n", "\r", "\t" for those, "\xNN" for the other
// bytes below 0x20 and 0x7f, for each byte of a C1 control (U+0080..U+009F) and for each byte
// that is not part of well-formed UTF-8. Other UTF-8 is kept, so the result is always
// well-formed UTF-8 without control characters. The one terminal escaping: tool errors
// (print_error), log lines (%* in log.h), `extrafs ls` and `stats`, and the base of the
// Prometheus escaping (tools/prometheus.h).
std::string escape_control(std::string_view s);

}  // namespace extrafs
