// SIGINT/SIGTERM for serve, gateway and worker: a graceful stop whatever
// thread the kernel hands the signal to.
#pragma once

#include <chrono>
#include <csignal>

namespace infergrid {

/// Blocks SIGINT and SIGTERM in the calling thread (and in threads it starts
/// later) so that wait() can take them, and installs a handler for threads
/// started before main with the signals unblocked: OpenBLAS starts one, and
/// without a handler a SIGTERM landing there killed the process at once.
class stop_signals {
public:
  stop_signals();

  /// Waits up to `d` for a stop signal; returns its number, 0 on timeout.
  /// Each signal is returned once.
  int wait(std::chrono::milliseconds d);

private:
  sigset_t set_;
  long seen_ = 0;
};

} // namespace infergrid
