// The Beast-free half of the HTTP layer: route matching, request parsing,
// JSON response shapes of API.md, and the one errc -> HTTP status mapping.
// Everything here is pure: it runs in the caller's thread and never blocks.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "actors/interfaces.hpp"
#include "messages/errors.hpp"
#include "messages/openai.hpp"
#include "messages/speech_io.hpp"

namespace infergrid::http {

/// A response before it meets Beast.
struct reply {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
  /// Extra headers (Location, Retry-After, Allow). An empty content_type
  /// sends none (204).
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
  jobs_list,
  job_get,
  job_cancel,
  job_events,
  models_list,
  model_metadata,
  model_ready,
  model_infer,
  /// POST /v1/completions and /v1/chat/completions (OpenAI shapes).
  completions,
  chat_completions,
  /// POST /v1/audio/speech.
  audio_speech,
  /// GET /v1/jobs/{id}/artifacts/{name}.
  job_artifact,
  /// POST /v1/models/{m}/load | unload.
  model_load,
  model_unload,
  /// GET /admin/api/workers.
  admin_workers,
  /// POST /admin/api/workers/{id}/drain | resume.
  admin_worker_drain,
  admin_worker_resume,
  /// GET /admin/api/queue.
  admin_queue,
  /// GET /admin/api/sessions: the open sessions and their workers.
  admin_sessions,
  /// GET /v1/sessions: a WebSocket upgrade (API.md "Sessions").
  sessions,
};

/// True for the /admin/api routes (the admin role, once auth exists).
bool is_admin_route(route_id id);

struct route_match {
  route_id id = route_id::none;
  /// Route template for metrics ("/v1/jobs/{id}"); "unmatched" if none.
  /// One template may serve several methods ("/v1/jobs": GET and POST).
  std::string pattern = "unmatched";
  /// The path parameter ({id} or {m}), percent-decoded.
  std::string param;
  /// The second path parameter ({name} of an artifact), percent-decoded.
  std::string param2;
  /// The path without query string.
  std::string path;
  /// Set when the path is known but the method is not allowed on it: the
  /// methods that are ("GET, POST", for the `Allow` header); `id` stays none.
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

/// Parses exactly "YYYY-MM-DDTHH:MM:SSZ" or "YYYY-MM-DDTHH:MM:SS.fffZ" (1-9
/// fraction digits, truncated to ms), UTC only, years 1970-9999, calendar
/// checked (no Feb 30, no second 60). Returns false for anything else.
bool parse_iso8601_utc(std::string_view text, int64_t& unix_ms);

/// The wall clock as Unix milliseconds.
int64_t unix_now_ms();

/// The latest start a job may ask for: 30 days ahead (`delay_ms`, `run_at`).
constexpr int64_t max_delay_ms = int64_t{30} * 24 * 3600 * 1000;

/// Deepest nesting of arrays/objects in `text` (strings skipped). Callers
/// reject deep documents before parsing: recursive consumers of JSON would
/// otherwise overflow the stack.
std::size_t json_depth(std::string_view text);

/// Largest nesting accepted in a request body.
constexpr std::size_t max_json_depth = 64;

/// Parses and checks a POST /v1/jobs body. Fails with invalid_input and a
/// message naming the field ("priority: expected an integer"). `now_ms` is
/// the clock that `delay_ms` and the bound on `run_at` count from.
caf::expected<new_job> parse_job_request(const std::string& body, int64_t now_ms);

/// parse_job_request at unix_now_ms().
caf::expected<new_job> parse_job_request(const std::string& body);

/// The query of `target` as (name, value) pairs in order, both
/// percent-decoded ("+" is a space); "a" without "=" has an empty value,
/// empty pieces ("a=1&&b=2") are skipped.
std::vector<std::pair<std::string, std::string>> parse_query(std::string_view target);

/// The filter of GET /v1/jobs?state=queued,running&model=m&limit=50&after=j_9.
/// `state` is a comma-separated list of state names (repeatable); `limit`
/// 1..1000 (default 100); `after` a job id: the page starts below it. Any
/// other parameter, or one of model/limit/after given twice, is an error
/// naming the parameter.
caf::expected<job_filter> parse_job_filter(std::string_view target);

/// The sequence number an event stream resumes after: the Last-Event-ID
/// header when present and non-empty, else the `after` query parameter, else
/// 0. Both must be non-negative integers; other query parameters are errors.
caf::expected<int64_t> parse_events_after(std::string_view target,
                                          std::optional<std::string_view> last_event_id);

/// Events per events_atom answer at most (actors/interfaces.hpp): a full page
/// means there may be more.
constexpr std::size_t events_page_max = 1000;

/// One Server-Sent Events frame: "id: <seq>\nevent: <kind>\ndata: <json>\n\n"
/// (one data line per line of data_json; CR/LF removed from the kind).
std::string sse_frame(const job_event& ev);

/// The comment written when a stream has been quiet for a while.
constexpr std::string_view sse_keepalive = ": keep-alive\n\n";

/// True for a "status" event whose data names a final state ({"state":
/// "succeeded"|"failed"|"dead"|"cancelled"}): nothing follows it.
bool is_final_event(const job_event& ev);

/// Checks a KServe v2 request body is a JSON object (the gateway checks the
/// rest) and returns its "id" field, or "" when it has none.
caf::expected<std::string> parse_infer_id(const std::string& body);

// -- response bodies ---------------------------------------------------------

reply health_reply();
reply live_reply();
reply ready_reply(const cluster_stats& stats);
/// 202 for a new job, 200 (same body) when the idempotency key returned an
/// existing one (job.created false); Location names the job.
reply job_created_reply(const job_record& job);
reply job_reply(const job_record& job);
/// {"jobs": [job...], "next": "j_N" | null}
reply jobs_page_reply(const job_page& page);
reply infer_reply(const std::string& model, const std::string& id,
                  const std::vector<tensor_data>& outputs);
reply model_metadata_reply(const std::vector<model_info>& models,
                           const std::string& name);
/// 200 while at least one worker that is not draining or in error holds the
/// model READY or UNLOADED (loaded on demand); 503 otherwise.
reply model_ready_reply(const cluster_stats& stats, const std::string& name);
/// {"models": [{"name", "kind", "state", "device", "sample_rate" (speech
///  models only), "inputs", "outputs",
///  "workers": [{"worker", "device", "state", "error"?, "memory_mb",
///  "last_used"}]}]}; "state" is model_state().
reply models_list_reply(const std::vector<model_info>& models,
                        const cluster_stats& stats);

/// A model's state over all workers: READY if one holds it READY, else
/// LOADING, else UNLOADED (loads on demand), else FAILED; "unavailable" when
/// no worker serves it ("unknown" when workers list it only with states
/// other than these). Without per-worker states (stats.workers empty) the
/// model is READY when it is in stats.ready_models.
std::string model_state(const cluster_stats& stats, const std::string& name);

/// Whether a request for the model can run now or after an on-demand load:
/// see model_ready_reply. Without per-worker states (stats.workers empty),
/// whether it is in stats.ready_models.
bool model_servable(const cluster_stats& stats, const std::string& name);

/// POST /v1/models/{m}/load | unload: {"model", "workers": [{"worker",
/// "state", "error"?}]}, the model's state on each worker that serves it.
reply model_change_reply(const std::string& model,
                         const std::vector<worker_status>& workers);

// -- admin API -----------------------------------------------------------------

/// {"workers": [worker...]} sorted by id; a worker is worker_json().
reply workers_reply(const cluster_stats& stats);

/// One worker as worker_json(): the answer of drain and resume.
reply worker_reply(const worker_status& w);

/// A worker as the admin API shows it: {"id", "state" (its phase), "device",
/// "host" ("" inside the control process), "claim_path", "last_seen" (ISO
/// 8601 or null), "running_jobs", "memory_budget_mb" (0: no budget),
/// "models": [{"name", "state", "error"?, "memory_mb", "last_used"}]}.
std::string worker_json(const worker_status& w);

/// {"jobs_by_state": {state: n, ...} (the states of API.md first, in their
/// order), "interactive_waiting", "workers_total", "workers_ready",
/// "workers_busy"}.
reply queue_reply(const cluster_stats& stats);

/// GET /admin/api/sessions: {"sessions": [{"session_id", "worker", "state"}]
/// (by id), "waiting": N}.
reply sessions_reply(const cluster_stats& stats);

// -- OpenAI routes and speech --------------------------------------------------

/// decode_completion_request (chat false) or decode_chat_request (chat
/// true), after refusing bodies nested deeper than max_json_depth.
caf::expected<openai_request> parse_openai_request(const std::string& body, bool chat);

/// decode_speech_request after the same depth check.
caf::expected<speech_http_request> parse_speech_request(const std::string& body);

/// "cmpl-<request id>" or "chatcmpl-<request id>".
std::string completion_id(bool chat, const std::string& request_id);

/// The result of a finished generation as openai_result.
openai_result openai_result_of(const generate_reply& r);

/// 200 with encode_completion or encode_chat_completion; X-Worker names the
/// worker.
reply completion_reply(const openai_request& req, const std::string& request_id,
                       int64_t created_s, const generate_reply& r);

/// 200 audio/wav (a WAV file) or audio/pcm (raw PCM16 LE mono) with
/// X-Sample-Rate, X-Real-Time-Factor and X-Worker.
reply speech_response(const speech_http_request& req, const speech_reply& r);

/// The value of X-Real-Time-Factor: fixed, 4 decimals ("0.0123").
std::string real_time_factor_text(double rtf);

/// An artifact name a client may ask for: 1-255 bytes, no '/', '\\' or
/// control character, not "." or "..".
bool valid_artifact_name(std::string_view name);

/// "audio/wav" etc., or application/octet-stream when the store gave none.
std::string artifact_content_type(const artifact_ref& ref);

/// The job as API.md shows it, as JSON text.
std::string job_json(const job_record& job);

} // namespace infergrid::http
