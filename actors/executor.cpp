// Executor: owns the loaded models of one worker and its memory budget, and
// runs every forward/generate/synthesize call on its own thread.
#include "actors/executor.hpp"

#include <chrono>
#include <map>
#include <memory>
#include <optional>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include <spdlog/spdlog.h>

#include "actors/caller_runs.hpp"
#include "actors/clock.hpp"
#include "inference/batching.hpp"
#include "inference/memory_budget.hpp"
#include "inference/model_runner.hpp"
#include "inference/phrases.hpp"
#include "messages/audio.hpp"
#include "messages/errors.hpp"
#include "messages/generate_io.hpp"
#include "messages/kserve.hpp"
#include "messages/speech_io.hpp"

namespace infergrid {

namespace {

using inference::model_runner;
using seconds_d = std::chrono::duration<double>;
using steady = std::chrono::steady_clock;

/// How often generated text of a durable job becomes a data event.
constexpr auto data_event_interval = std::chrono::milliseconds(50);

/// How long model states and metrics may lag behind before the worker hears.
constexpr auto status_interval = std::chrono::milliseconds(200);

/// The file name of a durable speech job's audio.
constexpr const char* speech_artifact = "speech.wav";

struct executor_state {
  executor_config cfg;
  std::map<std::string, inference::model_entry> entries;
  std::map<std::string, std::unique_ptr<model_runner>> runners;
  /// Models whose last load failed, and why.
  std::map<std::string, std::string> failed;
  std::string loading;
  inference::memory_budget budget{0};
  std::map<std::string, model_metrics> metrics;
  bool status_dirty = false;
  bool status_timer = false;
  /// How long each model's latest interactive forward call took (seconds).
  std::map<std::string, double> last_forward_s;
  /// Runs the actor an interactive answer wakes on this thread (answer_here).
  std::unique_ptr<caller_runs::lease> unit;
  /// What each open session's generate model has seen (its turns so far),
  /// and which model that was; dropped when the worker closes the session.
  struct session_context {
    std::string model;
    std::shared_ptr<inference::generate_context> ctx;
  };
  std::map<std::string, session_context> sessions;

  ~executor_state() {
    // Waits for a batch the lane's thread is running on these models.
    if (cfg.lane)
      cfg.lane->bind({});
  }
};

using executor_pointer = executor_actor::stateful_pointer<executor_state>;

double seconds_since(steady::time_point t0) {
  return seconds_d(steady::now() - t0).count();
}

// Length of the longest prefix of `x` that does not end inside a UTF-8
// sequence, so streamed pieces never split a character.
std::size_t utf8_complete(const std::string& x) {
  auto n = x.size();
  for (std::size_t back = 1; back <= 3 && back <= n; ++back) {
    auto c = static_cast<unsigned char>(x[n - back]);
    if ((c & 0xC0) == 0x80)
      continue; // continuation byte: look further back
    std::size_t len = (c & 0x80) == 0      ? 1
                      : (c & 0xE0) == 0xC0 ? 2
                      : (c & 0xF0) == 0xE0 ? 3
                      : (c & 0xF8) == 0xF0 ? 4
                                           : 1;
    return len > back ? n - back : n;
  }
  return n;
}

/// Generated text on its way out in pieces: a piece is due at most every
/// `interval` (the first at once when `first_at_once`), and never ends
/// inside a UTF-8 sequence unless everything is taken.
class text_pieces {
public:
  text_pieces(steady::duration interval, bool first_at_once)
      : interval_(interval), last_(first_at_once ? steady::time_point{} : steady::now()) {
  }

  void add(const std::string& delta) {
    pending_ += delta;
  }

  bool due() const {
    return steady::now() - last_ >= interval_;
  }

  /// The next piece; empty when nothing complete is pending.
  std::string take(bool all = false) {
    auto n = all ? pending_.size() : utf8_complete(pending_);
    auto out = pending_.substr(0, n);
    pending_.erase(0, n);
    if (n > 0)
      last_ = steady::now();
    return out;
  }

private:
  steady::duration interval_;
  steady::time_point last_;
  std::string pending_;
};

/// The deadline of one interactive run (executor_config::run_timeout),
/// read after every token or phrase: a clock read, no timer.
class run_clock {
public:
  explicit run_clock(std::chrono::milliseconds limit)
      : limit_(limit), deadline_(steady::now() + limit) {}

  /// True once the deadline passed (and from then on: the run stops).
  bool passed() {
    if (!stopped_ && steady::now() >= deadline_)
      stopped_ = true;
    return stopped_;
  }

  bool stopped() const {
    return stopped_;
  }

  caf::error error() const {
    return make_error(errc::timeout,
                      "the request ran past workers.generate_timeout_ms of "
                          + std::to_string(limit_.count()) + " ms");
  }

private:
  std::chrono::milliseconds limit_;
  steady::time_point deadline_;
  bool stopped_ = false;
};

model_metrics& metrics_of(executor_state& st, const std::string& model) {
  auto i = st.metrics.find(model);
  if (i == st.metrics.end()) {
    model_metrics m;
    m.model = model;
    i = st.metrics.emplace(model, std::move(m)).first;
  }
  return i->second;
}

std::vector<model_status> model_states(const executor_state& st) {
  std::vector<model_status> out;
  for (auto& [name, entry] : st.entries) {
    model_status s;
    s.name = name;
    s.memory_mb = entry.info.memory_mb;
    if (!entry.error.empty()) {
      s.state = "FAILED";
      s.error = entry.error;
    } else if (st.runners.count(name) > 0) {
      s.state = "READY";
      s.last_used_ms = st.budget.last_used_ms(name);
    } else if (st.loading == name) {
      s.state = "LOADING";
    } else if (auto f = st.failed.find(name); f != st.failed.end()) {
      s.state = "FAILED";
      s.error = f->second;
    } else {
      s.state = "UNLOADED";
    }
    out.push_back(std::move(s));
  }
  return out;
}

// Tells the worker about model states and metrics now.
void send_status(executor_pointer self) {
  auto& st = self->state;
  st.status_dirty = false;
  if (!st.cfg.worker)
    return;
  std::vector<model_metrics> ms;
  for (auto& [name, m] : st.metrics)
    ms.push_back(m);
  self->send(st.cfg.worker, status_atom::value, model_states(st), std::move(ms));
}

// Metrics changed: tell the worker soon, at most every status_interval.
// Callable from the lane's thread too (the timer goes through the clock,
// to an executor that may be ending: `me` is a weak reference).
void status_changed(executor_state& st, caf::actor_system& sys,
                    const caf::actor_addr& me) {
  st.status_dirty = true;
  if (st.status_timer)
    return;
  if (auto dest = caf::actor_cast<caf::strong_actor_ptr>(me)) {
    st.status_timer = true;
    auto& clock = sys.clock();
    clock.schedule_message(clock.now() + status_interval, std::move(dest),
                           caf::make_mailbox_element(nullptr, caf::make_message_id(), {},
                                                     status_atom::value));
  }
}

void status_changed(executor_pointer self) {
  status_changed(self->state, self->system(), self->address());
}

// The lane's lock for one message (none without a lane).
std::unique_lock<std::mutex> hold_lane(executor_pointer self) {
  auto& lane = self->state.cfg.lane;
  return lane ? lane->hold() : std::unique_lock<std::mutex>{};
}

// Answers the current request with `value` now, from this thread: the actor
// it goes to (the queue in-process, the worker actor in a worker process),
// when idle, runs here too (caller_runs) and passes it on at once, instead
// of waiting for a scheduler thread to wake (25-110 us on a 2-core VM). The
// lane is released by then; the unit's limits keep this short.
template <class T>
caf::result<T> answer_here(executor_pointer self, caf::expected<T> value) {
  auto rp = self->make_response_promise<T>();
  auto& unit = **self->state.unit;
  struct restore {
    executor_pointer self;
    caf::execution_unit* prev;
    ~restore() {
      self->context(prev);
    }
  } restored{self, self->context()};
  caller_runs::window open{unit}; // runs what the answer wakes, first
  self->context(&unit);
  if (value)
    rp.deliver(std::move(*value));
  else
    rp.deliver(std::move(value.error()));
  return rp;
}

void evict(executor_pointer self, const std::string& name) {
  auto& st = self->state;
  st.runners.erase(name);
  st.budget.unloaded(name);
  spdlog::info("worker {}: model {} unloaded", st.cfg.worker_id, name);
}

// Makes `name` resident (evicting least recently used models if the budget
// needs room) and returns it. Loading happens here, on the executor thread.
caf::expected<model_runner*> ensure_loaded(executor_pointer self, const std::string& name,
                                           bool may_evict = true) {
  auto& st = self->state;
  if (auto i = st.runners.find(name); i != st.runners.end()) {
    st.budget.touch(name, now_ms());
    return i->second.get();
  }
  auto e = st.entries.find(name);
  if (e == st.entries.end())
    return make_error(errc::unavailable,
                      "model '" + name + "' is not served by worker " + st.cfg.worker_id);
  auto& entry = e->second;
  if (!entry.error.empty())
    return make_error(errc::unavailable,
                      "model '" + name + "' is broken: " + entry.error);
  auto need = std::max<int64_t>(entry.info.memory_mb, 0);
  auto plan = st.budget.plan(need);
  if (!plan)
    return make_error(errc::unavailable,
                      "model '" + name + "' needs " + std::to_string(need)
                          + " MB; the memory budget of worker " + st.cfg.worker_id
                          + " is " + std::to_string(st.budget.budget_mb()) + " MB");
  if (!plan->empty() && !may_evict)
    return make_error(errc::unavailable, "model '" + name + "' does not fit the budget");
  for (auto& victim : *plan) {
    spdlog::info("worker {}: evicting {} (least recently used) to load {}",
                 st.cfg.worker_id, victim, name);
    evict(self, victim);
  }
  st.loading = name;
  send_status(self);
  auto t0 = steady::now();
  auto runner = model_runner::load(entry.info, entry.dir);
  caf::expected<double> first_ms = make_error(errc::internal);
  if (runner)
    first_ms = (*runner)->warm_up();
  st.loading.clear();
  if (!runner || !first_ms) {
    auto why = !runner ? message_of(runner.error())
                       : "warm-up: " + message_of(first_ms.error());
    st.failed[name] = why;
    spdlog::error("worker {}: model {} failed to load: {}", st.cfg.worker_id, name, why);
    send_status(self);
    return make_error(errc::unavailable, "model '" + name + "' failed to load: " + why);
  }
  st.failed.erase(name);
  spdlog::info("worker {}: model {} loaded on {} in {:.1f} ms (first call {:.1f} ms)",
               st.cfg.worker_id, name, (*runner)->device(), seconds_since(t0) * 1000,
               *first_ms);
  auto ptr = runner->get();
  st.runners.emplace(name, std::move(*runner));
  st.budget.loaded(name, need, now_ms());
  send_status(self);
  return ptr;
}

void observe_queue(model_metrics& m, int64_t since_ms) {
  if (since_ms > 0)
    m.queue_seconds.observe(std::max<int64_t>(now_ms() - since_ms, 0) / 1000.0);
}

void count_failure(model_metrics& m, const caf::error& err) {
  ++m.failures[to_string(code_of(err))];
}

job_outcome failed_outcome(int64_t id, const caf::error& err) {
  job_outcome out;
  out.id = id;
  out.error_code = to_string(code_of(err));
  out.error_message = message_of(err);
  return out;
}

job_outcome ok_outcome(int64_t id, std::string output) {
  job_outcome out;
  out.id = id;
  out.ok = true;
  out.output_json = std::move(output);
  return out;
}

// Tensor jobs: every valid input goes into batched forward calls of at most
// max_batch_size requests; an invalid input fails only its own job.
void run_tensor_jobs(executor_state& st, model_runner& m,
                     const std::vector<job_record>& jobs, std::vector<job_outcome>& out) {
  auto& mm = metrics_of(st, m.info().name);
  std::vector<std::size_t> valid;
  std::vector<std::vector<tensor_data>> inputs;
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    auto xs = decode_kserve_request(jobs[i].input_json);
    if (!xs) {
      out[i] = failed_outcome(jobs[i].id, xs.error());
      continue;
    }
    if (auto problem = validate_inputs(m.info(), *xs)) {
      out[i] = failed_outcome(jobs[i].id, make_error(errc::invalid_input, *problem));
      continue;
    }
    valid.push_back(i);
    inputs.push_back(std::move(*xs));
  }
  auto max_batch
      = static_cast<std::size_t>(std::max<int64_t>(m.info().max_batch_size, 1));
  for (std::size_t lo = 0; lo < valid.size(); lo += max_batch) {
    auto hi = std::min(valid.size(), lo + max_batch);
    std::vector<std::vector<tensor_data>> chunk(
        std::make_move_iterator(inputs.begin() + lo),
        std::make_move_iterator(inputs.begin() + hi));
    auto fail_all = [&](const caf::error& err) {
      for (auto k = lo; k < hi; ++k)
        out[valid[k]] = failed_outcome(jobs[valid[k]].id, err);
    };
    auto batch = inference::concat_batch(chunk);
    if (!batch) {
      fail_all(batch.error());
      continue;
    }
    auto t0 = steady::now();
    auto ys = m.forward(batch->inputs);
    mm.compute_seconds.observe(seconds_since(t0));
    mm.batch_size.observe(static_cast<double>(hi - lo));
    if (!ys) {
      fail_all(ys.error());
      continue;
    }
    auto parts = inference::split_batch(*ys, batch->sizes);
    if (!parts) {
      fail_all(parts.error());
      continue;
    }
    for (auto k = lo; k < hi; ++k) {
      auto& job = jobs[valid[k]];
      out[valid[k]] = ok_outcome(
          job.id,
          encode_kserve_response(m.info().name, job_id_string(job.id), (*parts)[k - lo]));
    }
  }
}

caf::expected<std::string> run_generate_job(executor_pointer self, model_runner& m,
                                            const job_record& job) {
  auto& st = self->state;
  auto in = decode_generate_input(job.input_json);
  if (!in)
    return in.error();
  auto cancels = st.cfg.cancels;
  text_pieces pieces{data_event_interval, false};
  auto flush = [&](bool all) {
    auto piece = pieces.take(all);
    if (!piece.empty() && st.cfg.worker)
      self->send(st.cfg.worker, chunk_atom::value, job.id, job.lease_seq,
                 encode_generate_delta(piece));
  };
  inference::token_callback on_token = [&](const std::string& delta) {
    pieces.add(delta);
    if (pieces.due())
      flush(false);
    return !(cancels && cancels->raised(job.id));
  };
  auto t0 = steady::now();
  auto out = m.generate(*in, on_token);
  auto& mm = metrics_of(st, m.info().name);
  mm.compute_seconds.observe(seconds_since(t0));
  mm.batch_size.observe(1);
  if (!out)
    return out.error();
  flush(true);
  mm.generated_tokens += out->tokens;
  mm.generate_seconds += seconds_since(t0);
  return encode_generate_output(out->text, out->tokens, out->finish_reason);
}

/// Synthesises `text` phrase by phrase; `on_phrase` gets each phrase's
/// PCM16 and may stop the loop by returning false.
struct synthesis {
  std::string pcm16;
  int32_t phrases = 0;
  double seconds = 0;
  bool stopped = false;
};

template <class OnPhrase>
caf::expected<synthesis> synthesize_phrases(model_runner& m, const std::string& text,
                                            OnPhrase on_phrase) {
  synthesis out;
  auto t0 = steady::now();
  for (auto& phrase : inference::split_phrases(text)) {
    auto samples = m.synthesize(phrase);
    if (!samples)
      return samples.error();
    auto pcm = pcm16_from_float(*samples);
    ++out.phrases;
    out.pcm16 += pcm;
    if (!on_phrase(out.phrases - 1, pcm)) {
      out.stopped = true;
      break;
    }
  }
  out.seconds = seconds_since(t0);
  return out;
}

double audio_seconds(const synthesis& s, int64_t rate) {
  return rate > 0 ? static_cast<double>(pcm16_samples(s.pcm16)) / rate : 0.0;
}

caf::expected<std::string> run_speech_job(executor_pointer self, model_runner& m,
                                          const job_record& job,
                                          std::vector<named_bytes>& files) {
  auto& st = self->state;
  auto in = decode_speech_input(job.input_json);
  if (!in)
    return in.error();
  auto rate = m.info().sample_rate;
  auto cancels = st.cfg.cancels;
  auto result
      = synthesize_phrases(m, in->text, [&](int32_t index, const std::string& pcm) {
          if (st.cfg.worker)
            self->send(st.cfg.worker, chunk_atom::value, job.id, job.lease_seq,
                       "{\"phrase\":" + std::to_string(index)
                           + ",\"sample_rate\":" + std::to_string(rate)
                           + ",\"samples\":" + std::to_string(pcm16_samples(pcm))
                           + ",\"pcm16_base64\":\"" + base64_encode(pcm) + "\"}");
          return !(cancels && cancels->raised(job.id));
        });
  if (!result)
    return result.error();
  auto& mm = metrics_of(st, m.info().name);
  mm.compute_seconds.observe(result->seconds);
  mm.batch_size.observe(1);
  auto audio_s = audio_seconds(*result, rate);
  mm.audio_seconds += audio_s;
  mm.synthesis_seconds += result->seconds;
  if (result->stopped)
    return make_error(errc::timeout, "synthesis stopped (cancelled or out of time)");
  files.push_back(named_bytes{speech_artifact, encode_wav(result->pcm16, rate)});
  return encode_speech_output(speech_artifact, rate, pcm16_samples(result->pcm16),
                              result->phrases,
                              audio_s > 0 ? result->seconds / audio_s : 0);
}

// Counts an interactive batch in: its requests and their time in the queue.
model_metrics& count_batch(executor_state& st, const infer_batch& batch) {
  auto& mm = metrics_of(st, batch.model);
  for (auto& r : batch.requests)
    observe_queue(mm, r.enqueued_ms);
  mm.requests += static_cast<int64_t>(batch.requests.size());
  return mm;
}

caf::error fail_batch(model_metrics& mm, const infer_batch& batch, caf::error err) {
  mm.failures[to_string(code_of(err))] += static_cast<int64_t>(batch.requests.size());
  return err;
}

// One forward call for every request of `batch` (validated by the queue).
caf::expected<infer_batch_result> run_batch(executor_state& st, model_metrics& mm,
                                            model_runner& m, infer_batch& batch) {
  std::vector<std::vector<tensor_data>> inputs;
  inputs.reserve(batch.requests.size());
  for (auto& r : batch.requests)
    inputs.push_back(std::move(r.inputs));
  auto joined = inference::concat_batch(inputs);
  if (!joined)
    return fail_batch(mm, batch, joined.error());
  auto t0 = steady::now();
  auto ys = m.forward(joined->inputs);
  auto spent = seconds_since(t0);
  st.last_forward_s[batch.model] = spent;
  mm.compute_seconds.observe(spent);
  mm.batch_size.observe(static_cast<double>(batch.requests.size()));
  if (!ys)
    return fail_batch(mm, batch, ys.error());
  auto parts = inference::split_batch(*ys, joined->sizes);
  if (!parts)
    return fail_batch(mm, batch, parts.error());
  return infer_batch_result{std::move(*parts)};
}

// The lane's way to run a batch on its own thread (under the lane's lock):
// only on a resident model whose last forward call was fast, as the
// executor would run it.
void bind_lane(executor_pointer self) {
  auto& st = self->state;
  if (!st.cfg.lane)
    return;
  st.cfg.lane->bind([st = &st, sys = &self->system(),
                     me = self->address()](infer_batch& batch) -> executor_lane::result {
    auto i = st->runners.find(batch.model);
    if (i == st->runners.end())
      return std::nullopt;
    if (auto f = st->last_forward_s.find(batch.model);
        f != st->last_forward_s.end()
        && f->second > std::chrono::duration<double>(st->cfg.lane_max_forward).count())
      return std::nullopt;
    // This thread's LibTorch settings (the intra-op thread count) as the
    // executor's.
    inference::adopt_runtime();
    st->budget.touch(batch.model, now_ms());
    auto& mm = count_batch(*st, batch);
    caf::expected<infer_batch_result> out = infer_batch_result{};
    try {
      out = run_batch(*st, mm, *i->second, batch);
    } catch (const std::exception& e) {
      out = fail_batch(
          mm, batch,
          make_error(errc::internal, std::string{"the batch failed: "} + e.what()));
    }
    status_changed(*st, *sys, me);
    return out;
  });
}

// One interactive tensor batch (the executor's infer handler).
caf::expected<infer_batch_result> infer_now(executor_pointer self, infer_batch& batch) {
  auto held = hold_lane(self);
  auto& st = self->state;
  auto& mm = count_batch(st, batch);
  status_changed(self);
  auto runner = ensure_loaded(self, batch.model);
  if (!runner)
    return fail_batch(mm, batch, runner.error());
  return run_batch(st, mm, **runner, batch);
}

// The start of an interactive generation or synthesis: counts the request
// and its queue time, and makes the model resident. The runner, or the
// error (counted as a failure).
caf::expected<model_runner*> begin_run(executor_pointer self, model_metrics& mm,
                                       const std::string& model, int64_t enqueued_ms) {
  observe_queue(mm, enqueued_ms);
  ++mm.requests;
  status_changed(self);
  auto runner = ensure_loaded(self, model);
  if (!runner)
    count_failure(mm, runner.error());
  return runner;
}

// One interactive generation (the executor's generate handler).
caf::expected<generate_reply> generate_now(executor_pointer self, generate_request& req,
                                           int64_t key) {
  auto held = hold_lane(self);
  auto& st = self->state;
  auto& mm = metrics_of(st, req.model);
  auto runner = begin_run(self, mm, req.model, req.enqueued_ms);
  if (!runner)
    return runner.error();
  auto cancels = st.cfg.cancels;
  auto sink = req.stream ? req.sink : chunk_sink_actor{};
  run_clock clock{st.cfg.run_timeout};
  text_pieces pieces{st.cfg.stream_interval, true};
  auto flush = [&] {
    if (auto piece = pieces.take(); !piece.empty())
      self->send(sink, chunk_atom::value, std::move(piece));
  };
  inference::token_callback on_token = [&](const std::string& delta) {
    if (sink) {
      pieces.add(delta);
      if (pieces.due())
        flush();
    }
    return !(cancels && cancels->raised(key)) && !clock.passed();
  };
  // A session's turn continues from what the model saw in its turns before.
  inference::generate_context* ctx = nullptr;
  if (!req.session.empty()) {
    auto& sc = st.sessions[req.session];
    if (!sc.ctx || sc.model != req.model)
      sc = {req.model, inference::make_generate_context()};
    ctx = sc.ctx.get();
  }
  auto t0 = steady::now();
  auto out = (*runner)->generate(req.params, on_token, ctx);
  if (sink)
    flush(); // before the reply; what stays is an incomplete sequence
  auto spent = seconds_since(t0);
  mm.compute_seconds.observe(spent);
  mm.batch_size.observe(1);
  if (cancels)
    cancels->clear(key);
  if (out && clock.stopped()) {
    auto err = clock.error();
    count_failure(mm, err);
    return err;
  }
  if (!out) {
    count_failure(mm, out.error());
    return out.error();
  }
  mm.generated_tokens += out->tokens;
  mm.generate_seconds += spent;
  generate_reply reply;
  reply.text = std::move(out->text);
  reply.prompt_tokens
      = static_cast<int64_t>(std::max<std::size_t>(req.params.prompt.size(), 1));
  reply.tokens = out->tokens;
  reply.finish_reason = std::move(out->finish_reason);
  reply.worker = st.cfg.worker_id;
  return reply;
}

// One interactive synthesis (the executor's speech handler).
caf::expected<speech_reply> synthesize_now(executor_pointer self, speech_request& req,
                                           int64_t key) {
  auto held = hold_lane(self);
  auto& st = self->state;
  auto& mm = metrics_of(st, req.model);
  auto runner = begin_run(self, mm, req.model, req.enqueued_ms);
  if (!runner)
    return runner.error();
  auto& m = **runner;
  auto cancels = st.cfg.cancels;
  auto sink = req.stream ? req.sink : chunk_sink_actor{};
  run_clock clock{st.cfg.run_timeout};
  auto result = synthesize_phrases(m, req.text, [&](int32_t, const std::string& pcm) {
    if (sink)
      self->send(sink, chunk_atom::value, pcm);
    return !(cancels && cancels->raised(key)) && !clock.passed();
  });
  if (cancels)
    cancels->clear(key);
  if (!result) {
    count_failure(mm, result.error());
    return result.error();
  }
  mm.compute_seconds.observe(result->seconds);
  mm.batch_size.observe(1);
  auto rate = m.info().sample_rate;
  auto audio_s = audio_seconds(*result, rate);
  mm.audio_seconds += audio_s;
  mm.synthesis_seconds += result->seconds;
  if (result->stopped) {
    auto err = clock.stopped()
                   ? clock.error()
                   : make_error(errc::timeout, "synthesis stopped: the client went away");
    count_failure(mm, err);
    return err;
  }
  speech_reply reply;
  reply.pcm16 = std::move(result->pcm16);
  reply.sample_rate = rate;
  reply.phrases = result->phrases;
  reply.real_time_factor = audio_s > 0 ? result->seconds / audio_s : 0;
  reply.worker = st.cfg.worker_id;
  return reply;
}

executor_actor::behavior_type executor_behavior(executor_pointer self,
                                                executor_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.budget = inference::memory_budget{st.cfg.memory_budget_mb};
  for (auto& e : st.cfg.models)
    st.entries.emplace(e.info.name, e);
  bind_lane(self);
  st.unit
      = std::make_unique<caller_runs::lease>(self->system(), caller_runs::limits{4, 1});
  return {
      [self](load_atom) -> worker_registration {
        auto held = hold_lane(self);
        auto& st = self->state;
        inference::configure_runtime(st.cfg.intra_op_threads);
        worker_registration reg;
        reg.worker_id = st.cfg.worker_id;
        auto device = inference::resolve_device("auto");
        reg.device = device ? *device : "cpu";
        for (auto& [name, entry] : st.entries) {
          if (!entry.error.empty()) {
            reg.failed.push_back(name + ": " + entry.error);
            continue;
          }
          if (!entry.info.preload) {
            reg.models.push_back(name); // loads on first use
            continue;
          }
          // Preloading never evicts: what does not fit loads on demand.
          auto fits = st.budget.plan(std::max<int64_t>(entry.info.memory_mb, 0));
          if (!fits || !fits->empty()) {
            spdlog::info("worker {}: model {} does not fit the memory budget now; it "
                         "loads on demand",
                         st.cfg.worker_id, name);
            reg.models.push_back(name);
            continue;
          }
          auto runner = ensure_loaded(self, name, false);
          if (!runner) {
            reg.failed.push_back(name + ": " + message_of(runner.error()));
            continue;
          }
          reg.models.push_back(name);
        }
        send_status(self);
        return reg;
      },
      [self](load_atom,
             const std::string& name) -> caf::result<std::vector<model_status>> {
        auto held = hold_lane(self);
        auto m = ensure_loaded(self, name);
        if (!m)
          return m.error();
        return model_states(self->state);
      },
      [self](unload_atom,
             const std::string& name) -> caf::result<std::vector<model_status>> {
        auto held = hold_lane(self);
        auto& st = self->state;
        if (st.entries.count(name) == 0)
          return make_error(errc::not_found, "model '" + name
                                                 + "' is not served by worker "
                                                 + st.cfg.worker_id);
        if (st.runners.count(name) > 0)
          evict(self, name);
        send_status(self);
        return model_states(st);
      },
      [self](run_job_atom,
             const std::vector<job_record>& jobs) -> std::vector<job_outcome> {
        auto held = hold_lane(self);
        auto& st = self->state;
        std::vector<job_outcome> out(jobs.size());
        if (jobs.empty())
          return out;
        auto& model = jobs.front().model;
        auto& mm = metrics_of(st, model);
        for (auto& job : jobs)
          observe_queue(mm, std::max(job.created_at_ms, job.run_at_ms));
        auto runner = ensure_loaded(self, model);
        if (!runner) {
          for (std::size_t i = 0; i < jobs.size(); ++i)
            out[i] = failed_outcome(jobs[i].id, runner.error());
        } else {
          auto& m = **runner;
          switch (m.info().kind) {
            case model_kind::tensor:
              run_tensor_jobs(st, m, jobs, out);
              break;
            case model_kind::generate:
              for (std::size_t i = 0; i < jobs.size(); ++i) {
                auto r = run_generate_job(self, m, jobs[i]);
                out[i] = r ? ok_outcome(jobs[i].id, std::move(*r))
                           : failed_outcome(jobs[i].id, r.error());
              }
              break;
            case model_kind::speech:
              for (std::size_t i = 0; i < jobs.size(); ++i) {
                std::vector<named_bytes> files;
                auto r = run_speech_job(self, m, jobs[i], files);
                out[i] = r ? ok_outcome(jobs[i].id, std::move(*r))
                           : failed_outcome(jobs[i].id, r.error());
                if (r)
                  out[i].artifacts = std::move(files);
              }
              break;
          }
        }
        for (auto& o : out) {
          ++mm.requests;
          if (!o.ok)
            ++mm.failures[o.error_code];
        }
        // The run is over: a flag raised for it (cancel, timeout) is spent.
        if (st.cfg.cancels)
          for (auto& job : jobs)
            st.cfg.cancels->clear(job.id);
        status_changed(self);
        return out;
      },
      [self](infer_atom, infer_batch& batch) -> caf::result<infer_batch_result> {
        return answer_here(self, infer_now(self, batch));
      },
      [self](generate_atom, generate_request& req,
             int64_t key) -> caf::result<generate_reply> {
        return answer_here(self, generate_now(self, req, key));
      },
      [self](speech_atom, speech_request& req, int64_t key) -> caf::result<speech_reply> {
        return answer_here(self, synthesize_now(self, req, key));
      },
      [self](session_atom, const std::string& session) {
        self->state.sessions.erase(session);
      },
      [self](status_atom) {
        auto held = hold_lane(self);
        auto& st = self->state;
        st.status_timer = false;
        if (st.status_dirty)
          send_status(self);
      },
  };
}

} // namespace

executor_actor spawn_executor(caf::actor_system& sys, executor_config cfg) {
  return sys.spawn<caf::detached>(executor_behavior, std::move(cfg));
}

} // namespace infergrid
