// Worker actor: claims, runs through the executor, completes with fencing.
#include "actors/worker.hpp"

#include <chrono>
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
  std::vector<std::string> models;
  worker_phase phase = worker_phase::loading;
  /// The durable job being run (0: none) and its fencing token.
  int64_t job_id = 0;
  int64_t lease_seq = 0;
};

using worker_pointer = worker_actor::stateful_pointer<worker_state>;

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
  st.job_id = 0;
  st.lease_seq = 0;
  transition(self, worker_phase::idle);
  self->send(st.queue, idle_atom::value, st.cfg.id, found_work);
}

void finish_job(worker_pointer self, const job_record& job,
                caf::expected<std::string> out) {
  auto& st = self->state;
  if (out) {
    auto done = st.store->complete(job.id, job.lease_seq, *out, now_ms());
    if (!done)
      spdlog::error("worker {}: cannot complete {}: {}", st.cfg.id, job_id_string(job.id),
                    message_of(done.error()));
    else if (!*done)
      spdlog::warn("worker {}: lost the lease of {}; result dropped", st.cfg.id,
                   job_id_string(job.id));
    else
      spdlog::debug("worker {}: {} succeeded", st.cfg.id, job_id_string(job.id));
  } else {
    auto code = code_of(out.error());
    job_error err{to_string(code), message_of(out.error()), is_retryable(code)};
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
  publish_events(self);
  become_idle(self, true);
}

void claim_and_run(worker_pointer self) {
  auto& st = self->state;
  if (!st.store || st.phase == worker_phase::error || st.models.empty()) {
    self->send(st.queue, idle_atom::value, st.cfg.id, false);
    return;
  }
  transition(self, worker_phase::busy);
  auto claimed = st.store->claim(st.cfg.id, st.models, 1, st.cfg.lease_ms, now_ms());
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
  auto job = std::move(claimed->front());
  st.job_id = job.id;
  st.lease_seq = job.lease_seq;
  spdlog::debug("worker {}: claimed {} (attempt {})", st.cfg.id, job_id_string(job.id),
                job.attempts);
  auto renew_every = std::chrono::milliseconds(std::max<int64_t>(st.cfg.lease_ms / 3, 1));
  self->delayed_send(self, renew_every, renew_atom::value, job.id, job.lease_seq);
  auto timeout = job.timeout_ms > 0
                     ? caf::duration{std::chrono::milliseconds(job.timeout_ms)}
                     : caf::duration{std::chrono::seconds(24 * 3600)};
  self->request(st.exec, timeout, run_job_atom::value, job)
      .then(
          [self, job](std::string& output) { finish_job(self, job, std::move(output)); },
          [self, job](caf::error& err) {
            if (err == caf::sec::request_timeout) {
              // Stop a generation loop that is still running on the executor.
              self->state.cancels->raise(job.id);
              err = make_error(errc::timeout, "job exceeded its timeout_ms of "
                                                  + std::to_string(job.timeout_ms));
            }
            finish_job(self, job, std::move(err));
          });
}

worker_actor::behavior_type worker_behavior(worker_pointer self,
                                            queue_feedback_actor queue,
                                            broker_actor broker, worker_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.queue = std::move(queue);
  st.broker = std::move(broker);
  auto store = persistence::job_store::open(st.cfg.store);
  if (!store) {
    spdlog::error("worker {}: cannot open the job store: {}", st.cfg.id,
                  message_of(store.error()));
    transition(self, worker_phase::error);
  } else {
    st.store = std::move(*store);
  }
  executor_config ecfg{st.cfg.id, st.cfg.models, st.cfg.intra_op_threads, st.cancels};
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
            if (st.phase != worker_phase::error)
              transition(self, worker_phase::idle);
            spdlog::info("worker {}: {} with {} model(s) ready", st.cfg.id,
                         to_string(st.phase), st.models.size());
            self->send(st.queue, register_atom::value,
                       caf::actor_cast<worker_actor>(self), std::move(reg));
          },
          [self](caf::error& err) {
            spdlog::error("worker {}: loading failed: {}", self->state.cfg.id,
                          message_of(err));
            transition(self, worker_phase::error);
          });
  return {
      [self](work_atom) { claim_and_run(self); },
      [self](infer_atom, infer_request& req) -> caf::result<std::vector<tensor_data>> {
        auto& st = self->state;
        transition(self, worker_phase::busy);
        auto rp = self->make_response_promise<std::vector<tensor_data>>();
        self->request(st.exec, std::chrono::milliseconds(st.cfg.infer_timeout_ms),
                      infer_atom::value, std::move(req))
            .then(
                [self, rp](std::vector<tensor_data>& out) mutable {
                  rp.deliver(std::move(out));
                  become_idle(self, true);
                },
                [self, rp](caf::error& err) mutable {
                  rp.deliver(std::move(err));
                  become_idle(self, true);
                });
        return rp;
      },
      [self](cancel_atom, int64_t job_id) {
        auto& st = self->state;
        if (st.job_id != job_id)
          return;
        spdlog::info("worker {}: cancel of {} requested; stopping it", st.cfg.id,
                     job_id_string(job_id));
        st.cancels->raise(job_id);
      },
      [self](renew_atom, int64_t job_id, int64_t lease_seq) {
        auto& st = self->state;
        if (st.job_id != job_id || st.lease_seq != lease_seq || !st.store)
          return; // that job is over; the timer stops here
        auto status = st.store->renew(job_id, lease_seq, st.cfg.lease_ms, now_ms());
        if (status && !status->held) {
          spdlog::warn("worker {}: lease of {} was lost while running", st.cfg.id,
                       job_id_string(job_id));
          st.cancels->raise(job_id); // its result would be dropped anyway
          return;
        }
        if (status && status->cancel_requested)
          st.cancels->raise(job_id);
        auto renew_every
            = std::chrono::milliseconds(std::max<int64_t>(st.cfg.lease_ms / 3, 1));
        self->delayed_send(self, renew_every, renew_atom::value, job_id, lease_seq);
      },
  };
}

} // namespace

worker_actor spawn_worker(caf::actor_system& sys, queue_feedback_actor queue,
                          broker_actor broker, worker_config cfg) {
  return sys.spawn(worker_behavior, std::move(queue), std::move(broker), std::move(cfg));
}

} // namespace infergrid
