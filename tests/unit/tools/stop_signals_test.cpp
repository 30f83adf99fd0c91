#define CAF_SUITE stop_signals
#include "tests/unit/test_support.hpp"

#include "tools/stop_signals.hpp"

#include <chrono>

#include <pthread.h>

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
