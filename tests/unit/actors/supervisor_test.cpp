// Supervisor tests: real child processes (/bin/sh, /bin/sleep) under a real
// actor_system; every wait polls against a deadline.
#define CAF_SUITE supervisor
#include "tests/unit/test_support.hpp"

#include "actors/supervisor.hpp"

#include <caf/test/unit_test.hpp>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include <signal.h>
#include <sys/types.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

using namespace infergrid;
using namespace std::chrono_literals;

namespace {

using clock_type = std::chrono::steady_clock;

int64_t ms_since(clock_type::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start)
      .count();
}

/// True when no process has this pid (a reaped child, not a zombie).
bool gone(int pid) {
  return ::kill(pid, 0) == -1 && errno == ESRCH;
}

/// Whether a live (not zombie) process is in process group pgid. Grandchildren
/// killed with their group become zombies of init, which reaps them when it
/// likes, so kill(-pgid, 0) could still succeed: read /proc instead.
bool group_alive(int pgid) {
  for (auto& entry : std::filesystem::directory_iterator("/proc")) {
    std::ifstream in(entry.path() / "stat");
    std::string line;
    if (!std::getline(in, line))
      continue; // not a process, or it went away
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    auto close = line.rfind(')');
    if (close == std::string::npos)
      continue;
    std::istringstream rest(line.substr(close + 1));
    char state = 0;
    int ppid = 0;
    int pgrp = 0;
    if (rest >> state >> ppid >> pgrp && pgrp == pgid && state != 'Z' && state != 'X')
      return true;
  }
  return false;
}

child_spec child(std::string name, std::vector<std::string> argv,
                 std::vector<std::string> env = {}) {
  return child_spec{std::move(name), std::move(argv), std::move(env)};
}

child_spec shell(std::string name, std::string script,
                 std::vector<std::string> env = {}) {
  return child(std::move(name), {"/bin/sh", "-c", std::move(script)}, std::move(env));
}

struct fixture {
  caf::actor_system_config cfg;
  caf::actor_system sys;
  caf::scoped_actor self;
  std::vector<supervisor_actor> sups;
  testing::temp_dir dir;

  fixture() : sys(cfg), self(sys) {}

  ~fixture() {
    // Whatever a test left running: exit_reason::kill SIGKILLs the children.
    for (auto& s : sups)
      caf::anon_send_exit(s, caf::exit_reason::kill);
  }

  /// Small times, so that a crash loop is given up within a second.
  static supervisor_config small_config(std::vector<child_spec> children) {
    supervisor_config c;
    c.children = std::move(children);
    c.backoff_initial_ms = 20;
    c.backoff_max_ms = 1000;
    c.max_restarts = 3;
    c.restart_window_ms = 10000;
    c.stop_grace_ms = 300;
    return c;
  }

  supervisor_actor spawn(supervisor_config c) {
    auto s = spawn_supervisor(sys, std::move(c));
    sups.push_back(s);
    return s;
  }

  std::vector<child_status> status(const supervisor_actor& s) {
    std::vector<child_status> out;
    self->request(s, 5s, status_atom::value)
        .receive(
            [&](std::vector<child_status>& xs) { out = std::move(xs); },
            [&](caf::error& err) { CAF_FAIL("status failed: " << sys.render(err)); });
    return out;
  }

  std::vector<child_status> halt(const supervisor_actor& s) {
    std::vector<child_status> out;
    self->request(s, 20s, halt_atom::value)
        .receive([&](std::vector<child_status>& xs) { out = std::move(xs); },
                 [&](caf::error& err) { CAF_FAIL("halt failed: " << sys.render(err)); });
    return out;
  }

  /// Polls the supervisor's status until pred holds; fails after 10 s.
  std::vector<child_status>
  wait_status(const supervisor_actor& s,
              const std::function<bool(const std::vector<child_status>&)>& pred,
              const char* what) {
    auto deadline = clock_type::now() + 10s;
    for (;;) {
      auto xs = status(s);
      if (pred(xs))
        return xs;
      if (clock_type::now() >= deadline)
        CAF_FAIL("timed out waiting for " << what);
      std::this_thread::sleep_for(5ms);
    }
  }

  /// Waits until child i runs (a pid is known).
  child_status wait_running(const supervisor_actor& s, std::size_t i) {
    return wait_status(
               s,
               [i](auto& xs) { return xs.at(i).state == "running" && xs.at(i).pid > 0; },
               "a running child")
        .at(i);
  }

  /// Waits until the file exists (a child's sign that it is ready).
  void wait_file(const std::string& path) {
    auto deadline = clock_type::now() + 10s;
    while (!std::filesystem::exists(path)) {
      if (clock_type::now() >= deadline)
        CAF_FAIL("timed out waiting for " << path);
      std::this_thread::sleep_for(5ms);
    }
  }

  /// Polls until the child is reaped and no live process is left in its
  /// group (the child leads it); fails after 10 s.
  void wait_gone(int pid) {
    auto deadline = clock_type::now() + 10s;
    while (!gone(pid) || group_alive(pid)) {
      if (clock_type::now() >= deadline)
        CAF_FAIL("process " << pid << " (or its group) still exists");
      std::this_thread::sleep_for(5ms);
    }
  }

  /// Whether the supervisor terminated within 10 s.
  bool wait_down(const supervisor_actor& s) {
    self->monitor(s);
    bool down = false;
    self->receive([&](caf::down_msg&) { down = true; }, caf::after(10s) >> [] {});
    return down;
  }
};

} // namespace

CAF_TEST_FIXTURE_SCOPE(supervisor_tests, fixture)

CAF_TEST(a crashing child is restarted with backoff and given up) {
  auto start = clock_type::now();
  auto s = spawn(small_config({shell("w1", "exit 3")}));
  auto xs = wait_status(
      s, [](auto& xs) { return xs.at(0).state == "given_up"; }, "given_up");
  auto elapsed = ms_since(start);
  CAF_REQUIRE_EQUAL(xs.size(), 1u);
  CAF_CHECK_EQUAL(xs[0].name, "w1");
  CAF_CHECK_EQUAL(xs[0].restarts, 3);
  CAF_CHECK_EQUAL(xs[0].pid, 0);
  CAF_CHECK_EQUAL(xs[0].last_exit, "exit 3");
  // Three restarts after 20, 40 and 80 ms: the back-off doubles.
  CAF_CHECK_GREATER_OR_EQUAL(elapsed, 140);
  // Given up for good: still given up a few polls later.
  std::this_thread::sleep_for(150ms);
  xs = status(s);
  CAF_CHECK_EQUAL(xs[0].state, "given_up");
  CAF_CHECK_EQUAL(xs[0].restarts, 3);
}

CAF_TEST(a child killed by a signal is restarted with a new pid) {
  auto s = spawn(small_config({child("w1", {"/bin/sleep", "30"})}));
  auto first = wait_running(s, 0);
  CAF_CHECK_EQUAL(first.restarts, 0);
  CAF_CHECK_EQUAL(first.last_exit, "");
  CAF_REQUIRE_EQUAL(::kill(first.pid, SIGKILL), 0);
  auto xs = wait_status(
      s,
      [&](auto& xs) {
        return xs[0].state == "running" && xs[0].pid > 0 && xs[0].pid != first.pid;
      },
      "a restarted child");
  CAF_CHECK_EQUAL(xs[0].restarts, 1);
  CAF_CHECK_EQUAL(xs[0].last_exit, "signal 9 (Killed)");
  CAF_CHECK(gone(first.pid));
  auto second = xs[0].pid;
  auto stopped = halt(s);
  CAF_CHECK_EQUAL(stopped[0].state, "stopped");
  CAF_CHECK_EQUAL(stopped[0].last_exit, "signal 15 (Terminated)");
  wait_gone(second);
}

CAF_TEST(halt stops a child with a TERM signal within the grace) {
  auto cfg = small_config({child("w1", {"/bin/sleep", "30"})});
  cfg.stop_grace_ms = 5000;
  auto s = spawn(cfg);
  auto pid = wait_running(s, 0).pid;
  auto start = clock_type::now();
  auto xs = halt(s);
  auto elapsed = ms_since(start);
  CAF_REQUIRE_EQUAL(xs.size(), 1u);
  CAF_CHECK_EQUAL(xs[0].state, "stopped");
  CAF_CHECK_EQUAL(xs[0].pid, 0);
  CAF_CHECK_EQUAL(xs[0].last_exit, "signal 15 (Terminated)");
  CAF_CHECK_LESS(elapsed, 4000);
  CAF_CHECK(gone(pid));
  // Not restarted, and a second halt answers at once.
  // Locals: CAF_CHECK_EQUAL would read a temporary vector after its end.
  auto halted = halt(s);
  CAF_CHECK_EQUAL(halted[0].state, "stopped");
  auto after = status(s);
  CAF_CHECK_EQUAL(after[0].restarts, 0);
}

CAF_TEST(halt kills a child that ignores TERM once the grace is over) {
  auto ready = dir.str("ready");
  auto cfg
      = small_config({shell("stubborn", "trap '' TERM; touch \"$READY\"; sleep 30; true",
                            {"READY=" + ready}),
                      child("polite", {"/bin/sleep", "30"})});
  cfg.stop_grace_ms = 300;
  auto s = spawn(cfg);
  auto stubborn = wait_running(s, 0).pid;
  auto polite = wait_running(s, 1).pid;
  wait_file(ready); // the trap is set
  auto start = clock_type::now();
  auto xs = halt(s);
  auto elapsed = ms_since(start);
  CAF_REQUIRE_EQUAL(xs.size(), 2u);
  CAF_CHECK_EQUAL(xs[0].state, "stopped");
  CAF_CHECK_EQUAL(xs[0].last_exit, "signal 9 (Killed)");
  CAF_CHECK_EQUAL(xs[1].state, "stopped");
  CAF_CHECK_EQUAL(xs[1].last_exit, "signal 15 (Terminated)");
  CAF_CHECK_GREATER_OR_EQUAL(elapsed, 300);
  CAF_CHECK_LESS(elapsed, 8000);
  // The whole group went: `; true` makes the shell fork its `sleep` (which
  // inherits the ignored TERM), and that grandchild is gone too.
  wait_gone(stubborn);
  wait_gone(polite);
}

CAF_TEST(env entries reach the child and a clean exit is restarted too) {
  std::string script = "test \"$FOO\" = bar && test \"$HOME\" = /nonexistent/home";
  if (std::getenv("PATH"))
    script += " && test -n \"$PATH\""; // the parent's environment is inherited
  auto s = spawn(
      small_config({shell("with_env", script, {"FOO=bar", "HOME=/nonexistent/home"}),
                    shell("without_env", script)}));
  auto xs = wait_status(
      s, [](auto& xs) { return xs[0].state == "given_up" && xs[1].state == "given_up"; },
      "both given up");
  // exit 0 is restarted like any other exit (a worker runs until stopped).
  CAF_CHECK_EQUAL(xs[0].last_exit, "exit 0");
  CAF_CHECK_EQUAL(xs[0].restarts, 3);
  CAF_CHECK_EQUAL(xs[1].last_exit, "exit 1");
}

CAF_TEST(an exec failure is reported and retried like a crash) {
  auto cfg = small_config({child("missing", {"/nonexistent/infergrid-worker"})});
  cfg.max_restarts = 1;
  auto s = spawn(cfg);
  auto xs = wait_status(
      s, [](auto& xs) { return xs[0].state == "given_up"; }, "given_up");
  CAF_CHECK_EQUAL(xs[0].last_exit, "exec failed: No such file or directory");
  CAF_CHECK_EQUAL(xs[0].restarts, 1);
  CAF_CHECK_EQUAL(xs[0].pid, 0);
}

CAF_TEST(an exiting supervisor stops its children first) {
  auto ready = dir.str("ready");
  auto s = spawn(
      small_config({child("w1", {"/bin/sleep", "30"}),
                    shell("stubborn", "trap '' TERM; touch \"$READY\"; sleep 30; true",
                          {"READY=" + ready})}));
  auto a = wait_running(s, 0).pid;
  auto b = wait_running(s, 1).pid;
  wait_file(ready);
  caf::anon_send_exit(s, caf::exit_reason::user_shutdown);
  CAF_CHECK(wait_down(s));
  wait_gone(a);
  wait_gone(b);
}

CAF_TEST(a killed supervisor kills its children at once) {
  auto s = spawn(
      small_config({child("w1", {"/bin/sleep", "30"}), shell("w2", "sleep 30; true")}));
  auto a = wait_running(s, 0).pid;
  auto b = wait_running(s, 1).pid;
  caf::anon_send_exit(s, caf::exit_reason::kill);
  CAF_CHECK(wait_down(s));
  wait_gone(a);
  wait_gone(b);
}

CAF_TEST(an empty argv is given up at once) {
  auto cfg = small_config({child("empty", {})});
  cfg.max_restarts = 0;
  auto s = spawn(cfg);
  auto xs = wait_status(
      s, [](auto& xs) { return xs[0].state == "given_up"; }, "given_up");
  CAF_CHECK_EQUAL(xs[0].last_exit, "spawn failed: empty argv");
  CAF_CHECK_EQUAL(xs[0].restarts, 0);
}

CAF_TEST_FIXTURE_SCOPE_END()
