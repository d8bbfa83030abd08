#include "common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <syslog.h>
#include <unistd.h>

#include "common/str_util.h"

namespace extrafs {

bool parse_log_level(const std::string& name, spdlog::level::level_enum* out) {
  static const std::pair<const char*, spdlog::level::level_enum> kLevels[] = {
      {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug}, {"info", spdlog::level::info},
      {"warn", spdlog::level::warn},   {"error", spdlog::level::err}};
  for (const auto& [n, l] : kLevels) {
    if (name == n) {
      *out = l;
      return true;
    }
  }
  return false;
}

void init_logging(spdlog::level::level_enum level, bool to_syslog) {
  spdlog::drop("extrafs");
  std::shared_ptr<spdlog::logger> logger;
  if (to_syslog) {
    logger = spdlog::syslog_logger_mt("extrafs", "extrafs", LOG_PID, LOG_DAEMON);
  } else {
    logger = spdlog::stderr_color_mt("extrafs");
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  }
  logger->set_level(level);
  spdlog::set_default_logger(logger);
}

void print_error(std::string_view program, std::string_view message) {
  std::string line = std::string(program) + ": " + escape_control(message) + "\n";
  (void)!::write(2, line.data(), line.size());
}

}  // namespace extrafs
