// The supervisor actor: starts N local child processes (the workers of
// `infergrid serve`), restarts each with exponential back-off when it dies, and
// stops them all on request or when the supervisor itself goes away.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/atom.hpp>
#include <caf/fwd.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "actors/interfaces.hpp"

namespace infergrid {

/// Asks the supervisor to stop every child (see supervisor_actor).
using halt_atom = caf::atom_constant<caf::atom("halt")>;

/// One child process to keep running.
struct child_spec {
  /// Names the child in logs and status, e.g. "w1".
  std::string name;
  /// argv[0] is the executable's path: execve, no PATH lookup.
  std::vector<std::string> argv;
  /// "KEY=VALUE" entries added to (overriding) the parent's environment.
  std::vector<std::string> env;
};

struct supervisor_config {
  std::vector<child_spec> children;
  /// First restart delay; doubles per consecutive unhealthy exit.
  int64_t backoff_initial_ms = 500;
  int64_t backoff_max_ms = 30000;
  /// A child is given up (logged at error; the others keep running) when it
  /// would need more than max_restarts restarts within restart_window_ms.
  int32_t max_restarts = 5;
  int64_t restart_window_ms = 60000;
  /// On halt (or exit of the supervisor): SIGTERM, then SIGKILL after this.
  int64_t stop_grace_ms = 5000;
  /// A child that ran at least this long before exiting resets its back-off.
  int64_t healthy_after_ms = 10000;
  /// How often the supervisor looks for exited children (waitpid WNOHANG).
  int64_t poll_interval_ms = 50;
};

/// What the supervisor knows about one child.
struct child_status {
  std::string name;
  /// 0 while no process runs.
  int pid = 0;
  /// Restarts since the supervisor started (not only within the window).
  int restarts = 0;
  /// "running", "backoff" (waiting to restart), "given_up" or "stopped" (halted).
  std::string state;
  /// How the last process ended: "exit 3", "signal 9 (Killed)",
  /// "exec failed: No such file or directory"; empty before the first exit.
  std::string last_exit;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, child_status& x) {
  return f(caf::meta::type_name("child_status"), x.name, x.pid, x.restarts, x.state,
           x.last_exit);
}

/// Local only (child_status is not registered for the middleman).
///
/// - status: the children in config order.
/// - halt: stops every child (SIGTERM to its process group, SIGKILL after
///   stop_grace_ms) and replies once all are reaped (or 5 s after the SIGKILL
///   at most, for a child stuck in the kernel). No child is (re)started after
///   a halt; the actor stays up for status until it is sent an exit.
using supervisor_actor
    = caf::typed_actor<caf::replies_to<status_atom>::with<std::vector<child_status>>,
                       caf::replies_to<halt_atom>::with<std::vector<child_status>>>;

/// Starts every child at once and supervises them:
/// - an exit of any kind, a clean `exit 0` included, is logged and restarted
///   after the back-off (a worker is meant to run until it is stopped); only a
///   halt or the supervisor's exit stops restarts;
/// - each child runs in its own process group (a terminal's ^C reaches only
///   the parent, which stops the children in order) with an empty signal
///   mask, SIGINT/SIGTERM/SIGCHLD/SIGPIPE at their defaults (other signals the
///   parent ignores stay ignored, e.g. nohup's SIGHUP), stdin on /dev/null
///   and no inherited file descriptors but 0-2; when its process ends, what
///   is left of its group is SIGKILLed, so no grandchild outlives it;
/// - a child gets SIGKILL when the thread that forked it (a CAF scheduler
///   thread, alive until the actor_system stops) dies, so children never
///   outlive a SIGKILLed parent (PR_SET_PDEATHSIG);
/// - an exit message with a reason other than `normal` (anon_send_exit with
///   user_shutdown) stops the children as halt does, then the actor quits with
///   that reason; exit_reason::kill skips the grace: the children are
///   SIGKILLed and reaped as the actor is destroyed.
/// Children are polled with waitid(pid, WNOHANG) every poll_interval_ms, and a
/// due restart happens at the first poll after its delay; the supervisor
/// installs no SIGCHLD handler and never waits for other children. A start
/// blocks the actor for the fork and exec (milliseconds; tens in a process
/// that maps LibTorch).
/// While children run or wait to restart, the actor keeps itself alive (its
/// poll timer holds a reference): stop it explicitly before the actor_system.
supervisor_actor spawn_supervisor(caf::actor_system& sys, supervisor_config cfg);

} // namespace infergrid
