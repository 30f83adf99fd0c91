// Supervisor actor: fork+exec of child processes, a waitpid(WNOHANG) poll per
// child, restarts with exponential back-off, and graceful or hard stops.
#include "actors/supervisor.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <deque>
#include <map>
#include <thread>
#include <utility>

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <caf/actor_system.hpp>
#include <caf/exit_reason.hpp>
#include <caf/optional.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <caf/typed_response_promise.hpp>

#include <spdlog/spdlog.h>

extern char** environ;

namespace infergrid {

namespace {

using poll_atom = caf::atom_constant<caf::atom("sup_poll")>;

/// The supervisor's own interface: the public one plus its poll timer.
using supervisor_impl = supervisor_actor::extend<caf::reacts_to<poll_atom>>;

/// A halt's deadline for children that a SIGKILL did not reap (stuck in the
/// kernel, e.g. in a device driver): the halt replies anyway after this.
constexpr int64_t kill_reap_timeout_ms = 5000;

int64_t steady_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

std::string signal_name(int sig) {
#if defined(__GLIBC__) && __GLIBC_PREREQ(2, 32)
  const char* name = sigdescr_np(sig); // thread-safe, unlike strsignal
#else
  const char* name = nullptr;
#endif
  return "signal " + std::to_string(sig) + " (" + (name ? name : "unknown") + ")";
}

/// "exit 3", "signal 9 (Killed)", "signal 11 (Segmentation fault), core dumped".
std::string describe_wait_status(int status) {
  if (WIFEXITED(status))
    return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return signal_name(WTERMSIG(status)) + (WCOREDUMP(status) ? ", core dumped" : "");
  return "status " + std::to_string(status);
}

std::string errno_text(int err) {
  char buf[256];
  // GNU strerror_r returns a pointer that may or may not be buf.
  return strerror_r(err, buf, sizeof(buf));
}

/// Signals the child's process group (it is its leader) and falls back to the
/// process alone. Only called while the child is not yet reaped, so its pid
/// and group id cannot have been reused.
void signal_child(int pid, int sig) {
  if (::kill(-pid, sig) != 0)
    ::kill(pid, sig);
}

/// Moves fd to a number above 2 (stdio may be closed in the parent), keeping
/// it close-on-exec; returns the fd to use.
int above_stdio(int fd) {
  if (fd < 0 || fd > 2)
    return fd;
  int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  ::close(fd);
  return moved;
}

/// Everything the forked child touches, prepared before fork: between fork
/// and exec the child only calls async-signal-safe functions.
struct exec_plan {
  std::vector<std::string> args;
  std::vector<std::string> env;
  std::vector<char*> argv;
  std::vector<char*> envp;
  pid_t parent = 0;
  int devnull = -1;
  int err_fd = -1;
  int max_fd = 1024;
};

std::vector<std::string> merged_environment(const std::vector<std::string>& extra) {
  std::vector<std::string> out;
  std::map<std::string, std::size_t> index; // key -> position in out
  auto add = [&](const std::string& entry) {
    auto eq = entry.find('=');
    auto key = entry.substr(0, eq);
    auto i = index.find(key);
    if (i != index.end()) {
      out[i->second] = entry;
    } else {
      index.emplace(key, out.size());
      out.push_back(entry);
    }
  };
  for (char** e = environ; e && *e; ++e)
    add(*e);
  for (auto& entry : extra)
    add(entry);
  return out;
}

/// The child's side of fork: runs in a copy of one thread of a multithreaded
/// process, so only async-signal-safe calls. Never returns.
[[noreturn]] void exec_child(const exec_plan& plan) {
  // Handlers of the parent must not run here, and the stop signals must
  // reach the child even where the parent ignores them.
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP)
      continue;
    struct sigaction old;
    if (::sigaction(sig, nullptr, &old) != 0)
      continue; // glibc-internal signals
    bool caught = (old.sa_flags & SA_SIGINFO) != 0
                  || (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN);
    bool reset = sig == SIGINT || sig == SIGTERM || sig == SIGCHLD || sig == SIGPIPE;
    if (caught || reset) {
      struct sigaction dfl;
      std::memset(&dfl, 0, sizeof(dfl));
      dfl.sa_handler = SIG_DFL;
      sigemptyset(&dfl.sa_mask);
      ::sigaction(sig, &dfl, nullptr);
    }
  }
  // Die with the parent (the forking thread, strictly); the parent may have
  // died before the prctl took effect.
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != plan.parent)
    ::_exit(127);
  // Own process group: a terminal's ^C goes to the parent alone, which stops
  // the children in order; the supervisor signals the whole group.
  ::setpgid(0, 0);
  if (plan.devnull >= 0)
    ::dup2(plan.devnull, 0);
  // No inherited descriptors but stdio (e.g. the gateway's listening socket);
  // err_fd is close-on-exec and stays open until the exec.
  auto close_from_to = [&](unsigned lo, unsigned hi) {
    if (lo > hi)
      return;
    if (::close_range(lo, hi, 0) == 0)
      return;
    for (unsigned fd = lo; fd <= hi && fd < static_cast<unsigned>(plan.max_fd); ++fd)
      ::close(static_cast<int>(fd));
  };
  close_from_to(3, static_cast<unsigned>(plan.err_fd) - 1);
  close_from_to(static_cast<unsigned>(plan.err_fd) + 1, ~0U);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::execve(plan.argv[0], plan.argv.data(), plan.envp.data());
  int err = errno;
  ssize_t ignored = ::write(plan.err_fd, &err, sizeof(err));
  (void)ignored;
  ::_exit(127);
}

struct start_result {
  int pid = 0;
  /// Why no process runs: "spawn failed: ...", "exec failed: ...".
  std::string error;
};

/// Forks and execs one child. Blocks only until the child has exec'd (or
/// failed to): a close-on-exec pipe reports an exec error.
start_result start_process(const child_spec& spec) {
  if (spec.argv.empty() || spec.argv.front().empty())
    return {0, "spawn failed: empty argv"};
  exec_plan plan;
  plan.args = spec.argv;
  plan.env = merged_environment(spec.env);
  for (auto& a : plan.args)
    plan.argv.push_back(a.data());
  plan.argv.push_back(nullptr);
  for (auto& e : plan.env)
    plan.envp.push_back(e.data());
  plan.envp.push_back(nullptr);
  plan.parent = ::getpid();
  struct rlimit lim;
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY)
    plan.max_fd = static_cast<int>(std::min<rlim_t>(lim.rlim_cur, 1 << 20));
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return {0, "spawn failed: pipe: " + errno_text(errno)};
  int read_fd = above_stdio(fds[0]);
  plan.err_fd = above_stdio(fds[1]);
  plan.devnull = above_stdio(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  auto close_parent_fds = [&] {
    if (plan.err_fd >= 0)
      ::close(plan.err_fd);
    if (plan.devnull >= 0)
      ::close(plan.devnull);
  };
  if (read_fd < 0 || plan.err_fd < 0) {
    int err = errno;
    close_parent_fds();
    if (read_fd >= 0)
      ::close(read_fd);
    return {0, "spawn failed: pipe: " + errno_text(err)};
  }
  pid_t pid = ::fork();
  if (pid == 0)
    exec_child(plan);
  int fork_err = errno;
  close_parent_fds();
  if (pid < 0) {
    ::close(read_fd);
    return {0, "spawn failed: fork: " + errno_text(fork_err)};
  }
  // Also from this side, so that the group exists before the first signal.
  ::setpgid(pid, pid);
  int exec_err = 0;
  ssize_t n;
  do {
    n = ::read(read_fd, &exec_err, sizeof(exec_err));
  } while (n < 0 && errno == EINTR);
  ::close(read_fd);
  if (n == static_cast<ssize_t>(sizeof(exec_err))) {
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return {0, "exec failed: " + errno_text(exec_err)};
  }
  return {static_cast<int>(pid), {}};
}

/// Whether child pid has ended; if so, kills what is left of its process
/// group, reaps it and describes how it ended. Never blocks.
caf::optional<std::string> try_reap(int pid) {
  siginfo_t info;
  std::memset(&info, 0, sizeof(info));
  // WNOWAIT: peek, so that the zombie keeps the group id from being reused
  // until the group's leftovers are killed.
  if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
    if (errno == EINTR)
      return caf::none;
    // ECHILD: someone else reaped it (a waitpid(-1) elsewhere in the process).
    return std::string{"unknown (reaped elsewhere: "} + errno_text(errno) + ")";
  }
  if (info.si_pid == 0)
    return caf::none;
  ::kill(-pid, SIGKILL);
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid)
    return describe_wait_status(status);
  return std::string{"unknown (waitpid: "} + errno_text(errno) + ")";
}

struct child_entry {
  child_spec spec;
  int pid = 0;
  int restarts = 0;
  std::string state;
  std::string last_exit;
  /// Consecutive exits without a healthy run: the back-off exponent.
  int failures = 0;
  /// Steady ms of the restarts within the window.
  std::deque<int64_t> restart_times;
  int64_t started_at = 0;
  int64_t restart_at = 0;
};

using halt_promise = caf::typed_response_promise<std::vector<child_status>>;

struct supervisor_state {
  supervisor_config cfg;
  std::vector<child_entry> children;
  bool polling = false;
  bool halting = false;
  bool halt_done = false;
  bool sigkilled = false;
  int64_t kill_at = 0;
  int64_t give_up_at = 0;
  std::vector<halt_promise> halt_waiters;
  /// Set by an exit message: quit with it once the children are stopped.
  caf::optional<caf::error> exit_reason;

  supervisor_state() = default;
  supervisor_state(const supervisor_state&) = delete;
  supervisor_state& operator=(const supervisor_state&) = delete;

  /// The actor is going away (exit_reason::kill, or an exception): no grace.
  /// SIGKILLs every child's group and reaps them, waiting at most 2 s in all.
  ~supervisor_state() {
    std::vector<child_entry*> left;
    for (auto& c : children)
      if (c.pid > 0) {
        signal_child(c.pid, SIGKILL);
        left.push_back(&c);
      }
    auto deadline = steady_ms() + 2000;
    while (!left.empty()) {
      for (auto i = left.begin(); i != left.end();) {
        if (auto how = try_reap((*i)->pid)) {
          spdlog::warn("supervisor: {} (pid {}) killed as the supervisor exits: {}",
                       (*i)->spec.name, (*i)->pid, *how);
          i = left.erase(i);
        } else {
          ++i;
        }
      }
      if (left.empty() || steady_ms() >= deadline)
        break;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    for (auto* c : left)
      spdlog::error("supervisor: {} (pid {}) not reaped 2 s after SIGKILL", c->spec.name,
                    c->pid);
  }
};

using supervisor_pointer = supervisor_impl::stateful_pointer<supervisor_state>;

std::vector<child_status> snapshot(const supervisor_state& st) {
  std::vector<child_status> out;
  out.reserve(st.children.size());
  for (auto& c : st.children)
    out.push_back(child_status{c.spec.name, c.pid, c.restarts, c.state, c.last_exit});
  return out;
}

bool any_running(const supervisor_state& st) {
  return std::any_of(st.children.begin(), st.children.end(),
                     [](const child_entry& c) { return c.pid > 0; });
}

int64_t backoff_delay(const supervisor_config& cfg, int failures) {
  int64_t delay = std::max<int64_t>(cfg.backoff_initial_ms, 0);
  for (int i = 0; i < failures && delay < cfg.backoff_max_ms; ++i)
    delay *= 2;
  return std::min(delay, cfg.backoff_max_ms);
}

/// Arms the next poll unless one is pending or nothing needs watching.
void arm_poll(supervisor_pointer self) {
  auto& st = self->state;
  if (st.polling)
    return;
  bool needed
      = std::any_of(st.children.begin(), st.children.end(), [](const child_entry& c) {
          return c.pid > 0 || c.state == "backoff";
        });
  if (!needed)
    return;
  st.polling = true;
  self->delayed_send(
      self, std::chrono::milliseconds(std::max<int64_t>(st.cfg.poll_interval_ms, 1)),
      poll_atom::value);
}

/// A process of c ended (or could not be started): schedules its restart or
/// gives it up.
void on_ended(supervisor_state& st, child_entry& c, int old_pid, const std::string& how,
              int64_t now) {
  c.pid = 0;
  c.last_exit = how;
  auto ran = now - c.started_at;
  if (st.halting) {
    c.state = "stopped";
    spdlog::info("supervisor: {} (pid {}) stopped: {}", c.spec.name, old_pid, how);
    return;
  }
  if (ran >= st.cfg.healthy_after_ms)
    c.failures = 0;
  while (!c.restart_times.empty()
         && c.restart_times.front() <= now - st.cfg.restart_window_ms)
    c.restart_times.pop_front();
  if (static_cast<int64_t>(c.restart_times.size()) >= st.cfg.max_restarts) {
    c.state = "given_up";
    spdlog::error("supervisor: {} (pid {}) ended after {} ms: {}; {} restarts within "
                  "{} ms, giving up on it",
                  c.spec.name, old_pid, ran, how, c.restart_times.size(),
                  st.cfg.restart_window_ms);
    return;
  }
  auto delay = backoff_delay(st.cfg, c.failures);
  ++c.failures;
  c.state = "backoff";
  c.restart_at = now + delay;
  spdlog::warn("supervisor: {} (pid {}) ended after {} ms: {}; restarting in {} ms",
               c.spec.name, old_pid, ran, how, delay);
}

/// Starts (or restarts) c now.
void start_child(supervisor_state& st, child_entry& c, bool restart) {
  auto now = steady_ms();
  if (restart) {
    ++c.restarts;
    c.restart_times.push_back(now);
  }
  c.started_at = now;
  auto r = start_process(c.spec);
  if (r.pid > 0) {
    c.pid = r.pid;
    c.state = "running";
    spdlog::info("supervisor: started {} (pid {}){}", c.spec.name, c.pid,
                 restart ? " (restart " + std::to_string(c.restarts) + ")" : "");
    return;
  }
  on_ended(st, c, 0, r.error, now);
}

void finish_halt(supervisor_pointer self) {
  auto& st = self->state;
  st.halt_done = true;
  auto result = snapshot(st);
  for (auto& rp : st.halt_waiters)
    rp.deliver(result);
  st.halt_waiters.clear();
  if (st.exit_reason) {
    auto reason = std::move(*st.exit_reason);
    st.exit_reason = caf::none;
    self->quit(std::move(reason));
  }
}

/// SIGTERM to every running child; children waiting to restart stay stopped.
void begin_halt(supervisor_pointer self) {
  auto& st = self->state;
  if (st.halting)
    return;
  st.halting = true;
  auto now = steady_ms();
  st.kill_at = now + std::max<int64_t>(st.cfg.stop_grace_ms, 0);
  for (auto& c : st.children) {
    if (c.pid > 0) {
      spdlog::info("supervisor: stopping {} (pid {}): SIGTERM, SIGKILL after {} ms",
                   c.spec.name, c.pid, st.cfg.stop_grace_ms);
      signal_child(c.pid, SIGTERM);
    } else if (c.state == "backoff") {
      c.state = "stopped";
    }
  }
  arm_poll(self);
}

void poll(supervisor_pointer self) {
  auto& st = self->state;
  auto now = steady_ms();
  for (auto& c : st.children) {
    if (c.pid <= 0)
      continue;
    if (auto how = try_reap(c.pid))
      on_ended(st, c, c.pid, *how, now);
  }
  if (st.halting) {
    if (!st.halt_done) {
      if (any_running(st) && !st.sigkilled && now >= st.kill_at) {
        st.sigkilled = true;
        st.give_up_at = now + kill_reap_timeout_ms;
        for (auto& c : st.children)
          if (c.pid > 0) {
            spdlog::warn("supervisor: {} (pid {}) still running {} ms after SIGTERM; "
                         "SIGKILL",
                         c.spec.name, c.pid, st.cfg.stop_grace_ms);
            signal_child(c.pid, SIGKILL);
          }
      }
      if (!any_running(st)) {
        finish_halt(self);
      } else if (st.sigkilled && now >= st.give_up_at) {
        for (auto& c : st.children)
          if (c.pid > 0)
            spdlog::error("supervisor: {} (pid {}) not reaped {} ms after SIGKILL",
                          c.spec.name, c.pid, kill_reap_timeout_ms);
        finish_halt(self);
      }
    }
  } else {
    for (auto& c : st.children)
      if (c.state == "backoff" && c.restart_at <= now)
        start_child(st, c, true);
  }
  arm_poll(self);
}

supervisor_impl::behavior_type supervisor_behavior(supervisor_pointer self,
                                                   supervisor_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  for (auto& spec : st.cfg.children) {
    child_entry c;
    c.spec = spec;
    st.children.push_back(std::move(c));
  }
  for (auto& c : st.children)
    start_child(st, c, false);
  arm_poll(self);
  self->set_exit_handler([self](caf::exit_msg& em) {
    if (em.reason == caf::exit_reason::normal)
      return; // a linked actor finished; not a request to stop
    auto& st = self->state;
    if (st.halt_done || !any_running(st)) {
      self->quit(std::move(em.reason));
      return;
    }
    st.exit_reason = std::move(em.reason);
    begin_halt(self);
  });
  return {
      [self](status_atom) { return snapshot(self->state); },
      [self](halt_atom) -> caf::result<std::vector<child_status>> {
        auto& st = self->state;
        begin_halt(self);
        if (st.halt_done || !any_running(st)) {
          st.halt_done = true;
          return snapshot(st);
        }
        auto rp = self->make_response_promise<std::vector<child_status>>();
        st.halt_waiters.push_back(rp);
        return rp;
      },
      [self](poll_atom) {
        self->state.polling = false;
        poll(self);
      },
  };
}

} // namespace

supervisor_actor spawn_supervisor(caf::actor_system& sys, supervisor_config cfg) {
  return sys.spawn(supervisor_behavior, std::move(cfg));
}

} // namespace infergrid
