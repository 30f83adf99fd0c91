// Public handles of infergrid's actors: typed interfaces, atoms and the records
// they exchange. http/ and tools/ include this; it pulls in CAF core only.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <caf/atom.hpp>
#include <caf/expected.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "messages/generate_io.hpp"
#include "messages/job.hpp"
#include "messages/model_info.hpp"
#include "messages/model_metrics.hpp"
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
using generate_atom = caf::atom_constant<caf::atom("generate")>;
using speech_atom = caf::atom_constant<caf::atom("speech")>;
using chunk_atom = caf::atom_constant<caf::atom("chunk")>;
using unload_atom = caf::atom_constant<caf::atom("unload")>;
using status_atom = caf::atom_constant<caf::atom("status")>;
using artifact_atom = caf::atom_constant<caf::atom("artifact")>;
using batch_atom = caf::atom_constant<caf::atom("batch")>;
using join_atom = caf::atom_constant<caf::atom("join")>;
using drain_atom = caf::atom_constant<caf::atom("drain")>;
using session_atom = caf::atom_constant<caf::atom("session")>;

/// Receives a streamed interactive result piece by piece, in order: the text
/// deltas of a generation, or the PCM16 little-endian bytes of speech. The
/// final reply of the request carries the whole result, so a consumer that
/// saw a prefix can complete it; pieces that arrive after the reply are
/// dropped by the consumer. When the sink goes down (the client went away),
/// the worker stops the request within one step.
using chunk_sink_actor = caf::typed_actor<caf::reacts_to<chunk_atom, std::string>>;

/// An interactive (not durable) inference request for a tensor model.
struct infer_request {
  std::string model;
  std::vector<tensor_data> inputs;
  std::string request_id;
  /// Unix ms when the queue accepted it (queue-time metrics); set by the queue.
  int64_t enqueued_ms = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, infer_request& x) {
  return f(caf::meta::type_name("infer_request"), x.model, x.inputs, x.request_id,
           x.enqueued_ms);
}

/// Interactive requests for one tensor model that run as one forward call
/// (dynamic batching). Every request was validated against the model.
struct infer_batch {
  std::string model;
  std::vector<infer_request> requests;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, infer_batch& x) {
  return f(caf::meta::type_name("infer_batch"), x.model, x.requests);
}

/// The outputs of an infer_batch: one tensor list per request, in order.
struct infer_batch_result {
  std::vector<std::vector<tensor_data>> outputs;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, infer_batch_result& x) {
  return f(caf::meta::type_name("infer_batch_result"), x.outputs);
}

/// What a thread outside the executor answers when it runs a batch itself:
/// the result, or std::nullopt when it could not and left the batch
/// untouched (it then goes to the executor actor).
using direct_batch_result = std::optional<caf::expected<infer_batch_result>>;

/// Runs a tensor batch on the calling thread when it can at once
/// (executor_lane::try_infer is one; the local link's reader calls it).
using direct_batch_fn = std::function<direct_batch_result(infer_batch&)>;

/// Whatever runs a worker's tensor batches: its executor. The queue sends
/// batches there directly, so a request does not pass through the worker
/// actor's thread on its way in and again on its way out.
using batch_runner_actor = caf::typed_actor<
    caf::replies_to<infer_atom, infer_batch>::with<infer_batch_result>>;

/// An interactive generation (OpenAI completions and chat routes).
struct generate_request {
  std::string model;
  generate_input params;
  std::string request_id;
  /// Receives each text delta as soon as it is made; null: no streaming.
  chunk_sink_actor sink;
  int64_t enqueued_ms = 0;
  /// False: the sink only watches the client (its exit cancels the run);
  /// no pieces are sent to it.
  bool stream = true;
  /// A turn of this session (WebSocket /v1/sessions): it runs on the
  /// session's worker, which keeps the model's state from the turns before.
  /// Empty: a request of its own.
  std::string session;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generate_request& x) {
  return f(caf::meta::type_name("generate_request"), x.model, x.params, x.request_id,
           x.sink, x.enqueued_ms, x.stream, x.session);
}

struct generate_reply {
  /// The whole generated text (every delta concatenated).
  std::string text;
  int64_t prompt_tokens = 0;
  int64_t tokens = 0;
  /// "length", "stop" or "cancelled".
  std::string finish_reason;
  std::string worker;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generate_reply& x) {
  return f(caf::meta::type_name("generate_reply"), x.text, x.prompt_tokens, x.tokens,
           x.finish_reason, x.worker);
}

/// An interactive synthesis (POST /v1/audio/speech).
struct speech_request {
  std::string model;
  std::string text;
  std::string voice;
  std::string request_id;
  /// Receives the PCM16 of each phrase as soon as it is ready; null: none.
  chunk_sink_actor sink;
  int64_t enqueued_ms = 0;
  /// False: the sink only watches the client; no audio is sent to it.
  bool stream = true;
  /// A turn of this session; empty: a request of its own.
  std::string session;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, speech_request& x) {
  return f(caf::meta::type_name("speech_request"), x.model, x.text, x.voice, x.request_id,
           x.sink, x.enqueued_ms, x.stream, x.session);
}

/// What the queue tells a session about itself while it waits for a worker
/// and once it ends without being asked to.
struct session_event {
  /// "queue.position" (waiting) or "session.end".
  std::string type;
  /// Waiting: 1 when next; the estimated wait in ms, -1 when unknown.
  int64_t position = 0;
  int64_t eta_ms = -1;
  /// session.end: pause_timeout, idle_timeout, worker_lost or timeout.
  std::string reason;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, session_event& x) {
  return f(caf::meta::type_name("session_event"), x.type, x.position, x.eta_ms, x.reason);
}

/// Receives a session's events (the session actor). When it goes down, the
/// queue ends the session (or drops it from the FIFO) and frees its worker.
using session_events_actor
    = caf::typed_actor<caf::reacts_to<session_atom, session_event>>;

/// Asks for a worker reserved for one interactive session. It waits in the
/// interactive FIFO like any request (capacity, deadline); the queue's
/// dispatch step grants it to an idle worker that serves the model and
/// marks that worker SESSION_ACTIVE in the same step.
struct session_open {
  std::string model;
  /// Set by the gateway ("s-" and 16 hex digits).
  std::string session_id;
  /// The session actor: events, and its exit ends the session.
  session_events_actor events;
  std::string request_id;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, session_open& x) {
  return f(caf::meta::type_name("session_open"), x.model, x.session_id, x.events,
           x.request_id);
}

struct session_grant {
  std::string session_id;
  std::string worker;
  /// How long it waited in the FIFO.
  int64_t waited_ms = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, session_grant& x) {
  return f(caf::meta::type_name("session_grant"), x.session_id, x.worker, x.waited_ms);
}

struct speech_reply {
  /// All audio: PCM 16-bit little-endian mono at sample_rate.
  std::string pcm16;
  int64_t sample_rate = 0;
  int32_t phrases = 0;
  /// Synthesis time over audio duration.
  double real_time_factor = 0;
  std::string worker;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, speech_reply& x) {
  return f(caf::meta::type_name("speech_reply"), x.pcm16, x.sample_rate, x.phrases,
           x.real_time_factor, x.worker);
}

/// A file a durable job produced (data/artifacts/{job}/{name}).
struct artifact_ref {
  std::string path;
  int64_t size = 0;
  /// e.g. "audio/wav".
  std::string content_type;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, artifact_ref& x) {
  return f(caf::meta::type_name("artifact_ref"), x.path, x.size, x.content_type);
}

/// What a worker tells the queue once its models are loaded and warm.
struct worker_registration {
  std::string worker_id;
  /// Models this worker loaded successfully and can run.
  std::vector<std::string> models;
  /// "model: cause" for each model that failed to load.
  std::vector<std::string> failed;
  /// The device it computes on: "cpu", "cuda:0", ...
  std::string device;
  /// The node it runs on; empty inside the control process.
  std::string host;
  /// "in-process", "direct" (opens the SQLite file) or "queue".
  std::string claim_path = "in-process";
  /// Runs the worker's tensor batches (its executor); null: the worker
  /// actor itself takes them.
  batch_runner_actor runner;
  /// The token of the worker's local link (join_reply::link_token), when it
  /// connected one: the queue then sends its batches over the link and over
  /// `runner` once the link is gone. Empty: over `runner`.
  std::string link_token;
};

inline bool operator==(const worker_registration& x, const worker_registration& y) {
  return x.worker_id == y.worker_id && x.models == y.models && x.failed == y.failed
         && x.device == y.device && x.host == y.host && x.claim_path == y.claim_path
         && x.runner == y.runner && x.link_token == y.link_token;
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_registration& x) {
  return f(caf::meta::type_name("worker_registration"), x.worker_id, x.models, x.failed,
           x.device, x.host, x.claim_path, x.runner, x.link_token);
}

/// A snapshot of the queue for /readyz, /metrics and the admin API.
struct cluster_stats {
  /// Job counts by state name; every state is present (0 when none).
  std::map<std::string, int64_t> jobs_by_state;
  int32_t workers_total = 0;
  int32_t workers_ready = 0;
  int32_t workers_busy = 0;
  int64_t interactive_waiting = 0;
  /// Interactive sessions holding a worker, and those waiting for one.
  int32_t sessions_active = 0;
  int64_t sessions_waiting = 0;
  /// Models served by at least one ready worker.
  std::vector<std::string> ready_models;
  /// Every registered worker: phase, model states, per-model metrics.
  std::vector<worker_status> workers;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, cluster_stats& x) {
  return f(caf::meta::type_name("cluster_stats"), x.jobs_by_state, x.workers_total,
           x.workers_ready, x.workers_busy, x.interactive_waiting, x.sessions_active,
           x.sessions_waiting, x.ready_models, x.workers);
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
    // Run interactive work; the worker is busy until it sends idle.
    caf::replies_to<infer_atom, infer_batch>::with<infer_batch_result>,
    caf::replies_to<generate_atom, generate_request>::with<generate_reply>,
    caf::replies_to<speech_atom, speech_request>::with<speech_reply>,
    // Self-timer: renew the leases of the durable jobs it holds.
    caf::reacts_to<renew_atom>,
    // A client cancelled this running job: stop it cooperatively.
    caf::reacts_to<cancel_atom, int64_t>,
    // From its executor: a data event (JSON object) of running job (id,
    // lease_seq), e.g. generated text {"delta"} or a speech phrase.
    caf::reacts_to<chunk_atom, int64_t, int64_t, std::string>,
    // From its executor: the model states (loaded, evicted, failed) and the
    // per-model metrics, when they changed.
    caf::reacts_to<status_atom, std::vector<model_status>, std::vector<model_metrics>>,
    // An operator loads or unloads a model (POST /v1/models/{m}/load|unload);
    // the answer is the worker's status afterwards.
    caf::replies_to<load_atom, std::string>::with<worker_status>,
    caf::replies_to<unload_atom, std::string>::with<worker_status>,
    // The queue drains (true) or resumes (false) this worker: it shows
    // DRAINING and gets no new work; what runs finishes.
    caf::reacts_to<drain_atom, bool>,
    // The queue reserved this worker for session (id) ("open"), or the
    // session paused, resumed or ended ("pause", "resume", "close"): the
    // worker moves to SESSION_ACTIVE, SESSION_PAUSED, SESSION_ACTIVE, IDLE.
    caf::reacts_to<session_atom, std::string, std::string>>;

/// The part of the queue a worker talks to.
using queue_feedback_actor
    = caf::typed_actor<caf::reacts_to<register_atom, worker_actor, worker_registration>,
                       // The worker finished the durable work it was given;
                       // `found_work` is false when a work message found nothing
                       // to claim. (Interactive work ends with its answer.)
                       caf::reacts_to<idle_atom, std::string, bool>,
                       // The worker's phase, model states or metrics changed.
                       caf::reacts_to<status_atom, worker_status>>;

/// The queue: the job table, worker membership, the one dispatch point.
using queue_actor = queue_feedback_actor::extend<
    caf::replies_to<submit_atom, new_job>::with<job_record>,
    caf::replies_to<job_get_atom, int64_t>::with<job_record>,
    // Interactive work: tensor requests are batched per model (the model's
    // max_batch_size and max_queue_delay_us), the others run one by one.
    caf::replies_to<infer_atom, infer_request>::with<std::vector<tensor_data>>,
    caf::replies_to<generate_atom, generate_request>::with<generate_reply>,
    caf::replies_to<speech_atom, speech_request>::with<speech_reply>,
    // Self-timer: the oldest waiting tensor request reached its batch delay.
    caf::reacts_to<batch_atom>, caf::replies_to<stats_atom>::with<cluster_stats>,
    caf::replies_to<list_atom, job_filter>::with<job_page>,
    // Loads/unloads a model on every worker that serves it.
    caf::replies_to<load_atom, std::string>::with<std::vector<worker_status>>,
    caf::replies_to<unload_atom, std::string>::with<std::vector<worker_status>>,
    // (job id, artifact name) -> the file; not_found when either is unknown.
    caf::replies_to<artifact_atom, int64_t, std::string>::with<artifact_ref>,
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
    // The batch forms of the same: complete_batch, renew_batch, and a data
    // event (id, lease_seq, JSON) -> false when the lease was lost.
    caf::replies_to<complete_atom, std::vector<job_completion>>::with<std::vector<bool>>,
    caf::replies_to<renew_atom, std::vector<held_lease>,
                    int64_t>::with<std::vector<lease_status>>,
    caf::replies_to<chunk_atom, int64_t, int64_t, std::string>::with<bool>,
    // A file of running job (id, lease_seq): (name, bytes) -> false when the
    // lease was lost (nothing written).
    caf::replies_to<artifact_atom, int64_t, int64_t, std::string,
                    std::string>::with<bool>,
    // Drain (true) or resume (false) a worker by id: not_found when unknown.
    caf::replies_to<drain_atom, std::string, bool>::with<worker_status>,
    // From the door: true when no live worker has this id (a second node
    // with the same id is refused before it loads its models).
    caf::replies_to<join_atom, std::string>::with<bool>, caf::reacts_to<qtick_atom>,
    // Sessions: a worker for one (queued, see session_open); then (id,
    // "pause" | "resume" | "stop") -> the worker's phase afterwards
    // (SESSION_PAUSED, SESSION_ACTIVE, IDLE). A session's turns are
    // generate_request / speech_request with `session` set: they run on its
    // worker at once (conflict while paused or while a turn runs).
    caf::replies_to<session_atom, session_open>::with<session_grant>,
    caf::replies_to<session_atom, std::string, std::string>::with<std::string>,
    // Self-timer: session (id) may have passed its pause or idle timeout
    // (valid while its activity count is still the int64_t).
    caf::reacts_to<session_atom, std::string, int64_t>>;

/// The gateway: admission and validation in front of the queue. What http/
/// talks to. Errors are infergrid::errc values with a message.
using gateway_actor = caf::typed_actor<
    // Validates (model known, input matches the model) and enqueues.
    caf::replies_to<submit_atom, new_job>::with<job_record>,
    caf::replies_to<job_get_atom, int64_t>::with<job_record>,
    // (model, KServe v2 request body, request id) -> output tensors.
    caf::replies_to<infer_atom, std::string, std::string,
                    std::string>::with<std::vector<tensor_data>>,
    // (model, decoded parameters, request id, sink) -> the whole text; the
    // deltas reach `sink` while it is made (OpenAI completions and chat).
    caf::replies_to<generate_atom, generate_request>::with<generate_reply>,
    // POST /v1/audio/speech: text -> PCM16; phrases reach the sink, if any.
    caf::replies_to<speech_atom, speech_request>::with<speech_reply>,
    // POST /v1/models/{m}/load | unload: not_found for an unknown model.
    caf::replies_to<load_atom, std::string>::with<std::vector<worker_status>>,
    caf::replies_to<unload_atom, std::string>::with<std::vector<worker_status>>,
    // GET /v1/jobs/{id}/artifacts/{name}.
    caf::replies_to<artifact_atom, int64_t, std::string>::with<artifact_ref>,
    // POST /admin/api/workers/{id}/drain (true) | resume (false): the
    // worker's status afterwards; not_found for an unknown worker.
    caf::replies_to<drain_atom, std::string, bool>::with<worker_status>,
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
    caf::reacts_to<unsub_atom, int64_t, event_subscriber_actor>,
    // Sessions (see queue_actor): the gateway checks the model and names
    // the session.
    caf::replies_to<session_atom, session_open>::with<session_grant>,
    caf::replies_to<session_atom, std::string, std::string>::with<std::string>>;

} // namespace infergrid

namespace infergrid {

/// What a worker node presents when it joins the control node.
struct join_request {
  /// The cluster secret (cluster.secret); compared in constant time.
  std::string secret;
  std::string worker_id;
  /// The node's host name, for the log and the workers table.
  std::string host;
  /// The SQLite file the worker will open itself to claim jobs (a worker on
  /// the control node's host); empty: it claims through the queue actor.
  std::string db_path;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, join_request& x) {
  return f(caf::meta::type_name("join_request"), x.secret, x.worker_id, x.host,
           x.db_path);
}

/// What a worker gets when the control node accepts it.
struct join_reply {
  queue_actor queue;
  broker_actor broker;
  /// The control node's lease length (queue.lease_ms).
  int64_t lease_ms = 30000;
  /// The control node's local link (actors/local_link.hpp): an abstract Unix
  /// socket name and a one-time token for it. Empty when it offers none
  /// (cluster.local_link: false).
  std::string link_address;
  std::string link_token;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, join_reply& x) {
  return f(caf::meta::type_name("join_reply"), x.queue, x.broker, x.lease_ms,
           x.link_address, x.link_token);
}

/// The one actor a control node publishes on cluster.port. Everything else
/// is reachable only through a join with the right secret; a wrong secret
/// is refused (errc::unauthorized) and logged. A db_path that is not the
/// control node's own file is refused (errc::invalid_input).
using door_actor
    = caf::typed_actor<caf::replies_to<join_atom, join_request>::with<join_reply>>;

} // namespace infergrid
