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

/// Ends the process with `code` if it is still running `deadline` from now.
/// Called once every actor of ours is down, just before the actor system is
/// destroyed: CAF 0.17.6's detached actors can leave their thread waiting
/// after the actor is gone (actor-framework#1196, fixed in 0.18), and the
/// actor system's destructor then waits for that thread for ever. Logs at
/// warn when it has to act. Durable state is closed by then (the job store
/// belongs to the worker actors, which are down).
void arm_exit_deadline(std::chrono::milliseconds deadline, int code, const char* who);

} // namespace infergrid
