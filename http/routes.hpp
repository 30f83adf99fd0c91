// The Beast-free half of the HTTP layer: route matching, request parsing,
// JSON response shapes of API.md, and the one errc -> HTTP status mapping.
// Everything here is pure: it runs in the caller's thread and never blocks.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "actors/interfaces.hpp"
#include "messages/errors.hpp"

namespace infergrid::http {

/// A response before it meets Beast.
struct reply {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
  /// Extra headers (Location, Retry-After, Allow).
  std::vector<std::pair<std::string, std::string>> headers;
  /// For the log line of an error response; empty on success.
  std::string error_code;
  std::string error_message;
};

/// The HTTP status of an infergrid error code. The only such mapping.
unsigned status_of(errc code);

/// `{"error": {"code", "message", "retryable"}}` with status_of(code);
/// queue_full adds `Retry-After: 1`.
reply error_reply(errc code, const std::string& message);

/// error_reply for an error from an actor (code_of / message_of).
reply error_reply(const caf::error& err);

/// error_reply for the failure of a gateway request made with `timeout_ms`:
/// CAF's own request_timeout and receiver_down get messages a client can read.
reply gateway_error_reply(const caf::error& err, int64_t timeout_ms);

/// 405 with the error shape (code invalid_input) and an `Allow` header.
reply method_not_allowed(const std::string& method, const std::string& path,
                         const std::string& allow);

/// What a request target names.
enum class route_id {
  none,
  healthz,
  readyz,
  health_live,
  health_ready,
  metrics,
  jobs_submit,
  job_get,
  models_list,
  model_metadata,
  model_ready,
  model_infer,
};

struct route_match {
  route_id id = route_id::none;
  /// Route template for metrics ("/v1/jobs/{id}"); "unmatched" if none.
  std::string pattern = "unmatched";
  /// The path parameter ({id} or {m}), percent-decoded.
  std::string param;
  /// The path without query string.
  std::string path;
  /// Set when the path is known but the method is not allowed on it: the
  /// methods that are (for the `Allow` header); `id` stays none.
  std::string allow;
};

/// Matches `method` + `target` (query string ignored) against the routes.
route_match match_route(std::string_view method, std::string_view target);

/// Method label for metrics: standard methods as is, anything else "OTHER".
std::string method_label(std::string_view method);

/// True for 1-64 characters of [A-Za-z0-9_.-].
bool valid_request_id(std::string_view id);

/// A fresh request id "r_" + 16 hex digits; unique per process. Thread-safe.
std::string make_request_id();

/// Unix milliseconds as "2024-05-01T12:00:00.123Z".
std::string iso8601_utc(int64_t unix_ms);

/// Deepest nesting of arrays/objects in `text` (strings skipped). Callers
/// reject deep documents before parsing: recursive consumers of JSON would
/// otherwise overflow the stack.
std::size_t json_depth(std::string_view text);

/// Largest nesting accepted in a request body.
constexpr std::size_t max_json_depth = 64;

/// Parses and checks a POST /v1/jobs body. Fails with invalid_input and a
/// message naming the field ("priority: expected an integer").
caf::expected<new_job> parse_job_request(const std::string& body);

/// Checks a KServe v2 request body is a JSON object (the gateway checks the
/// rest) and returns its "id" field, or "" when it has none.
caf::expected<std::string> parse_infer_id(const std::string& body);

// -- response bodies ---------------------------------------------------------

reply health_reply();
reply live_reply();
reply ready_reply(const cluster_stats& stats);
reply job_created_reply(const job_record& job);
reply job_reply(const job_record& job);
reply infer_reply(const std::string& model, const std::string& id,
                  const std::vector<tensor_data>& outputs);
reply model_metadata_reply(const std::vector<model_info>& models,
                           const std::string& name);
reply model_ready_reply(const cluster_stats& stats, const std::string& name);
reply models_list_reply(const std::vector<model_info>& models,
                        const cluster_stats& stats);

/// The job as API.md shows it, as JSON text.
std::string job_json(const job_record& job);

} // namespace infergrid::http
