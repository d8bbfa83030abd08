#include "common/log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <syslog.h>
#include <unistd.h>

#include "common/str_util.h"

namespace extrafs {

bool parse_log_level(const std::string& name, spdlog::level::level_enum* out) {
  static const std::pair<const char*, spdlog::level::level_enum> kLevels[] = {{"trace", spdlog::level::trace},
                                                                              {"debug", spdlog::level::debug},
                                                                              {"info", spdlog::level::info},
                                                                              {"warn", spdlog::level::warn},
                                                                              {"error", spdlog::level::err}};
  for (const auto& [n, l] : kLevels) {
    if (name == n) {
      *out = l;
      return true;
    }
  }
  return false;
}

namespace {

// %* in a log pattern: the message with its control characters escaped.
class EscapedMessage final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    std::string escaped = escape_control(std::string_view(msg.payload.data(), msg.payload.size()));
    dest.append(escaped.data(), escaped.data() + escaped.size());
  }
  std::unique_ptr<spdlog::custom_flag_formatter> clone() const override { return std::make_unique<EscapedMessage>(); }
};

}  // namespace

std::unique_ptr<spdlog::formatter> make_log_formatter(const std::string& pattern) {
  auto f = std::make_unique<spdlog::pattern_formatter>();
  f->add_flag<EscapedMessage>('*').set_pattern(pattern);
  return f;
}

void init_logging(spdlog::level::level_enum level, bool to_syslog) {
  spdlog::drop("extrafs");
  std::shared_ptr<spdlog::logger> logger;
  if (to_syslog) {
    // Formatting on, so that the message goes through the same escaping; syslog adds the time,
    // ident and level itself.
    logger = spdlog::syslog_logger_mt("extrafs", "extrafs", LOG_PID, LOG_DAEMON, true);
    logger->set_formatter(make_log_formatter("%*"));
  } else {
    logger = spdlog::stderr_color_mt("extrafs");
    logger->set_formatter(make_log_formatter(std::string(kStderrLogPattern)));
  }
  logger->set_level(level);
  spdlog::set_default_logger(logger);
}

void print_error(std::string_view program, std::string_view message) {
  std::string line = std::string(program) + ": " + escape_control(message) + "\n";
  (void)!::write(2, line.data(), line.size());
}

}  // namespace extrafs
