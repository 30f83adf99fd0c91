// The project's one error enum, its names, and the bridge to caf::error.
// HTTP status codes for these live in http/ (one mapping, one place).
#pragma once

#include <cstdint>
#include <string>

#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/make_message.hpp>

namespace infergrid {

/// Error codes of infergrid. 0 means "no error" in CAF and is never used.
enum class errc : uint8_t {
  /// The request is malformed or does not match the model; never retried.
  invalid_input = 1,
  /// Auth is on and the key is missing or wrong.
  unauthorized,
  /// The key's role may not do this.
  forbidden,
  /// Unknown job, model, session or route.
  not_found,
  /// The request contradicts stored state (e.g. cancel of a finished job).
  conflict,
  /// Request body over `http.max_body_bytes`.
  payload_too_large,
  /// Admission refused because a bounded queue is full; retry later.
  queue_full,
  /// No worker can serve this right now (draining, not loaded, none ready).
  unavailable,
  /// A deadline passed.
  timeout,
  /// A bug; logged with the request id.
  internal,
  /// The device ran out of memory; retryable.
  oom,
  /// The worker running the job went away; retryable.
  worker_lost,
  /// A fencing token was stale: another claim owns the job now.
  lease_lost,
  /// The model itself failed while running (LibTorch raised).
  model_error,
  /// A storage operation failed (SQLite error other than busy).
  storage_error,
};

/// Returns the wire name of `x`, e.g. "queue_full".
std::string to_string(errc x);

/// Parses a wire name; returns false for unknown names.
bool from_string(const std::string& name, errc& out);

/// Whether a job failing with `x` may be attempted again.
bool is_retryable(errc x);

/// The category atom of infergrid errors inside caf::error.
constexpr caf::atom_value error_category = caf::atom("infergrid");

/// ADL hook that lets `caf::error e = errc::x;` work.
inline caf::error make_error(errc x) {
  return caf::error{static_cast<uint8_t>(x), error_category};
}

/// An error with a human-readable message as its context.
inline caf::error make_error(errc x, std::string message) {
  return caf::error{static_cast<uint8_t>(x), error_category,
                    caf::make_message(std::move(message))};
}

/// Maps any caf::error to an errc: ours directly, CAF's request timeout to
/// `timeout`, a dead receiver to `unavailable`, anything else to `internal`.
errc code_of(const caf::error& err);

/// The message carried by an error made with make_error(x, message), or a
/// rendering of CAF's own errors.
std::string message_of(const caf::error& err);

} // namespace infergrid
