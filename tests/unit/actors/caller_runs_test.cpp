// caller_runs: an actor woken by a send from a thread with a unit runs on
// that thread, within the unit's limits; everything else still reaches the
// scheduler. The actors are spawned with lazy_init, so their mailboxes are
// blocked until the first message and the test's send is the one that wakes
// them: which thread runs them is then deterministic.
#define CAF_SUITE caller_runs
#include "tests/unit/test_support.hpp"

#include "actors/caller_runs.hpp"

#include <caf/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <caf/actor_cast.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/spawn_options.hpp>

using namespace infergrid;
using namespace std::chrono_literals;

namespace {

using go_atom = caf::atom_constant<caf::atom("go")>;

/// Which thread handled each message, in the order they were handled.
struct trace {
  std::mutex mtx;
  std::vector<std::pair<int, std::thread::id>> seen; // (message, thread)

  void note(int i) {
    std::lock_guard<std::mutex> guard{mtx};
    seen.emplace_back(i, std::this_thread::get_id());
  }

  std::size_t size() {
    std::lock_guard<std::mutex> guard{mtx};
    return seen.size();
  }

  std::vector<std::pair<int, std::thread::id>> copy() {
    std::lock_guard<std::mutex> guard{mtx};
    return seen;
  }

  /// Waits (up to 10 s) until `n` messages were handled.
  bool wait_for(std::size_t n) {
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (size() < n) {
      if (std::chrono::steady_clock::now() > deadline)
        return false;
      std::this_thread::sleep_for(1ms);
    }
    return true;
  }
};

/// Notes each message (its int) and passes it on to `next`, if any, plus one.
caf::behavior relay(caf::event_based_actor* self, std::shared_ptr<trace> t,
                    caf::actor next) {
  return {
      [self, t, next](go_atom, int i) {
        t->note(i);
        if (next)
          self->send(next, go_atom::value, i + 1);
      },
  };
}

caf::mailbox_element_ptr go(int i) {
  return caf::make_mailbox_element(nullptr, caf::make_message_id(), {}, go_atom::value,
                                   i);
}

struct fixture {
  caf::actor_system_config cfg;
  caf::actor_system sys;
  std::shared_ptr<trace> t = std::make_shared<trace>();

  fixture() : sys(init(cfg)) {}

  static caf::actor_system_config& init(caf::actor_system_config& cfg) {
    cfg.set("scheduler.max-threads", size_t{2});
    return cfg;
  }

  caf::strong_actor_ptr spawn_relay(caf::actor next = {}) {
    return caf::actor_cast<caf::strong_actor_ptr>(
        sys.spawn<caf::lazy_init>(relay, t, std::move(next)));
  }
};

} // namespace

CAF_TEST_FIXTURE_SCOPE(caller_runs_tests, fixture)

CAF_TEST(an actor that a send wakes runs on the sending thread) {
  auto a = spawn_relay();
  caller_runs::lease unit{sys};
  caller_runs::scope here{*unit};
  CAF_CHECK_EQUAL(caller_runs::current(), unit.get());
  caller_runs::deliver(a, go(1));
  // deliver() returns after the run: no waiting.
  auto seen = t->copy();
  CAF_REQUIRE_EQUAL(seen.size(), 1u);
  CAF_CHECK(seen[0].second == std::this_thread::get_id());
  CAF_CHECK_EQUAL(unit->resumed(), 1u);
}

CAF_TEST(an actor run here is released : it ends when its last handle goes) {
  auto ended = std::make_shared<std::atomic<bool>>(false);
  {
    auto a = spawn_relay();
    a->get()->attach_functor([ended] { ended->store(true); });
    caller_runs::lease unit{sys};
    caller_runs::scope here{*unit};
    caller_runs::deliver(a, go(1));
    CAF_CHECK_EQUAL(unit->resumed(), 1u);
  }
  // A reference the run kept would keep the actor alive.
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!ended->load() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  CAF_CHECK(ended->load());
}

CAF_TEST(without a unit the scheduler runs it) {
  CAF_CHECK_EQUAL(caller_runs::current(), nullptr);
  auto a = spawn_relay();
  caller_runs::deliver(a, go(1));
  CAF_REQUIRE(t->wait_for(1));
  CAF_CHECK(t->copy()[0].second != std::this_thread::get_id());
}

CAF_TEST(the scope restores the previous unit) {
  caller_runs::lease outer{sys};
  caller_runs::lease inner{sys};
  CAF_CHECK(outer.get() != inner.get());
  {
    caller_runs::scope a{*outer};
    {
      caller_runs::scope b{*inner};
      CAF_CHECK_EQUAL(caller_runs::current(), inner.get());
    }
    CAF_CHECK_EQUAL(caller_runs::current(), outer.get());
  }
  CAF_CHECK_EQUAL(caller_runs::current(), nullptr);
}

CAF_TEST(a chain runs here up to the resume limit and on the scheduler after) {
  // 12 relays, each passing the message on: the first 3 run here.
  caf::actor next;
  std::vector<caf::strong_actor_ptr> chain;
  for (int i = 0; i < 12; ++i) {
    chain.push_back(spawn_relay(next));
    next = caf::actor_cast<caf::actor>(chain.back());
  }
  caller_runs::lease unit{sys, caller_runs::limits{3, 1}};
  caller_runs::scope here{*unit};
  caller_runs::deliver(chain.back(), go(0));
  CAF_CHECK_EQUAL(unit->resumed(), 3u);
  CAF_REQUIRE(t->wait_for(12));
  auto me = std::this_thread::get_id();
  for (auto& [i, thread] : t->copy()) {
    CAF_CHECK_EQUAL(i < 3, thread == me);
  }
}

CAF_TEST(an actor with more messages than the throughput goes on elsewhere) {
  auto a = spawn_relay();
  caller_runs::lease unit{sys, caller_runs::limits{8, 4}};
  {
    // All ten wait before the run: the first enqueue woke the actor.
    caller_runs::window open{*unit};
    for (int i = 0; i < 10; ++i)
      a->enqueue(go(i), unit.get());
  }
  CAF_CHECK_EQUAL(unit->resumed(), 1u);
  CAF_REQUIRE(t->wait_for(10));
  auto me = std::this_thread::get_id();
  std::size_t here_count = 0;
  int expect = 0;
  for (auto& [i, thread] : t->copy()) {
    CAF_CHECK_EQUAL(i, expect++); // one actor: in order, wherever it ran
    if (thread == me)
      ++here_count;
  }
  CAF_CHECK_GREATER_OR_EQUAL(here_count, 1u);
  CAF_CHECK_LESS_OR_EQUAL(here_count, 4u);
}

CAF_TEST(a run inside a run returns at once and the outer one goes on) {
  auto b = spawn_relay();
  auto ran_b_inside = std::make_shared<bool>(false);
  auto a = caf::actor_cast<caf::strong_actor_ptr>(sys.spawn<caf::lazy_init>(
      [this, b, ran_b_inside](caf::event_based_actor* self) -> caf::behavior {
        return {
            [this, self, b, ran_b_inside](go_atom, int i) {
              t->note(i);
              self->send(caf::actor_cast<caf::actor>(b), go_atom::value, i + 1);
              { // as a thread's own code would: a window inside the run
                caller_runs::window inner{*caller_runs::current()};
              }
              *ran_b_inside = t->size() > 1;
            },
        };
      }));
  caller_runs::lease unit{sys};
  caller_runs::scope here{*unit};
  caller_runs::deliver(a, go(1));
  CAF_CHECK(!*ran_b_inside);
  auto seen = t->copy();
  CAF_REQUIRE_EQUAL(seen.size(), 2u);
  CAF_CHECK(seen[1].second == std::this_thread::get_id());
}

CAF_TEST(deliver_elsewhere runs on a scheduler thread) {
  auto a = spawn_relay();
  caller_runs::lease unit{sys};
  caller_runs::scope here{*unit};
  caller_runs::deliver_elsewhere(sys, a, go(1));
  CAF_REQUIRE(t->wait_for(1));
  CAF_CHECK(t->copy()[0].second != std::this_thread::get_id());
  CAF_CHECK_EQUAL(unit->resumed(), 0u);
}

CAF_TEST(outside a window the unit hands what it is given to the scheduler) {
  auto a = spawn_relay();
  caller_runs::lease unit{sys};
  a->enqueue(go(1), unit.get()); // woken with the unit, no window open
  CAF_REQUIRE(t->wait_for(1));
  CAF_CHECK(t->copy()[0].second != std::this_thread::get_id());
  CAF_CHECK_EQUAL(unit->resumed(), 0u);
}

CAF_TEST(a send from another thread with the unit goes to the scheduler) {
  // An actor run on a unit keeps it as its context until its next run; a
  // send of another thread through it must not touch the unit's jobs.
  auto a = spawn_relay();
  caller_runs::lease unit{sys};
  caller_runs::window open{*unit};
  std::thread other{[&] { a->enqueue(go(1), unit.get()); }};
  other.join();
  CAF_REQUIRE(t->wait_for(1));
  auto seen = t->copy();
  CAF_CHECK(seen[0].second != std::this_thread::get_id());
  CAF_CHECK_EQUAL(unit->resumed(), 0u);
}

CAF_TEST_FIXTURE_SCOPE_END()
