// Public handles of infergrid's actors: typed interfaces, atoms and the records
// they exchange. http/ and tools/ include this; it pulls in CAF core only.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <caf/atom.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "messages/job.hpp"
#include "messages/model_info.hpp"
#include "messages/tensor.hpp"

namespace infergrid {

// Atoms (at most 10 characters).
using submit_atom = caf::atom_constant<caf::atom("submit")>;
using job_get_atom = caf::atom_constant<caf::atom("job_get")>;
using infer_atom = caf::atom_constant<caf::atom("infer")>;
using stats_atom = caf::atom_constant<caf::atom("stats")>;
using models_atom = caf::atom_constant<caf::atom("models")>;
using register_atom = caf::atom_constant<caf::atom("register")>;
using idle_atom = caf::atom_constant<caf::atom("idle")>;
using work_atom = caf::atom_constant<caf::atom("work")>;
using run_job_atom = caf::atom_constant<caf::atom("run_job")>;
using load_atom = caf::atom_constant<caf::atom("load")>;
using qtick_atom = caf::atom_constant<caf::atom("qtick")>;
using renew_atom = caf::atom_constant<caf::atom("renew")>;
using list_atom = caf::atom_constant<caf::atom("list")>;
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;
using events_atom = caf::atom_constant<caf::atom("events")>;
using publish_atom = caf::atom_constant<caf::atom("publish")>;
using subscribe_atom = caf::atom_constant<caf::atom("subscribe")>;
using unsub_atom = caf::atom_constant<caf::atom("unsub")>;
using flush_atom = caf::atom_constant<caf::atom("flush")>;
using claim_atom = caf::atom_constant<caf::atom("claim")>;
using complete_atom = caf::atom_constant<caf::atom("complete")>;
using fail_atom = caf::atom_constant<caf::atom("fail")>;

/// An interactive (not durable) inference request for a tensor model.
struct infer_request {
  std::string model;
  std::vector<tensor_data> inputs;
  std::string request_id;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, infer_request& x) {
  return f(caf::meta::type_name("infer_request"), x.model, x.inputs, x.request_id);
}

/// What a worker tells the queue once its models are loaded and warm.
struct worker_registration {
  std::string worker_id;
  /// Models this worker loaded successfully and can run.
  std::vector<std::string> models;
  /// "model: cause" for each model that failed to load.
  std::vector<std::string> failed;
};

inline bool operator==(const worker_registration& x, const worker_registration& y) {
  return x.worker_id == y.worker_id && x.models == y.models && x.failed == y.failed;
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_registration& x) {
  return f(caf::meta::type_name("worker_registration"), x.worker_id, x.models, x.failed);
}

/// A snapshot of the queue for /readyz, /metrics and the admin API.
struct cluster_stats {
  /// Job counts by state name; every state is present (0 when none).
  std::map<std::string, int64_t> jobs_by_state;
  int32_t workers_total = 0;
  int32_t workers_ready = 0;
  int32_t workers_busy = 0;
  int64_t interactive_waiting = 0;
  /// Models served by at least one ready worker.
  std::vector<std::string> ready_models;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, cluster_stats& x) {
  return f(caf::meta::type_name("cluster_stats"), x.jobs_by_state, x.workers_total,
           x.workers_ready, x.workers_busy, x.interactive_waiting, x.ready_models);
}

/// Receives the live events of the jobs it subscribed to (an SSE stream).
using event_subscriber_actor = caf::typed_actor<caf::reacts_to<job_event>>;

/// The broker: fans job events out to subscribers without touching SQLite.
/// Writers (queue, workers) publish what they committed.
using broker_actor = caf::typed_actor<
    caf::reacts_to<publish_atom, std::vector<job_event>>,
    // Registers `subscriber` for job `id`; the answer (true) comes after the
    // registration, so a backlog read after it cannot miss an event.
    // errc::queue_full when the broker holds its maximum of subscribers.
    caf::replies_to<subscribe_atom, int64_t, event_subscriber_actor>::with<bool>,
    caf::reacts_to<unsub_atom, int64_t, event_subscriber_actor>>;

/// A worker: owns one device, its models and an executor thread.
using worker_actor = caf::typed_actor<
    // The queue saw durable work this worker may claim; the worker is busy
    // from now until it sends idle.
    caf::reacts_to<work_atom>,
    // Run one interactive request; the worker is busy until it sends idle.
    caf::replies_to<infer_atom, infer_request>::with<std::vector<tensor_data>>,
    // Self-timer: renew the lease of (job id, lease_seq) while it runs.
    caf::reacts_to<renew_atom, int64_t, int64_t>,
    // A client cancelled this running job: stop it cooperatively.
    caf::reacts_to<cancel_atom, int64_t>>;

/// The part of the queue a worker talks to.
using queue_feedback_actor
    = caf::typed_actor<caf::reacts_to<register_atom, worker_actor, worker_registration>,
                       // The worker finished what it was given; `found_work` is false
                       // when a work message found nothing to claim.
                       caf::reacts_to<idle_atom, std::string, bool>>;

/// The queue: the job table, worker membership, the one dispatch point.
using queue_actor = queue_feedback_actor::extend<
    caf::replies_to<submit_atom, new_job>::with<job_record>,
    caf::replies_to<job_get_atom, int64_t>::with<job_record>,
    caf::replies_to<infer_atom, infer_request>::with<std::vector<tensor_data>>,
    caf::replies_to<stats_atom>::with<cluster_stats>,
    caf::replies_to<list_atom, job_filter>::with<job_page>,
    caf::replies_to<cancel_atom, int64_t>::with<job_record>,
    caf::replies_to<events_atom, int64_t, int64_t>::with<std::vector<job_event>>,
    // Self-message: writes the submits that arrived together in one
    // transaction (group commit).
    caf::reacts_to<flush_atom>,
    // The claim path of a worker that cannot open the SQLite file itself (a
    // remote node): the same store functions, run on the queue's connection.
    // (worker id, models, n, lease_ms) -> claimed jobs, sorted.
    caf::replies_to<claim_atom, std::string, std::vector<std::string>, int32_t,
                    int64_t>::with<std::vector<job_record>>,
    // (id, lease_seq, output JSON) -> false when the lease was lost.
    caf::replies_to<complete_atom, int64_t, int64_t, std::string>::with<bool>,
    // (id, lease_seq, error) -> the resulting state's name; "" when the lease
    // was lost.
    caf::replies_to<fail_atom, int64_t, int64_t, job_error>::with<std::string>,
    // (id, lease_seq, lease_ms) -> (lease held, cancel requested).
    caf::replies_to<renew_atom, int64_t, int64_t, int64_t>::with<bool, bool>,
    caf::reacts_to<qtick_atom>>;

/// The gateway: admission and validation in front of the queue. What http/
/// talks to. Errors are infergrid::errc values with a message.
using gateway_actor = caf::typed_actor<
    // Validates (model known, input matches the model) and enqueues.
    caf::replies_to<submit_atom, new_job>::with<job_record>,
    caf::replies_to<job_get_atom, int64_t>::with<job_record>,
    // (model, KServe v2 request body, request id) -> output tensors.
    caf::replies_to<infer_atom, std::string, std::string,
                    std::string>::with<std::vector<tensor_data>>,
    caf::replies_to<models_atom>::with<std::vector<model_info>>,
    caf::replies_to<stats_atom>::with<cluster_stats>,
    // GET /v1/jobs: newest first, filtered, paged.
    caf::replies_to<list_atom, job_filter>::with<job_page>,
    // Cancel: queued -> cancelled; running -> cancel_requested. not_found,
    // conflict (already final).
    caf::replies_to<cancel_atom, int64_t>::with<job_record>,
    // (job id, after seq) -> stored events with seq > after, oldest first, at
    // most 1000; not_found for an unknown job.
    caf::replies_to<events_atom, int64_t, int64_t>::with<std::vector<job_event>>,
    // Live events of a job (see broker_actor); subscribe before reading the
    // backlog, then drop events whose seq was already sent.
    caf::replies_to<subscribe_atom, int64_t, event_subscriber_actor>::with<bool>,
    caf::reacts_to<unsub_atom, int64_t, event_subscriber_actor>>;

} // namespace infergrid
