// Logging set-up: one spdlog logger per module, all writing to one sink chosen at start-up
// (stderr in the foreground, syslog when the daemon runs in the background).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

namespace extrafs {

// Parses "trace|debug|info|warn|error"; false if unknown.
bool parse_log_level(const std::string& name, spdlog::level::level_enum* out);
// Installs the default logger. `to_syslog` sends everything to syslog with ident "extrafs".
// Either way every message is written with its control characters escaped (escape_control): a
// file name, image reference or server reply quoted in a log line can never start a new line
// that looks like another entry.
void init_logging(spdlog::level::level_enum level, bool to_syslog);

// A formatter for `pattern`, where the flag %* stands for the message with its control
// characters escaped (the installed loggers use it instead of %v).
std::unique_ptr<spdlog::formatter> make_log_formatter(const std::string& pattern);
inline constexpr std::string_view kStderrLogPattern = "%Y-%m-%dT%H:%M:%S.%e %^%l%$ %*";

// The one way the tools print a failure or warning: "<program>: <message>\n" on stderr, with the
// control characters of the message escaped (escape_control), so that it is always one line
// whatever user input it quotes. Thread-safe (one write per line).
void print_error(std::string_view program, std::string_view message);

}  // namespace extrafs
