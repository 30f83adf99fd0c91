#define CAF_SUITE sessions
#include "tests/unit/test_support.hpp"

#include "actors/queue.hpp"

#include <caf/test/dsl.hpp>

#include "messages/errors.hpp"
#include "tests/unit/actors/fake_worker.hpp"

using namespace infergrid;

namespace {

using testing::fake_worker_state;

/// Stands in for a session actor: records what the queue tells it.
struct recorder_state {
  std::vector<session_event> events;
};

session_events_actor::behavior_type
event_recorder(session_events_actor::stateful_pointer<recorder_state> self) {
  return {
      [self](session_atom, session_event& ev) { self->state.events.push_back(ev); },
  };
}

struct fixture : test_coordinator_fixture<> {
  testing::temp_dir dir;
  queue_actor queue;

  fixture() {
    persistence::store_options opts;
    opts.path = dir.str("infergrid.db");
    opts.checkpointer = true;
    auto store = persistence::job_store::open(opts);
    CAF_REQUIRE(store);
    queue_config cfg;
    cfg.settings.max_interactive = 8;
    cfg.sessions.pause_timeout_ms = 1000;
    cfg.sessions.idle_timeout_ms = 5000;
    cfg.tick = false;
    queue = spawn_queue(sys, cfg,
                        std::shared_ptr<persistence::job_store>(std::move(*store)));
    sched.run();
  }

  ~fixture() {
    anon_send_exit(queue, caf::exit_reason::user_shutdown);
    sched.run();
  }

  // A worker serving "lm" that found no durable work on its first look.
  worker_actor add_worker(const std::string& id) {
    auto w = sys.spawn(testing::fake_worker);
    worker_registration reg{id, {"lm"}, {}, "cpu", "localhost", "in-process", {}, {}};
    self->send(queue, register_atom::value, w, reg);
    sched.run();
    self->send(queue, idle_atom::value, id, false);
    sched.run();
    return w;
  }

  fake_worker_state& worker_state(const worker_actor& w) {
    return deref<worker_actor::stateful_base<fake_worker_state>>(w).state;
  }

  session_events_actor client() {
    return sys.spawn(event_recorder);
  }

  std::vector<session_event>& events(const session_events_actor& c) {
    return deref<session_events_actor::stateful_base<recorder_state>>(c).state.events;
  }

  /// Asks for a session; the grant, or nothing while it waits.
  void open(const std::string& id, const session_events_actor& c) {
    session_open req;
    req.model = "lm";
    req.session_id = id;
    req.events = c;
    self->send(queue, session_atom::value, req);
    sched.run();
  }

  caf::expected<session_grant> granted() {
    caf::expected<session_grant> out = make_error(errc::internal, "no answer");
    self->receive([&](session_grant& g) { out = std::move(g); },
                  [&](caf::error& err) { out = std::move(err); },
                  caf::after(std::chrono::seconds(0)) >> [] {});
    return out;
  }

  caf::expected<std::string> control(const std::string& id, const std::string& action) {
    caf::expected<std::string> out = make_error(errc::internal, "no answer");
    self->send(queue, session_atom::value, id, action);
    sched.run();
    self->receive([&](std::string& phase) { out = std::move(phase); },
                  [&](caf::error& err) { out = std::move(err); },
                  caf::after(std::chrono::seconds(0)) >> [] {});
    return out;
  }

  caf::expected<generate_reply> turn(const std::string& session,
                                     const std::string& text) {
    generate_request req;
    req.model = "lm";
    req.params.prompt = text;
    req.session = session;
    caf::expected<generate_reply> out = make_error(errc::internal, "no answer");
    self->send(queue, generate_atom::value, req);
    sched.run();
    self->receive([&](generate_reply& r) { out = std::move(r); },
                  [&](caf::error& err) { out = std::move(err); },
                  caf::after(std::chrono::seconds(0)) >> [] {});
    return out;
  }

  cluster_stats stats() {
    cluster_stats out;
    self->send(queue, stats_atom::value);
    sched.run();
    self->receive([&](cluster_stats& s) { out = std::move(s); },
                  [&](caf::error& err) { CAF_FAIL("stats: " << message_of(err)); });
    return out;
  }

  std::string phase_of(const std::string& worker) {
    for (auto& w : stats().workers)
      if (w.worker_id == worker)
        return w.phase;
    return "absent";
  }
};

} // namespace

CAF_TEST_FIXTURE_SCOPE(session_tests, fixture)

CAF_TEST(a session reserves an idle worker and its turns run there) {
  auto w = add_worker("w1");
  auto c = client();
  open("s-1", c);
  auto g = granted();
  CAF_REQUIRE(g);
  CAF_CHECK_EQUAL(g->worker, "w1");
  CAF_CHECK_EQUAL(g->session_id, "s-1");
  CAF_CHECK_EQUAL(worker_state(w).session_actions,
                  (std::vector<std::string>{"s-1 open"}));
  CAF_CHECK_EQUAL(phase_of("w1"), "SESSION_ACTIVE");
  auto s = stats();
  CAF_CHECK_EQUAL(s.sessions_active, 1);
  CAF_CHECK_EQUAL(s.workers_busy, 1);
  CAF_CHECK_EQUAL(s.workers.front().session, "s-1");
  // Turns go to the session's worker at once, with the session named.
  auto r = turn("s-1", "abc");
  CAF_REQUIRE(r);
  CAF_CHECK_EQUAL(r->text, "cba");
  CAF_CHECK_EQUAL(worker_state(w).generate_sessions, (std::vector<std::string>{"s-1"}));
  // Other work waits while the worker is the session's: a plain
  // generation and durable work.
  generate_request plain;
  plain.model = "lm";
  plain.params.prompt = "xyz";
  self->send(queue, generate_atom::value, plain);
  sched.run();
  bool answered = false;
  self->receive([&](generate_reply&) { answered = true; },
                [&](caf::error&) { answered = true; },
                caf::after(std::chrono::seconds(0)) >> [] {});
  CAF_CHECK(!answered);
  new_job job;
  job.model = "lm";
  job.input_json = R"({"prompt":"p"})";
  self->send(queue, submit_atom::value, job);
  sched.run();
  self->receive([](job_record&) {}, [](caf::error& err) { CAF_FAIL(message_of(err)); });
  CAF_CHECK_EQUAL(worker_state(w).work_messages, 1); // its first look only
  CAF_CHECK_EQUAL(worker_state(w).generate_prompts.size(), 1u);
  // Stop: the worker is closed and free; the waiting generation runs.
  auto stopped = control("s-1", "stop");
  CAF_REQUIRE(stopped);
  CAF_CHECK_EQUAL(worker_state(w).session_actions,
                  (std::vector<std::string>{"s-1 open", "s-1 close"}));
  self->receive([](generate_reply& r) { CAF_CHECK_EQUAL(r.text, "zyx"); },
                [](caf::error& err) { CAF_FAIL(message_of(err)); });
  CAF_CHECK_EQUAL(stats().sessions_active, 0);
  // The client asked to stop: it is not told again.
  CAF_CHECK(events(c).empty());
  // The session is gone.
  auto gone = turn("s-1", "again");
  CAF_REQUIRE(!gone);
  CAF_CHECK_EQUAL(code_of(gone.error()), errc::not_found);
  CAF_CHECK_EQUAL(code_of(control("s-1", "stop").error()), errc::not_found);
}

CAF_TEST(pause resume and the pause timeout) {
  auto w = add_worker("w1");
  auto c = client();
  open("s-1", c);
  CAF_REQUIRE(granted());
  CAF_CHECK_EQUAL(control("s-1", "pause"), std::string{"SESSION_PAUSED"});
  CAF_CHECK_EQUAL(phase_of("w1"), "SESSION_PAUSED");
  auto refused = turn("s-1", "hi");
  CAF_REQUIRE(!refused);
  CAF_CHECK_EQUAL(code_of(refused.error()), errc::conflict);
  CAF_CHECK_EQUAL(control("s-1", "resume"), std::string{"SESSION_ACTIVE"});
  CAF_CHECK(turn("s-1", "hi"));
  CAF_CHECK_EQUAL(code_of(control("s-1", "rewind").error()), errc::invalid_input);
  // The timeout armed by the first pause is stale after the resume.
  CAF_CHECK_EQUAL(control("s-1", "pause"), std::string{"SESSION_PAUSED"});
  sched.advance_time(std::chrono::milliseconds(999));
  sched.run();
  CAF_CHECK_EQUAL(phase_of("w1"), "SESSION_PAUSED");
  sched.advance_time(std::chrono::milliseconds(1));
  sched.run();
  CAF_CHECK_EQUAL(phase_of("w1"), "IDLE");
  CAF_REQUIRE_EQUAL(events(c).size(), 1u);
  CAF_CHECK_EQUAL(events(c).front().type, "session.end");
  CAF_CHECK_EQUAL(events(c).front().reason, "pause_timeout");
  CAF_CHECK_EQUAL(worker_state(w).session_actions,
                  (std::vector<std::string>{"s-1 open", "s-1 pause", "s-1 resume",
                                            "s-1 pause", "s-1 close"}));
}

CAF_TEST(a session with no turn ends at its idle timeout) {
  add_worker("w1");
  auto c = client();
  open("s-1", c);
  CAF_REQUIRE(granted());
  sched.advance_time(std::chrono::milliseconds(3000));
  sched.run();
  CAF_CHECK(turn("s-1", "hi")); // a turn restarts the idle time
  sched.advance_time(std::chrono::milliseconds(4000));
  sched.run();
  CAF_CHECK_EQUAL(phase_of("w1"), "SESSION_ACTIVE");
  sched.advance_time(std::chrono::milliseconds(1000));
  sched.run();
  CAF_CHECK_EQUAL(phase_of("w1"), "IDLE");
  CAF_REQUIRE_EQUAL(events(c).size(), 1u);
  CAF_CHECK_EQUAL(events(c).front().reason, "idle_timeout");
}

CAF_TEST(a second session waits with its position until the worker is free) {
  add_worker("w1");
  auto a = client();
  auto b = client();
  open("s-a", a);
  CAF_REQUIRE(granted());
  open("s-b", b);
  CAF_CHECK(!granted()); // waiting
  CAF_REQUIRE_EQUAL(events(b).size(), 1u);
  CAF_CHECK_EQUAL(events(b).front().type, "queue.position");
  CAF_CHECK_EQUAL(events(b).front().position, 1);
  CAF_CHECK_EQUAL(stats().sessions_waiting, 1);
  CAF_CHECK(control("s-a", "stop"));
  auto g = granted();
  CAF_REQUIRE(g);
  CAF_CHECK_EQUAL(g->session_id, "s-b");
  CAF_CHECK_EQUAL(stats().sessions_waiting, 0);
  // A session id in use is refused.
  open("s-b", a);
  auto dup = granted();
  CAF_REQUIRE(!dup);
  CAF_CHECK_EQUAL(code_of(dup.error()), errc::conflict);
}

CAF_TEST(the session ends when its actor goes away or its worker goes down) {
  auto w1 = add_worker("w1");
  auto c = client();
  open("s-1", c);
  CAF_REQUIRE(granted());
  anon_send_exit(c, caf::exit_reason::user_shutdown);
  sched.run();
  CAF_CHECK_EQUAL(phase_of("w1"), "IDLE");
  CAF_CHECK_EQUAL(worker_state(w1).session_actions.back(), "s-1 close");
  // A waiting open whose actor left is dropped: the next one gets the worker.
  auto d = client();
  open("s-2", d);
  CAF_REQUIRE(granted());
  auto e = client();
  open("s-3", e);
  CAF_CHECK(!granted());
  anon_send_exit(e, caf::exit_reason::user_shutdown);
  sched.run();
  CAF_CHECK_EQUAL(stats().sessions_waiting, 0);
  // The worker dies: the client hears worker_lost.
  anon_send_exit(w1, caf::exit_reason::kill);
  sched.run();
  CAF_REQUIRE_EQUAL(events(d).size(), 1u);
  CAF_CHECK_EQUAL(events(d).front().reason, "worker_lost");
  CAF_CHECK_EQUAL(stats().sessions_active, 0);
}

CAF_TEST_FIXTURE_SCOPE_END()
