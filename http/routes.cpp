// Routes, request parsing and JSON shapes of the HTTP API (API.md).
// nlohmann-json stays in this file; the server sees strings and `reply`.
#include "http/routes.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <ctime>
#include <random>

#include <caf/sec.hpp>
#include <nlohmann/json.hpp>

#include "messages/audio.hpp"
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

// "%41" -> "A"; a '%' without two hex digits stays as is. In a query
// (`plus_is_space`), '+' is a space as in HTML forms.
std::string percent_decode(std::string_view x, bool plus_is_space = false) {
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
    if (plus_is_space && x[i] == '+') {
      out += ' ';
      continue;
    }
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

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
// days_from_civil).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

unsigned days_in_month(int64_t y, unsigned m) {
  static constexpr unsigned days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : days[m - 1];
}

// A non-negative decimal integer of at most 18 digits (no sign, no spaces).
bool parse_count(std::string_view x, int64_t& out) {
  if (x.empty() || x.size() > 18)
    return false;
  int64_t v = 0;
  for (char c : x) {
    if (c < '0' || c > '9')
      return false;
    v = v * 10 + (c - '0');
  }
  out = v;
  return true;
}

// Number of UTF-8 code points (continuation bytes not counted).
std::size_t utf8_length(const std::string& x) {
  return static_cast<std::size_t>(std::count_if(x.begin(), x.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  }));
}

json job_object(const job_record& job) {
  json out{{"id", job_id_string(job.id)},   {"model", job.model},
           {"state", to_string(job.state)}, {"priority", job.priority},
           {"attempts", job.attempts},      {"max_attempts", job.max_attempts}};
  out["position"]
      = job.state == job_state::queued && job.position >= 0 ? json(job.position) : json();
  // NaN compares false: null.
  out["progress"] = job.progress >= 0 ? json(job.progress) : json();
  out["eta_ms"] = job.eta_ms >= 0 ? json(job.eta_ms) : json();
  out["cancel_requested"] = job.cancel_requested;
  out["created_at"] = time_or_null(job.created_at_ms);
  out["run_at"] = time_or_null(job.run_at_ms);
  out["started_at"] = time_or_null(job.started_at_ms);
  out["finished_at"] = time_or_null(job.finished_at_ms);
  out["worker"] = job.worker.empty() ? json() : json(job.worker);
  out["idempotency_key"]
      = job.idempotency_key.empty() ? json() : json(job.idempotency_key);
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
  return out;
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
  // The methods a path serves, each with its route.
  struct method_route {
    std::string_view method;
    route_id id;
  };
  std::vector<method_route> methods;
  const char* pattern = nullptr;
  std::string_view param;
  std::string_view param2;
  auto get = [&](route_id id, const char* p) {
    methods = {{"GET", id}};
    pattern = p;
  };
  auto post = [&](route_id id, const char* p) {
    methods = {{"POST", id}};
    pattern = p;
  };
  bool job_path = n >= 3 && is(0, "v1") && is(1, "jobs") && !seg[2].empty();
  if (n == 1 && is(0, "healthz")) {
    get(route_id::healthz, "/healthz");
  } else if (n == 1 && is(0, "readyz")) {
    get(route_id::readyz, "/readyz");
  } else if (n == 1 && is(0, "metrics")) {
    get(route_id::metrics, "/metrics");
  } else if (n == 3 && is(0, "v2") && is(1, "health") && is(2, "live")) {
    get(route_id::health_live, "/v2/health/live");
  } else if (n == 3 && is(0, "v2") && is(1, "health") && is(2, "ready")) {
    get(route_id::health_ready, "/v2/health/ready");
  } else if (n == 2 && is(0, "v1") && is(1, "jobs")) {
    methods = {{"GET", route_id::jobs_list}, {"POST", route_id::jobs_submit}};
    pattern = "/v1/jobs";
  } else if (job_path && n == 3) {
    get(route_id::job_get, "/v1/jobs/{id}");
    param = seg[2];
  } else if (job_path && n == 4 && is(3, "cancel")) {
    post(route_id::job_cancel, "/v1/jobs/{id}/cancel");
    param = seg[2];
  } else if (job_path && n == 4 && is(3, "events")) {
    get(route_id::job_events, "/v1/jobs/{id}/events");
    param = seg[2];
  } else if (job_path && n == 5 && is(3, "artifacts") && !seg[4].empty()) {
    get(route_id::job_artifact, "/v1/jobs/{id}/artifacts/{name}");
    param = seg[2];
    param2 = seg[4];
  } else if (n == 2 && is(0, "v1") && is(1, "models")) {
    get(route_id::models_list, "/v1/models");
  } else if (n == 4 && is(0, "v1") && is(1, "models") && !seg[2].empty()
             && is(3, "load")) {
    post(route_id::model_load, "/v1/models/{m}/load");
    param = seg[2];
  } else if (n == 4 && is(0, "v1") && is(1, "models") && !seg[2].empty()
             && is(3, "unload")) {
    post(route_id::model_unload, "/v1/models/{m}/unload");
    param = seg[2];
  } else if (n == 2 && is(0, "v1") && is(1, "sessions")) {
    get(route_id::sessions, "/v1/sessions");
  } else if (n == 2 && is(0, "v1") && is(1, "completions")) {
    post(route_id::completions, "/v1/completions");
  } else if (n == 3 && is(0, "v1") && is(1, "chat") && is(2, "completions")) {
    post(route_id::chat_completions, "/v1/chat/completions");
  } else if (n == 3 && is(0, "v1") && is(1, "audio") && is(2, "speech")) {
    post(route_id::audio_speech, "/v1/audio/speech");
  } else if (n >= 3 && is(0, "admin") && is(1, "api")) {
    if (n == 3 && is(2, "workers")) {
      get(route_id::admin_workers, "/admin/api/workers");
    } else if (n == 3 && is(2, "sessions")) {
      get(route_id::admin_sessions, "/admin/api/sessions");
    } else if (n == 3 && is(2, "queue")) {
      get(route_id::admin_queue, "/admin/api/queue");
    } else if (n == 5 && is(2, "workers") && !seg[3].empty()) {
      param = seg[3];
      if (is(4, "drain"))
        post(route_id::admin_worker_drain, "/admin/api/workers/{id}/drain");
      else if (is(4, "resume"))
        post(route_id::admin_worker_resume, "/admin/api/workers/{id}/resume");
    }
  } else if (n >= 3 && n <= 4 && is(0, "v2") && is(1, "models") && !seg[2].empty()) {
    param = seg[2];
    if (n == 3)
      get(route_id::model_metadata, "/v2/models/{m}");
    else if (is(3, "ready"))
      get(route_id::model_ready, "/v2/models/{m}/ready");
    else if (is(3, "infer"))
      post(route_id::model_infer, "/v2/models/{m}/infer");
  }
  if (methods.empty())
    return m;
  m.pattern = pattern;
  m.param = percent_decode(param);
  m.param2 = percent_decode(param2);
  for (auto& x : methods) {
    if (x.method == method) {
      m.id = x.id;
      return m;
    }
  }
  for (auto& x : methods) {
    if (!m.allow.empty())
      m.allow += ", ";
    m.allow += x.method;
  }
  return m;
}

bool is_admin_route(route_id id) {
  switch (id) {
    case route_id::admin_workers:
    case route_id::admin_worker_drain:
    case route_id::admin_worker_resume:
    case route_id::admin_queue:
    case route_id::admin_sessions:
      return true;
    default:
      return false;
  }
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

bool parse_iso8601_utc(std::string_view x, int64_t& unix_ms) {
  // YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z
  if (x.size() < 20 || x.size() > 30)
    return false;
  auto digits = [&](std::size_t pos, std::size_t len, int64_t& out) {
    return parse_count(x.substr(pos, len), out);
  };
  int64_t year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  if (!digits(0, 4, year) || x[4] != '-' || !digits(5, 2, month) || x[7] != '-'
      || !digits(8, 2, day) || x[10] != 'T' || !digits(11, 2, hour) || x[13] != ':'
      || !digits(14, 2, minute) || x[16] != ':' || !digits(17, 2, second))
    return false;
  int64_t ms = 0;
  std::size_t pos = 19;
  if (x[pos] == '.') {
    std::size_t begin = ++pos;
    while (pos < x.size() && x[pos] >= '0' && x[pos] <= '9') {
      if (pos - begin < 3)
        ms = ms * 10 + (x[pos] - '0');
      ++pos;
    }
    auto n = pos - begin;
    if (n == 0 || n > 9)
      return false;
    for (; n < 3; ++n)
      ms *= 10;
  }
  if (pos + 1 != x.size() || x[pos] != 'Z')
    return false;
  if (year < 1970 || month < 1 || month > 12 || day < 1
      || day > days_in_month(year, static_cast<unsigned>(month)) || hour > 23
      || minute > 59 || second > 59)
    return false;
  auto days
      = days_from_civil(year, static_cast<unsigned>(month), static_cast<unsigned>(day));
  unix_ms = ((days * 24 + hour) * 60 + minute) * 60'000 + second * 1000 + ms;
  return true;
}

int64_t unix_now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
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
  return parse_job_request(body, unix_now_ms());
}

caf::expected<new_job> parse_job_request(const std::string& body, int64_t now_ms) {
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
        = {"model",      "input",           "priority", "max_attempts",
           "timeout_ms", "idempotency_key", "delay_ms", "run_at"};
    if (std::find(std::begin(known), std::end(known), key) != std::end(known))
      continue;
    if (key == "callback_url")
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
  if (auto key = doc.find("idempotency_key"); key != doc.end() && !key->is_null()) {
    if (!key->is_string())
      return invalid("idempotency_key: expected a string");
    job.idempotency_key = key->get<std::string>();
    auto n = utf8_length(job.idempotency_key);
    if (n < 1 || n > 256)
      return invalid("idempotency_key: must be 1 to 256 characters");
    for (unsigned char c : job.idempotency_key)
      if (c < 0x20 || c == 0x7f)
        return invalid("idempotency_key: must not contain control characters");
  }
  auto run_at = doc.find("run_at");
  bool has_run_at = run_at != doc.end() && !run_at->is_null();
  auto delay = doc.find("delay_ms");
  if (has_run_at && delay != doc.end() && !delay->is_null())
    return invalid("run_at: not allowed together with delay_ms");
  int64_t delay_ms = 0;
  if (auto err
      = read_int(doc, "delay_ms", 0, max_delay_ms,
                 "must be between 0 and " + std::to_string(max_delay_ms) + " (30 days)",
                 delay_ms))
    return err;
  if (delay_ms > 0)
    job.run_at_ms = now_ms + delay_ms;
  if (has_run_at) {
    static constexpr const char* shape
        = "run_at: expected a UTC time like 2026-11-22T10:00:00Z or "
          "2026-11-22T10:00:00.000Z";
    if (!run_at->is_string())
      return invalid(shape);
    int64_t ms = 0;
    if (!parse_iso8601_utc(run_at->get<std::string>(), ms))
      return invalid(shape);
    if (ms > now_ms + max_delay_ms)
      return invalid("run_at: must be at most 30 days from now");
    // A time in the past runs now; 0 (the epoch itself) also means now.
    job.run_at_ms = ms;
  }
  return job;
}

std::vector<std::pair<std::string, std::string>> parse_query(std::string_view target) {
  std::vector<std::pair<std::string, std::string>> out;
  auto q = target.find('?');
  if (q == std::string_view::npos)
    return out;
  auto query = target.substr(q + 1);
  // A fragment never reaches a server, but do not treat it as a value.
  query = query.substr(0, query.find('#'));
  while (!query.empty()) {
    auto amp = query.find('&');
    auto piece = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (piece.empty())
      continue;
    auto eq = piece.find('=');
    if (eq == std::string_view::npos)
      out.emplace_back(percent_decode(piece, true), std::string{});
    else
      out.emplace_back(percent_decode(piece.substr(0, eq), true),
                       percent_decode(piece.substr(eq + 1), true));
  }
  return out;
}

namespace {

// "a: unknown query parameter" / "a, b: unknown query parameters".
caf::error unknown_params(const std::vector<std::string>& names) {
  std::string text;
  for (auto& name : names) {
    if (!text.empty())
      text += ", ";
    text += clip(name);
  }
  return invalid(
      text
      + (names.size() == 1 ? ": unknown query parameter" : ": unknown query parameters"));
}

} // namespace

caf::expected<job_filter> parse_job_filter(std::string_view target) {
  job_filter filter;
  std::vector<std::string> unknown;
  bool seen_model = false;
  bool seen_limit = false;
  bool seen_after = false;
  auto once = [](bool& seen, const std::string& name) -> caf::error {
    if (seen)
      return invalid(name + ": given more than once");
    seen = true;
    return {};
  };
  for (auto& [name, value] : parse_query(target)) {
    if (name == "state") {
      std::string_view rest = value;
      while (!rest.empty()) {
        auto comma = rest.find(',');
        auto item = std::string{rest.substr(0, comma)};
        rest = comma == std::string_view::npos ? std::string_view{}
                                               : rest.substr(comma + 1);
        if (item.empty())
          continue;
        job_state st;
        if (!job_state_from_string(item, st))
          return invalid("state: unknown state '" + clip(item)
                         + "' (expected queued, running, succeeded, failed, dead or "
                           "cancelled)");
        if (std::find(filter.states.begin(), filter.states.end(), st)
            == filter.states.end())
          filter.states.push_back(st);
      }
    } else if (name == "model") {
      if (auto err = once(seen_model, name))
        return err;
      filter.model = value;
    } else if (name == "limit") {
      if (auto err = once(seen_limit, name))
        return err;
      int64_t limit = 0;
      if (!parse_count(value, limit) || limit < 1 || limit > 1000)
        return invalid("limit: must be an integer between 1 and 1000");
      filter.limit = static_cast<int32_t>(limit);
    } else if (name == "after") {
      if (auto err = once(seen_after, name))
        return err;
      int64_t id = 0;
      if (!parse_job_id(value, id))
        return invalid("after: expected a job id like j_123");
      filter.before_id = id;
    } else if (std::find(unknown.begin(), unknown.end(), name) == unknown.end()) {
      unknown.push_back(name);
    }
  }
  if (!unknown.empty())
    return unknown_params(unknown);
  return filter;
}

caf::expected<int64_t> parse_events_after(std::string_view target,
                                          std::optional<std::string_view> last_event_id) {
  std::optional<int64_t> from_query;
  std::vector<std::string> unknown;
  for (auto& [name, value] : parse_query(target)) {
    if (name == "after") {
      if (from_query)
        return invalid("after: given more than once");
      int64_t n = 0;
      if (!parse_count(value, n))
        return invalid("after: expected an event sequence number (an integer >= 0)");
      from_query = n;
    } else if (std::find(unknown.begin(), unknown.end(), name) == unknown.end()) {
      unknown.push_back(name);
    }
  }
  if (!unknown.empty())
    return unknown_params(unknown);
  // EventSource sends the id of the last event it saw when it reconnects;
  // that is newer than the `after` of the URL it reconnects to.
  if (last_event_id && !last_event_id->empty()) {
    int64_t n = 0;
    if (!parse_count(*last_event_id, n))
      return invalid(
          "Last-Event-ID: expected an event sequence number (an integer >= 0)");
    return n;
  }
  return from_query.value_or(0);
}

std::string sse_frame(const job_event& ev) {
  std::string out;
  out.reserve(ev.data_json.size() + ev.kind.size() + 48);
  out += "id: ";
  out += std::to_string(ev.seq);
  out += '\n';
  std::string kind;
  for (char c : ev.kind)
    if (c != '\n' && c != '\r')
      kind += c;
  if (!kind.empty()) {
    out += "event: ";
    out += kind;
    out += '\n';
  }
  // Every line of the data gets its own field; the client joins them with
  // "\n" again. Compact JSON has a single line.
  std::string_view rest = ev.data_json;
  for (;;) {
    auto nl = rest.find_first_of("\r\n");
    out += "data: ";
    out += rest.substr(0, nl);
    out += '\n';
    if (nl == std::string_view::npos)
      break;
    if (rest[nl] == '\r' && nl + 1 < rest.size() && rest[nl + 1] == '\n')
      ++nl;
    rest = rest.substr(nl + 1);
  }
  out += '\n';
  return out;
}

bool is_final_event(const job_event& ev) {
  if (ev.kind != "status" || json_depth(ev.data_json) > max_json_depth)
    return false;
  auto doc = json::parse(ev.data_json, nullptr, false);
  if (doc.is_discarded() || !doc.is_object())
    return false;
  auto state = doc.find("state");
  if (state == doc.end() || !state->is_string())
    return false;
  job_state st;
  return job_state_from_string(state->get<std::string>(), st) && is_final(st);
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
  auto r
      = json_reply(job.created ? 202 : 200,
                   json{{"id", id},
                        {"state", to_string(job.state)},
                        {"position", job.position >= 0 ? json(job.position) : json()}});
  r.headers.emplace_back("Location", "/v1/jobs/" + id);
  return r;
}

std::string job_json(const job_record& job) {
  return dump(job_object(job));
}

reply jobs_page_reply(const job_page& page) {
  auto jobs = json::array();
  for (auto& job : page.jobs)
    jobs.push_back(job_object(job));
  json next = page.next_before_id > 0 ? json(job_id_string(page.next_before_id)) : json();
  return json_reply(200, json{{"jobs", std::move(jobs)}, {"next", std::move(next)}});
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

namespace {

// The model's entry in a worker's status, or null.
const model_status* find_model(const worker_status& w, const std::string& name) {
  for (auto& m : w.models)
    if (m.name == name)
      return &m;
  return nullptr;
}

// A worker that takes no new work: its models do not count as servable.
bool out_of_service(const worker_status& w) {
  return w.phase == "DRAINING" || w.phase == "ERROR";
}

bool in_ready_models(const cluster_stats& stats, const std::string& name) {
  auto& ready = stats.ready_models;
  return std::find(ready.begin(), ready.end(), name) != ready.end();
}

} // namespace

std::string model_state(const cluster_stats& stats, const std::string& name) {
  if (stats.workers.empty())
    return in_ready_models(stats, name) ? "READY" : "unavailable";
  // Best first: what a client can expect of a request for the model.
  static constexpr const char* order[] = {"READY", "LOADING", "UNLOADED", "FAILED"};
  std::size_t best = std::size(order);
  bool listed = false;
  for (auto& w : stats.workers) {
    auto m = find_model(w, name);
    if (m == nullptr)
      continue;
    listed = true;
    for (std::size_t i = 0; i < best; ++i)
      if (m->state == order[i])
        best = i;
  }
  if (best < std::size(order))
    return order[best];
  // Listed only with states we do not know: say so rather than guess.
  return listed ? "unknown" : "unavailable";
}

bool model_servable(const cluster_stats& stats, const std::string& name) {
  // Per-worker states, when there are any, decide: ready_models also lists
  // the models of draining workers.
  if (stats.workers.empty())
    return in_ready_models(stats, name);
  for (auto& w : stats.workers) {
    if (out_of_service(w))
      continue;
    if (auto m = find_model(w, name);
        m && (m->state == "READY" || m->state == "UNLOADED"))
      return true;
  }
  return false;
}

reply model_ready_reply(const cluster_stats& stats, const std::string& name) {
  if (model_servable(stats, name))
    return json_reply(200, json{{"name", name}, {"ready", true}});
  return error_reply(errc::unavailable,
                     "model '" + clip(name) + "' is not ready on any worker");
}

namespace {

json model_on_worker(const worker_status& w, const model_status& m) {
  json out{{"worker", w.worker_id}, {"state", m.state}};
  if (!m.error.empty())
    out["error"] = m.error;
  return out;
}

} // namespace

reply models_list_reply(const std::vector<model_info>& models,
                        const cluster_stats& stats) {
  auto list = json::array();
  for (auto& m : models) {
    auto workers = json::array();
    for (auto& w : stats.workers) {
      auto st = find_model(w, m.name);
      if (st == nullptr)
        continue;
      auto entry = model_on_worker(w, *st);
      entry["device"] = w.device;
      entry["memory_mb"] = st->memory_mb;
      entry["last_used"] = time_or_null(st->last_used_ms);
      // The worker's own phase: IDLE, BUSY, SESSION_ACTIVE, DRAINING, ...
      entry["worker_state"] = w.phase;
      workers.push_back(std::move(entry));
    }
    json entry{{"name", m.name},
               {"kind", to_string(m.kind)},
               {"state", model_state(stats, m.name)},
               {"device", m.device}};
    if (m.kind == model_kind::speech)
      entry["sample_rate"] = m.sample_rate;
    entry["inputs"] = specs_json(m.inputs);
    entry["outputs"] = specs_json(m.outputs);
    entry["workers"] = std::move(workers);
    list.push_back(std::move(entry));
  }
  return json_reply(200, json{{"models", std::move(list)}});
}

reply model_change_reply(const std::string& model,
                         const std::vector<worker_status>& workers) {
  auto list = json::array();
  for (auto& w : workers)
    if (auto st = find_model(w, model))
      list.push_back(model_on_worker(w, *st));
  return json_reply(200, json{{"model", model}, {"workers", std::move(list)}});
}

namespace {

json worker_object(const worker_status& w) {
  auto models = json::array();
  for (auto& m : w.models) {
    json entry{{"name", m.name}, {"state", m.state}};
    if (!m.error.empty())
      entry["error"] = m.error;
    entry["memory_mb"] = m.memory_mb;
    entry["last_used"] = time_or_null(m.last_used_ms);
    models.push_back(std::move(entry));
  }
  return json{{"id", w.worker_id},
              {"state", w.phase},
              {"device", w.device},
              {"host", w.host},
              {"claim_path", w.claim_path},
              {"last_seen", time_or_null(w.last_seen_ms)},
              {"running_jobs", w.running_jobs},
              {"session", w.session.empty() ? json(nullptr) : json(w.session)},
              {"memory_budget_mb", w.memory_budget_mb},
              {"models", std::move(models)}};
}

} // namespace

std::string worker_json(const worker_status& w) {
  return dump(worker_object(w));
}

reply workers_reply(const cluster_stats& stats) {
  std::vector<const worker_status*> sorted;
  sorted.reserve(stats.workers.size());
  for (auto& w : stats.workers)
    sorted.push_back(&w);
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](auto* x, auto* y) { return x->worker_id < y->worker_id; });
  auto list = json::array();
  for (auto* w : sorted)
    list.push_back(worker_object(*w));
  return json_reply(200, json{{"workers", std::move(list)}});
}

reply worker_reply(const worker_status& w) {
  return json_reply(200, worker_object(w));
}

reply sessions_reply(const cluster_stats& stats) {
  auto list = json::array();
  for (auto& w : stats.workers)
    if (!w.session.empty())
      list.push_back(
          json{{"session_id", w.session}, {"worker", w.worker_id}, {"state", w.phase}});
  std::sort(list.begin(), list.end(), [](const json& x, const json& y) {
    return x["session_id"].get<std::string>() < y["session_id"].get<std::string>();
  });
  return json_reply(
      200, json{{"sessions", std::move(list)}, {"waiting", stats.sessions_waiting}});
}

reply queue_reply(const cluster_stats& stats) {
  // The states of API.md in their order (every one, 0 when absent), then
  // any other name the queue reports.
  static constexpr job_state states[]
      = {job_state::queued, job_state::running, job_state::succeeded,
         job_state::failed, job_state::dead,    job_state::cancelled};
  auto by_state = json::object();
  for (auto st : states) {
    auto name = to_string(st);
    auto i = stats.jobs_by_state.find(name);
    by_state[name] = i == stats.jobs_by_state.end() ? int64_t{0} : i->second;
  }
  for (auto& [name, n] : stats.jobs_by_state)
    if (!by_state.contains(name))
      by_state[name] = n;
  return json_reply(200, json{{"jobs_by_state", std::move(by_state)},
                              {"interactive_waiting", stats.interactive_waiting},
                              {"sessions_active", stats.sessions_active},
                              {"sessions_waiting", stats.sessions_waiting},
                              {"workers_total", stats.workers_total},
                              {"workers_ready", stats.workers_ready},
                              {"workers_busy", stats.workers_busy}});
}

caf::expected<openai_request> parse_openai_request(const std::string& body, bool chat) {
  if (json_depth(body) > max_json_depth)
    return invalid("body: nested deeper than " + std::to_string(max_json_depth)
                   + " levels");
  return chat ? decode_chat_request(body) : decode_completion_request(body);
}

caf::expected<speech_http_request> parse_speech_request(const std::string& body) {
  if (json_depth(body) > max_json_depth)
    return invalid("body: nested deeper than " + std::to_string(max_json_depth)
                   + " levels");
  return decode_speech_request(body);
}

std::string completion_id(bool chat, const std::string& request_id) {
  return (chat ? "chatcmpl-" : "cmpl-") + request_id;
}

openai_result openai_result_of(const generate_reply& r) {
  openai_result out;
  out.text = r.text;
  out.prompt_tokens = r.prompt_tokens;
  out.completion_tokens = r.tokens;
  out.finish_reason = r.finish_reason;
  return out;
}

reply completion_reply(const openai_request& req, const std::string& request_id,
                       int64_t created_s, const generate_reply& r) {
  reply out;
  auto id = completion_id(req.chat, request_id);
  auto result = openai_result_of(r);
  out.body = req.chat ? encode_chat_completion(id, req.model, created_s, result)
                      : encode_completion(id, req.model, created_s, result);
  if (!r.worker.empty())
    out.headers.emplace_back("X-Worker", r.worker);
  return out;
}

std::string real_time_factor_text(double rtf) {
  if (!(rtf >= 0) || std::isinf(rtf))
    rtf = 0;
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.4f", rtf);
  return buf;
}

reply speech_response(const speech_http_request& req, const speech_reply& r) {
  reply out;
  if (req.response_format == "pcm") {
    out.content_type = "audio/pcm";
    out.body = r.pcm16;
  } else {
    out.content_type = "audio/wav";
    out.body = encode_wav(r.pcm16, r.sample_rate);
  }
  out.headers.emplace_back("X-Sample-Rate", std::to_string(r.sample_rate));
  out.headers.emplace_back("X-Real-Time-Factor",
                           real_time_factor_text(r.real_time_factor));
  out.headers.emplace_back("X-Worker", r.worker);
  return out;
}

bool valid_artifact_name(std::string_view name) {
  if (name.empty() || name.size() > 255 || name == "." || name == "..")
    return false;
  return std::none_of(name.begin(), name.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return c == '/' || c == '\\' || u < 0x20 || u == 0x7f;
  });
}

std::string artifact_content_type(const artifact_ref& ref) {
  return ref.content_type.empty() ? "application/octet-stream" : ref.content_type;
}

} // namespace infergrid::http
