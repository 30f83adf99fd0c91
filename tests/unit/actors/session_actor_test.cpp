#define CAF_SUITE session_actor
#include "tests/unit/test_support.hpp"

#include "actors/session.hpp"

#include <caf/test/dsl.hpp>

#include <nlohmann/json.hpp>

#include "actors/gateway.hpp"
#include "actors/queue.hpp"
#include "messages/errors.hpp"
#include "tests/unit/actors/fake_worker.hpp"

using namespace infergrid;
using json = nlohmann::json;

namespace {

using testing::fake_worker_state;

/// What the session actor wrote to its connection.
struct wire {
  std::vector<json> frames;
  std::vector<std::string> audio;
  bool closed = false;
  int handled = 0;
};

struct fixture : test_coordinator_fixture<> {
  testing::temp_dir dir;
  queue_actor queue;
  gateway_actor gateway;
  worker_actor worker;

  fixture() {
    persistence::store_options opts;
    opts.path = dir.str("infergrid.db");
    opts.checkpointer = true;
    auto store = persistence::job_store::open(opts);
    CAF_REQUIRE(store);
    model_info lm;
    lm.name = "lm";
    lm.kind = model_kind::generate;
    model_info classifier;
    classifier.name = "classifier";
    classifier.kind = model_kind::tensor;
    queue_config cfg;
    cfg.models = {lm, classifier};
    cfg.tick = false;
    queue = spawn_queue(sys, cfg,
                        std::shared_ptr<persistence::job_store>(std::move(*store)));
    gateway_config gcfg;
    gcfg.models = {lm, classifier};
    gateway = spawn_gateway(sys, queue, broker_actor{}, gcfg);
    worker = sys.spawn(testing::fake_worker);
    worker_registration reg{"w1", {"lm", "classifier"}, {}, "cpu",
                            "",   "in-process",         {}, {}};
    self->send(queue, register_atom::value, worker, reg);
    sched.run();
    self->send(queue, idle_atom::value, std::string{"w1"}, false);
    sched.run();
  }

  ~fixture() {
    anon_send_exit(gateway, caf::exit_reason::user_shutdown);
    anon_send_exit(queue, caf::exit_reason::user_shutdown);
    sched.run();
  }

  fake_worker_state& worker_state() {
    return deref<worker_actor::stateful_base<fake_worker_state>>(worker).state;
  }

  session_actor connect(std::shared_ptr<wire> w) {
    session_transport t;
    t.text = [w](std::string x) { w->frames.push_back(json::parse(x)); };
    t.binary = [w](std::string x) { w->audio.push_back(std::move(x)); };
    t.close = [w] { w->closed = true; };
    t.handled = [w] { ++w->handled; };
    auto s = spawn_session(sys, gateway, session_config{"r_test"}, t);
    sched.run();
    return s;
  }

  void say(const session_actor& s, json frame) {
    self->send(s, ws_text_atom::value, frame.dump());
    sched.run();
  }

  /// The types of the frames since `from` ("state:X" for states).
  std::vector<std::string> since(const wire& w, std::size_t from) {
    std::vector<std::string> out;
    for (auto i = from; i < w.frames.size(); ++i) {
      auto& f = w.frames[i];
      auto type = f["type"].get<std::string>();
      if (type == "state")
        type += ":" + f["state"].get<std::string>();
      if (type == "error")
        type += ":" + f["code"].get<std::string>();
      out.push_back(type);
    }
    return out;
  }

  std::string phase() {
    cluster_stats out;
    self->send(queue, stats_atom::value);
    sched.run();
    self->receive([&](cluster_stats& s) { out = std::move(s); },
                  [&](caf::error& err) { CAF_FAIL(message_of(err)); });
    return out.workers.at(0).phase;
  }

  using strings = std::vector<std::string>;
};

} // namespace

CAF_TEST_FIXTURE_SCOPE(session_actor_tests, fixture)

CAF_TEST(a session starts takes turns and stops) {
  auto w = std::make_shared<wire>();
  auto s = connect(w);
  say(s, {{"type", "session.start"}, {"model", "lm"}, {"max_tokens", 5}});
  CAF_CHECK_EQUAL(since(*w, 0), (strings{"session.started", "state:LISTENING"}));
  CAF_CHECK_EQUAL(w->frames[0]["worker"], "w1");
  CAF_CHECK_EQUAL(phase(), "SESSION_ACTIVE");
  say(s, {{"type", "input.text"}, {"text", "abc"}});
  // The fake worker streams nothing: the reply's text is the output.
  CAF_CHECK_EQUAL(since(*w, 2), (strings{"state:SPEAKING", "output.text", "turn.end",
                                         "state:LISTENING"}));
  CAF_CHECK_EQUAL(w->frames[3]["delta"], "cba");
  CAF_CHECK_EQUAL(w->frames[3]["seq"], 1);
  CAF_CHECK_EQUAL(w->frames[4]["turn"], 1);
  CAF_CHECK_EQUAL(worker_state().generate_sessions.size(), 1u);
  CAF_CHECK_EQUAL(worker_state().generate_sessions[0].substr(0, 2), "s-");
  say(s, {{"type", "input.text"}, {"text", "xy"}});
  CAF_CHECK_EQUAL(w->frames[7]["delta"], "yx");
  CAF_CHECK_EQUAL(w->frames[7]["seq"], 2);
  CAF_CHECK_EQUAL(w->frames[8]["turn"], 2);
  auto n = w->frames.size();
  say(s, {{"type", "control"}, {"action", "stop"}});
  CAF_CHECK_EQUAL(since(*w, n), (strings{"session.end"}));
  CAF_CHECK_EQUAL(w->frames.back()["reason"], "stopped");
  CAF_CHECK(w->closed);
  CAF_CHECK_EQUAL(phase(), "IDLE");
  CAF_CHECK_EQUAL(worker_state().session_actions.back().substr(19), "close");
  // Every frame but the last (the actor quit with it) was acknowledged.
  CAF_CHECK_EQUAL(w->handled, 3);
}

CAF_TEST(a turn asked while a pause is on its way is refused not raced) {
  auto w = std::make_shared<wire>();
  auto s = connect(w);
  say(s, {{"type", "session.start"}, {"model", "lm"}});
  // Both frames are in the mailbox before the pause's answer comes back.
  self->send(s, ws_text_atom::value,
             json{{"type", "control"}, {"action", "pause"}}.dump());
  self->send(s, ws_text_atom::value, json{{"type", "input.text"}, {"text", "hi"}}.dump());
  sched.run();
  CAF_CHECK_EQUAL(since(*w, 2), (strings{"error:conflict", "state:PAUSED"}));
  CAF_CHECK(worker_state().generate_prompts.empty());
  CAF_CHECK_EQUAL(phase(), "SESSION_PAUSED");
  say(s, {{"type", "input.text"}, {"text", "hi"}});
  CAF_CHECK_EQUAL(since(*w, 4), (strings{"error:conflict"}));
  say(s, {{"type", "control"}, {"action", "resume"}});
  say(s, {{"type", "control"}, {"action", "resume"}}); // answered again
  CAF_CHECK_EQUAL(since(*w, 5), (strings{"state:LISTENING", "state:LISTENING"}));
  CAF_CHECK_EQUAL(phase(), "SESSION_ACTIVE");
}

CAF_TEST(barge in cancels the turn and drops the rest of its output) {
  auto w = std::make_shared<wire>();
  auto s = connect(w);
  say(s, {{"type", "session.start"}, {"model", "lm"}});
  worker_state().hold_generate = true;
  say(s, {{"type", "input.text"}, {"text", "hello"}});
  CAF_CHECK_EQUAL(since(*w, 2), (strings{"state:SPEAKING"}));
  say(s, {{"type", "control"}, {"action", "pause"}});
  CAF_CHECK_EQUAL(since(*w, 3), (strings{"error:conflict"}));
  say(s, {{"type", "control"}, {"action", "barge_in"}});
  CAF_CHECK_EQUAL(since(*w, 4), (strings{"state:BARGED_IN"}));
  // The worker answers the interrupted turn in full: none of it is sent.
  self->send(worker, renew_atom::value);
  sched.run();
  CAF_CHECK_EQUAL(since(*w, 5), (strings{"turn.end", "state:LISTENING"}));
  CAF_CHECK_EQUAL(w->frames[5]["finish_reason"], "cancelled");
  // Nothing to interrupt now.
  say(s, {{"type", "control"}, {"action", "barge_in"}});
  CAF_CHECK_EQUAL(since(*w, 7), (strings{"error:conflict"}));
  // The next turn runs.
  worker_state().hold_generate = false;
  say(s, {{"type", "input.text"}, {"text", "ab"}});
  CAF_CHECK_EQUAL(since(*w, 8), (strings{"state:SPEAKING", "output.text", "turn.end",
                                         "state:LISTENING"}));
  CAF_CHECK_EQUAL(w->frames[9]["delta"], "ba");
}

CAF_TEST(what the server cannot do is refused at the start) {
  struct bad {
    json start;
    std::string code;
  };
  std::vector<bad> cases{
      {{{"type", "session.start"}, {"model", "lm"}, {"mode", "duplex"}}, "invalid_input"},
      {{{"type", "session.start"}, {"model", "lm"}, {"record", true}}, "invalid_input"},
      {{{"type", "session.start"}, {"pipeline", "chat+tts"}}, "invalid_input"},
      {{{"type", "session.start"}, {"model", "nope"}}, "not_found"},
      {{{"type", "session.start"}, {"model", "classifier"}}, "invalid_input"},
      {{{"type", "input.text"}, {"text", "first"}}, "invalid_input"},
      {{{"type", "session.start"}, {"model", "lm"}, {"bogus", 1}}, "invalid_input"},
  };
  for (auto& c : cases) {
    auto w = std::make_shared<wire>();
    auto s = connect(w);
    say(s, c.start);
    CAF_CHECK_EQUAL(since(*w, 0), (strings{"error:" + c.code, "session.end"}));
    CAF_CHECK(w->closed);
    if (!w->frames.empty())
      CAF_CHECK_EQUAL(w->frames.back()["reason"], "error");
  }
  CAF_CHECK_EQUAL(phase(), "IDLE");
  // A bad frame later in a session does not end it.
  auto w = std::make_shared<wire>();
  auto s = connect(w);
  say(s, {{"type", "session.start"}, {"model", "lm"}});
  self->send(s, ws_text_atom::value, std::string{"{"});
  self->send(s, ws_binary_atom::value, std::string{"\x01\x02"});
  sched.run();
  CAF_CHECK_EQUAL(since(*w, 2), (strings{"error:invalid_input", "error:invalid_input"}));
  CAF_CHECK(!w->closed);
  // A client that goes away ends the session and frees the worker.
  self->send(s, ws_closed_atom::value);
  sched.run();
  CAF_CHECK_EQUAL(phase(), "IDLE");
}

CAF_TEST(a connection without session start is closed after 30 s) {
  auto w = std::make_shared<wire>();
  auto s = connect(w);
  sched.advance_time(std::chrono::seconds(29));
  sched.run();
  CAF_CHECK(!w->closed);
  sched.advance_time(std::chrono::seconds(1));
  sched.run();
  CAF_CHECK_EQUAL(since(*w, 0), (strings{"error:timeout", "session.end"}));
  CAF_CHECK(w->closed);
}

CAF_TEST_FIXTURE_SCOPE_END()
