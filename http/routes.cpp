// Routes, request parsing and JSON shapes of the HTTP API (API.md).
// nlohmann-json stays in this file; the server sees strings and `reply`.
#include "http/routes.hpp"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <ctime>
#include <random>

#include <caf/sec.hpp>
#include <nlohmann/json.hpp>

#include "messages/kserve.hpp"

namespace infergrid::http {

namespace {

using json = nlohmann::ordered_json;

// Serializes without throwing on invalid UTF-8 (paths and messages may carry
// whatever bytes a client sent).
std::string dump(const json& x) {
  return x.dump(-1, ' ', false, json::error_handler_t::replace);
}

reply json_reply(unsigned status, const json& body) {
  reply r;
  r.status = status;
  r.body = dump(body);
  return r;
}

// Keeps client-provided text in messages short.
std::string clip(const std::string& x, std::size_t n = 64) {
  return x.size() <= n ? x : x.substr(0, n) + "...";
}

caf::error invalid(std::string message) {
  return make_error(errc::invalid_input, std::move(message));
}

std::string percent_decode(std::string_view x) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9')
      return c - '0';
    if (c >= 'a' && c <= 'f')
      return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
      return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (x[i] == '%' && i + 2 < x.size()) {
      int hi = hex(x[i + 1]);
      int lo = hex(x[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out += x[i];
  }
  return out;
}

json spec_json(const tensor_spec& spec) {
  return json{
      {"name", spec.name}, {"datatype", kserve_name(spec.type)}, {"shape", spec.shape}};
}

json specs_json(const std::vector<tensor_spec>& specs) {
  auto out = json::array();
  for (auto& spec : specs)
    out.push_back(spec_json(spec));
  return out;
}

json time_or_null(int64_t unix_ms) {
  if (unix_ms <= 0)
    return nullptr;
  return iso8601_utc(unix_ms);
}

// Reads an optional integer field into `out` within [lo, hi].
caf::error read_int(const json& body, const char* field, int64_t lo, int64_t hi,
                    const std::string& range_text, int64_t& out) {
  auto i = body.find(field);
  if (i == body.end() || i->is_null())
    return {};
  if (!i->is_number_integer())
    return invalid(std::string{field} + ": expected an integer");
  if (i->is_number_unsigned() && i->get<uint64_t>() > static_cast<uint64_t>(hi))
    return invalid(std::string{field} + ": " + range_text);
  auto v = i->get<int64_t>();
  if (v < lo || v > hi)
    return invalid(std::string{field} + ": " + range_text);
  out = v;
  return {};
}

} // namespace

unsigned status_of(errc code) {
  switch (code) {
    case errc::invalid_input:
      return 400;
    case errc::unauthorized:
      return 401;
    case errc::forbidden:
      return 403;
    case errc::not_found:
      return 404;
    case errc::conflict:
      return 409;
    case errc::payload_too_large:
      return 413;
    case errc::queue_full:
      return 429;
    case errc::unavailable:
      return 503;
    case errc::timeout:
      return 504;
    case errc::internal:
      return 500;
    case errc::oom:
      return 503;
    case errc::worker_lost:
      return 503;
    case errc::lease_lost:
      return 409;
    case errc::model_error:
      return 500;
    case errc::storage_error:
      return 503;
  }
  return 500;
}

reply error_reply(errc code, const std::string& message) {
  auto name = to_string(code);
  auto r = json_reply(
      status_of(code),
      json{{"error",
            {{"code", name}, {"message", message}, {"retryable", is_retryable(code)}}}});
  if (code == errc::queue_full)
    r.headers.emplace_back("Retry-After", "1");
  r.error_code = std::move(name);
  r.error_message = message;
  return r;
}

reply error_reply(const caf::error& err) {
  auto code = code_of(err);
  auto message = message_of(err);
  if (message.empty())
    message = to_string(code);
  return error_reply(code, message);
}

reply gateway_error_reply(const caf::error& err, int64_t timeout_ms) {
  if (err.category() == caf::atom("system")) {
    switch (static_cast<caf::sec>(err.code())) {
      case caf::sec::request_timeout:
        return error_reply(errc::timeout, "no answer from the gateway within "
                                              + std::to_string(timeout_ms) + " ms");
      case caf::sec::request_receiver_down:
        return error_reply(errc::unavailable, "the gateway is not running");
      default:
        break;
    }
  }
  return error_reply(err);
}

reply method_not_allowed(const std::string& method, const std::string& path,
                         const std::string& allow) {
  auto r = error_reply(errc::invalid_input,
                       "method " + clip(method) + " not allowed on " + clip(path, 256));
  r.status = 405;
  r.headers.emplace_back("Allow", allow);
  return r;
}

route_match match_route(std::string_view method, std::string_view target) {
  route_match m;
  auto q = target.find('?');
  auto path = target.substr(0, q);
  m.path = std::string{path};
  // Split into segments; "/a/b" -> {"a", "b"}.
  std::vector<std::string_view> seg;
  if (path.empty() || path.front() != '/')
    return m;
  std::size_t pos = 1;
  for (;;) {
    auto next = path.find('/', pos);
    seg.push_back(path.substr(pos, next == std::string_view::npos ? std::string_view::npos
                                                                  : next - pos));
    if (next == std::string_view::npos)
      break;
    pos = next + 1;
  }
  auto n = seg.size();
  auto is = [&](std::size_t i, std::string_view x) { return i < n && seg[i] == x; };
  route_id id = route_id::none;
  const char* pattern = nullptr;
  const char* allowed = "GET";
  std::string_view param;
  if (n == 1 && is(0, "healthz")) {
    id = route_id::healthz, pattern = "/healthz";
  } else if (n == 1 && is(0, "readyz")) {
    id = route_id::readyz, pattern = "/readyz";
  } else if (n == 1 && is(0, "metrics")) {
    id = route_id::metrics, pattern = "/metrics";
  } else if (n == 3 && is(0, "v2") && is(1, "health") && is(2, "live")) {
    id = route_id::health_live, pattern = "/v2/health/live";
  } else if (n == 3 && is(0, "v2") && is(1, "health") && is(2, "ready")) {
    id = route_id::health_ready, pattern = "/v2/health/ready";
  } else if (n == 2 && is(0, "v1") && is(1, "jobs")) {
    id = route_id::jobs_submit, pattern = "/v1/jobs", allowed = "POST";
  } else if (n == 3 && is(0, "v1") && is(1, "jobs") && !seg[2].empty()) {
    id = route_id::job_get, pattern = "/v1/jobs/{id}", param = seg[2];
  } else if (n == 2 && is(0, "v1") && is(1, "models")) {
    id = route_id::models_list, pattern = "/v1/models";
  } else if (n >= 3 && n <= 4 && is(0, "v2") && is(1, "models") && !seg[2].empty()) {
    param = seg[2];
    if (n == 3) {
      id = route_id::model_metadata, pattern = "/v2/models/{m}";
    } else if (is(3, "ready")) {
      id = route_id::model_ready, pattern = "/v2/models/{m}/ready";
    } else if (is(3, "infer")) {
      id = route_id::model_infer, pattern = "/v2/models/{m}/infer";
      allowed = "POST";
    }
  }
  if (id == route_id::none)
    return m;
  m.pattern = pattern;
  m.param = percent_decode(param);
  if (method == allowed)
    m.id = id;
  else
    m.allow = allowed;
  return m;
}

std::string method_label(std::string_view method) {
  static constexpr std::string_view known[]
      = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"};
  for (auto x : known)
    if (x == method)
      return std::string{x};
  return "OTHER";
}

bool valid_request_id(std::string_view id) {
  if (id.empty() || id.size() > 64)
    return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
           || c == '_' || c == '.' || c == '-';
  });
}

std::string make_request_id() {
  static const uint64_t seed = [] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }();
  static std::atomic<uint64_t> counter{0};
  // splitmix64 is a bijection: distinct counters give distinct ids.
  uint64_t z = seed + 0x9e3779b97f4a7c15ULL * ++counter;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "r_%016llx", static_cast<unsigned long long>(z));
  return buf;
}

std::string iso8601_utc(int64_t unix_ms) {
  auto secs = static_cast<std::time_t>(unix_ms / 1000);
  auto ms = static_cast<int>(unix_ms % 1000);
  if (ms < 0) {
    ms += 1000;
    --secs;
  }
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                tm.tm_sec, ms);
  return buf;
}

std::size_t json_depth(std::string_view text) {
  std::size_t depth = 0;
  std::size_t deepest = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '[':
      case '{':
        deepest = std::max(deepest, ++depth);
        break;
      case ']':
      case '}':
        if (depth > 0)
          --depth;
        break;
      default:
        break;
    }
  }
  return deepest;
}

caf::expected<new_job> parse_job_request(const std::string& body) {
  if (json_depth(body) > max_json_depth)
    return invalid("body: nested deeper than " + std::to_string(max_json_depth)
                   + " levels");
  auto doc = json::parse(body, nullptr, false);
  if (doc.is_discarded())
    return invalid("body: malformed JSON");
  if (!doc.is_object())
    return invalid("body: expected a JSON object");
  for (auto& [key, value] : doc.items()) {
    static constexpr std::string_view known[]
        = {"model", "input", "priority", "max_attempts", "timeout_ms"};
    if (std::find(std::begin(known), std::end(known), key) != std::end(known))
      continue;
    if (key == "idempotency_key" || key == "callback_url")
      return invalid(key + ": not supported yet");
    return invalid(clip(key) + ": unknown field");
  }
  new_job job;
  auto model = doc.find("model");
  if (model == doc.end())
    return invalid("model: missing");
  if (!model->is_string())
    return invalid("model: expected a string");
  job.model = model->get<std::string>();
  if (job.model.empty())
    return invalid("model: must not be empty");
  auto input = doc.find("input");
  if (input == doc.end())
    return invalid("input: missing");
  if (!input->is_object())
    return invalid("input: expected an object");
  job.input_json = dump(*input);
  int64_t priority = 0;
  if (auto err = read_int(doc, "priority", -1000, 1000, "must be between -1000 and 1000",
                          priority))
    return err;
  job.priority = static_cast<int32_t>(priority);
  // 0 lets the gateway apply queue.max_attempts.
  int64_t max_attempts = 0;
  if (auto err
      = read_int(doc, "max_attempts", 1, 100, "must be between 1 and 100", max_attempts))
    return err;
  job.max_attempts = static_cast<int32_t>(max_attempts);
  int64_t timeout_ms = 0;
  if (auto err
      = read_int(doc, "timeout_ms", 0, INT64_MAX,
                 "must be between 0 and " + std::to_string(INT64_MAX), timeout_ms))
    return err;
  job.timeout_ms = timeout_ms;
  return job;
}

caf::expected<std::string> parse_infer_id(const std::string& body) {
  if (json_depth(body) > max_json_depth)
    return invalid("body: nested deeper than " + std::to_string(max_json_depth)
                   + " levels");
  // Keep only the top-level "id": the tensors are the gateway's to decode,
  // so building them here would only cost memory.
  json::parser_callback_t keep_id
      = [](int depth, json::parse_event_t event, json& parsed) {
          if (depth == 1 && event == json::parse_event_t::key)
            return parsed == "id";
          return true;
        };
  auto doc = json::parse(body, keep_id, false);
  if (doc.is_discarded())
    return invalid("body: malformed JSON");
  if (!doc.is_object())
    return invalid("body: expected a JSON object");
  auto id = doc.find("id");
  if (id != doc.end() && id->is_string())
    return id->get<std::string>();
  return std::string{};
}

reply health_reply() {
  return json_reply(200, json{{"status", "ok"}});
}

reply live_reply() {
  return json_reply(200, json{{"live", true}});
}

reply ready_reply(const cluster_stats& stats) {
  if (stats.workers_ready > 0)
    return json_reply(200,
                      json{{"status", "ready"}, {"workers_ready", stats.workers_ready}});
  return error_reply(errc::unavailable, "no worker is ready (0 of "
                                            + std::to_string(stats.workers_total) + ")");
}

reply job_created_reply(const job_record& job) {
  auto id = job_id_string(job.id);
  auto r = json_reply(
      202, json{{"id", id},
                {"state", to_string(job.state)},
                {"position", job.position >= 0 ? json(job.position) : json()}});
  r.headers.emplace_back("Location", "/v1/jobs/" + id);
  return r;
}

std::string job_json(const job_record& job) {
  json out{{"id", job_id_string(job.id)},   {"model", job.model},
           {"state", to_string(job.state)}, {"priority", job.priority},
           {"attempts", job.attempts},      {"max_attempts", job.max_attempts}};
  out["position"]
      = job.state == job_state::queued && job.position >= 0 ? json(job.position) : json();
  out["progress"] = nullptr;
  out["created_at"] = time_or_null(job.created_at_ms);
  out["started_at"] = time_or_null(job.started_at_ms);
  out["finished_at"] = time_or_null(job.finished_at_ms);
  out["worker"] = job.worker.empty() ? json() : json(job.worker);
  if (job.output_json.empty()) {
    out["output"] = nullptr;
  } else {
    auto parsed = json::parse(job.output_json, nullptr, false);
    // Stored output is ours and always JSON; never lose it if it is not.
    out["output"] = parsed.is_discarded() ? json(job.output_json) : parsed;
  }
  if (job.has_error)
    out["error"] = json{{"code", job.error.code},
                        {"message", job.error.message},
                        {"retryable", job.error.retryable}};
  else
    out["error"] = nullptr;
  return dump(out);
}

reply job_reply(const job_record& job) {
  reply r;
  r.body = job_json(job);
  return r;
}

reply infer_reply(const std::string& model, const std::string& id,
                  const std::vector<tensor_data>& outputs) {
  reply r;
  r.body = encode_kserve_response(model, id, outputs);
  return r;
}

reply model_metadata_reply(const std::vector<model_info>& models,
                           const std::string& name) {
  auto i = std::find_if(models.begin(), models.end(),
                        [&](const model_info& m) { return m.name == name; });
  if (i == models.end())
    return error_reply(errc::not_found, "no model '" + clip(name) + "'");
  return json_reply(200, json{{"name", i->name},
                              {"versions", json::array({"1"})},
                              {"platform", "pytorch_torchscript"},
                              {"inputs", specs_json(i->inputs)},
                              {"outputs", specs_json(i->outputs)}});
}

reply model_ready_reply(const cluster_stats& stats, const std::string& name) {
  auto& ready = stats.ready_models;
  if (std::find(ready.begin(), ready.end(), name) != ready.end())
    return json_reply(200, json{{"name", name}, {"ready", true}});
  return error_reply(errc::unavailable,
                     "model '" + clip(name) + "' is not ready on any worker");
}

reply models_list_reply(const std::vector<model_info>& models,
                        const cluster_stats& stats) {
  auto& ready = stats.ready_models;
  auto list = json::array();
  for (auto& m : models) {
    bool is_ready = std::find(ready.begin(), ready.end(), m.name) != ready.end();
    list.push_back(json{{"name", m.name},
                        {"kind", to_string(m.kind)},
                        {"state", is_ready ? "ready" : "not_ready"},
                        {"inputs", specs_json(m.inputs)},
                        {"outputs", specs_json(m.outputs)}});
  }
  return json_reply(200, json{{"models", std::move(list)}});
}

} // namespace infergrid::http
