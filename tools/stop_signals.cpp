#include "tools/stop_signals.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>

#include <spdlog/spdlog.h>

namespace infergrid {

namespace {

// Written by the handler only (async-signal-safe: lock-free atomics).
std::atomic<long> received{0};
std::atomic<int> last_signal{0};

extern "C" void on_stop_signal(int sig) {
  last_signal.store(sig);
  received.fetch_add(1);
}

} // namespace

stop_signals::stop_signals() {
  sigemptyset(&set_);
  sigaddset(&set_, SIGINT);
  sigaddset(&set_, SIGTERM);
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  pthread_sigmask(SIG_BLOCK, &set_, nullptr);
}

int stop_signals::wait(std::chrono::milliseconds d) {
  auto end = std::chrono::steady_clock::now() + d;
  for (;;) {
    if (received.load() > seen_) {
      ++seen_;
      return last_signal.load();
    }
    auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(
        end - std::chrono::steady_clock::now());
    // Signals blocked in every thread stay pending until sigtimedwait takes
    // them, so even a zero wait polls once (a worker whose threads all block
    // them never saw SIGTERM: the CUDA build has no OpenBLAS thread for the
    // handler to run on). Those caught by the handler on another thread show
    // up in `received` within 20 ms.
    timespec wait{0, std::clamp<long>(left.count(), 0, 20'000'000)};
    int sig = sigtimedwait(&set_, nullptr, &wait);
    if (sig > 0)
      return sig;
    if (left.count() <= 0)
      return 0;
  }
}

void arm_exit_deadline(std::chrono::milliseconds deadline, int code, const char* who) {
  std::thread([deadline, code, name = std::string{who}] {
    std::this_thread::sleep_for(deadline);
    spdlog::warn("{}: the actor system did not shut down within {} ms after every actor "
                 "stopped (a detached actor's thread left waiting: CAF 0.17 issue 1196); "
                 "exiting with {}",
                 name, deadline.count(), code);
    spdlog::shutdown(); // flushes
    std::_Exit(code);
  }).detach();
}

} // namespace infergrid
