// Which idle worker gets interactive work: those holding the model resident
// first, then the configured strategy. Deterministic coordinator.
#define CAF_SUITE routing
#include "tests/unit/test_support.hpp"

#include "actors/queue.hpp"

#include <caf/test/dsl.hpp>

#include "messages/errors.hpp"
#include "tests/unit/actors/fake_worker.hpp"

using namespace infergrid;
using testing::fake_worker;
using testing::fake_worker_state;

namespace {

// A worker that takes interactive work and never answers (it is about to
// die, as a worker process under SIGKILL would).
worker_actor::behavior_type silent_worker(worker_actor::pointer self) {
  return {
      [](work_atom) {},
      [self](infer_atom, const infer_batch&) -> caf::result<infer_batch_result> {
        return self->make_response_promise<infer_batch_result>();
      },
      [self](generate_atom, const generate_request&) -> caf::result<generate_reply> {
        return self->make_response_promise<generate_reply>();
      },
      [self](speech_atom, const speech_request&) -> caf::result<speech_reply> {
        return self->make_response_promise<speech_reply>();
      },
      [](renew_atom) {},
      [](cancel_atom, int64_t) {},
      [](chunk_atom, int64_t, int64_t, const std::string&) {},
      [](status_atom, const std::vector<model_status>&,
         const std::vector<model_metrics>&) {},
      [](load_atom, const std::string&) -> worker_status { return {}; },
      [](unload_atom, const std::string&) -> worker_status { return {}; },
      [](drain_atom, bool) {},
      [](session_atom, const std::string&, const std::string&) {},
  };
}

struct fixture : test_coordinator_fixture<> {
  testing::temp_dir dir;
  queue_actor queue;
  std::vector<worker_actor> workers;

  void start(routing_strategy routing) {
    persistence::store_options opts;
    opts.path = dir.str("infergrid.db");
    opts.checkpointer = true;
    auto store = persistence::job_store::open(opts);
    CAF_REQUIRE(store);
    queue_config cfg;
    cfg.settings.max_interactive = 64;
    cfg.tick = false;
    cfg.routing = routing;
    model_info m;
    m.name = "classifier"; // max_batch_size 1: every request leaves alone
    cfg.models = {m};
    queue = spawn_queue(sys, cfg,
                        std::shared_ptr<persistence::job_store>(std::move(*store)));
    sched.run();
  }

  ~fixture() {
    for (auto& w : workers)
      anon_send_exit(w, caf::exit_reason::user_shutdown);
    anon_send_exit(queue, caf::exit_reason::user_shutdown);
    sched.run();
  }

  // Registers an idle worker; `state` is the classifier's state on it.
  worker_actor add_worker(const std::string& id, const std::string& state = "READY") {
    auto w = sys.spawn(fake_worker);
    worker_registration reg{id,          {"classifier"}, {}, "cpu",
                            "localhost", "in-process",   {}, {}};
    inject((register_atom, worker_actor, worker_registration),
           from(self).to(queue).with(register_atom::value, w, reg));
    expect((work_atom), from(queue).to(w));
    inject((idle_atom, std::string, bool),
           from(w).to(queue).with(idle_atom::value, id, false));
    worker_status ws;
    ws.worker_id = id;
    ws.models.push_back(model_status{"classifier", state, "", 1, 0});
    self->send(queue, status_atom::value, ws);
    sched.run();
    workers.push_back(w);
    return w;
  }

  // Every worker idle, none with a hint to claim durable work (there is
  // none): registering a worker lets the queue hint the others.
  void settle() {
    sched.run();
    for (std::size_t i = 0; i < workers.size(); ++i)
      inject((idle_atom, std::string, bool),
             from(workers[i])
                 .to(queue)
                 .with(idle_atom::value, "w" + std::to_string(i + 1), false));
    sched.run();
  }

  int served(const worker_actor& w) {
    return deref<worker_actor::stateful_base<fake_worker_state>>(w).state.infer_messages;
  }

  // One request; the worker that ran it says idle again at once.
  void infer_once() {
    self->send(queue, infer_atom::value,
               infer_request{"classifier", {make_float_tensor("x", {1}, {1.f})}, "r"});
    sched.run();
    self->receive([](std::vector<tensor_data>&) {},
                  [](caf::error& err) { CAF_FAIL("infer failed: " << message_of(err)); });
    settle();
  }

  std::vector<int> counts() {
    std::vector<int> out;
    for (auto& w : workers)
      out.push_back(served(w));
    return out;
  }
};

} // namespace

CAF_TEST_FIXTURE_SCOPE(routing_tests, fixture)

CAF_TEST(a worker holding the model resident goes first) {
  start(routing_strategy::round_robin);
  add_worker("w1", "UNLOADED");
  add_worker("w2", "READY");
  add_worker("w3", "UNLOADED");
  settle();
  for (int i = 0; i < 4; ++i)
    infer_once();
  CAF_CHECK_EQUAL(counts(), (std::vector<int>{0, 4, 0}));
}

CAF_TEST(round robin takes each worker in turn) {
  start(routing_strategy::round_robin);
  add_worker("w1");
  add_worker("w2");
  add_worker("w3");
  settle();
  for (int i = 0; i < 6; ++i)
    infer_once();
  CAF_CHECK_EQUAL(counts(), (std::vector<int>{2, 2, 2}));
  // In registration order: w1, w2, w3, w1, ...
  infer_once();
  CAF_CHECK_EQUAL(counts(), (std::vector<int>{3, 2, 2}));
}

CAF_TEST(queue depth spreads the work over idle workers) {
  start(routing_strategy::queue_depth);
  add_worker("w1");
  add_worker("w2");
  settle();
  for (int i = 0; i < 5; ++i)
    infer_once();
  auto c = counts();
  CAF_CHECK_EQUAL(c[0] + c[1], 5);
  CAF_CHECK_LESS_OR_EQUAL(std::abs(c[0] - c[1]), 1);
}

CAF_TEST(a drained worker gets no interactive work) {
  start(routing_strategy::round_robin);
  add_worker("w1");
  auto w2 = add_worker("w2");
  settle();
  self->send(queue, drain_atom::value, std::string{"w2"}, true);
  sched.run();
  self->receive([](worker_status& ws) { CAF_CHECK_EQUAL(ws.phase, "DRAINING"); },
                [](caf::error& err) { CAF_FAIL("drain failed: " << message_of(err)); });
  CAF_CHECK_EQUAL(deref<worker_actor::stateful_base<fake_worker_state>>(w2).state.drains,
                  std::vector<bool>{true});
  for (int i = 0; i < 3; ++i)
    infer_once();
  CAF_CHECK_EQUAL(counts(), (std::vector<int>{3, 0}));
  // Unknown workers are not_found.
  self->send(queue, drain_atom::value, std::string{"w9"}, true);
  sched.run();
  self->receive([](worker_status&) { CAF_FAIL("drained an unknown worker"); },
                [](caf::error& err) { CAF_CHECK(code_of(err) == errc::not_found); });
}

CAF_TEST(latency prefers the worker that answered faster) {
  start(routing_strategy::latency);
  add_worker("w1");
  add_worker("w2");
  settle();
  auto request = [&](std::chrono::milliseconds took) {
    self->send(queue, infer_atom::value,
               infer_request{"classifier", {make_float_tensor("x", {1}, {1.f})}, "r"});
    // The queue hands the request out; the worker answers `took` later.
    expect((infer_atom, infer_request), from(self).to(queue).with(_, _));
    sched.advance_time(took);
    sched.run();
    self->receive([](std::vector<tensor_data>&) {},
                  [](caf::error& err) { CAF_FAIL("infer failed: " << message_of(err)); });
    settle();
  };
  request(std::chrono::milliseconds(5)); // w1 (never measured: goes first), slow
  CAF_CHECK_EQUAL(counts(), (std::vector<int>{1, 0}));
  request(std::chrono::milliseconds(0)); // w2 (never measured), fast
  CAF_CHECK_EQUAL(counts(), (std::vector<int>{1, 1}));
  request(std::chrono::milliseconds(0)); // the faster one from now on
  request(std::chrono::milliseconds(0));
  CAF_CHECK_EQUAL(counts(), (std::vector<int>{1, 3}));
}

CAF_TEST(work out on a worker that goes down fails at once and may be retried) {
  start(routing_strategy::queue_depth);
  auto w = sys.spawn(silent_worker);
  worker_registration reg{"w1",        {"classifier"}, {}, "cpu",
                          "localhost", "in-process",   {}, {}};
  inject((register_atom, worker_actor, worker_registration),
         from(self).to(queue).with(register_atom::value, w, reg));
  expect((work_atom), from(queue).to(w));
  inject((idle_atom, std::string, bool),
         from(w).to(queue).with(idle_atom::value, std::string{"w1"}, false));
  self->send(queue, infer_atom::value,
             infer_request{"classifier", {make_float_tensor("x", {1}, {1.f})}, "r"});
  sched.run();
  CAF_CHECK(self->mailbox().empty()); // out on the worker, unanswered
  anon_send_exit(w, caf::exit_reason::kill);
  sched.run();
  bool failed = false;
  self->receive([](std::vector<tensor_data>&) { CAF_FAIL("answered by a dead worker"); },
                [&](caf::error& err) {
                  failed
                      = code_of(err) == errc::unavailable && is_retryable(code_of(err));
                });
  CAF_CHECK(failed);
}

CAF_TEST_FIXTURE_SCOPE_END()
