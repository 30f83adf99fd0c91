// The worker and its executor with real LibTorch and the demo models: batched
// forward calls, batch claims of durable jobs, streaming to a sink and its
// cancellation, the memory budget's on-demand loads and LRU eviction.
#define CAF_SUITE worker
#include "tests/unit/test_support.hpp"

#include "actors/worker.hpp"

#include "actors/executor.hpp"

#include <caf/test/unit_test.hpp>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <chrono>
#include <functional>
#include <mutex>
#include <thread>

#include "actors/clock.hpp"
#include "inference/demo_models.hpp"
#include "inference/model_repository.hpp"
#include "messages/errors.hpp"
#include "messages/kserve.hpp"

using namespace infergrid;
using namespace std::chrono_literals;

namespace {

/// What the fake queue heard from the worker.
struct heard {
  std::mutex mtx;
  bool registered = false;
  worker_registration reg;
  worker_status status;
  int idles = 0;
};

queue_feedback_actor::behavior_type fake_queue(queue_feedback_actor::pointer,
                                               std::shared_ptr<heard> h) {
  return {
      [h](register_atom, const worker_actor&, const worker_registration& reg) {
        std::lock_guard<std::mutex> guard{h->mtx};
        h->registered = true;
        h->reg = reg;
      },
      [h](idle_atom, const std::string&, bool) {
        std::lock_guard<std::mutex> guard{h->mtx};
        ++h->idles;
      },
      [h](status_atom, const worker_status& ws) {
        std::lock_guard<std::mutex> guard{h->mtx};
        h->status = ws;
      },
  };
}

/// Collects the chunks a streaming request sends; `after` runs on each.
struct sink_state {
  std::shared_ptr<std::string> got;
  std::shared_ptr<std::atomic<int>> chunks;
};

chunk_sink_actor::behavior_type sink(chunk_sink_actor::stateful_pointer<sink_state> self,
                                     std::shared_ptr<std::string> got,
                                     std::shared_ptr<std::atomic<int>> chunks) {
  self->state.got = got;
  self->state.chunks = chunks;
  return {
      [self](chunk_atom, const std::string& piece) {
        *self->state.got += piece;
        ++*self->state.chunks;
      },
  };
}

/// A tinylm generation of `prompt` that streams up to `max_tokens` to `to`.
generate_request long_generation(const std::string& prompt, int32_t max_tokens,
                                 chunk_sink_actor to) {
  generate_request req;
  req.model = "tinylm";
  req.params.prompt = prompt;
  req.params.max_tokens = max_tokens;
  req.stream = true;
  req.sink = std::move(to);
  return req;
}

bool eventually(const std::function<bool()>& pred,
                std::chrono::milliseconds limit = 20s) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred())
      return true;
    std::this_thread::sleep_for(5ms);
  }
  return pred();
}

struct fixture {
  testing::temp_dir dir;
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  std::shared_ptr<heard> h = std::make_shared<heard>();
  queue_feedback_actor queue;
  worker_actor worker;
  std::vector<inference::model_entry> entries;
  std::unique_ptr<persistence::job_store> store;

  fixture() {
    auto made = inference::make_demo_models(dir.str("models"));
    CAF_REQUIRE(made);
    entries = inference::scan_model_repository(dir.str("models"));
    persistence::store_options opts;
    opts.path = dir.str("infergrid.db");
    opts.checkpointer = true;
    auto s = persistence::job_store::open(opts);
    CAF_REQUIRE(s);
    store = std::move(*s);
    queue = sys.spawn(fake_queue, h);
  }

  ~fixture() {
    caf::anon_send_exit(worker, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(queue, caf::exit_reason::user_shutdown);
  }

  // Starts the worker and waits until it registered.
  void start(int64_t budget_mb = 0, int32_t stream_interval_ms = 5,
             int64_t generate_timeout_ms = 600000) {
    worker_config wcfg;
    wcfg.id = "w1";
    wcfg.models = entries;
    wcfg.store.path = dir.str("infergrid.db");
    wcfg.lease_ms = 30000;
    wcfg.memory_budget_mb = budget_mb;
    wcfg.stream_interval_ms = stream_interval_ms;
    wcfg.generate_timeout_ms = generate_timeout_ms;
    wcfg.artifacts_dir = dir.str("artifacts");
    worker = spawn_worker(sys, queue, broker_actor{}, wcfg);
    CAF_REQUIRE(eventually([&] {
      std::lock_guard<std::mutex> guard{h->mtx};
      return h->registered;
    }));
  }

  std::string state_of(const std::string& model) {
    std::lock_guard<std::mutex> guard{h->mtx};
    for (auto& m : h->status.models)
      if (m.name == model)
        return m.state;
    return "";
  }

  model_metrics metrics_of(const std::string& model) {
    std::lock_guard<std::mutex> guard{h->mtx};
    for (auto& m : h->status.metrics)
      if (m.model == model)
        return m;
    return {};
  }

  int idles() {
    std::lock_guard<std::mutex> guard{h->mtx};
    return h->idles;
  }

  static tensor_data row(float base) {
    std::vector<float> xs(16);
    for (int i = 0; i < 16; ++i)
      xs[i] = base + 0.1f * static_cast<float>(i);
    return make_float_tensor("x", {1, 16}, xs);
  }

  /// What a streamed generation of 64 tokens of "hello" (seed 7) sent.
  struct streamed {
    generate_reply reply;
    std::shared_ptr<std::string> got = std::make_shared<std::string>();
    std::shared_ptr<std::atomic<int>> chunks = std::make_shared<std::atomic<int>>(0);
  };

  // Runs that generation with a sink (fails the test on error); the sink
  // is gone when this returns.
  streamed generate_streamed() {
    streamed out;
    auto s = sys.spawn(sink, out.got, out.chunks);
    generate_request req;
    req.model = "tinylm";
    req.params.prompt = "hello";
    req.params.max_tokens = 64;
    req.params.has_seed = true;
    req.params.seed = 7;
    req.sink = s;
    caf::scoped_actor self{sys};
    self->request(worker, 20s, generate_atom::value, req)
        .receive(
            [&](generate_reply& r) { out.reply = std::move(r); },
            [&](caf::error& err) { CAF_FAIL("generate failed: " << message_of(err)); });
    // Chunks and the reply travel apart; all chunks arrive soon after.
    CAF_CHECK(eventually([&] { return *out.got == out.reply.text; }, 5s));
    caf::anon_send_exit(s, caf::exit_reason::user_shutdown);
    return out;
  }

  // Runs an infer batch and returns its result (fails the test on error).
  infer_batch_result infer(const std::vector<float>& bases) {
    infer_batch batch;
    batch.model = "classifier";
    for (auto b : bases)
      batch.requests.push_back(infer_request{"classifier", {row(b)}, "r", now_ms()});
    caf::scoped_actor self{sys};
    infer_batch_result out;
    self->request(worker, 20s, infer_atom::value, batch)
        .receive([&](infer_batch_result& r) { out = std::move(r); },
                 [&](caf::error& err) { CAF_FAIL("infer failed: " << message_of(err)); });
    return out;
  }
};

} // namespace

/// The requests of the classifier in the latest status an executor sent.
struct seen_status {
  std::mutex mtx;
  int64_t requests = 0;
};

caf::behavior status_probe(caf::event_based_actor* self,
                           std::shared_ptr<seen_status> seen) {
  self->set_default_handler(caf::drop);
  return {
      [seen](status_atom, const std::vector<model_status>&,
             const std::vector<model_metrics>& ms) {
        std::lock_guard<std::mutex> guard{seen->mtx};
        for (auto& m : ms)
          if (m.model == "classifier")
            seen->requests = m.requests;
      },
  };
}

CAF_TEST_FIXTURE_SCOPE(worker_tests, fixture)

/// An executor with a lane, loaded, and what it takes to drive it.
struct lane_rig {
  caf::actor_system& sys;
  std::shared_ptr<seen_status> seen = std::make_shared<seen_status>();
  std::shared_ptr<cancel_flags> cancels = std::make_shared<cancel_flags>();
  std::shared_ptr<executor_lane> lane = std::make_shared<executor_lane>();
  caf::actor probe;
  executor_actor exec;
  caf::scoped_actor self{sys};

  lane_rig(caf::actor_system& sys, const std::vector<inference::model_entry>& entries,
           std::chrono::microseconds lane_max_forward = std::chrono::microseconds{2000})
      : sys(sys) {
    probe = sys.spawn(status_probe, seen);
    executor_config ecfg;
    ecfg.worker_id = "w1";
    ecfg.models = entries;
    ecfg.worker = caf::actor_cast<worker_actor>(probe);
    ecfg.cancels = cancels;
    ecfg.lane = lane;
    ecfg.lane_max_forward = lane_max_forward;
    exec = spawn_executor(sys, ecfg);
    self->request(exec, 60s, load_atom::value)
        .receive([](worker_registration&) {},
                 [](caf::error& err) { CAF_FAIL("load failed: " << message_of(err)); });
  }

  ~lane_rig() {
    caf::anon_send_exit(exec, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(probe, caf::exit_reason::user_shutdown);
  }

  static infer_batch batch_of(std::initializer_list<float> bases) {
    infer_batch b;
    b.model = "classifier";
    for (auto x : bases)
      b.requests.push_back(infer_request{"classifier", {fixture::row(x)}, "r", now_ms()});
    return b;
  }

  infer_batch_result by_actor(infer_batch b) {
    infer_batch_result out;
    self->request(exec, 20s, infer_atom::value, std::move(b))
        .receive([&](infer_batch_result& r) { out = std::move(r); },
                 [](caf::error& err) { CAF_FAIL("infer failed: " << message_of(err)); });
    return out;
  }

  // The lane's answer once the executor is between messages (its status
  // timer may hold the lock for a moment); nullopt when it never runs.
  executor_lane::result on_lane(infer_batch& b) {
    executor_lane::result out;
    eventually([&] { return (out = lane->try_infer(b)).has_value(); }, 5s);
    return out;
  }
};

CAF_TEST(an executor lane runs a batch on its caller only when the executor may) {
  lane_rig rig{sys, entries};
  // Idle and resident: it runs here, with the executor's result.
  auto here_batch = lane_rig::batch_of({0.f, 1.f});
  auto here = rig.on_lane(here_batch);
  CAF_REQUIRE(here && *here);
  auto there = rig.by_actor(lane_rig::batch_of({0.f, 1.f}));
  CAF_REQUIRE_EQUAL((*here)->outputs.size(), 2u);
  CAF_REQUIRE_EQUAL(there.outputs.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    auto a = float_values((*here)->outputs[i].at(0));
    auto b = float_values(there.outputs[i].at(0));
    CAF_REQUIRE_EQUAL(a.size(), b.size());
    for (std::size_t k = 0; k < a.size(); ++k)
      CAF_CHECK_LESS(std::abs(a[k] - b[k]), 1e-6f);
  }
  // The executor running a generation holds the lane: nothing runs here,
  // and the batch is left as it was.
  auto got = std::make_shared<std::string>();
  auto chunks = std::make_shared<std::atomic<int>>(0);
  auto s = sys.spawn(sink, got, chunks);
  auto greq = long_generation("hello", 1000000, s);
  const int64_t key = -77;
  std::atomic<bool> ended{false};
  std::thread runner{[&] {
    caf::scoped_actor asker{sys};
    asker->request(rig.exec, 60s, generate_atom::value, greq, key)
        .receive([](generate_reply&) {}, [](caf::error&) {});
    ended = true;
  }};
  CAF_REQUIRE(eventually([&] { return chunks->load() > 0; }));
  auto busy = lane_rig::batch_of({2.f});
  CAF_CHECK(!rig.lane->try_infer(busy));
  CAF_CHECK_EQUAL(busy.requests.at(0).inputs.size(), 1u);
  rig.cancels->raise(key);
  runner.join();
  CAF_CHECK(ended.load());
  caf::anon_send_exit(s, caf::exit_reason::user_shutdown);
  // Not resident: loading is the executor's work.
  rig.self->request(rig.exec, 20s, unload_atom::value, std::string{"classifier"})
      .receive([](std::vector<model_status>&) {},
               [](caf::error& err) { CAF_FAIL("unload failed: " << message_of(err)); });
  auto cold = lane_rig::batch_of({3.f});
  CAF_CHECK(!rig.lane->try_infer(cold));
  CAF_CHECK_EQUAL(rig.by_actor(std::move(cold)).outputs.size(), 1u); // loads it
  auto warm = lane_rig::batch_of({4.f});
  auto again = rig.on_lane(warm);
  CAF_CHECK(again && *again);
  // Batches run here count in the metrics the worker hears (2 + 2 + 1 + 1).
  CAF_CHECK(eventually([&] {
    std::lock_guard<std::mutex> guard{rig.seen->mtx};
    return rig.seen->requests == 6;
  }));
  // Once the executor is gone, nothing runs here.
  rig.self->monitor(rig.exec);
  caf::anon_send_exit(rig.exec, caf::exit_reason::user_shutdown);
  rig.self->receive([](caf::down_msg&) {});
  auto late = lane_rig::batch_of({5.f});
  CAF_CHECK(!rig.lane->try_infer(late));
}

CAF_TEST(an executor lane leaves a slow model to the executor) {
  // A limit no forward call meets: after the first call has been timed,
  // the model's batches go to the executor.
  lane_rig rig{sys, entries, std::chrono::microseconds{0}};
  rig.by_actor(lane_rig::batch_of({0.f})); // timed
  auto b = lane_rig::batch_of({1.f});
  CAF_CHECK(!rig.lane->try_infer(b));
  CAF_CHECK_EQUAL(b.requests.at(0).inputs.size(), 1u);
}

CAF_TEST(a batched forward gives every request what it would get alone) {
  start();
  std::vector<float> bases{0.f, 1.f, -2.f, 0.5f};
  auto together = infer(bases);
  CAF_REQUIRE_EQUAL(together.outputs.size(), bases.size());
  for (std::size_t i = 0; i < bases.size(); ++i) {
    auto alone = infer({bases[i]});
    CAF_REQUIRE_EQUAL(alone.outputs.size(), 1u);
    auto a = float_values(alone.outputs[0].at(0));
    auto b = float_values(together.outputs[i].at(0));
    CAF_REQUIRE_EQUAL(a.size(), 4u);
    CAF_REQUIRE_EQUAL(b.size(), 4u);
    for (std::size_t k = 0; k < a.size(); ++k)
      CAF_CHECK_LESS(std::abs(a[k] - b[k]), 1e-5f);
    CAF_CHECK_EQUAL(together.outputs[i].at(0).shape, (std::vector<int64_t>{1, 4}));
  }
  // The worker reports its batches in its metrics.
  CAF_CHECK(eventually([&] {
    auto m = metrics_of("classifier");
    return m.batch_size.count == 5 && m.requests == 8;
  }));
  auto m = metrics_of("classifier");
  CAF_REQUIRE_EQUAL(m.batch_size.counts.size(), m.batch_size.bounds.size() + 1);
  CAF_CHECK_EQUAL(m.batch_size.counts[0], 4); // four batches of 1
  CAF_CHECK_EQUAL(m.batch_size.counts[2], 1); // one batch of 4 (bucket le=4)
}

CAF_TEST(durable jobs of a batching model are claimed and completed together) {
  start();
  std::vector<int64_t> ids;
  for (int i = 0; i < 10; ++i) {
    new_job j;
    j.model = "classifier";
    j.input_json = R"({"inputs":[{"name":"x","shape":[1,16],"datatype":"FP32","data":[)"
                   + std::string{"0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,"}
                   + std::to_string(i) + "]}]}";
    auto rec = store->enqueue(j, 1000, now_ms());
    CAF_REQUIRE(rec);
    ids.push_back(rec->id);
  }
  // One bad input among them fails alone.
  new_job bad;
  bad.model = "classifier";
  bad.input_json
      = R"({"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]})";
  auto bad_rec = store->enqueue(bad, 1000, now_ms());
  CAF_REQUIRE(bad_rec);
  caf::anon_send(worker, work_atom::value);
  CAF_REQUIRE(eventually([&] {
    auto done = store->get(ids.back());
    return done && *done && (*done)->state == job_state::succeeded;
  }));
  for (auto id : ids) {
    auto rec = store->get(id);
    CAF_REQUIRE(rec && *rec);
    CAF_CHECK_EQUAL(to_string((*rec)->state), "succeeded");
    CAF_CHECK_NOT_EQUAL((*rec)->output_json.find("\"outputs\""), std::string::npos);
  }
  auto b = store->get(bad_rec->id);
  CAF_REQUIRE(b && *b);
  CAF_CHECK_EQUAL(to_string((*b)->state), "failed");
  CAF_CHECK_EQUAL((*b)->error.code, "invalid_input");
  // All eleven ran in one forward call (the bad one never reached it).
  CAF_CHECK(eventually([&] { return metrics_of("classifier").requests == 11; }));
  auto m = metrics_of("classifier");
  CAF_CHECK_EQUAL(m.batch_size.count, 1);
  CAF_CHECK_EQUAL(m.batch_size.sum, 10.0);
  CAF_CHECK_EQUAL(m.failures["invalid_input"], 1);
}

CAF_TEST(a generation streams its text to the sink) {
  start();
  auto out = generate_streamed();
  CAF_CHECK_EQUAL(out.reply.tokens, 64);
  CAF_CHECK_EQUAL(out.reply.finish_reason, "length");
  CAF_CHECK_EQUAL(out.reply.worker, "w1");
  CAF_CHECK_EQUAL(*out.got, out.reply.text);
  CAF_CHECK_GREATER(out.chunks->load(), 1);
}

CAF_TEST(the stream interval decides how many pieces a generation sends) {
  // 64 tokens take milliseconds: with 0 each token leaves alone (bytes of an
  // unfinished UTF-8 character wait for the rest), with 1 s only the first
  // token leaves at once and the rest at the end.
  for (int32_t interval_ms : {0, 1000}) {
    start(0, interval_ms);
    auto out = generate_streamed();
    CAF_REQUIRE_EQUAL(*out.got, out.reply.text);
    CAF_MESSAGE("interval " << interval_ms << " ms: " << out.chunks->load() << " pieces");
    if (interval_ms == 0)
      CAF_CHECK_GREATER_OR_EQUAL(out.chunks->load(), 32);
    else
      CAF_CHECK_LESS_OR_EQUAL(out.chunks->load(), 2);
    caf::anon_send_exit(worker, caf::exit_reason::user_shutdown);
    // The next worker registers anew under the same id.
    std::lock_guard<std::mutex> guard{h->mtx};
    h->registered = false;
  }
}

CAF_TEST(a sink that goes away stops its generation within a step) {
  start();
  auto got = std::make_shared<std::string>();
  auto chunks = std::make_shared<std::atomic<int>>(0);
  auto s = sys.spawn(sink, got, chunks);
  auto req = long_generation("a long story", max_generate_tokens, s);
  caf::scoped_actor self{sys};
  auto pending = self->request(worker, 60s, generate_atom::value, req);
  // Let it start, then the client goes away.
  CAF_REQUIRE(eventually([&] { return chunks->load() > 0; }));
  caf::anon_send_exit(s, caf::exit_reason::user_shutdown);
  auto t0 = std::chrono::steady_clock::now();
  generate_reply reply;
  pending.receive(
      [&](generate_reply& r) { reply = std::move(r); },
      [&](caf::error& err) { CAF_FAIL("generate failed: " << message_of(err)); });
  CAF_CHECK_EQUAL(reply.finish_reason, "cancelled");
  CAF_CHECK_LESS(reply.tokens, max_generate_tokens);
  CAF_CHECK_LESS(std::chrono::steady_clock::now() - t0, 10s);
  // The worker is free again: the next request runs.
  auto out = infer({1.f});
  CAF_CHECK_EQUAL(out.outputs.size(), 1u);
}

CAF_TEST(
    a run past workers.generate_timeout_ms stops with a timeout and frees the worker) {
  // The executor checks the limit after every token or phrase (no timer).
  start(0, 5, 30);
  caf::scoped_actor self{sys};
  generate_request req;
  req.model = "tinylm";
  req.params.prompt = "hello";
  req.params.max_tokens = 1000000; // far more than 30 ms allow
  caf::error err;
  auto t0 = std::chrono::steady_clock::now();
  self->request(worker, 60s, generate_atom::value, req)
      .receive([](generate_reply& r) { CAF_FAIL("it ran to " << r.tokens << " tokens"); },
               [&](caf::error& e) { err = std::move(e); });
  auto took = std::chrono::steady_clock::now() - t0;
  CAF_CHECK(code_of(err) == errc::timeout);
  CAF_CHECK_EQUAL(message_of(err),
                  "the request ran past workers.generate_timeout_ms of 30 ms");
  CAF_CHECK_LESS(took, 30s);
  // A synthesis too: 3,000 phrases take longer than 30 ms.
  speech_request sreq;
  sreq.model = "tinyspeech";
  for (int i = 0; i < 3000; ++i)
    sreq.text += "Phrase number " + std::to_string(i) + ". ";
  caf::error serr;
  self->request(worker, 60s, speech_atom::value, sreq)
      .receive([](speech_reply& r) { CAF_FAIL("it made " << r.phrases << " phrases"); },
               [&](caf::error& e) { serr = std::move(e); });
  CAF_CHECK(code_of(serr) == errc::timeout);
  CAF_CHECK_EQUAL(message_of(serr),
                  "the request ran past workers.generate_timeout_ms of 30 ms");
  // The worker is free: a short generation runs to its end.
  req.params.max_tokens = 4;
  self->request(worker, 20s, generate_atom::value, req)
      .receive([](generate_reply& r) { CAF_CHECK_EQUAL(r.tokens, 4); },
               [](caf::error& e) { CAF_FAIL("generate failed: " << message_of(e)); });
}

CAF_TEST(the memory budget loads on demand and evicts the least recently used) {
  // Three demo models of 1 MB each in a budget of 2: the third waits.
  start(2);
  CAF_REQUIRE(eventually([&] { return !state_of("tinyspeech").empty(); }));
  CAF_CHECK_EQUAL(state_of("classifier"), "READY");
  CAF_CHECK_EQUAL(state_of("tinylm"), "READY");
  CAF_CHECK_EQUAL(state_of("tinyspeech"), "UNLOADED");
  {
    std::lock_guard<std::mutex> guard{h->mtx};
    CAF_CHECK_EQUAL(h->reg.models.size(), 3u); // all servable
  }
  // Use the classifier so tinylm is the least recently used.
  infer({0.f});
  caf::scoped_actor self{sys};
  speech_request sreq;
  sreq.model = "tinyspeech";
  sreq.text = "Hello there. How are you?";
  speech_reply sp;
  self->request(worker, 30s, speech_atom::value, sreq)
      .receive([&](speech_reply& r) { sp = std::move(r); },
               [&](caf::error& err) { CAF_FAIL("speech failed: " << message_of(err)); });
  CAF_CHECK_GREATER(sp.pcm16.size(), 0u);
  CAF_CHECK_EQUAL(sp.sample_rate, 24000);
  CAF_CHECK_EQUAL(sp.phrases, 2);
  CAF_CHECK(eventually([&] { return state_of("tinyspeech") == "READY"; }));
  CAF_CHECK_EQUAL(state_of("tinylm"), "UNLOADED");
  CAF_CHECK_EQUAL(state_of("classifier"), "READY");
  // An operator unloads and loads by hand.
  worker_status after;
  self->request(worker, 30s, unload_atom::value, std::string{"classifier"})
      .receive([&](worker_status& ws) { after = std::move(ws); },
               [&](caf::error& err) { CAF_FAIL("unload failed: " << message_of(err)); });
  auto state_in = [](const worker_status& ws, const std::string& name) {
    for (auto& m : ws.models)
      if (m.name == name)
        return m.state;
    return std::string{};
  };
  CAF_CHECK_EQUAL(state_in(after, "classifier"), "UNLOADED");
  self->request(worker, 30s, load_atom::value, std::string{"tinylm"})
      .receive([&](worker_status& ws) { after = std::move(ws); },
               [&](caf::error& err) { CAF_FAIL("load failed: " << message_of(err)); });
  CAF_CHECK_EQUAL(state_in(after, "tinylm"), "READY");
  CAF_CHECK_EQUAL(state_in(after, "tinyspeech"), "READY");
  CAF_CHECK_EQUAL(state_in(after, "classifier"), "UNLOADED");
}

CAF_TEST(a durable speech job writes a WAV artifact and streams its phrases) {
  start();
  new_job j;
  j.model = "tinyspeech";
  j.input_json = R"({"text":"One phrase here. And another one!"})";
  auto rec = store->enqueue(j, 1000, now_ms());
  CAF_REQUIRE(rec);
  caf::anon_send(worker, work_atom::value);
  CAF_REQUIRE(eventually([&] {
    auto done = store->get(rec->id);
    return done && *done && is_final((*done)->state);
  }));
  auto done = store->get(rec->id);
  CAF_REQUIRE(done && *done);
  CAF_CHECK_EQUAL(to_string((*done)->state), "succeeded");
  CAF_CHECK_NOT_EQUAL((*done)->output_json.find("\"artifact\":\"speech.wav\""),
                      std::string::npos);
  auto events = store->events_after(rec->id, 0, 100);
  CAF_REQUIRE(events);
  int data = 0;
  for (auto& ev : *events)
    if (ev.kind == "data") {
      ++data;
      CAF_CHECK_NOT_EQUAL(ev.data_json.find("pcm16_base64"), std::string::npos);
    }
  CAF_CHECK_EQUAL(data, 2);
  std::error_code ec;
  auto size = std::filesystem::file_size(
      dir.path() / "artifacts" / job_id_string(rec->id) / "speech.wav", ec);
  CAF_CHECK(!ec);
  CAF_CHECK_GREATER(size, 44u);
}

CAF_TEST_FIXTURE_SCOPE_END()
