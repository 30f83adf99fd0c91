// Worker actor: claims durable jobs (a batch for batching models), runs them
// and interactive work through the executor, completes with fencing.
#include "actors/worker.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include <functional>

#include <spdlog/spdlog.h>

#include "actors/clock.hpp"
#include "actors/executor.hpp"
#include "messages/errors.hpp"
#include "persistence/artifacts.hpp"

namespace infergrid {

std::string to_string(worker_phase p) {
  switch (p) {
    case worker_phase::loading:
      return "LOADING";
    case worker_phase::idle:
      return "IDLE";
    case worker_phase::busy:
      return "BUSY";
    case worker_phase::session_active:
      return "SESSION_ACTIVE";
    case worker_phase::session_paused:
      return "SESSION_PAUSED";
    case worker_phase::error:
      return "ERROR";
    case worker_phase::draining:
      return "DRAINING";
  }
  return "UNKNOWN";
}

namespace {

/// Where a worker claims, completes and renews its durable jobs: its own
/// SQLite connection (same host) or the queue actor (another node). Both run
/// the same job_store functions; answers come through callbacks, at once for
/// the local port and when the queue answers for the remote one.
class job_port {
public:
  template <class T>
  using callback = std::function<void(caf::expected<T>)>;

  virtual ~job_port() = default;
  virtual void claim(const std::vector<std::string>& models, int32_t n, int64_t lease_ms,
                     callback<std::vector<job_record>> cb)
      = 0;
  virtual void complete_batch(std::vector<job_completion> xs,
                              callback<std::vector<bool>> cb)
      = 0;
  /// The resulting state's name, "" when the lease was lost.
  virtual void fail(int64_t id, int64_t lease_seq, job_error err,
                    callback<std::string> cb)
      = 0;
  virtual void renew_batch(std::vector<held_lease> xs, int64_t lease_ms,
                           callback<std::vector<lease_status>> cb)
      = 0;
  /// A data event; its answer only matters for the log.
  virtual void add_event(int64_t id, int64_t lease_seq, std::string data,
                         callback<bool> cb)
      = 0;
  /// Stores a file of a running job before it completes.
  virtual void write_artifact(int64_t id, int64_t lease_seq, named_bytes file,
                              callback<bool> cb)
      = 0;
};

struct worker_state {
  worker_config cfg;
  queue_feedback_actor queue;
  broker_actor broker;
  executor_actor exec;
  std::shared_ptr<cancel_flags> cancels = std::make_shared<cancel_flags>();
  std::unique_ptr<job_port> port;
  std::map<std::string, model_info> infos;
  std::vector<std::string> models;
  worker_phase phase = worker_phase::loading;
  std::string device;
  /// The durable jobs being run (empty: none), with their fencing tokens.
  std::vector<job_record> held;
  /// Cancel keys of interactive requests (negative, so they never collide
  /// with job ids) by the address of the sink whose loss cancels them.
  int64_t next_key = 0;
  std::map<caf::actor_addr, int64_t> sinks;
  /// The executor's latest model states and metrics.
  std::vector<model_status> model_states;
  std::vector<model_metrics> metrics;
  bool draining = false;
  /// The session this worker is reserved for (empty: none), and whether it
  /// is paused.
  std::string session;
  bool session_paused = false;
};

using worker_pointer = worker_actor::stateful_pointer<worker_state>;

/// The port of a worker that opens the SQLite file itself.
class local_port : public job_port {
public:
  local_port(worker_pointer self, std::unique_ptr<persistence::job_store> store,
             std::string artifacts_dir)
      : self_(self), store_(std::move(store)), files_(std::move(artifacts_dir)) {}

  void claim(const std::vector<std::string>& models, int32_t n, int64_t lease_ms,
             callback<std::vector<job_record>> cb) override {
    auto out = store_->claim(self_->state.cfg.id, models, n, lease_ms, now_ms());
    publish();
    cb(std::move(out));
  }

  void complete_batch(std::vector<job_completion> xs,
                      callback<std::vector<bool>> cb) override {
    auto out = store_->complete_batch(xs, now_ms());
    publish();
    cb(std::move(out));
  }

  void fail(int64_t id, int64_t lease_seq, job_error err,
            callback<std::string> cb) override {
    auto next = store_->fail(id, lease_seq, err, now_ms());
    publish();
    if (!next)
      return cb(next.error());
    cb(*next ? to_string(**next) : std::string{});
  }

  void renew_batch(std::vector<held_lease> xs, int64_t lease_ms,
                   callback<std::vector<lease_status>> cb) override {
    cb(store_->renew_batch(xs, lease_ms, now_ms()));
  }

  void add_event(int64_t id, int64_t lease_seq, std::string data,
                 callback<bool> cb) override {
    auto ok = store_->add_event(id, lease_seq, "data", data, now_ms());
    publish();
    cb(std::move(ok));
  }

  void write_artifact(int64_t id, int64_t, named_bytes file, callback<bool> cb) override {
    auto written = files_.write(id, file.name, file.bytes);
    if (!written)
      return cb(written.error());
    cb(true);
  }

private:
  // Hands the events this connection committed to the broker.
  void publish() {
    auto events = store_->take_events();
    if (!events.empty() && self_->state.broker)
      self_->send(self_->state.broker, publish_atom::value, std::move(events));
  }

  worker_pointer self_;
  std::unique_ptr<persistence::job_store> store_;
  persistence::artifact_store files_;
};

/// The port of a worker on another node: every call is a request to the
/// queue actor, which runs it on the control node's connection.
class remote_port : public job_port {
public:
  remote_port(worker_pointer self, queue_actor queue)
      : self_(self), queue_(std::move(queue)) {}

  void claim(const std::vector<std::string>& models, int32_t n, int64_t lease_ms,
             callback<std::vector<job_record>> cb) override {
    ask<std::vector<job_record>>(std::move(cb), claim_atom::value, self_->state.cfg.id,
                                 models, n, lease_ms);
  }

  void complete_batch(std::vector<job_completion> xs,
                      callback<std::vector<bool>> cb) override {
    ask<std::vector<bool>>(std::move(cb), complete_atom::value, std::move(xs));
  }

  void fail(int64_t id, int64_t lease_seq, job_error err,
            callback<std::string> cb) override {
    ask<std::string>(std::move(cb), fail_atom::value, id, lease_seq, std::move(err));
  }

  void renew_batch(std::vector<held_lease> xs, int64_t lease_ms,
                   callback<std::vector<lease_status>> cb) override {
    ask<std::vector<lease_status>>(std::move(cb), renew_atom::value, std::move(xs),
                                   lease_ms);
  }

  void add_event(int64_t id, int64_t lease_seq, std::string data,
                 callback<bool> cb) override {
    ask<bool>(std::move(cb), chunk_atom::value, id, lease_seq, std::move(data));
  }

  void write_artifact(int64_t id, int64_t lease_seq, named_bytes file,
                      callback<bool> cb) override {
    ask<bool>(std::move(cb), artifact_atom::value, id, lease_seq, std::move(file.name),
              std::move(file.bytes));
  }

private:
  template <class T, class... Ts>
  void ask(callback<T> cb, Ts&&... xs) {
    // Requests from one actor to another arrive in order, so a data event
    // or a file always lands before the completion that follows it.
    self_->request(queue_, std::chrono::seconds(30), std::forward<Ts>(xs)...)
        .then([cb](T& x) { cb(std::move(x)); },
              [cb](caf::error& err) { cb(std::move(err)); });
  }

  worker_pointer self_;
  queue_actor queue_;
};

std::chrono::milliseconds renew_period(const worker_config& cfg) {
  return std::chrono::milliseconds(std::max<int64_t>(cfg.lease_ms / 3, 1));
}

worker_status make_status(const worker_state& st) {
  worker_status out;
  out.worker_id = st.cfg.id;
  out.phase = to_string(st.phase);
  out.device = st.device;
  out.memory_budget_mb = st.cfg.memory_budget_mb;
  out.models = st.model_states;
  out.metrics = st.metrics;
  out.host = st.cfg.host;
  out.claim_path = st.cfg.claim_path;
  out.running_jobs = static_cast<int64_t>(st.held.size());
  out.current_job = st.held.empty() ? 0 : st.held.front().id;
  return out;
}

void transition(worker_pointer self, worker_phase next) {
  auto& st = self->state;
  if (st.phase == next)
    return;
  spdlog::debug("worker {}: {} -> {}", st.cfg.id, to_string(st.phase), to_string(next));
  st.phase = next;
}

// The phase of a worker that runs nothing: drained, reserved for a session,
// or idle.
worker_phase resting_phase(const worker_state& st) {
  if (st.draining)
    return worker_phase::draining;
  if (!st.session.empty())
    return st.session_paused ? worker_phase::session_paused
                             : worker_phase::session_active;
  return worker_phase::idle;
}

// Ends the current piece of work and tells the queue (the one dispatch point).
void become_idle(worker_pointer self, bool found_work) {
  auto& st = self->state;
  st.held.clear();
  transition(self, resting_phase(st));
  self->send(st.queue, idle_atom::value, st.cfg.id, found_work);
}

// Ends a piece of interactive work. The queue learns from the answer itself
// (one message between nodes instead of two), so no idle message follows.
void end_interactive(worker_pointer self) {
  transition(self, resting_phase(self->state));
}

void log_failure(worker_pointer self, const job_record& job, const job_error& err,
                 const caf::expected<std::string>& next) {
  auto& st = self->state;
  if (!next)
    spdlog::error("worker {}: cannot record failure of {}: {}", st.cfg.id,
                  job_id_string(job.id), message_of(next.error()));
  else if (next->empty())
    spdlog::warn("worker {}: lost the lease of {}; failure dropped", st.cfg.id,
                 job_id_string(job.id));
  else
    spdlog::info("worker {}: {} attempt {} failed ({}: {}); now {}", st.cfg.id,
                 job_id_string(job.id), job.attempts, err.code, err.message, *next);
}

/// Counts the answers a step still waits for; runs `done` after the last.
struct countdown {
  std::size_t left;
  std::function<void()> done;

  void tick() {
    if (--left == 0)
      done();
  }
};

// Records the failures, stores the files of the successes, then completes
// the successes in one transaction; idle when every answer is in.
void finish_jobs(worker_pointer self, std::vector<job_outcome> outcomes) {
  auto& st = self->state;
  auto held = st.held;
  std::vector<job_completion> done;
  std::vector<std::pair<const job_record*, job_error>> failures;
  std::vector<std::pair<const job_record*, named_bytes>> files;
  for (std::size_t i = 0; i < held.size() && i < outcomes.size(); ++i) {
    auto& job = held[i];
    auto& o = outcomes[i];
    if (o.ok) {
      done.push_back(job_completion{job.id, job.lease_seq, std::move(o.output_json)});
      for (auto& f : o.artifacts)
        files.emplace_back(&job, std::move(f));
      continue;
    }
    errc code = errc::internal;
    from_string(o.error_code, code);
    failures.emplace_back(&job,
                          job_error{o.error_code, o.error_message, is_retryable(code)});
  }
  auto step = std::make_shared<countdown>();
  step->left = failures.size() + files.size() + 1;
  step->done = [self] {
    auto& st = self->state;
    st.held.clear();
    self->send(st.queue, status_atom::value, make_status(st));
    become_idle(self, true);
  };
  for (auto& [job, err] : failures) {
    auto rec = *job;
    auto e = err;
    st.port->fail(job->id, job->lease_seq, err,
                  [self, rec, e, step](caf::expected<std::string> next) {
                    log_failure(self, rec, e, next);
                    step->tick();
                  });
  }
  for (auto& [job, file] : files) {
    auto id = job->id;
    st.port->write_artifact(job->id, job->lease_seq, std::move(file),
                            [self, id, step](caf::expected<bool> ok) {
                              if (!ok)
                                spdlog::error("worker {}: cannot store a file of {}: {}",
                                              self->state.cfg.id, job_id_string(id),
                                              message_of(ok.error()));
                              step->tick();
                            });
  }
  if (done.empty()) {
    step->tick();
    return;
  }
  auto ids = std::make_shared<std::vector<int64_t>>();
  for (auto& d : done)
    ids->push_back(d.id);
  st.port->complete_batch(
      std::move(done), [self, ids, step](caf::expected<std::vector<bool>> results) {
        auto& st = self->state;
        if (!results) {
          spdlog::error("worker {}: cannot complete {} job(s): {}", st.cfg.id,
                        ids->size(), message_of(results.error()));
        } else {
          for (std::size_t i = 0; i < results->size() && i < ids->size(); ++i)
            if (!(*results)[i])
              spdlog::warn("worker {}: lost the lease of {}; result dropped", st.cfg.id,
                           job_id_string((*ids)[i]));
        }
        step->tick();
      });
}

// The executor failed as a whole (timeout, crash): every held job fails.
void fail_held(worker_pointer self, const caf::error& err) {
  auto code = code_of(err);
  job_error je{to_string(code), message_of(err), is_retryable(code)};
  std::vector<job_outcome> outcomes;
  for (auto& job : self->state.held) {
    job_outcome o;
    o.id = job.id;
    o.error_code = je.code;
    o.error_message = je.message;
    outcomes.push_back(std::move(o));
  }
  finish_jobs(self, std::move(outcomes));
}

// Runs the claimed jobs on the executor, renewing their leases meanwhile.
void run_held(worker_pointer self) {
  auto& st = self->state;
  // The queue (and the workers table) show what it runs now.
  self->send(st.queue, status_atom::value, make_status(st));
  spdlog::debug("worker {}: claimed {} job(s) of {}, first {} (attempt {})", st.cfg.id,
                st.held.size(), st.held.front().model, job_id_string(st.held.front().id),
                st.held.front().attempts);
  self->delayed_send(self, renew_period(st.cfg), renew_atom::value);
  // The tightest timeout of the batch bounds the whole run.
  int64_t timeout_ms = 0;
  for (auto& job : st.held)
    if (job.timeout_ms > 0 && (timeout_ms == 0 || job.timeout_ms < timeout_ms))
      timeout_ms = job.timeout_ms;
  auto timeout = timeout_ms > 0 ? caf::duration{std::chrono::milliseconds(timeout_ms)}
                                : caf::duration{std::chrono::seconds(24 * 3600)};
  self->request(st.exec, timeout, run_job_atom::value, st.held)
      .then(
          [self](std::vector<job_outcome>& outcomes) {
            finish_jobs(self, std::move(outcomes));
          },
          [self, timeout_ms](caf::error& err) {
            if (err == caf::sec::request_timeout) {
              // Stop a generation or synthesis still running on the executor.
              for (auto& job : self->state.held)
                self->state.cancels->raise(job.id);
              err = make_error(errc::timeout, "job exceeded its timeout_ms of "
                                                  + std::to_string(timeout_ms));
            }
            fail_held(self, err);
          });
}

// Claims what to run next: one job, and for a batching tensor model up to
// its max_batch_size jobs of that model (a second claim restricted to it).
void claim_and_run(worker_pointer self) {
  auto& st = self->state;
  if (!st.port || st.phase == worker_phase::error || st.models.empty() || st.draining) {
    self->send(st.queue, idle_atom::value, st.cfg.id, false);
    return;
  }
  transition(self, worker_phase::busy);
  st.port->claim(
      st.models, 1, st.cfg.lease_ms,
      [self](caf::expected<std::vector<job_record>> first) {
        auto& st = self->state;
        if (!first) {
          spdlog::warn("worker {}: claim failed: {}", st.cfg.id,
                       message_of(first.error()));
          return become_idle(self, false);
        }
        if (first->empty())
          return become_idle(self, false);
        st.held = std::move(*first);
        auto& job = st.held.front();
        auto info = st.infos.find(job.model);
        int64_t limit = 1;
        if (info != st.infos.end() && info->second.kind == model_kind::tensor)
          limit = std::min<int64_t>(info->second.max_batch_size, st.cfg.max_job_batch);
        if (limit <= 1)
          return run_held(self);
        st.port->claim({job.model}, static_cast<int32_t>(limit - 1), st.cfg.lease_ms,
                       [self](caf::expected<std::vector<job_record>> more) {
                         auto& st = self->state;
                         if (!more)
                           spdlog::warn("worker {}: batch claim failed: {}", st.cfg.id,
                                        message_of(more.error()));
                         else
                           st.held.insert(st.held.end(),
                                          std::make_move_iterator(more->begin()),
                                          std::make_move_iterator(more->end()));
                         run_held(self);
                       });
      });
}

// Runs one interactive streaming request (generate or speech) on the
// executor; a sink that goes down cancels it.
template <class Reply, class Atom, class Request>
caf::result<Reply> run_streaming(worker_pointer self, Atom atom, Request req) {
  auto& st = self->state;
  // A session's turn: the worker stays SESSION_ACTIVE (it is the session's).
  if (req.session.empty())
    transition(self, worker_phase::busy);
  auto key = --st.next_key;
  caf::actor_addr sink_addr;
  if (req.sink) {
    sink_addr = req.sink.address();
    st.sinks[sink_addr] = key;
    self->monitor(req.sink);
  }
  auto rp = self->make_response_promise<Reply>();
  auto done = [self, key, sink_addr] {
    auto& st = self->state;
    st.cancels->clear(key);
    if (sink_addr) {
      st.sinks.erase(sink_addr);
      self->demonitor(sink_addr);
    }
    end_interactive(self);
  };
  // No CAF timeout: each would wake CAF's clock thread twice per request
  // (to set it and to cancel it). The executor stops a run that passes
  // workers.generate_timeout_ms itself, after the token or phrase that
  // passed it, and answers errc::timeout.
  self->request(st.exec, caf::infinite, atom, std::move(req), key)
      .then(
          [rp, done](Reply& out) mutable {
            rp.deliver(std::move(out));
            done();
          },
          [rp, done](caf::error& err) mutable {
            rp.deliver(std::move(err));
            done();
          });
  return rp;
}

worker_actor::behavior_type worker_behavior(worker_pointer self,
                                            queue_feedback_actor queue,
                                            broker_actor broker, worker_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.queue = std::move(queue);
  st.broker = std::move(broker);
  for (auto& e : st.cfg.models)
    st.infos.emplace(e.info.name, e.info);
  if (st.cfg.claim_via) {
    st.port = std::make_unique<remote_port>(self, st.cfg.claim_via);
  } else {
    auto store = persistence::job_store::open(st.cfg.store);
    if (!store) {
      spdlog::error("worker {}: cannot open the job store: {}", st.cfg.id,
                    message_of(store.error()));
      transition(self, worker_phase::error);
    } else {
      st.port
          = std::make_unique<local_port>(self, std::move(*store), st.cfg.artifacts_dir);
    }
  }
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& st = self->state;
    auto i = st.sinks.find(dm.source);
    if (i == st.sinks.end())
      return;
    spdlog::info("worker {}: the client of a streaming request went away; stopping it",
                 st.cfg.id);
    st.cancels->raise(i->second);
    st.sinks.erase(i);
  });
  executor_config ecfg;
  ecfg.worker_id = st.cfg.id;
  ecfg.models = st.cfg.models;
  ecfg.intra_op_threads = st.cfg.intra_op_threads;
  ecfg.memory_budget_mb = st.cfg.memory_budget_mb;
  ecfg.stream_interval = std::chrono::milliseconds{st.cfg.stream_interval_ms};
  ecfg.run_timeout = std::chrono::milliseconds{st.cfg.generate_timeout_ms};
  ecfg.cancels = st.cancels;
  ecfg.worker = caf::actor_cast<worker_actor>(self);
  // A worker process's link reader runs batches itself when it can.
  std::shared_ptr<executor_lane> lane;
  if (st.cfg.link)
    lane = ecfg.lane = std::make_shared<executor_lane>();
  st.exec = spawn_executor(self->system(), std::move(ecfg));
  self->link_to(st.exec);
  spdlog::info("worker {}: LOADING {} model(s)", st.cfg.id, st.cfg.models.size());
  self->request(st.exec, std::chrono::minutes(10), load_atom::value)
      .then(
          [self, lane](worker_registration& reg) {
            auto& st = self->state;
            for (auto& failure : reg.failed)
              spdlog::error("worker {}: {}", st.cfg.id, failure);
            st.models = reg.models;
            st.device = reg.device;
            reg.host = st.cfg.host;
            reg.claim_path = st.cfg.claim_path;
            reg.runner = st.exec;
            if (st.cfg.link) {
              st.cfg.link->serve(
                  caf::actor_cast<caf::strong_actor_ptr>(st.exec), self->address(),
                  [lane](infer_batch& batch) { return lane->try_infer(batch); });
              reg.link_token = st.cfg.link->token();
              spdlog::info("worker {}: the local link's reader runs fast tensor batches "
                           "itself while the executor is idle",
                           st.cfg.id);
            }
            if (st.phase != worker_phase::error)
              transition(self, worker_phase::idle);
            spdlog::info("worker {}: {} on {} with {} model(s) ready", st.cfg.id,
                         to_string(st.phase), st.device, st.models.size());
            self->send(st.queue, register_atom::value,
                       caf::actor_cast<worker_actor>(self), std::move(reg));
            self->send(st.queue, status_atom::value, make_status(st));
          },
          [self](caf::error& err) {
            spdlog::error("worker {}: loading failed: {}", self->state.cfg.id,
                          message_of(err));
            transition(self, worker_phase::error);
          });
  return {
      [self](work_atom) { claim_and_run(self); },
      [self](infer_atom, infer_batch& batch) -> caf::result<infer_batch_result> {
        auto& st = self->state;
        transition(self, worker_phase::busy);
        auto rp = self->make_response_promise<infer_batch_result>();
        // No CAF timeout here: one per request would wake CAF's clock thread
        // each time. The queue fails requests not answered by their deadline;
        // a forward pass that never returns leaves this worker BUSY, so it
        // gets no more work.
        self->request(st.exec, caf::infinite, infer_atom::value, std::move(batch))
            .then(
                [self, rp](infer_batch_result& out) mutable {
                  end_interactive(self);
                  rp.deliver(std::move(out));
                },
                [self, rp](caf::error& err) mutable {
                  end_interactive(self);
                  rp.deliver(std::move(err));
                });
        return rp;
      },
      [self](generate_atom, generate_request& req) -> caf::result<generate_reply> {
        return run_streaming<generate_reply>(self, generate_atom::value, std::move(req));
      },
      [self](speech_atom, speech_request& req) -> caf::result<speech_reply> {
        return run_streaming<speech_reply>(self, speech_atom::value, std::move(req));
      },
      [self](cancel_atom, int64_t job_id) {
        auto& st = self->state;
        for (auto& job : st.held) {
          if (job.id == job_id) {
            spdlog::info("worker {}: cancel of {} requested; stopping it", st.cfg.id,
                         job_id_string(job_id));
            st.cancels->raise(job_id);
          }
        }
      },
      [self](renew_atom) {
        auto& st = self->state;
        if (st.held.empty() || !st.port)
          return; // nothing held; the timer stops here
        std::vector<held_lease> leases;
        for (auto& job : st.held)
          leases.push_back(held_lease{job.id, job.lease_seq});
        st.port->renew_batch(
            leases, st.cfg.lease_ms,
            [self, leases](caf::expected<std::vector<lease_status>> status) {
              auto& st = self->state;
              if (!status) {
                spdlog::warn("worker {}: lease renewal failed: {}", st.cfg.id,
                             message_of(status.error()));
                return;
              }
              for (std::size_t i = 0; i < status->size() && i < leases.size(); ++i) {
                auto& s = (*status)[i];
                if (!s.held) {
                  spdlog::warn("worker {}: lease of {} was lost while running", st.cfg.id,
                               job_id_string(leases[i].id));
                  st.cancels->raise(leases[i].id); // its result would be dropped anyway
                } else if (s.cancel_requested) {
                  st.cancels->raise(leases[i].id);
                }
              }
            });
        self->delayed_send(self, renew_period(st.cfg), renew_atom::value);
      },
      [self](chunk_atom, int64_t job_id, int64_t lease_seq, std::string& data) {
        auto& st = self->state;
        if (!st.port)
          return;
        st.port->add_event(
            job_id, lease_seq, std::move(data), [self, job_id](caf::expected<bool> ok) {
              if (!ok)
                spdlog::warn("worker {}: cannot store a data event of {}: {}",
                             self->state.cfg.id, job_id_string(job_id),
                             message_of(ok.error()));
            });
      },
      [self](drain_atom, bool drain) {
        auto& st = self->state;
        st.draining = drain;
        if (st.phase != worker_phase::error && st.phase != worker_phase::loading)
          transition(self,
                     drain || st.held.empty() ? resting_phase(st) : worker_phase::busy);
        spdlog::info("worker {}: {}", st.cfg.id, drain ? "DRAINING" : "resumed");
        self->send(st.queue, status_atom::value, make_status(st));
      },
      [self](session_atom, const std::string& session, const std::string& action) {
        auto& st = self->state;
        if (action == "open") {
          st.session = session;
          st.session_paused = false;
        } else if (session != st.session) {
          spdlog::warn("worker {}: {} of session {}, but it serves {}", st.cfg.id, action,
                       session, st.session.empty() ? "none" : st.session);
          return;
        } else if (action == "pause" || action == "resume") {
          st.session_paused = action == "pause";
        } else if (action == "close") {
          st.session.clear();
          st.session_paused = false;
          self->send(st.exec, session_atom::value, session);
        } else {
          spdlog::warn("worker {}: unknown session action '{}'", st.cfg.id, action);
          return;
        }
        spdlog::info("worker {}: session {} {}", st.cfg.id, session, action);
        if (st.phase != worker_phase::error && st.phase != worker_phase::loading
            && st.phase != worker_phase::busy)
          transition(self, resting_phase(st));
      },
      [self](status_atom, std::vector<model_status>& states,
             std::vector<model_metrics>& metrics) {
        auto& st = self->state;
        st.model_states = std::move(states);
        st.metrics = std::move(metrics);
        if (st.phase != worker_phase::loading)
          self->send(st.queue, status_atom::value, make_status(st));
      },
      [self](load_atom, const std::string& model) -> caf::result<worker_status> {
        auto& st = self->state;
        auto rp = self->make_response_promise<worker_status>();
        self->request(st.exec, std::chrono::minutes(10), load_atom::value, model)
            .then(
                [self, rp](std::vector<model_status>& states) mutable {
                  self->state.model_states = std::move(states);
                  rp.deliver(make_status(self->state));
                },
                [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
        return rp;
      },
      [self](unload_atom, const std::string& model) -> caf::result<worker_status> {
        auto& st = self->state;
        auto rp = self->make_response_promise<worker_status>();
        self->request(st.exec, std::chrono::minutes(10), unload_atom::value, model)
            .then(
                [self, rp](std::vector<model_status>& states) mutable {
                  self->state.model_states = std::move(states);
                  rp.deliver(make_status(self->state));
                },
                [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
        return rp;
      },
  };
}

} // namespace

worker_actor spawn_worker(caf::actor_system& sys, queue_feedback_actor queue,
                          broker_actor broker, worker_config cfg) {
  return sys.spawn(worker_behavior, std::move(queue), std::move(broker), std::move(cfg));
}

} // namespace infergrid
