// caller_runs: an execution unit for a thread outside CAF's scheduler (an
// HTTP I/O thread, a local link's reader, the executor's thread) on which
// the actors that its messages wake run at once, on that thread.
//
// Why: a message to an idle scheduled actor from such a thread ends in
// `scheduler().enqueue`, which wakes a scheduler thread; on a 2-core VM each
// such wake-up costs 25-110 us, more than a small model's forward call. With
// the thread's unit passed to `enqueue`, CAF calls `exec_later` on it
// instead (as it does on a scheduler worker, where an actor that another
// actor wakes runs next on the same thread), and the unit resumes the actor
// here: the gateway and queue steps of an HTTP request run on its I/O
// thread, an answer's queue step on the link reader that read it.
//
// A unit takes jobs only inside a `window` on its own thread: a send in a
// window, and the run at the window's end. Anything else that reaches
// `exec_later` (another thread, or an actor that kept this unit as its
// context and sends from outside its own run) goes to the scheduler as
// before, so nothing is ever left waiting for a run that does not come.
//
// Bounds: at most `limits::resumes` actors per window and
// `limits::throughput` messages each (1 by default: the actor handles the
// message that woke it, and what else is in its mailbox, a group commit for
// instance, stays on the scheduler). An actor that is already running or
// queued is not woken, so it is not run here either. Detached actors keep
// their own threads; brokers their multiplexer.
//
// Rules for the thread: hold no lock that actor code may take, and never
// wait for an actor that may run here. Actor steps run this way are short
// but may write a local link's socket (the queue dispatching) or touch
// SQLite (a worker actor claiming); a thread that must never block (a hub's
// reader) says so to its writers (local_link.cpp). CAF core only.
#pragma once

#include <atomic>
#include <cstddef>
#include <deque>
#include <thread>

#include <caf/execution_unit.hpp>
#include <caf/fwd.hpp>
#include <caf/mailbox_element.hpp>

namespace infergrid {

class caller_runs final : public caf::execution_unit {
public:
  struct limits {
    /// Actors resumed per window; the rest go to the scheduler.
    std::size_t resumes = 8;
    /// Messages per resume (CAF's max_throughput for this unit).
    std::size_t throughput = 1;
  };

  /// A unit for this thread, for the lease's lifetime. Units come from a
  /// process-wide pool and are never freed: an actor run on one keeps a
  /// pointer to it (its context) until its next run elsewhere.
  class lease {
  public:
    lease(caf::actor_system& sys, limits lim);
    explicit lease(caf::actor_system& sys) : lease(sys, limits{}) {}
    ~lease();
    lease(const lease&) = delete;
    lease& operator=(const lease&) = delete;

    caller_runs& operator*() const {
      return *unit_;
    }
    caller_runs* operator->() const {
      return unit_;
    }
    caller_runs* get() const {
      return unit_;
    }

  private:
    caller_runs* unit_;
  };

  /// Opens the unit to jobs on this (its own) thread; at the end of the
  /// scope, runs what was woken inside it. Windows nest: the outermost one
  /// runs.
  class window {
  public:
    explicit window(caller_runs& unit);
    ~window();
    window(const window&) = delete;
    window& operator=(const window&) = delete;

  private:
    caller_runs& unit_;
  };

  /// Installs a leased unit as this thread's current one for the scope's
  /// lifetime (caller_runs::current, caller_runs::deliver).
  class scope {
  public:
    explicit scope(caller_runs& unit);
    ~scope();
    scope(const scope&) = delete;
    scope& operator=(const scope&) = delete;

  private:
    caller_runs* prev_;
  };

  /// Called by CAF for an actor woken with this unit: queued for the
  /// window's run on the unit's thread, otherwise handed to the scheduler.
  void exec_later(caf::resumable* job) override;

  /// Actors resumed here so far (tests and the log).
  std::size_t resumed() const {
    return resumed_;
  }

  /// The unit installed on this thread, or nullptr.
  static caller_runs* current();

  /// Enqueues `what` at `dest` with this thread's unit and runs what that
  /// woke; without a unit, as `dest->enqueue(what, nullptr)`.
  static void deliver(const caf::strong_actor_ptr& dest, caf::mailbox_element_ptr what);

  /// Enqueues `what` at `dest` from a scheduler thread instead of this one
  /// (a thread that must not do what the enqueue does, such as a socket
  /// write): wakes a scheduler thread, as a send from outside CAF always
  /// did. Messages handed over this way may overtake each other.
  static void deliver_elsewhere(caf::actor_system& sys, caf::strong_actor_ptr dest,
                                caf::mailbox_element_ptr what);

private:
  caller_runs() = default;

  /// Resumes the queued jobs within the limits; the outermost window calls it.
  void run();
  /// To the scheduler of the job's own actor system.
  void hand_off(caf::resumable* job);

  limits lim_;
  std::atomic<std::thread::id> owner_{};
  // Touched on the owner thread only.
  std::deque<caf::resumable*> jobs_;
  int open_ = 0;
  std::size_t resumed_ = 0;
  std::size_t window_resumes_ = 0;
};

} // namespace infergrid
