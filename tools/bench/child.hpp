// What the benchmarks that run a child `infergrid` share: waiting for it to
// end, saying how it ended, and reading its log for a report.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <utility>

#include <sys/types.h>

namespace infergrid::bench {

/// Waits up to `deadline` for `pid` to end; its wait status, or -1.
int wait_for_exit(pid_t pid, std::chrono::steady_clock::duration deadline);

/// "exit code 0", "signal Killed", "still running" (status < 0).
std::string describe_status(int status);

/// The last `lines` lines of a log, each prefixed "  | ", for a failure report.
std::string log_tail(const std::string& path, std::size_t lines = 20);

/// Non-empty lines of a log (servers log at warn and above) and the first.
std::pair<int, std::string> log_lines(const std::string& path);

} // namespace infergrid::bench
