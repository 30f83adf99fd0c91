#define CAF_SUITE queue
#include "tests/unit/test_support.hpp"

#include "actors/queue.hpp"

#include <caf/test/dsl.hpp>

#include "actors/clock.hpp"
#include "tests/unit/actors/fake_worker.hpp"
#include "messages/errors.hpp"

using namespace infergrid;

namespace {

using testing::fake_worker;
using testing::fake_worker_state;

struct fixture : test_coordinator_fixture<> {
  testing::temp_dir dir;
  queue_actor queue;
  /// COMMITs of the queue's connection (counted through the fault seam).
  std::shared_ptr<int> commits = std::make_shared<int>(0);

  fixture() {
    persistence::store_options opts;
    opts.path = dir.str("infergrid.db");
    opts.checkpointer = true;
    opts.fault_hook = [counter = commits](const std::string&, const std::string& step) {
      if (step == "commit")
        ++*counter;
      return 0;
    };
    auto store = persistence::job_store::open(opts);
    CAF_REQUIRE(store);
    queue_config cfg;
    cfg.settings.max_queued = 3;
    cfg.settings.max_interactive = 1;
    // One request at a time on a worker, so that one busy worker and the
    // FIFO's bound decide (batching_test covers a second batch in flight).
    cfg.settings.batches_in_flight = 1;
    cfg.tick = false;
    queue = spawn_queue(sys, cfg,
                        std::shared_ptr<persistence::job_store>(std::move(*store)));
    sched.run();
  }

  ~fixture() {
    anon_send_exit(queue, caf::exit_reason::user_shutdown);
    sched.run();
  }

  new_job job_for(const std::string& model) {
    new_job j;
    j.model = model;
    j.input_json = R"({"inputs":[]})";
    return j;
  }

  worker_actor register_worker(const std::string& id, std::vector<std::string> models) {
    auto w = sys.spawn(fake_worker);
    worker_registration reg{id,          std::move(models), {}, "cpu",
                            "localhost", "in-process",      {}, {}};
    inject((register_atom, worker_actor, worker_registration),
           from(self).to(queue).with(register_atom::value, w, reg));
    return w;
  }

  // Registers a worker and lets it find nothing on its first look, so that
  // it is idle and the queue has no hint for its models.
  worker_actor add_worker(const std::string& id, std::vector<std::string> models) {
    auto w = register_worker(id, std::move(models));
    expect((work_atom), from(queue).to(w));
    inject((idle_atom, std::string, bool),
           from(w).to(queue).with(idle_atom::value, id, false));
    return w;
  }

  void submit_ok(const std::string& model) {
    self->send(queue, submit_atom::value, job_for(model));
    sched.run();
    self->receive(
        [](job_record&) {},
        [](caf::error& err) { CAF_FAIL("submit failed: " << message_of(err)); });
  }

  fake_worker_state& worker_state(const worker_actor& w) {
    return deref<worker_actor::stateful_base<fake_worker_state>>(w).state;
  }

  int works(const worker_actor& w) {
    return worker_state(w).work_messages;
  }

  // A second connection to the same file, as a worker process would have.
  std::unique_ptr<persistence::job_store> worker_store() {
    persistence::store_options opts;
    opts.path = dir.str("infergrid.db");
    auto store = persistence::job_store::open(opts);
    CAF_REQUIRE(store);
    return std::move(*store);
  }

  job_record request_job(int64_t id) {
    job_record out;
    self->send(queue, job_get_atom::value, id);
    sched.run();
    self->receive([&](job_record& rec) { out = std::move(rec); },
                  [&](caf::error& err) { CAF_FAIL("get failed: " << message_of(err)); });
    return out;
  }

  cluster_stats stats() {
    cluster_stats out;
    self->send(queue, stats_atom::value);
    sched.run();
    self->receive(
        [&](cluster_stats& s) { out = std::move(s); },
        [&](caf::error& err) { CAF_FAIL("stats failed: " << message_of(err)); });
    return out;
  }
};

} // namespace

CAF_TEST_FIXTURE_SCOPE(queue_tests, fixture)

CAF_TEST(submitted jobs wait in the table without workers) {
  self->send(queue, submit_atom::value, job_for("classifier"));
  sched.run();
  self->receive(
      [&](job_record& rec) {
        CAF_CHECK_EQUAL(rec.id, 1);
        CAF_CHECK(rec.state == job_state::queued);
        CAF_CHECK_EQUAL(rec.position, 0);
      },
      [&](caf::error& err) { CAF_FAIL("submit failed: " << message_of(err)); });
  auto s = stats();
  CAF_CHECK_EQUAL(s.jobs_by_state["queued"], 1);
  CAF_CHECK_EQUAL(s.jobs_by_state["succeeded"], 0);
  CAF_CHECK_EQUAL(s.workers_total, 0);
}

CAF_TEST(a registering worker looks for work at once) {
  submit_ok("classifier");
  auto w = register_worker("w1", {"classifier"});
  expect((work_atom), from(queue).to(w));
  CAF_CHECK_EQUAL(works(w), 1);
  CAF_CHECK_EQUAL(stats().workers_busy, 1);
  anon_send_exit(w, caf::exit_reason::user_shutdown);
  sched.run();
}

CAF_TEST(submits wake an idle worker without ping pong) {
  auto w = add_worker("w1", {"classifier"});
  CAF_CHECK_EQUAL(works(w), 1);
  submit_ok("classifier"); // runs the scheduler: the hint reached the worker
  CAF_CHECK_EQUAL(works(w), 2);
  // Busy: another submit must not hand it more work.
  submit_ok("classifier");
  CAF_CHECK_EQUAL(works(w), 2);
  // It found work and is idle again: the queue hands it the next hint.
  inject((idle_atom, std::string, bool),
         from(w).to(queue).with(idle_atom::value, std::string{"w1"}, true));
  expect((work_atom), from(queue).to(w));
  CAF_CHECK_EQUAL(works(w), 3);
  // It found nothing: no further messages until new work arrives.
  inject((idle_atom, std::string, bool),
         from(w).to(queue).with(idle_atom::value, std::string{"w1"}, false));
  CAF_CHECK_EQUAL(sched.run(), 0u);
  CAF_CHECK_EQUAL(works(w), 3);
  CAF_CHECK_EQUAL(stats().workers_busy, 0);
  anon_send_exit(w, caf::exit_reason::user_shutdown);
  sched.run();
}

CAF_TEST(workers only hear about models they serve) {
  auto w = add_worker("w1", {"tinylm"});
  submit_ok("classifier");
  CAF_CHECK_EQUAL(works(w), 1);
  submit_ok("tinylm");
  CAF_CHECK_EQUAL(works(w), 2);
  anon_send_exit(w, caf::exit_reason::user_shutdown);
  sched.run();
}

CAF_TEST(a full job table refuses at once and writes nothing) {
  for (int i = 0; i < 3; ++i) {
    self->send(queue, submit_atom::value, job_for("classifier"));
    sched.run();
    self->receive([](job_record&) {}, [](caf::error&) { CAF_FAIL("submit failed"); });
  }
  self->send(queue, submit_atom::value, job_for("classifier"));
  sched.run();
  self->receive([](job_record&) { CAF_FAIL("fourth submit accepted"); },
                [](caf::error& err) { CAF_CHECK(code_of(err) == errc::queue_full); });
  auto now = stats(); // CAF_CHECK_EQUAL would read a temporary's map after its end
  CAF_CHECK_EQUAL(now.jobs_by_state["queued"], 3);
}

CAF_TEST(interactive requests go to an idle worker and are bounded) {
  infer_request req{"classifier", {make_float_tensor("x", {1}, {1.f})}, "r1"};
  // Nobody serves the model: refused at once.
  self->send(queue, infer_atom::value, req);
  sched.run();
  self->receive([](std::vector<tensor_data>&) { CAF_FAIL("served without a worker"); },
                [](caf::error& err) { CAF_CHECK(code_of(err) == errc::unavailable); });
  auto w = add_worker("w1", {"classifier"});
  self->send(queue, infer_atom::value, req);
  sched.run();
  self->receive(
      [](std::vector<tensor_data>& out) {
        CAF_REQUIRE_EQUAL(out.size(), 1u);
        CAF_CHECK_EQUAL(out[0].name, "echo");
      },
      [](caf::error& err) { CAF_FAIL("infer failed: " << message_of(err)); });
  // Its answer made it idle again. Now it holds the next one, so it stays
  // busy: one request may wait, the next is refused with queue_full.
  worker_state(w).hold = true;
  self->send(queue, infer_atom::value, req);
  sched.run();
  self->send(queue, infer_atom::value, req);
  sched.run();
  self->send(queue, infer_atom::value, req);
  sched.run();
  self->receive([](std::vector<tensor_data>&) { CAF_FAIL("overflow served"); },
                [](caf::error& err) { CAF_CHECK(code_of(err) == errc::queue_full); });
  CAF_CHECK_EQUAL(stats().interactive_waiting, 1);
  // The held one is answered, which frees the worker: the waiting request
  // is dispatched (no idle message: the answer says it).
  worker_state(w).hold = false;
  CAF_REQUIRE_EQUAL(worker_state(w).held.size(), 1u);
  anon_send(w, renew_atom::value); // the fake's cue to answer
  sched.run();
  for (int i = 0; i < 2; ++i)
    self->receive(
        [](std::vector<tensor_data>& out) { CAF_CHECK_EQUAL(out.size(), 1u); },
        [](caf::error& err) { CAF_FAIL("queued infer failed: " << message_of(err)); });
  CAF_CHECK_EQUAL(stats().interactive_waiting, 0);
  anon_send_exit(w, caf::exit_reason::user_shutdown);
  sched.run();
}

CAF_TEST(a worker that goes down leaves the membership) {
  auto w = add_worker("w1", {"classifier"});
  CAF_CHECK_EQUAL(stats().workers_total, 1);
  anon_send_exit(w, caf::exit_reason::kill);
  sched.run();
  auto s = stats();
  CAF_CHECK_EQUAL(s.workers_total, 0);
  CAF_CHECK(s.ready_models.empty());
}

CAF_TEST(cancel ends a queued job at once) {
  submit_ok("classifier");
  self->send(queue, cancel_atom::value, int64_t{1});
  sched.run();
  self->receive([](job_record& rec) { CAF_CHECK(rec.state == job_state::cancelled); },
                [](caf::error& err) { CAF_FAIL("cancel failed: " << message_of(err)); });
  self->send(queue, cancel_atom::value, int64_t{1});
  sched.run();
  self->receive([](job_record&) { CAF_FAIL("second cancel accepted"); },
                [](caf::error& err) { CAF_CHECK(code_of(err) == errc::conflict); });
  self->send(queue, cancel_atom::value, int64_t{77});
  sched.run();
  self->receive([](job_record&) { CAF_FAIL("cancel of unknown job accepted"); },
                [](caf::error& err) { CAF_CHECK(code_of(err) == errc::not_found); });
}

CAF_TEST(cancel of a running job reaches the worker that holds it) {
  auto w = add_worker("w1", {"classifier"});
  submit_ok("classifier");
  auto store = worker_store();
  auto claimed = store->claim("w1", {"classifier"}, 1, 30000, now_ms());
  CAF_REQUIRE(claimed && claimed->size() == 1u);
  self->send(queue, cancel_atom::value, int64_t{1});
  sched.run();
  self->receive(
      [](job_record& rec) {
        CAF_CHECK(rec.state == job_state::running);
        CAF_CHECK(rec.cancel_requested);
      },
      [](caf::error& err) { CAF_FAIL("cancel failed: " << message_of(err)); });
  CAF_CHECK_EQUAL(worker_state(w).cancels, (std::vector<int64_t>{1}));
  anon_send_exit(w, caf::exit_reason::user_shutdown);
  sched.run();
}

CAF_TEST(the jobs of a worker that goes down are put back at once) {
  auto w = add_worker("w1", {"classifier"});
  submit_ok("classifier");
  auto store = worker_store();
  auto claimed = store->claim("w1", {"classifier"}, 1, 3600000, now_ms());
  CAF_REQUIRE(claimed && claimed->size() == 1u);
  CAF_CHECK(request_job(1).state == job_state::running);
  anon_send_exit(w, caf::exit_reason::kill);
  sched.run();
  auto rec = request_job(1);
  CAF_CHECK(rec.state == job_state::queued);
  CAF_CHECK_EQUAL(rec.attempts, 1);
  CAF_CHECK(rec.has_error && rec.error.code == "worker_lost");
}

CAF_TEST(a second live worker with the same id is stopped and the first keeps going) {
  auto first = add_worker("w1", {"classifier"});
  // The door asks before a node may join.
  self->send(queue, join_atom::value, std::string{"w1"});
  sched.run();
  self->receive(
      [](bool free) { CAF_CHECK(!free); },
      [](caf::error& err) { CAF_FAIL("join check failed: " << message_of(err)); });
  self->send(queue, join_atom::value, std::string{"w2"});
  sched.run();
  self->receive(
      [](bool free) { CAF_CHECK(free); },
      [](caf::error& err) { CAF_FAIL("join check failed: " << message_of(err)); });
  // Two nodes that passed the door at the same time: the later one is stopped
  // with a conflict, the first stays registered.
  auto second = sys.spawn(fake_worker);
  self->monitor(second);
  worker_registration reg{"w1",        {"classifier"}, {}, "cpu",
                          "localhost", "in-process",   {}, {}};
  self->send(queue, register_atom::value, second, reg);
  sched.run();
  bool stopped = false;
  self->receive([&](caf::down_msg& dm) {
    stopped = true;
    CAF_CHECK(code_of(dm.reason) == errc::conflict);
  });
  CAF_CHECK(stopped);
  CAF_CHECK_EQUAL(stats().workers_total, 1);
  submit_ok("classifier");
  CAF_CHECK_EQUAL(works(first), 2);
  anon_send_exit(first, caf::exit_reason::user_shutdown);
  sched.run();
}

CAF_TEST(jobs left running under an id go back when that id registers again) {
  // The queue restarted: its table says w1 runs a job, but the w1 that
  // registers now is a fresh actor that holds nothing.
  submit_ok("classifier");
  submit_ok("classifier");
  auto store = worker_store();
  auto claimed = store->claim("w1", {"classifier"}, 1, 3600000, now_ms());
  CAF_REQUIRE(claimed && claimed->size() == 1u);
  auto other = store->claim("w9", {"classifier"}, 1, 3600000, now_ms());
  CAF_REQUIRE(other && other->size() == 1u);
  auto w = register_worker("w1", {"classifier"});
  auto rec = request_job(1);
  CAF_CHECK(rec.state == job_state::queued);
  CAF_CHECK_EQUAL(rec.attempts, 1);
  CAF_CHECK(rec.has_error && rec.error.code == "worker_lost");
  // Another worker's job is left alone: its lease still covers it.
  CAF_CHECK(request_job(2).state == job_state::running);
  anon_send_exit(w, caf::exit_reason::user_shutdown);
  sched.run();
}

CAF_TEST(listing and event backlog go through the queue) {
  for (int i = 0; i < 3; ++i)
    submit_ok("classifier");
  job_filter filter;
  filter.limit = 2;
  self->send(queue, list_atom::value, filter);
  sched.run();
  self->receive(
      [](job_page& page) {
        CAF_REQUIRE_EQUAL(page.jobs.size(), 2u);
        CAF_CHECK_EQUAL(page.jobs[0].id, 3);
        CAF_CHECK_EQUAL(page.next_before_id, 2);
      },
      [](caf::error& err) { CAF_FAIL("list failed: " << message_of(err)); });
  self->send(queue, events_atom::value, int64_t{2}, int64_t{0});
  sched.run();
  self->receive(
      [](std::vector<job_event>& events) {
        CAF_REQUIRE_EQUAL(events.size(), 1u);
        CAF_CHECK_EQUAL(events[0].kind, "status");
        CAF_CHECK(events[0].data_json.find("queued") != std::string::npos);
      },
      [](caf::error& err) { CAF_FAIL("events failed: " << message_of(err)); });
}

CAF_TEST(submits that arrive together share one transaction) {
  for (int i = 0; i < 3; ++i)
    self->send(queue, submit_atom::value, job_for("classifier"));
  *commits = 0;
  sched.run();
  CAF_CHECK_EQUAL(*commits, 1);
  std::vector<int64_t> ids;
  for (int i = 0; i < 3; ++i)
    self->receive(
        [&](job_record& rec) { ids.push_back(rec.id); },
        [](caf::error& err) { CAF_FAIL("submit failed: " << message_of(err)); });
  CAF_CHECK_EQUAL(ids, (std::vector<int64_t>{1, 2, 3}));
  // Capacity is judged per job inside the batch: 3 is the limit here.
  self->send(queue, submit_atom::value, job_for("classifier"));
  sched.run();
  self->receive([](job_record&) { CAF_FAIL("over capacity accepted"); },
                [](caf::error& err) { CAF_CHECK(code_of(err) == errc::queue_full); });
}

CAF_TEST(a remote worker claims and completes through the queue with fencing) {
  submit_ok("classifier");
  std::vector<job_record> claimed;
  self->send(queue, claim_atom::value, std::string{"remote-1"},
             std::vector<std::string>{"classifier"}, int32_t{4}, int64_t{30000});
  sched.run();
  self->receive([&](std::vector<job_record>& jobs) { claimed = std::move(jobs); },
                [](caf::error& err) { CAF_FAIL("claim failed: " << message_of(err)); });
  CAF_REQUIRE_EQUAL(claimed.size(), 1u);
  auto job = claimed[0];
  CAF_CHECK(job.state == job_state::running);
  CAF_CHECK_EQUAL(job.worker, "remote-1");
  self->send(queue, renew_atom::value, job.id, job.lease_seq, int64_t{30000});
  sched.run();
  self->receive(
      [](bool held, bool cancel_requested) {
        CAF_CHECK(held);
        CAF_CHECK(!cancel_requested);
      },
      [](caf::error& err) { CAF_FAIL("renew failed: " << message_of(err)); });
  self->send(queue, complete_atom::value, job.id, job.lease_seq + 1, std::string{"{}"});
  sched.run();
  self->receive(
      [](bool done) { CAF_CHECK(!done); }, // stale token: nothing changes
      [](caf::error& err) { CAF_FAIL("complete failed: " << message_of(err)); });
  self->send(queue, complete_atom::value, job.id, job.lease_seq, std::string{"{}"});
  sched.run();
  self->receive(
      [](bool done) { CAF_CHECK(done); },
      [](caf::error& err) { CAF_FAIL("complete failed: " << message_of(err)); });
  CAF_CHECK(request_job(job.id).state == job_state::succeeded);
}

CAF_TEST(workers are visible in the workers table) {
  auto w = add_worker("w1", {"classifier", "tinylm"});
  auto rows = worker_store()->list_workers();
  CAF_REQUIRE(rows);
  CAF_REQUIRE_EQUAL(rows->size(), 1u);
  CAF_CHECK_EQUAL((*rows)[0].id, "w1");
  CAF_CHECK_EQUAL((*rows)[0].state, "IDLE");
  CAF_CHECK_EQUAL((*rows)[0].models, "classifier,tinylm");
  anon_send_exit(w, caf::exit_reason::kill);
  sched.run();
  rows = worker_store()->list_workers();
  CAF_REQUIRE(rows && rows->size() == 1u);
  CAF_CHECK_EQUAL((*rows)[0].state, "DOWN");
}

CAF_TEST_FIXTURE_SCOPE_END()
