#define CAF_SUITE broker
#include "tests/unit/test_support.hpp"

#include "actors/broker.hpp"

#include <caf/test/dsl.hpp>

#include "messages/errors.hpp"

using namespace infergrid;

namespace {

struct sink_state {
  std::vector<int64_t> seqs;
};

event_subscriber_actor::behavior_type
sink(event_subscriber_actor::stateful_pointer<sink_state> self) {
  return {
    [self](const job_event& ev) { self->state.seqs.push_back(ev.seq); },
  };
}

job_event event(int64_t seq, int64_t job) {
  job_event ev;
  ev.seq = seq;
  ev.job_id = job;
  ev.kind = "status";
  ev.data_json = R"({"state":"running"})";
  return ev;
}

struct fixture : test_coordinator_fixture<> {
  broker_actor broker;

  fixture() {
    broker_config cfg;
    cfg.max_subscribers = 2;
    broker = spawn_broker(sys, cfg);
    sched.run();
  }

  ~fixture() {
    anon_send_exit(broker, caf::exit_reason::user_shutdown);
    sched.run();
  }

  std::vector<int64_t>& seqs(const event_subscriber_actor& s) {
    return deref<event_subscriber_actor::stateful_base<sink_state>>(s).state.seqs;
  }

  bool subscribe(int64_t job, const event_subscriber_actor& s) {
    bool ok = false;
    self->send(broker, subscribe_atom::value, job, s);
    sched.run();
    self->receive([&](bool answer) { ok = answer; },
                  [&](caf::error& err) { CAF_CHECK(code_of(err) == errc::queue_full); });
    return ok;
  }

  void publish(std::vector<job_event> events) {
    self->send(broker, publish_atom::value, std::move(events));
    sched.run();
  }
};

} // namespace

CAF_TEST_FIXTURE_SCOPE(broker_tests, fixture)

CAF_TEST(subscribers get only their jobs events in order) {
  auto a = sys.spawn(sink);
  auto b = sys.spawn(sink);
  CAF_CHECK(subscribe(1, a));
  CAF_CHECK(subscribe(2, b));
  publish({event(10, 1), event(11, 2), event(12, 1), event(13, 3)});
  CAF_CHECK_EQUAL(seqs(a), (std::vector<int64_t>{10, 12}));
  CAF_CHECK_EQUAL(seqs(b), (std::vector<int64_t>{11}));
  self->send(broker, unsub_atom::value, int64_t{1}, a);
  sched.run();
  publish({event(14, 1)});
  CAF_CHECK_EQUAL(seqs(a), (std::vector<int64_t>{10, 12}));
  anon_send_exit(a, caf::exit_reason::user_shutdown);
  anon_send_exit(b, caf::exit_reason::user_shutdown);
  sched.run();
}

CAF_TEST(subscriptions are bounded and freed when a subscriber dies) {
  auto a = sys.spawn(sink);
  auto b = sys.spawn(sink);
  auto c = sys.spawn(sink);
  CAF_CHECK(subscribe(1, a));
  CAF_CHECK(subscribe(1, b));
  CAF_CHECK(!subscribe(1, c)); // the third is refused: queue_full
  anon_send_exit(a, caf::exit_reason::kill);
  sched.run();
  CAF_CHECK(subscribe(1, c)); // a's place was freed by its down message
  publish({event(20, 1)});
  CAF_CHECK_EQUAL(seqs(b), (std::vector<int64_t>{20}));
  CAF_CHECK_EQUAL(seqs(c), (std::vector<int64_t>{20}));
  anon_send_exit(b, caf::exit_reason::user_shutdown);
  anon_send_exit(c, caf::exit_reason::user_shutdown);
  sched.run();
}

CAF_TEST_FIXTURE_SCOPE_END()
