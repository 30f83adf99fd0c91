// Durable jobs as plain records: what the store returns and actors pass on.
#pragma once

#include <cstdint>
#include <string>

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
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, new_job& x) {
  return f(caf::meta::type_name("new_job"), x.model, x.input_json, x.priority,
           x.max_attempts, x.timeout_ms);
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
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, job_record& x) {
  return f(caf::meta::type_name("job_record"), x.id, x.model, x.state,
           x.priority, x.attempts, x.max_attempts, x.timeout_ms, x.input_json,
           x.output_json, x.has_error, x.error, x.worker, x.lease_seq,
           x.lease_until_ms, x.created_at_ms, x.started_at_ms,
           x.finished_at_ms, x.position);
}

/// External id of a job: "j_" followed by the row id.
std::string job_id_string(int64_t id);

/// Parses "j_<digits>"; returns false for anything else.
bool parse_job_id(const std::string& text, int64_t& out);

} // namespace infergrid
