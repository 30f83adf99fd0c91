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

#include <spdlog/spdlog.h>

#include "actors/clock.hpp"
#include "actors/executor.hpp"
#include "messages/errors.hpp"

namespace infergrid {

std::string to_string(worker_phase p) {
  switch (p) {
    case worker_phase::loading:
      return "LOADING";
    case worker_phase::idle:
      return "IDLE";
    case worker_phase::busy:
      return "BUSY";
    case worker_phase::error:
      return "ERROR";
    case worker_phase::draining:
      return "DRAINING";
  }
  return "UNKNOWN";
}

namespace {

struct worker_state {
  worker_config cfg;
  queue_feedback_actor queue;
  broker_actor broker;
  executor_actor exec;
  std::shared_ptr<cancel_flags> cancels = std::make_shared<cancel_flags>();
  std::unique_ptr<persistence::job_store> store;
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
};

using worker_pointer = worker_actor::stateful_pointer<worker_state>;

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
  return out;
}

void transition(worker_pointer self, worker_phase next) {
  auto& st = self->state;
  if (st.phase == next)
    return;
  spdlog::debug("worker {}: {} -> {}", st.cfg.id, to_string(st.phase), to_string(next));
  st.phase = next;
}

// Hands the events this worker's connection committed to the broker.
void publish_events(worker_pointer self) {
  auto& st = self->state;
  if (!st.store)
    return;
  auto events = st.store->take_events();
  if (!events.empty() && st.broker)
    self->send(st.broker, publish_atom::value, std::move(events));
}

// Ends the current piece of work and tells the queue (the one dispatch point).
void become_idle(worker_pointer self, bool found_work) {
  auto& st = self->state;
  st.held.clear();
  transition(self, worker_phase::idle);
  self->send(st.queue, idle_atom::value, st.cfg.id, found_work);
}

void record_failure(worker_pointer self, const job_record& job, const job_error& err) {
  auto& st = self->state;
  auto next = st.store->fail(job.id, job.lease_seq, err, now_ms());
  if (!next)
    spdlog::error("worker {}: cannot record failure of {}: {}", st.cfg.id,
                  job_id_string(job.id), message_of(next.error()));
  else if (!*next)
    spdlog::warn("worker {}: lost the lease of {}; failure dropped", st.cfg.id,
                 job_id_string(job.id));
  else
    spdlog::info("worker {}: {} attempt {} failed ({}: {}); now {}", st.cfg.id,
                 job_id_string(job.id), job.attempts, err.code, err.message,
                 to_string(**next));
}

// Writes what the executor made of each held job: the successes in one
// transaction, each failure on its own (they are rare).
void finish_jobs(worker_pointer self, const std::vector<job_outcome>& outcomes) {
  auto& st = self->state;
  std::vector<persistence::job_completion> done;
  for (std::size_t i = 0; i < st.held.size() && i < outcomes.size(); ++i) {
    auto& job = st.held[i];
    auto& o = outcomes[i];
    if (o.ok) {
      done.push_back(persistence::job_completion{job.id, job.lease_seq, o.output_json});
      continue;
    }
    errc code = errc::internal;
    from_string(o.error_code, code);
    record_failure(self, job, job_error{o.error_code, o.error_message, is_retryable(code)});
  }
  if (!done.empty()) {
    auto results = st.store->complete_batch(done, now_ms());
    if (!results) {
      spdlog::error("worker {}: cannot complete {} job(s): {}", st.cfg.id, done.size(),
                    message_of(results.error()));
    } else {
      for (std::size_t i = 0; i < results->size(); ++i)
        if (!(*results)[i])
          spdlog::warn("worker {}: lost the lease of {}; result dropped", st.cfg.id,
                       job_id_string(done[i].id));
    }
  }
  publish_events(self);
  become_idle(self, true);
}

// The executor failed as a whole (timeout, crash): every held job fails.
void fail_held(worker_pointer self, const caf::error& err) {
  auto& st = self->state;
  auto code = code_of(err);
  job_error je{to_string(code), message_of(err), is_retryable(code)};
  for (auto& job : st.held)
    record_failure(self, job, je);
  publish_events(self);
  become_idle(self, true);
}

// Claims what to run next: one job, and for a batching tensor model up to
// its max_batch_size jobs of that model (a second claim restricted to it).
caf::expected<std::vector<job_record>> claim_jobs(worker_pointer self) {
  auto& st = self->state;
  auto first = st.store->claim(st.cfg.id, st.models, 1, st.cfg.lease_ms, now_ms());
  if (!first || first->empty())
    return first;
  auto& job = first->front();
  auto info = st.infos.find(job.model);
  if (info == st.infos.end() || info->second.kind != model_kind::tensor)
    return first;
  auto limit = std::min<int64_t>(info->second.max_batch_size, st.cfg.max_job_batch);
  if (limit <= 1)
    return first;
  auto more = st.store->claim(st.cfg.id, {job.model}, static_cast<int32_t>(limit - 1),
                              st.cfg.lease_ms, now_ms());
  if (!more) {
    spdlog::warn("worker {}: batch claim failed: {}", st.cfg.id, message_of(more.error()));
    return first;
  }
  first->insert(first->end(), std::make_move_iterator(more->begin()),
                std::make_move_iterator(more->end()));
  return first;
}

void claim_and_run(worker_pointer self) {
  auto& st = self->state;
  if (!st.store || st.phase == worker_phase::error || st.models.empty()) {
    self->send(st.queue, idle_atom::value, st.cfg.id, false);
    return;
  }
  transition(self, worker_phase::busy);
  auto claimed = claim_jobs(self);
  publish_events(self);
  if (!claimed) {
    spdlog::warn("worker {}: claim failed: {}", st.cfg.id, message_of(claimed.error()));
    become_idle(self, false);
    return;
  }
  if (claimed->empty()) {
    become_idle(self, false);
    return;
  }
  st.held = std::move(*claimed);
  spdlog::debug("worker {}: claimed {} job(s) of {}, first {} (attempt {})", st.cfg.id,
                st.held.size(), st.held.front().model,
                job_id_string(st.held.front().id), st.held.front().attempts);
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
          [self](std::vector<job_outcome>& outcomes) { finish_jobs(self, outcomes); },
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

// Runs one interactive streaming request (generate or speech) on the
// executor; a sink that goes down cancels it.
template <class Reply, class Atom, class Request>
caf::result<Reply> run_streaming(worker_pointer self, Atom atom, Request req) {
  auto& st = self->state;
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
    become_idle(self, true);
  };
  self->request(st.exec, std::chrono::milliseconds(st.cfg.generate_timeout_ms), atom,
                std::move(req), key)
      .then(
          [rp, done](Reply& out) mutable {
            rp.deliver(std::move(out));
            done();
          },
          [self, rp, done, key](caf::error& err) mutable {
            if (err == caf::sec::request_timeout) {
              self->state.cancels->raise(key);
              err = make_error(errc::timeout,
                               "the request ran past workers.generate_timeout_ms of "
                                   + std::to_string(self->state.cfg.generate_timeout_ms)
                                   + " ms");
            }
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
  auto store = persistence::job_store::open(st.cfg.store);
  if (!store) {
    spdlog::error("worker {}: cannot open the job store: {}", st.cfg.id,
                  message_of(store.error()));
    transition(self, worker_phase::error);
  } else {
    st.store = std::move(*store);
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
  ecfg.artifacts_dir = st.cfg.artifacts_dir;
  ecfg.cancels = st.cancels;
  ecfg.worker = caf::actor_cast<worker_actor>(self);
  st.exec = spawn_executor(self->system(), std::move(ecfg));
  self->link_to(st.exec);
  spdlog::info("worker {}: LOADING {} model(s)", st.cfg.id, st.cfg.models.size());
  self->request(st.exec, std::chrono::minutes(10), load_atom::value)
      .then(
          [self](worker_registration& reg) {
            auto& st = self->state;
            for (auto& failure : reg.failed)
              spdlog::error("worker {}: {}", st.cfg.id, failure);
            st.models = reg.models;
            st.device = reg.device;
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
        self->request(st.exec, std::chrono::milliseconds(st.cfg.infer_timeout_ms),
                      infer_atom::value, std::move(batch))
            .then(
                [self, rp](infer_batch_result& out) mutable {
                  rp.deliver(std::move(out));
                  become_idle(self, true);
                },
                [self, rp](caf::error& err) mutable {
                  rp.deliver(std::move(err));
                  become_idle(self, true);
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
        if (st.held.empty() || !st.store)
          return; // nothing held; the timer stops here
        std::vector<persistence::held_lease> leases;
        for (auto& job : st.held)
          leases.push_back(persistence::held_lease{job.id, job.lease_seq});
        auto status = st.store->renew_batch(leases, st.cfg.lease_ms, now_ms());
        if (status) {
          for (std::size_t i = 0; i < status->size(); ++i) {
            auto& s = (*status)[i];
            if (!s.held) {
              spdlog::warn("worker {}: lease of {} was lost while running", st.cfg.id,
                           job_id_string(leases[i].id));
              st.cancels->raise(leases[i].id); // its result would be dropped anyway
            } else if (s.cancel_requested) {
              st.cancels->raise(leases[i].id);
            }
          }
        } else {
          spdlog::warn("worker {}: lease renewal failed: {}", st.cfg.id,
                       message_of(status.error()));
        }
        self->delayed_send(self, renew_period(st.cfg), renew_atom::value);
      },
      [self](chunk_atom, int64_t job_id, int64_t lease_seq, const std::string& data) {
        auto& st = self->state;
        if (!st.store)
          return;
        auto ok = st.store->add_event(job_id, lease_seq, "data", data, now_ms());
        if (!ok)
          spdlog::warn("worker {}: cannot store a data event of {}: {}", st.cfg.id,
                       job_id_string(job_id), message_of(ok.error()));
        publish_events(self);
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
