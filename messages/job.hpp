// Durable jobs as plain records: what the store returns and actors pass on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/meta/type_name.hpp>

namespace infergrid {

/// Life cycle of a durable job (API.md).
enum class job_state : uint8_t {
  queued = 1,
  running,
  succeeded,
  failed,
  dead,
  cancelled,
};

std::string to_string(job_state s);
bool job_state_from_string(const std::string& name, job_state& out);

/// True for succeeded, failed, dead and cancelled.
bool is_final(job_state s);

/// The error a job ended with, as API.md shows it.
struct job_error {
  std::string code;
  std::string message;
  bool retryable = false;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, job_error& x) {
  return f(caf::meta::type_name("job_error"), x.code, x.message, x.retryable);
}

/// What a client asks to run.
struct new_job {
  std::string model;
  /// The job input as JSON text (the model kind's input shape).
  std::string input_json;
  int32_t priority = 0;
  int32_t max_attempts = 3;
  /// 0: no per-job timeout.
  int64_t timeout_ms = 0;
  /// Empty: none. The same key with the same model and input returns the
  /// existing job; with another model or input it is a conflict.
  std::string idempotency_key;
  /// Earliest start (Unix ms); 0: now. Delayed jobs wait in state queued.
  int64_t run_at_ms = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, new_job& x) {
  return f(caf::meta::type_name("new_job"), x.model, x.input_json, x.priority,
           x.max_attempts, x.timeout_ms, x.idempotency_key, x.run_at_ms);
}

/// One row of the job table. Times are Unix milliseconds; 0 means "not yet".
struct job_record {
  int64_t id = 0;
  std::string model;
  job_state state = job_state::queued;
  int32_t priority = 0;
  int32_t attempts = 0;
  int32_t max_attempts = 3;
  int64_t timeout_ms = 0;
  std::string input_json;
  /// Empty while there is no output.
  std::string output_json;
  bool has_error = false;
  job_error error;
  /// Id of the worker that holds or last held the job; empty if none.
  std::string worker;
  /// Fencing token: incremented by every claim.
  int64_t lease_seq = 0;
  int64_t lease_until_ms = 0;
  int64_t created_at_ms = 0;
  int64_t started_at_ms = 0;
  int64_t finished_at_ms = 0;
  /// Jobs ahead of this one for its model while queued; -1 otherwise.
  int64_t position = -1;
  /// Estimated ms until it finishes, from recent throughput; -1 unknown.
  int64_t eta_ms = -1;
  /// Set by a cancel of a running job; the worker stops cooperatively.
  bool cancel_requested = false;
  std::string idempotency_key;
  int64_t run_at_ms = 0;
  /// Latest progress in [0, 1] reported by the worker; -1 none.
  double progress = -1;
  /// False when enqueue returned an existing job (idempotency key).
  bool created = true;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, job_record& x) {
  return f(caf::meta::type_name("job_record"), x.id, x.model, x.state, x.priority,
           x.attempts, x.max_attempts, x.timeout_ms, x.input_json, x.output_json,
           x.has_error, x.error, x.worker, x.lease_seq, x.lease_until_ms, x.created_at_ms,
           x.started_at_ms, x.finished_at_ms, x.position, x.eta_ms, x.cancel_requested,
           x.idempotency_key, x.run_at_ms, x.progress, x.created);
}

/// One row of job_events: written in the same transaction as the change it
/// describes; `seq` grows across all jobs and is the SSE event id.
struct job_event {
  int64_t seq = 0;
  int64_t job_id = 0;
  /// "status" (state change), "progress" or "data" (a streamed piece).
  std::string kind;
  /// JSON object: for status {"state", "attempt", "error"?}; for progress
  /// {"progress"}; for data whatever the model streams (e.g. {"delta"}).
  std::string data_json;
  int64_t time_ms = 0;
  /// The seq of the job's previous event (0: none), known to the writer
  /// and to events_after(). Events of one job reach the broker from more
  /// than one writer (the queue, a worker); a live subscriber that has sent
  /// up to seq S and receives an event with prev_seq > S knows it missed one
  /// and reads the gap from the table instead of skipping it.
  int64_t prev_seq = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, job_event& x) {
  return f(caf::meta::type_name("job_event"), x.seq, x.job_id, x.kind, x.data_json,
           x.time_ms, x.prev_seq);
}

/// One row of the workers table: what `sqlite3 data/infergrid.db` shows about
/// each worker the control node has seen.
struct worker_row {
  std::string id;
  /// LOADING, IDLE, BUSY, ERROR, DRAINING or DOWN.
  std::string state;
  /// Models it serves, comma-separated.
  std::string models;
  /// Durable job it runs now; 0 when none.
  int64_t current_job = 0;
  int64_t started_at_ms = 0;
  int64_t last_heartbeat_ms = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_row& x) {
  return f(caf::meta::type_name("worker_row"), x.id, x.state, x.models, x.current_job,
           x.started_at_ms, x.last_heartbeat_ms);
}

/// Which jobs GET /v1/jobs lists: newest first, a page at a time.
struct job_filter {
  /// Empty: every state.
  std::vector<job_state> states;
  /// Empty: every model.
  std::string model;
  /// Cursor: only jobs with id < before_id; 0 starts at the newest.
  int64_t before_id = 0;
  /// Page size, 1..1000.
  int32_t limit = 100;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, job_filter& x) {
  return f(caf::meta::type_name("job_filter"), x.states, x.model, x.before_id, x.limit);
}

struct job_page {
  std::vector<job_record> jobs;
  /// Cursor of the next page (pass as before_id); 0 when this is the last.
  int64_t next_before_id = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, job_page& x) {
  return f(caf::meta::type_name("job_page"), x.jobs, x.next_before_id);
}

/// What renewing a lease found.
struct lease_status {
  /// False when the lease was lost (another claim owns the job now).
  bool held = false;
  /// True when a client asked to cancel the running job.
  bool cancel_requested = false;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, lease_status& x) {
  return f(caf::meta::type_name("lease_status"), x.held, x.cancel_requested);
}

/// The output of a running job and the token of its claim (complete_batch).
struct job_completion {
  int64_t id = 0;
  int64_t lease_seq = 0;
  std::string output_json;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, job_completion& x) {
  return f(caf::meta::type_name("job_completion"), x.id, x.lease_seq, x.output_json);
}

/// A lease as its claim returned it (renew_batch).
struct held_lease {
  int64_t id = 0;
  int64_t lease_seq = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, held_lease& x) {
  return f(caf::meta::type_name("held_lease"), x.id, x.lease_seq);
}

/// External id of a job: "j_" followed by the row id.
std::string job_id_string(int64_t id);

/// Parses "j_<digits>"; returns false for anything else.
bool parse_job_id(const std::string& text, int64_t& out);

} // namespace infergrid
