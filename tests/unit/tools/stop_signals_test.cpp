#define CAF_SUITE stop_signals
#include "tests/unit/test_support.hpp"

#include "tools/stop_signals.hpp"

#include <chrono>

#include <thread>

#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include <caf/test/unit_test.hpp>

using namespace infergrid;
using namespace std::chrono_literals;

// A signal sent to this thread, which blocks it, stays pending until wait()
// takes it: no other thread can run the handler. That is the situation of a
// process whose threads all block SIGTERM (the CUDA build's worker).
CAF_TEST(a pending signal is taken even by a zero wait) {
  stop_signals stop;
  CAF_CHECK_EQUAL(stop.wait(0ms), 0);
  CAF_REQUIRE_EQUAL(pthread_kill(pthread_self(), SIGTERM), 0);
  CAF_CHECK_EQUAL(stop.wait(0ms), SIGTERM);
  CAF_CHECK_EQUAL(stop.wait(0ms), 0);
  CAF_REQUIRE_EQUAL(pthread_kill(pthread_self(), SIGINT), 0);
  CAF_CHECK_EQUAL(stop.wait(50ms), SIGINT);
}

CAF_TEST(a wait without a signal times out) {
  stop_signals stop;
  auto start = std::chrono::steady_clock::now();
  CAF_CHECK_EQUAL(stop.wait(30ms), 0);
  CAF_CHECK_GREATER_OR_EQUAL(std::chrono::steady_clock::now() - start, 30ms);
}

// A process that hangs after arming the deadline (as the actor system's
// destructor does on CAF issue 1196) still ends, with the armed code.
CAF_TEST(the exit deadline ends a hung process with its code) {
  auto pid = fork();
  CAF_REQUIRE(pid >= 0);
  if (pid == 0) {
    arm_exit_deadline(50ms, 7, "test");
    for (;;)
      std::this_thread::sleep_for(1s);
  }
  int status = 0;
  pid_t done = 0;
  auto end = std::chrono::steady_clock::now() + 30s;
  while ((done = waitpid(pid, &status, WNOHANG)) == 0
         && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(10ms);
  if (done == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    CAF_FAIL("the child still ran 30 s after a 50 ms deadline");
  }
  CAF_REQUIRE(WIFEXITED(status));
  CAF_CHECK_EQUAL(WEXITSTATUS(status), 7);
}
