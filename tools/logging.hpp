// Process-wide logging with spdlog: human-readable text or JSON lines.
#pragma once

#include <string>

namespace infergrid {

/// Configures the default spdlog logger (stderr). `format` is "text" or
/// "json"; `level` one of trace|debug|info|warn|error|off.
void setup_logging(const std::string& level, const std::string& format);

} // namespace infergrid
