// Dynamic batching in the queue actor, on CAF's deterministic coordinator
// with its virtual clock: a batch leaves when full or when its oldest request
// has waited max_queue_delay_us, never earlier.
#define CAF_SUITE batching
#include "tests/unit/test_support.hpp"

#include "actors/queue.hpp"

#include <caf/test/dsl.hpp>

#include "messages/errors.hpp"
#include "tests/unit/actors/fake_worker.hpp"

using namespace infergrid;
using testing::fake_worker;
using testing::fake_worker_state;

namespace {

constexpr int64_t delay_us = 2000;

struct fixture : test_coordinator_fixture<> {
  testing::temp_dir dir;
  queue_actor queue;

  fixture() {
    spawn(queue_settings{}.batches_in_flight);
  }

  // A queue with `batches_in_flight` (the default: 2).
  void spawn(int32_t batches_in_flight) {
    persistence::store_options opts;
    opts.path = dir.str("infergrid.db");
    opts.checkpointer = true;
    auto store = persistence::job_store::open(opts);
    CAF_REQUIRE(store);
    queue_config cfg;
    cfg.settings.max_interactive = 64;
    cfg.settings.batches_in_flight = batches_in_flight;
    cfg.tick = false;
    model_info classifier;
    classifier.name = "classifier";
    classifier.max_batch_size = 4;
    classifier.max_queue_delay_us = delay_us;
    model_info lm;
    lm.name = "tinylm";
    lm.kind = model_kind::generate;
    cfg.models = {classifier, lm};
    queue = spawn_queue(sys, cfg,
                        std::shared_ptr<persistence::job_store>(std::move(*store)));
    sched.run();
  }

  ~fixture() {
    anon_send_exit(queue, caf::exit_reason::user_shutdown);
    sched.run();
  }

  // Registers an idle worker (its first look for durable work found none).
  worker_actor add_worker(const std::string& id) {
    auto w = sys.spawn(fake_worker);
    // Busy while a batch runs: its answer comes when the test says so.
    deref<worker_actor::stateful_base<fake_worker_state>>(w).state.hold = true;
    worker_registration reg{
        id, {"classifier", "tinylm"}, {}, "cpu", "localhost", "in-process", {}, {}};
    inject((register_atom, worker_actor, worker_registration),
           from(self).to(queue).with(register_atom::value, w, reg));
    expect((work_atom), from(queue).to(w));
    inject((idle_atom, std::string, bool),
           from(w).to(queue).with(idle_atom::value, id, false));
    return w;
  }

  // The worker finishes what it runs: its answers free it.
  void finish(const worker_actor& w) {
    auto& st = deref<worker_actor::stateful_base<fake_worker_state>>(w).state;
    while (!st.held.empty()) {
      anon_send(w, renew_atom::value);
      sched.run();
    }
  }

  void infer(int n) {
    for (int i = 0; i < n; ++i)
      self->send(queue, infer_atom::value,
                 infer_request{"classifier",
                               {make_float_tensor("x", {1}, {1.f})},
                               "r" + std::to_string(i)});
    sched.run();
  }

  // The answers self received so far: the batch size each request ran in.
  std::vector<float> answers() {
    std::vector<float> out;
    while (!self->mailbox().empty())
      self->receive(
          [&](std::vector<tensor_data>& ys) {
            out.push_back(float_values(ys.at(0)).at(0));
          },
          [&](generate_reply& r) {
            out.push_back(-1.f * static_cast<float>(r.text.size()));
          },
          [&](caf::error& err) { CAF_FAIL("request failed: " << message_of(err)); });
    return out;
  }

  std::vector<std::size_t> batches(const worker_actor& w) {
    return deref<worker_actor::stateful_base<fake_worker_state>>(w).state.batch_sizes;
  }

  void advance_us(int64_t us) {
    sched.advance_time(std::chrono::microseconds(us));
    sched.run();
  }
};

} // namespace

CAF_TEST_FIXTURE_SCOPE(batching_tests, fixture)

CAF_TEST(a lone request waits exactly max_queue_delay_us) {
  auto w = add_worker("w1");
  infer(1);
  CAF_CHECK(batches(w).empty());
  advance_us(delay_us - 1);
  CAF_CHECK(batches(w).empty());
  advance_us(1);
  CAF_CHECK_EQUAL(batches(w), std::vector<std::size_t>{1});
  finish(w);
  CAF_CHECK_EQUAL(answers(), std::vector<float>{1.f});
}

CAF_TEST(a full batch leaves at once) {
  auto w = add_worker("w1");
  infer(4);
  CAF_CHECK_EQUAL(batches(w), std::vector<std::size_t>{4});
  finish(w);
  CAF_CHECK_EQUAL(answers(), std::vector<float>(4, 4.f));
}

CAF_TEST(batches go to the runner a worker names and skip the worker actor) {
  // A real worker names its executor, so a batch does not pass through the
  // worker actor's thread on its way in and out.
  auto w = sys.spawn(fake_worker);
  auto runner = sys.spawn(fake_worker);
  worker_registration reg{"w1",        {"classifier"}, {},     "cpu",
                          "localhost", "in-process",   runner, {}};
  inject((register_atom, worker_actor, worker_registration),
         from(self).to(queue).with(register_atom::value, w, reg));
  expect((work_atom), from(queue).to(w));
  inject((idle_atom, std::string, bool),
         from(w).to(queue).with(idle_atom::value, "w1", false));
  infer(4);
  CAF_CHECK_EQUAL(batches(runner), std::vector<std::size_t>{4});
  CAF_CHECK(batches(w).empty());
  CAF_CHECK_EQUAL(answers(), std::vector<float>(4, 4.f));
  // The worker is free again: the next full batch leaves at once.
  infer(4);
  CAF_CHECK_EQUAL(batches(runner), (std::vector<std::size_t>{4, 4}));
  anon_send_exit(runner, caf::exit_reason::user_shutdown);
  anon_send_exit(w, caf::exit_reason::user_shutdown);
  sched.run();
}

CAF_TEST(requests gather while the worker is busy and leave in batches) {
  // One batch in flight per worker: a worker gets a batch only when idle.
  anon_send_exit(queue, caf::exit_reason::user_shutdown);
  sched.run();
  spawn(1);
  auto w = add_worker("w1");
  infer(4); // fills a batch: the worker is busy from now on
  infer(6); // wait: the worker has not answered
  CAF_CHECK_EQUAL(batches(w).size(), 1u);
  finish(w); // its answer frees it
  // Four are a full batch; the other two have not waited long enough.
  CAF_CHECK_EQUAL(batches(w), (std::vector<std::size_t>{4, 4}));
  finish(w);
  CAF_CHECK_EQUAL(batches(w).size(), 2u);
  advance_us(delay_us);
  CAF_CHECK_EQUAL(batches(w), (std::vector<std::size_t>{4, 4, 2}));
  finish(w);
  auto got = answers();
  CAF_CHECK_EQUAL(got.size(), 10u);
}

CAF_TEST(a worker running a batch gets a second one only when it is full) {
  // The default: two batches in flight, so the next one waits in the
  // worker's mailbox instead of on the way there.
  auto w = add_worker("w1");
  infer(4);             // a full batch leaves at once
  infer(2);             // not full, and the worker runs one already: they keep gathering,
  advance_us(delay_us); // even past their delay, instead of shrinking batches
  CAF_CHECK_EQUAL(batches(w), (std::vector<std::size_t>{4}));
  infer(2); // now four: a full batch joins the first on the worker
  CAF_CHECK_EQUAL(batches(w), (std::vector<std::size_t>{4, 4}));
  infer(3); // two out: these wait for an answer
  finish(w);
  // Free again, but the three have not waited max_queue_delay_us yet.
  CAF_CHECK_EQUAL(batches(w), (std::vector<std::size_t>{4, 4}));
  advance_us(delay_us);
  CAF_CHECK_EQUAL(batches(w), (std::vector<std::size_t>{4, 4, 3}));
  finish(w);
  CAF_CHECK_EQUAL(answers(), (std::vector<float>{4.f, 4.f, 4.f, 4.f, 4.f, 4.f, 4.f, 4.f,
                                                 3.f, 3.f, 3.f}));
}

CAF_TEST(a request of another model does not wait behind a forming batch) {
  auto w = add_worker("w1");
  infer(1);
  generate_request g;
  g.model = "tinylm";
  g.params.prompt = "abc";
  self->send(queue, generate_atom::value, g);
  sched.run();
  // The generation went first; the tensor request still waits for its delay.
  auto& st = deref<worker_actor::stateful_base<fake_worker_state>>(w).state;
  CAF_CHECK_EQUAL(st.generate_prompts, std::vector<std::string>{"abc"});
  CAF_CHECK(batches(w).empty());
  CAF_CHECK_EQUAL(answers(), std::vector<float>{-3.f});
  finish(w);
  advance_us(delay_us);
  CAF_CHECK_EQUAL(batches(w), std::vector<std::size_t>{1});
  finish(w);
  CAF_CHECK_EQUAL(answers(), std::vector<float>{1.f});
}

CAF_TEST(batches in flight do not keep an older generation from its worker) {
  auto w = add_worker("w1");
  infer(4); // one batch out; the worker could take a second, full one
  generate_request g;
  g.model = "tinylm";
  g.params.prompt = "abc";
  self->send(queue, generate_atom::value, g);
  sched.run();
  infer(4); // full, but the older generation waits for this worker
  CAF_CHECK_EQUAL(batches(w), std::vector<std::size_t>{4});
  auto& st = deref<worker_actor::stateful_base<fake_worker_state>>(w).state;
  CAF_CHECK(st.generate_prompts.empty());
  // The batch is answered: the generation runs, then the second batch.
  finish(w);
  CAF_CHECK_EQUAL(st.generate_prompts, std::vector<std::string>{"abc"});
  CAF_CHECK_EQUAL(batches(w), (std::vector<std::size_t>{4, 4}));
  finish(w);
  CAF_CHECK_EQUAL(answers(),
                  (std::vector<float>{4.f, 4.f, 4.f, 4.f, -3.f, 4.f, 4.f, 4.f, 4.f}));
}

CAF_TEST(requests past their deadline are refused not run) {
  auto w = add_worker("w1");
  infer(4);
  infer(1);               // the worker is busy; this one waits
  advance_us(31'000'000); // past interactive_timeout_ms (30 s)
  finish(w);
  CAF_CHECK_EQUAL(batches(w).size(), 1u);
  int answered = 0;
  bool timed_out = false;
  for (int i = 0; i < 5; ++i)
    self->receive([&](std::vector<tensor_data>&) { ++answered; },
                  [&](caf::error& err) { timed_out = code_of(err) == errc::timeout; });
  CAF_CHECK_EQUAL(answered, 4);
  CAF_CHECK(timed_out);
}

namespace {

// Takes interactive work and never answers (a hung forward pass).
worker_actor::behavior_type silent_worker(worker_actor::pointer self) {
  return {
      [](work_atom) {},
      [self](infer_atom, const infer_batch&) -> caf::result<infer_batch_result> {
        return self->make_response_promise<infer_batch_result>(); // never delivered
      },
      [](generate_atom, const generate_request&) -> generate_reply { return {}; },
      [](speech_atom, const speech_request&) -> speech_reply { return {}; },
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

} // namespace

CAF_TEST(a worker that never answers fails its requests at their deadline) {
  // The queue sets no CAF timeout per request (each would wake the clock
  // thread); its tick fails what is overdue.
  auto w = sys.spawn(silent_worker);
  worker_registration reg{"w1",        {"classifier"}, {}, "cpu",
                          "localhost", "in-process",   {}, {}};
  inject((register_atom, worker_actor, worker_registration),
         from(self).to(queue).with(register_atom::value, w, reg));
  sched.run();
  infer(4); // a full batch goes at once
  CAF_CHECK(answers().empty());
  advance_us(29'000'000);
  self->send(queue, qtick_atom::value);
  sched.run();
  CAF_CHECK(answers().empty()); // not yet due
  advance_us(2'000'000);        // past interactive_timeout_ms (30 s)
  self->send(queue, qtick_atom::value);
  sched.run();
  int timed_out = 0;
  for (int i = 0; i < 4; ++i)
    self->receive([](std::vector<tensor_data>&) { CAF_FAIL("an answer came"); },
                  [&](caf::error& err) { timed_out += code_of(err) == errc::timeout; });
  CAF_CHECK_EQUAL(timed_out, 4);
  anon_send_exit(w, caf::exit_reason::user_shutdown);
  sched.run();
}

CAF_TEST_FIXTURE_SCOPE_END()
