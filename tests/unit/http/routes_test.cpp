#define CAF_SUITE routes
#include "tests/unit/test_support.hpp"

#include "http/routes.hpp"

#include <caf/test/unit_test.hpp>

#include <set>

#include <caf/sec.hpp>

using namespace infergrid;
using namespace infergrid::http;

CAF_TEST(every error code maps to its status) {
  CAF_CHECK_EQUAL(status_of(errc::invalid_input), 400u);
  CAF_CHECK_EQUAL(status_of(errc::unauthorized), 401u);
  CAF_CHECK_EQUAL(status_of(errc::forbidden), 403u);
  CAF_CHECK_EQUAL(status_of(errc::not_found), 404u);
  CAF_CHECK_EQUAL(status_of(errc::conflict), 409u);
  CAF_CHECK_EQUAL(status_of(errc::payload_too_large), 413u);
  CAF_CHECK_EQUAL(status_of(errc::queue_full), 429u);
  CAF_CHECK_EQUAL(status_of(errc::unavailable), 503u);
  CAF_CHECK_EQUAL(status_of(errc::timeout), 504u);
  CAF_CHECK_EQUAL(status_of(errc::internal), 500u);
  CAF_CHECK_EQUAL(status_of(errc::oom), 503u);
  CAF_CHECK_EQUAL(status_of(errc::worker_lost), 503u);
  CAF_CHECK_EQUAL(status_of(errc::lease_lost), 409u);
  CAF_CHECK_EQUAL(status_of(errc::model_error), 500u);
  CAF_CHECK_EQUAL(status_of(errc::storage_error), 503u);
}

CAF_TEST(error replies have the API shape) {
  auto r = error_reply(errc::queue_full, "queue holds 3 of 3 jobs");
  CAF_CHECK_EQUAL(r.status, 429u);
  CAF_CHECK_EQUAL(
      r.body,
      R"({"error":{"code":"queue_full","message":"queue holds 3 of 3 jobs","retryable":true}})");
  CAF_REQUIRE_EQUAL(r.headers.size(), 1u);
  CAF_CHECK_EQUAL(r.headers[0].first, "Retry-After");
  CAF_CHECK_EQUAL(r.headers[0].second, "1");
  auto e = error_reply(make_error(errc::not_found, "no model 'x'"));
  CAF_CHECK_EQUAL(e.status, 404u);
  CAF_CHECK_EQUAL(
      e.body,
      R"({"error":{"code":"not_found","message":"no model 'x'","retryable":false}})");
  auto t = gateway_error_reply(caf::make_error(caf::sec::request_timeout), 1250);
  CAF_CHECK_EQUAL(t.status, 504u);
  CAF_CHECK_EQUAL(
      t.body,
      R"({"error":{"code":"timeout","message":"no answer from the gateway within 1250 ms","retryable":true}})");
  auto m = method_not_allowed("PUT", "/healthz", "GET");
  CAF_CHECK_EQUAL(m.status, 405u);
  CAF_CHECK_EQUAL(
      m.body,
      R"({"error":{"code":"invalid_input","message":"method PUT not allowed on /healthz","retryable":false}})");
}

CAF_TEST(routes match templates and report wrong methods) {
  auto m = match_route("GET", "/v1/jobs/j_12?x=1");
  CAF_CHECK(m.id == route_id::job_get);
  CAF_CHECK_EQUAL(m.pattern, "/v1/jobs/{id}");
  CAF_CHECK_EQUAL(m.param, "j_12");
  m = match_route("POST", "/v2/models/clas%73ifier/infer");
  CAF_CHECK(m.id == route_id::model_infer);
  CAF_CHECK_EQUAL(m.param, "classifier");
  m = match_route("GET", "/v1/jobs?state=queued");
  CAF_CHECK(m.id == route_id::jobs_list);
  CAF_CHECK_EQUAL(m.pattern, "/v1/jobs");
  m = match_route("POST", "/v1/jobs");
  CAF_CHECK(m.id == route_id::jobs_submit);
  CAF_CHECK_EQUAL(m.pattern, "/v1/jobs");
  m = match_route("DELETE", "/v1/jobs");
  CAF_CHECK(m.id == route_id::none);
  CAF_CHECK_EQUAL(m.allow, "GET, POST");
  CAF_CHECK_EQUAL(m.pattern, "/v1/jobs");
  m = match_route("POST", "/v1/jobs/j_5/cancel");
  CAF_CHECK(m.id == route_id::job_cancel);
  CAF_CHECK_EQUAL(m.pattern, "/v1/jobs/{id}/cancel");
  CAF_CHECK_EQUAL(m.param, "j_5");
  m = match_route("GET", "/v1/jobs/j_5/cancel");
  CAF_CHECK(m.id == route_id::none);
  CAF_CHECK_EQUAL(m.allow, "POST");
  m = match_route("GET", "/v1/jobs/j_5/events?after=3");
  CAF_CHECK(m.id == route_id::job_events);
  CAF_CHECK_EQUAL(m.pattern, "/v1/jobs/{id}/events");
  CAF_CHECK_EQUAL(m.param, "j_5");
  m = match_route("POST", "/v1/jobs/j_5/events");
  CAF_CHECK(m.id == route_id::none);
  CAF_CHECK_EQUAL(m.allow, "GET");
  m = match_route("GET", "/v1/jobs/j_5/other");
  CAF_CHECK(m.id == route_id::none);
  CAF_CHECK_EQUAL(m.pattern, "unmatched");
  CAF_CHECK(match_route("GET", "/v1/jobs//events").id == route_id::none);
  CAF_CHECK(match_route("GET", "/v1/jobs/j_5/events/").id == route_id::none);
  m = match_route("GET", "/v2/models//ready");
  CAF_CHECK(m.id == route_id::none);
  CAF_CHECK_EQUAL(m.pattern, "unmatched");
  CAF_CHECK(m.allow.empty());
  CAF_CHECK(match_route("GET", "/healthz/").id == route_id::none);
  CAF_CHECK(match_route("GET", "/v2/health/ready").id == route_id::health_ready);
  CAF_CHECK(match_route("GET", "/v2/models/m/ready").id == route_id::model_ready);
  CAF_CHECK(match_route("GET", "/v2/models/m").id == route_id::model_metadata);
  CAF_CHECK(match_route("GET", "/v1/models").id == route_id::models_list);
  CAF_CHECK(match_route("GET", "/metrics").id == route_id::metrics);
}

CAF_TEST(job requests are checked field by field) {
  auto ok = parse_job_request(
      R"({"model":"m","input":{"b":1,"a":2},"priority":-5,"max_attempts":7,"timeout_ms":100})");
  CAF_REQUIRE(ok);
  CAF_CHECK_EQUAL(ok->model, "m");
  CAF_CHECK_EQUAL(ok->input_json, R"({"b":1,"a":2})");
  CAF_CHECK_EQUAL(ok->priority, -5);
  CAF_CHECK_EQUAL(ok->max_attempts, 7);
  CAF_CHECK_EQUAL(ok->timeout_ms, 100);
  auto defaults = parse_job_request(R"({"model":"m","input":{}})");
  CAF_REQUIRE(defaults);
  CAF_CHECK_EQUAL(defaults->max_attempts, 0); // the gateway's default applies
  CAF_CHECK_EQUAL(defaults->priority, 0);
  auto fails = [](const std::string& body, const std::string& message) {
    auto r = parse_job_request(body);
    if (r)
      return false;
    return code_of(r.error()) == errc::invalid_input && message_of(r.error()) == message;
  };
  CAF_CHECK(fails("{", "body: malformed JSON"));
  CAF_CHECK(fails("[]", "body: expected a JSON object"));
  CAF_CHECK(fails(R"({"input":{}})", "model: missing"));
  CAF_CHECK(fails(R"({"model":1,"input":{}})", "model: expected a string"));
  CAF_CHECK(fails(R"({"model":"m"})", "input: missing"));
  CAF_CHECK(fails(R"({"model":"m","input":1})", "input: expected an object"));
  CAF_CHECK(fails(R"({"model":"m","input":{},"priority":"high"})",
                  "priority: expected an integer"));
  CAF_CHECK(fails(R"({"model":"m","input":{},"priority":1001})",
                  "priority: must be between -1000 and 1000"));
  CAF_CHECK(fails(R"({"model":"m","input":{},"max_attempts":101})",
                  "max_attempts: must be between 1 and 100"));
  CAF_CHECK(fails(R"({"model":"m","input":{},"extra":1})", "extra: unknown field"));
  CAF_CHECK(fails(R"({"model":"m","input":{},"callback_url":"http://x"})",
                  "callback_url: not supported yet"));
  CAF_CHECK(fails(std::string(100, '[') + std::string(100, ']'),
                  "body: nested deeper than 64 levels"));
}

CAF_TEST(infer ids come from the body) {
  auto id = parse_infer_id(R"({"id":"abc","inputs":[{"data":[[1,2],[3,4]]}]})");
  CAF_REQUIRE(id);
  CAF_CHECK_EQUAL(*id, "abc");
  auto none = parse_infer_id(R"({"inputs":[]})");
  CAF_REQUIRE(none);
  CAF_CHECK_EQUAL(*none, "");
  CAF_CHECK(!parse_infer_id("[1,"));
}

CAF_TEST(request ids and times) {
  CAF_CHECK(valid_request_id("abc-1_2.3"));
  CAF_CHECK(!valid_request_id(""));
  CAF_CHECK(!valid_request_id("a b"));
  CAF_CHECK(!valid_request_id(std::string(65, 'a')));
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) {
    auto id = make_request_id();
    CAF_CHECK_EQUAL(id.size(), 18u);
    CAF_CHECK(valid_request_id(id));
    ids.insert(id);
  }
  CAF_CHECK_EQUAL(ids.size(), 1000u);
  CAF_CHECK_EQUAL(iso8601_utc(1714564800123), "2024-05-01T12:00:00.123Z");
  CAF_CHECK_EQUAL(json_depth(R"({"a":"[[[[","b":[1,[2]]})"), 3u);
}

CAF_TEST(job json has every field of API.md) {
  job_record job;
  job.id = 7;
  job.model = "m";
  job.state = job_state::failed;
  job.attempts = 2;
  job.created_at_ms = 1714564800123;
  job.has_error = true;
  job.error = {"oom", "out of memory", true};
  CAF_CHECK_EQUAL(
      job_json(job),
      R"({"id":"j_7","model":"m","state":"failed","priority":0,"attempts":2,"max_attempts":3,)"
      R"("position":null,"progress":null,"eta_ms":null,"cancel_requested":false,)"
      R"("created_at":"2024-05-01T12:00:00.123Z","run_at":null,"started_at":null,)"
      R"("finished_at":null,"worker":null,"idempotency_key":null,"output":null,)"
      R"("error":{"code":"oom","message":"out of memory","retryable":true}})");
}

CAF_TEST(job json shows progress eta cancel run_at and key) {
  job_record job;
  job.id = 8;
  job.model = "m";
  job.state = job_state::running;
  job.progress = 0.25;
  job.eta_ms = 1500;
  job.cancel_requested = true;
  job.run_at_ms = 1714564800123;
  job.idempotency_key = "order-42";
  job.worker = "w1";
  CAF_CHECK_EQUAL(
      job_json(job),
      R"({"id":"j_8","model":"m","state":"running","priority":0,"attempts":0,"max_attempts":3,)"
      R"("position":null,"progress":0.25,"eta_ms":1500,"cancel_requested":true,)"
      R"("created_at":null,"run_at":"2024-05-01T12:00:00.123Z","started_at":null,)"
      R"("finished_at":null,"worker":"w1","idempotency_key":"order-42","output":null,)"
      R"("error":null})");
  job.progress = 0;
  job.eta_ms = 0;
  auto text = job_json(job);
  CAF_CHECK(text.find(R"("progress":0.0,"eta_ms":0,)") != std::string::npos);
  job.progress = -1;
  job.eta_ms = -1;
  text = job_json(job);
  CAF_CHECK(text.find(R"("progress":null,"eta_ms":null,)") != std::string::npos);
}

CAF_TEST(created and existing jobs answer 202 and 200) {
  job_record job;
  job.id = 9;
  job.position = 2;
  auto r = job_created_reply(job);
  CAF_CHECK_EQUAL(r.status, 202u);
  CAF_CHECK_EQUAL(r.body, R"({"id":"j_9","state":"queued","position":2})");
  CAF_REQUIRE_EQUAL(r.headers.size(), 1u);
  CAF_CHECK_EQUAL(r.headers[0].first, "Location");
  CAF_CHECK_EQUAL(r.headers[0].second, "/v1/jobs/j_9");
  job.created = false;
  auto again = job_created_reply(job);
  CAF_CHECK_EQUAL(again.status, 200u);
  CAF_CHECK_EQUAL(again.body, r.body);
  CAF_CHECK_EQUAL(again.headers.size(), 1u);
}

CAF_TEST(job pages list jobs and the next cursor) {
  job_page page;
  CAF_CHECK_EQUAL(jobs_page_reply(page).body, R"({"jobs":[],"next":null})");
  job_record a;
  a.id = 12;
  a.model = "m";
  page.jobs.push_back(a);
  page.next_before_id = 12;
  auto r = jobs_page_reply(page);
  CAF_CHECK_EQUAL(r.status, 200u);
  CAF_CHECK(r.body.rfind(R"({"jobs":[{"id":"j_12","model":"m",)", 0) == 0);
  std::string tail = R"(}],"next":"j_12"})";
  CAF_CHECK(r.body.size() > tail.size()
            && r.body.compare(r.body.size() - tail.size(), tail.size(), tail) == 0);
}

namespace {

bool fails_with(const caf::error& err, const std::string& message) {
  return code_of(err) == errc::invalid_input && message_of(err) == message;
}

} // namespace

CAF_TEST(idempotency keys are checked) {
  auto ok = parse_job_request(R"({"model":"m","input":{},"idempotency_key":"k-1"})");
  CAF_REQUIRE(ok);
  CAF_CHECK_EQUAL(ok->idempotency_key, "k-1");
  auto none = parse_job_request(R"({"model":"m","input":{},"idempotency_key":null})");
  CAF_REQUIRE(none);
  CAF_CHECK_EQUAL(none->idempotency_key, "");
  // 256 characters, counted as code points: 256 two-byte characters pass.
  std::string wide;
  for (int i = 0; i < 256; ++i)
    wide += "\u00e9";
  auto long_ok = parse_job_request(R"({"model":"m","input":{},"idempotency_key":")" + wide
                                   + R"("})");
  CAF_REQUIRE(long_ok);
  CAF_CHECK_EQUAL(long_ok->idempotency_key.size(), 512u);
  auto check = [](const std::string& key_json, const std::string& message) {
    auto r = parse_job_request(R"({"model":"m","input":{},"idempotency_key":)" + key_json
                               + "}");
    return !r && fails_with(r.error(), message);
  };
  CAF_CHECK(check(R"("")", "idempotency_key: must be 1 to 256 characters"));
  CAF_CHECK(check("\"" + std::string(257, 'k') + "\"",
                  "idempotency_key: must be 1 to 256 characters"));
  CAF_CHECK(check("12", "idempotency_key: expected a string"));
  CAF_CHECK(check(R"("a\nb")", "idempotency_key: must not contain control characters"));
}

CAF_TEST(delayed jobs take delay_ms or run_at) {
  const int64_t now = 1714564800000; // 2024-05-01T12:00:00Z
  auto parse = [&](const std::string& extra) {
    return parse_job_request(R"({"model":"m","input":{})" + extra + "}", now);
  };
  auto plain = parse("");
  CAF_REQUIRE(plain);
  CAF_CHECK_EQUAL(plain->run_at_ms, 0);
  auto zero = parse(R"(,"delay_ms":0)");
  CAF_REQUIRE(zero);
  CAF_CHECK_EQUAL(zero->run_at_ms, 0);
  auto later = parse(R"(,"delay_ms":60000)");
  CAF_REQUIRE(later);
  CAF_CHECK_EQUAL(later->run_at_ms, now + 60000);
  auto max = parse(R"(,"delay_ms":2592000000)");
  CAF_REQUIRE(max);
  CAF_CHECK_EQUAL(max->run_at_ms, now + max_delay_ms);
  auto at = parse(R"(,"run_at":"2024-05-02T10:00:00Z")");
  CAF_REQUIRE(at);
  CAF_CHECK_EQUAL(at->run_at_ms, 1714644000000);
  auto at_ms = parse(R"(,"run_at":"2024-05-02T10:00:00.250Z")");
  CAF_REQUIRE(at_ms);
  CAF_CHECK_EQUAL(at_ms->run_at_ms, 1714644000250);
  auto past = parse(R"(,"run_at":"2020-01-01T00:00:00Z")");
  CAF_REQUIRE(past);
  CAF_CHECK_EQUAL(past->run_at_ms, 1577836800000);
  auto fails = [&](const std::string& extra, const std::string& message) {
    auto r = parse(extra);
    return !r && fails_with(r.error(), message);
  };
  CAF_CHECK(
      fails(R"(,"delay_ms":-1)", "delay_ms: must be between 0 and 2592000000 (30 days)"));
  CAF_CHECK(fails(R"(,"delay_ms":2592000001)",
                  "delay_ms: must be between 0 and 2592000000 (30 days)"));
  CAF_CHECK(fails(R"(,"delay_ms":1.5)", "delay_ms: expected an integer"));
  CAF_CHECK(fails(R"(,"delay_ms":"5")", "delay_ms: expected an integer"));
  CAF_CHECK(fails(R"(,"delay_ms":5,"run_at":"2024-05-02T10:00:00Z")",
                  "run_at: not allowed together with delay_ms"));
  CAF_CHECK(fails(R"(,"run_at":"2024-06-01T12:00:00.001Z")",
                  "run_at: must be at most 30 days from now"));
  const std::string shape = "run_at: expected a UTC time like 2026-11-22T10:00:00Z or "
                            "2026-11-22T10:00:00.000Z";
  CAF_CHECK(fails(R"(,"run_at":"tomorrow")", shape));
  CAF_CHECK(fails(R"(,"run_at":1714644000000)", shape));
  CAF_CHECK(fails(R"(,"run_at":"2024-05-02 10:00:00Z")", shape));
  CAF_CHECK(fails(R"(,"run_at":"2024-05-02T10:00:00+02:00")", shape));
}

CAF_TEST(iso8601 times parse strictly) {
  int64_t ms = 0;
  CAF_CHECK(parse_iso8601_utc("1970-01-01T00:00:00Z", ms));
  CAF_CHECK_EQUAL(ms, 0);
  CAF_CHECK(parse_iso8601_utc("2024-05-01T12:00:00.123Z", ms));
  CAF_CHECK_EQUAL(ms, 1714564800123);
  CAF_CHECK(parse_iso8601_utc("2024-05-01T12:00:00.1Z", ms));
  CAF_CHECK_EQUAL(ms, 1714564800100);
  CAF_CHECK(parse_iso8601_utc("2024-05-01T12:00:00.123456789Z", ms));
  CAF_CHECK_EQUAL(ms, 1714564800123);
  CAF_CHECK(parse_iso8601_utc("2024-02-29T23:59:59Z", ms));
  CAF_CHECK_EQUAL(iso8601_utc(ms), "2024-02-29T23:59:59.000Z");
  CAF_CHECK(parse_iso8601_utc("2026-11-22T10:00:00Z", ms));
  CAF_CHECK_EQUAL(iso8601_utc(ms), "2026-11-22T10:00:00.000Z");
  for (auto bad : {"",
                   "2024-05-01",
                   "2024-05-01T12:00:00",
                   "2024-05-01T12:00:00z",
                   "2024-05-01t12:00:00Z",
                   "2024-05-01T12:00:00.Z",
                   "2024-05-01T12:00:00.1234567890Z",
                   "2024-05-01T12:00:00ZZ",
                   " 2024-05-01T12:00:00Z",
                   "2024-5-01T12:00:00Z",
                   "2023-02-29T00:00:00Z",
                   "2024-04-31T00:00:00Z",
                   "2024-13-01T00:00:00Z",
                   "2024-00-01T00:00:00Z",
                   "2024-05-00T00:00:00Z",
                   "2024-05-01T24:00:00Z",
                   "2024-05-01T23:60:00Z",
                   "2024-05-01T23:59:60Z",
                   "1969-12-31T23:59:59Z",
                   "+024-05-01T12:00:00Z",
                   "2024-05-01T12:00:00+00:00"})
    CAF_CHECK(!parse_iso8601_utc(bad, ms));
}

CAF_TEST(queries are split and percent - decoded) {
  auto q = parse_query("/v1/jobs?model=a%20b&state=queued%2Crunning&x&&y=1+2&z=%zz");
  CAF_REQUIRE_EQUAL(q.size(), 5u);
  CAF_CHECK_EQUAL(q[0].first, "model");
  CAF_CHECK_EQUAL(q[0].second, "a b");
  CAF_CHECK_EQUAL(q[1].second, "queued,running");
  CAF_CHECK_EQUAL(q[2].first, "x");
  CAF_CHECK_EQUAL(q[2].second, "");
  CAF_CHECK_EQUAL(q[3].second, "1 2");
  CAF_CHECK_EQUAL(q[4].second, "%zz");
  CAF_CHECK(parse_query("/v1/jobs").empty());
  CAF_CHECK(parse_query("/v1/jobs?").empty());
  auto enc = parse_query("/x?%6Dodel=c%3Dd");
  CAF_REQUIRE_EQUAL(enc.size(), 1u);
  CAF_CHECK_EQUAL(enc[0].first, "model");
  CAF_CHECK_EQUAL(enc[0].second, "c=d");
}

CAF_TEST(job filters are checked parameter by parameter) {
  auto all = parse_job_filter("/v1/jobs");
  CAF_REQUIRE(all);
  CAF_CHECK(all->states.empty());
  CAF_CHECK_EQUAL(all->model, "");
  CAF_CHECK_EQUAL(all->before_id, 0);
  CAF_CHECK_EQUAL(all->limit, 100);
  auto f = parse_job_filter(
      "/v1/jobs?state=queued,running&model=classifier&limit=50&after=j_123&state=queued");
  CAF_REQUIRE(f);
  CAF_REQUIRE_EQUAL(f->states.size(), 2u);
  CAF_CHECK(f->states[0] == job_state::queued);
  CAF_CHECK(f->states[1] == job_state::running);
  CAF_CHECK_EQUAL(f->model, "classifier");
  CAF_CHECK_EQUAL(f->limit, 50);
  CAF_CHECK_EQUAL(f->before_id, 123);
  auto enc = parse_job_filter("/v1/jobs?state=dead%2Ccancelled,&model=my%2Fmodel");
  CAF_REQUIRE(enc);
  CAF_CHECK_EQUAL(enc->states.size(), 2u);
  CAF_CHECK_EQUAL(enc->model, "my/model");
  auto fails = [](const std::string& target, const std::string& message) {
    auto r = parse_job_filter(target);
    return !r && fails_with(r.error(), message);
  };
  CAF_CHECK(fails("/v1/jobs?state=queued,bogus",
                  "state: unknown state 'bogus' (expected queued, running, succeeded, "
                  "failed, dead or cancelled)"));
  CAF_CHECK(fails("/v1/jobs?limit=0", "limit: must be an integer between 1 and 1000"));
  CAF_CHECK(fails("/v1/jobs?limit=1001", "limit: must be an integer between 1 and 1000"));
  CAF_CHECK(fails("/v1/jobs?limit=-5", "limit: must be an integer between 1 and 1000"));
  CAF_CHECK(fails("/v1/jobs?limit=", "limit: must be an integer between 1 and 1000"));
  CAF_CHECK(fails("/v1/jobs?limit=10x", "limit: must be an integer between 1 and 1000"));
  CAF_CHECK(fails("/v1/jobs?limit=5&limit=6", "limit: given more than once"));
  CAF_CHECK(fails("/v1/jobs?after=123", "after: expected a job id like j_123"));
  CAF_CHECK(fails("/v1/jobs?after=j_0", "after: expected a job id like j_123"));
  CAF_CHECK(fails("/v1/jobs?after=j_x", "after: expected a job id like j_123"));
  CAF_CHECK(fails("/v1/jobs?sort=id", "sort: unknown query parameter"));
  CAF_CHECK(fails("/v1/jobs?sort=id&limit=5&page=2&sort=x",
                  "sort, page: unknown query parameters"));
  auto ok = parse_job_filter("/v1/jobs?limit=1000");
  CAF_REQUIRE(ok);
  CAF_CHECK_EQUAL(ok->limit, 1000);
}

CAF_TEST(event streams resume after Last - Event - ID or after) {
  auto r = parse_events_after("/v1/jobs/j_1/events", std::nullopt);
  CAF_REQUIRE(r);
  CAF_CHECK_EQUAL(*r, 0);
  r = parse_events_after("/v1/jobs/j_1/events?after=42", std::nullopt);
  CAF_REQUIRE(r);
  CAF_CHECK_EQUAL(*r, 42);
  r = parse_events_after("/v1/jobs/j_1/events?after=42", std::string_view{"57"});
  CAF_REQUIRE(r);
  CAF_CHECK_EQUAL(*r, 57);
  r = parse_events_after("/v1/jobs/j_1/events?after=42", std::string_view{""});
  CAF_REQUIRE(r);
  CAF_CHECK_EQUAL(*r, 42);
  auto fails = [](std::string_view target, std::optional<std::string_view> last,
                  const std::string& message) {
    auto x = parse_events_after(target, last);
    return !x && fails_with(x.error(), message);
  };
  CAF_CHECK(fails("/e?after=-1", std::nullopt,
                  "after: expected an event sequence number (an integer >= 0)"));
  CAF_CHECK(fails("/e?after=x", std::nullopt,
                  "after: expected an event sequence number (an integer >= 0)"));
  CAF_CHECK(fails("/e", std::string_view{"abc"},
                  "Last-Event-ID: expected an event sequence number (an integer >= 0)"));
  CAF_CHECK(fails("/e?from=1", std::nullopt, "from: unknown query parameter"));
}

CAF_TEST(sse frames carry id event and data) {
  job_event ev;
  ev.seq = 17;
  ev.job_id = 3;
  ev.kind = "status";
  ev.data_json = R"({"state":"running","attempt":1})";
  CAF_CHECK_EQUAL(
      sse_frame(ev),
      "id: 17\nevent: status\ndata: {\"state\":\"running\",\"attempt\":1}\n\n");
  ev.kind = "da\r\nta";
  ev.data_json = "{\n\"a\": 1\r\n}";
  CAF_CHECK_EQUAL(sse_frame(ev),
                  "id: 17\nevent: data\ndata: {\ndata: \"a\": 1\ndata: }\n\n");
  ev.kind.clear();
  ev.data_json = "{}";
  CAF_CHECK_EQUAL(sse_frame(ev), "id: 17\ndata: {}\n\n");
  CAF_CHECK_EQUAL(std::string{sse_keepalive}, ": keep-alive\n\n");
}

CAF_TEST(final status events end a stream) {
  auto event = [](std::string kind, std::string data) {
    job_event ev;
    ev.seq = 1;
    ev.kind = std::move(kind);
    ev.data_json = std::move(data);
    return ev;
  };
  for (auto state : {"succeeded", "failed", "dead", "cancelled"})
    CAF_CHECK(is_final_event(
        event("status", std::string{R"({"state":")"} + state + R"(","attempt":1})")));
  CAF_CHECK(!is_final_event(event("status", R"({"state":"running","attempt":1})")));
  CAF_CHECK(!is_final_event(event("status", R"({"state":"queued"})")));
  CAF_CHECK(!is_final_event(event("progress", R"({"state":"succeeded"})")));
  CAF_CHECK(!is_final_event(event("status", R"({"state":1})")));
  CAF_CHECK(!is_final_event(event("status", R"({"status":"succeeded"})")));
  CAF_CHECK(!is_final_event(event("status", R"(["succeeded"])")));
  CAF_CHECK(!is_final_event(event("status", "not json")));
  CAF_CHECK(!is_final_event(event("status", R"({"state":"bogus"})")));
}

CAF_TEST(inference routes match and refuse other methods) {
  struct expect_route {
    const char* method;
    const char* target;
    route_id id;
    const char* pattern;
  };
  expect_route ok[] = {
      {"POST", "/v1/completions", route_id::completions, "/v1/completions"},
      {"POST", "/v1/chat/completions", route_id::chat_completions,
       "/v1/chat/completions"},
      {"POST", "/v1/audio/speech?x=1", route_id::audio_speech, "/v1/audio/speech"},
      {"GET", "/v1/jobs/j_3/artifacts/audio.wav", route_id::job_artifact,
       "/v1/jobs/{id}/artifacts/{name}"},
      {"POST", "/v1/models/tinylm/load", route_id::model_load, "/v1/models/{m}/load"},
      {"POST", "/v1/models/tinylm/unload", route_id::model_unload,
       "/v1/models/{m}/unload"},
      {"GET", "/v1/sessions", route_id::sessions, "/v1/sessions"},
      {"GET", "/admin/api/sessions", route_id::admin_sessions, "/admin/api/sessions"},
  };
  for (auto& x : ok) {
    auto m = match_route(x.method, x.target);
    CAF_CHECK(m.id == x.id);
    CAF_CHECK_EQUAL(m.pattern, x.pattern);
    CAF_CHECK(m.allow.empty());
  }
  auto post_sessions = match_route("POST", "/v1/sessions");
  CAF_CHECK(post_sessions.id == route_id::none);
  CAF_CHECK_EQUAL(post_sessions.allow, "GET");
  auto a = match_route("GET", "/v1/jobs/j_3/artifacts/a%20b.wav");
  CAF_CHECK_EQUAL(a.param, "j_3");
  CAF_CHECK_EQUAL(a.param2, "a b.wav");
  auto l = match_route("POST", "/v1/models/tiny%6cm/unload");
  CAF_CHECK_EQUAL(l.param, "tinylm");
  CAF_CHECK(l.param2.empty());
  // Known paths, wrong method: 405 with Allow.
  expect_route wrong[] = {
      {"GET", "/v1/completions", route_id::none, "/v1/completions"},
      {"PUT", "/v1/chat/completions", route_id::none, "/v1/chat/completions"},
      {"GET", "/v1/audio/speech", route_id::none, "/v1/audio/speech"},
      {"GET", "/v1/models/tinylm/load", route_id::none, "/v1/models/{m}/load"},
      {"DELETE", "/v1/models/tinylm/unload", route_id::none, "/v1/models/{m}/unload"},
  };
  for (auto& x : wrong) {
    auto m = match_route(x.method, x.target);
    CAF_CHECK(m.id == route_id::none);
    CAF_CHECK_EQUAL(m.pattern, x.pattern);
    CAF_CHECK_EQUAL(m.allow, "POST");
  }
  auto d = match_route("POST", "/v1/jobs/j_3/artifacts/a.wav");
  CAF_CHECK(d.id == route_id::none);
  CAF_CHECK_EQUAL(d.allow, "GET");
  // Unknown shapes.
  for (auto target :
       {"/v1/jobs/j_3/artifacts", "/v1/jobs/j_3/artifacts/", "/v1/jobs/j_3/artifacts/a/b",
        "/v1/models//load", "/v1/models/m/reload", "/v1/chat", "/v1/audio/speech/x",
        "/v1/completions/"}) {
    auto m = match_route("POST", target);
    CAF_CHECK(m.id == route_id::none);
    CAF_CHECK(m.allow.empty());
    CAF_CHECK_EQUAL(m.pattern, "unmatched");
  }
}

namespace {

model_status model_on(const std::string& name, const std::string& state,
                      std::string error = {}) {
  model_status m;
  m.name = name;
  m.state = state;
  m.error = std::move(error);
  m.memory_mb = 64;
  return m;
}

worker_status worker_with(const std::string& id, std::vector<model_status> models,
                          const std::string& phase = "IDLE") {
  worker_status w;
  w.worker_id = id;
  w.phase = phase;
  w.device = "cpu";
  w.models = std::move(models);
  return w;
}

model_info info_of(const std::string& name, model_kind kind) {
  model_info m;
  m.name = name;
  m.kind = kind;
  return m;
}

} // namespace

CAF_TEST(the state of a model is the best over its workers) {
  cluster_stats stats;
  stats.workers.push_back(
      worker_with("w1", {model_on("a", "UNLOADED"), model_on("b", "FAILED", "bad file"),
                         model_on("c", "LOADING"), model_on("d", "FAILED", "oom")}));
  stats.workers.push_back(
      worker_with("w2", {model_on("a", "READY"), model_on("b", "UNLOADED"),
                         model_on("c", "FAILED"), model_on("d", "FAILED", "oom")}));
  CAF_CHECK_EQUAL(model_state(stats, "a"), "READY");
  CAF_CHECK_EQUAL(model_state(stats, "b"), "UNLOADED");
  CAF_CHECK_EQUAL(model_state(stats, "c"), "LOADING");
  CAF_CHECK_EQUAL(model_state(stats, "d"), "FAILED");
  CAF_CHECK_EQUAL(model_state(stats, "e"), "unavailable");
  CAF_CHECK(model_servable(stats, "a"));
  CAF_CHECK(model_servable(stats, "b")); // loads on demand
  CAF_CHECK(!model_servable(stats, "c"));
  CAF_CHECK(!model_servable(stats, "d"));
  CAF_CHECK(!model_servable(stats, "e"));
  CAF_CHECK_EQUAL(model_ready_reply(stats, "b").status, 200u);
  CAF_CHECK_EQUAL(model_ready_reply(stats, "b").body, R"({"name":"b","ready":true})");
  CAF_CHECK_EQUAL(model_ready_reply(stats, "c").status, 503u);
  // A draining worker serves nothing new.
  cluster_stats draining;
  draining.workers.push_back(worker_with("w1", {model_on("a", "READY")}, "DRAINING"));
  CAF_CHECK_EQUAL(model_state(draining, "a"), "READY");
  CAF_CHECK(!model_servable(draining, "a"));
  // Even when the queue lists its models as ready.
  draining.ready_models = {"a"};
  CAF_CHECK(!model_servable(draining, "a"));
  CAF_CHECK_EQUAL(model_ready_reply(draining, "a").status, 503u);
  // Without per-worker states, ready_models decides.
  cluster_stats old;
  old.ready_models = {"a"};
  CAF_CHECK_EQUAL(model_state(old, "a"), "READY");
  CAF_CHECK_EQUAL(model_state(old, "b"), "unavailable");
  CAF_CHECK(model_servable(old, "a"));
}

CAF_TEST(the models list shows the state per worker) {
  cluster_stats stats;
  auto ready = model_on("tinylm", "READY");
  ready.last_used_ms = 1714564800123;
  stats.workers.push_back(
      worker_with("w1", {ready, model_on("classifier", "FAILED", "cannot load")}));
  stats.workers.push_back(worker_with("w2", {model_on("tinylm", "UNLOADED")}));
  stats.workers[0].phase = "SESSION_ACTIVE";
  stats.workers[1].phase = "IDLE";
  std::vector<model_info> models{info_of("tinylm", model_kind::generate),
                                 info_of("classifier", model_kind::tensor),
                                 info_of("tinyspeech", model_kind::speech)};
  models[0].device = "cpu";
  models[2].sample_rate = 24000;
  auto r = models_list_reply(models, stats);
  CAF_CHECK_EQUAL(r.status, 200u);
  CAF_CHECK_EQUAL(
      r.body,
      R"({"models":[)"
      R"({"name":"tinylm","kind":"generate","state":"READY","device":"cpu","inputs":[],)"
      R"("outputs":[],"workers":[)"
      R"({"worker":"w1","state":"READY","device":"cpu","memory_mb":64,)"
      R"("last_used":"2024-05-01T12:00:00.123Z","worker_state":"SESSION_ACTIVE"},)"
      R"({"worker":"w2","state":"UNLOADED","device":"cpu","memory_mb":64,"last_used":null,)"
      R"("worker_state":"IDLE"}]},)"
      R"({"name":"classifier","kind":"tensor","state":"FAILED","device":"auto","inputs":[],)"
      R"("outputs":[],"workers":[{"worker":"w1","state":"FAILED","error":"cannot load",)"
      R"("device":"cpu","memory_mb":64,"last_used":null,"worker_state":"SESSION_ACTIVE"}]},)"
      R"({"name":"tinyspeech","kind":"speech","state":"unavailable","device":"auto",)"
      R"("sample_rate":24000,)"
      R"("inputs":[],"outputs":[],"workers":[]}]})");
}

CAF_TEST(load and unload answer the state per worker) {
  std::vector<worker_status> ws{
      worker_with("w1", {model_on("tinylm", "UNLOADED"), model_on("x", "READY")}),
      worker_with("w2", {model_on("tinylm", "FAILED", "oom")}),
      worker_with("w3", {model_on("x", "READY")})};
  auto r = model_change_reply("tinylm", ws);
  CAF_CHECK_EQUAL(r.status, 200u);
  CAF_CHECK_EQUAL(r.body,
                  R"({"model":"tinylm","workers":[{"worker":"w1","state":"UNLOADED"},)"
                  R"({"worker":"w2","state":"FAILED","error":"oom"}]})");
  CAF_CHECK_EQUAL(model_change_reply("y", {}).body, R"({"model":"y","workers":[]})");
}

CAF_TEST(artifact names are one plain path segment) {
  CAF_CHECK(valid_artifact_name("audio.wav"));
  CAF_CHECK(valid_artifact_name("a b-1_2.wav"));
  CAF_CHECK(!valid_artifact_name(""));
  CAF_CHECK(!valid_artifact_name("."));
  CAF_CHECK(!valid_artifact_name(".."));
  CAF_CHECK(!valid_artifact_name("../x"));
  CAF_CHECK(!valid_artifact_name("a/b"));
  CAF_CHECK(!valid_artifact_name("a\\b"));
  CAF_CHECK(!valid_artifact_name(std::string("a\0b", 3)));
  CAF_CHECK(!valid_artifact_name("a\nb"));
  CAF_CHECK(!valid_artifact_name(std::string(256, 'a')));
  artifact_ref ref;
  CAF_CHECK_EQUAL(artifact_content_type(ref), "application/octet-stream");
  ref.content_type = "audio/wav";
  CAF_CHECK_EQUAL(artifact_content_type(ref), "audio/wav");
}

namespace {

std::string header_of(const reply& r, const std::string& name) {
  for (auto& [k, v] : r.headers)
    if (k == name)
      return v;
  return "<none>";
}

} // namespace

CAF_TEST(speech answers carry the audio and its headers) {
  speech_http_request req;
  req.model = "tinyspeech";
  speech_reply r;
  r.pcm16 = std::string("\x01\x00\xff\x7f", 4);
  r.sample_rate = 24000;
  r.real_time_factor = 0.0123456;
  r.worker = "w2";
  auto wav = speech_response(req, r);
  CAF_CHECK_EQUAL(wav.status, 200u);
  CAF_CHECK_EQUAL(wav.content_type, "audio/wav");
  CAF_CHECK_EQUAL(wav.body.size(), 44u + 4u);
  CAF_CHECK_EQUAL(wav.body.substr(0, 4), "RIFF");
  CAF_CHECK_EQUAL(wav.body.substr(44), r.pcm16);
  CAF_CHECK_EQUAL(header_of(wav, "X-Real-Time-Factor"), "0.0123");
  CAF_CHECK_EQUAL(header_of(wav, "X-Worker"), "w2");
  CAF_CHECK_EQUAL(header_of(wav, "X-Sample-Rate"), "24000");
  req.response_format = "pcm";
  auto pcm = speech_response(req, r);
  CAF_CHECK_EQUAL(pcm.content_type, "audio/pcm");
  CAF_CHECK_EQUAL(pcm.body, r.pcm16);
  CAF_CHECK_EQUAL(header_of(pcm, "X-Sample-Rate"), "24000");
  CAF_CHECK_EQUAL(real_time_factor_text(-1), "0.0000");
  CAF_CHECK_EQUAL(real_time_factor_text(2.5), "2.5000");
}

CAF_TEST(completions answer in the OpenAI shape) {
  CAF_CHECK_EQUAL(completion_id(false, "r_1"), "cmpl-r_1");
  CAF_CHECK_EQUAL(completion_id(true, "r_1"), "chatcmpl-r_1");
  auto req
      = parse_openai_request(R"({"model":"tinylm","prompt":"hi","max_tokens":3})", false);
  CAF_REQUIRE(req);
  CAF_CHECK_EQUAL(req->model, "tinylm");
  CAF_CHECK(!req->stream);
  generate_reply g;
  g.text = "abc";
  g.prompt_tokens = 2;
  g.tokens = 3;
  g.finish_reason = "length";
  g.worker = "w1";
  auto r = completion_reply(*req, "r_1", 1700000000, g);
  CAF_CHECK_EQUAL(r.status, 200u);
  CAF_CHECK_EQUAL(r.content_type, "application/json");
  CAF_CHECK_EQUAL(
      r.body, encode_completion("cmpl-r_1", "tinylm", 1700000000, openai_result_of(g)));
  CAF_CHECK(r.body.find(R"("text":"abc")") != std::string::npos);
  CAF_CHECK_EQUAL(header_of(r, "X-Worker"), "w1");
  auto chat = parse_openai_request(
      R"({"model":"tinylm","messages":[{"role":"user","content":"hi"}],"stream":true})",
      true);
  CAF_REQUIRE(chat);
  CAF_CHECK(chat->chat && chat->stream);
  auto c = completion_reply(*chat, "r_2", 1700000000, g);
  CAF_CHECK(c.body.find(R"("id":"chatcmpl-r_2")") != std::string::npos);
  CAF_CHECK(c.body.find(R"("object":"chat.completion")") != std::string::npos);
  // Bad bodies name the field; deep ones are refused before decoding.
  auto bad
      = parse_openai_request(R"({"model":"tinylm","prompt":"x","max_tokens":0})", false);
  CAF_REQUIRE(!bad);
  CAF_CHECK(code_of(bad.error()) == errc::invalid_input);
  CAF_CHECK(message_of(bad.error()).find("max_tokens") != std::string::npos);
  std::string deep(100, '[');
  auto too_deep = parse_openai_request(deep, true);
  CAF_REQUIRE(!too_deep);
  CAF_CHECK_EQUAL(message_of(too_deep.error()), "body: nested deeper than 64 levels");
  auto speech = parse_speech_request(R"({"model":"tinyspeech","input":"hi","x":1})");
  CAF_REQUIRE(!speech);
  CAF_CHECK(message_of(speech.error()).find('x') != std::string::npos);
}

CAF_TEST(admin routes match and refuse other methods) {
  auto w = match_route("GET", "/admin/api/workers?x=1");
  CAF_CHECK(w.id == route_id::admin_workers);
  CAF_CHECK_EQUAL(w.pattern, "/admin/api/workers");
  CAF_CHECK(w.param.empty());
  auto q = match_route("GET", "/admin/api/queue");
  CAF_CHECK(q.id == route_id::admin_queue);
  CAF_CHECK_EQUAL(q.pattern, "/admin/api/queue");
  auto d = match_route("POST", "/admin/api/workers/worker-1/drain");
  CAF_CHECK(d.id == route_id::admin_worker_drain);
  CAF_CHECK_EQUAL(d.pattern, "/admin/api/workers/{id}/drain");
  CAF_CHECK_EQUAL(d.param, "worker-1");
  auto r = match_route("POST", "/admin/api/workers/node%2Fw%201/resume");
  CAF_CHECK(r.id == route_id::admin_worker_resume);
  CAF_CHECK_EQUAL(r.pattern, "/admin/api/workers/{id}/resume");
  CAF_CHECK_EQUAL(r.param, "node/w 1");
  for (auto id : {route_id::admin_workers, route_id::admin_queue,
                  route_id::admin_worker_drain, route_id::admin_worker_resume})
    CAF_CHECK(is_admin_route(id));
  CAF_CHECK(!is_admin_route(route_id::models_list));
  CAF_CHECK(!is_admin_route(route_id::none));
  // Known paths, wrong method: 405 with Allow.
  struct expect_allow {
    const char* method;
    const char* target;
    const char* pattern;
    const char* allow;
  };
  expect_allow wrong[] = {
      {"POST", "/admin/api/workers", "/admin/api/workers", "GET"},
      {"DELETE", "/admin/api/queue", "/admin/api/queue", "GET"},
      {"GET", "/admin/api/workers/w1/drain", "/admin/api/workers/{id}/drain", "POST"},
      {"PUT", "/admin/api/workers/w1/resume", "/admin/api/workers/{id}/resume", "POST"},
  };
  for (auto& x : wrong) {
    auto m = match_route(x.method, x.target);
    CAF_CHECK(m.id == route_id::none);
    CAF_CHECK_EQUAL(m.pattern, x.pattern);
    CAF_CHECK_EQUAL(m.allow, x.allow);
  }
  // Unknown shapes: 404.
  for (auto target : {"/admin", "/admin/api", "/admin/api/", "/admin/api/workers/",
                      "/admin/api/workers/w1", "/admin/api/workers//drain",
                      "/admin/api/workers/w1/stop", "/admin/api/workers/w1/drain/",
                      "/admin/api/queue/x", "/admin/workers", "/api/admin/workers"}) {
    for (auto method : {"GET", "POST"}) {
      auto m = match_route(method, target);
      CAF_CHECK(m.id == route_id::none);
      CAF_CHECK(m.allow.empty());
      CAF_CHECK_EQUAL(m.pattern, "unmatched");
    }
  }
}

namespace {

worker_status admin_worker(const std::string& id) {
  auto w = worker_with(id, {});
  w.host = "node-a";
  w.claim_path = "direct";
  w.last_seen_ms = 1714564800123;
  w.running_jobs = 2;
  w.memory_budget_mb = 4096;
  w.device = "cuda:0";
  w.phase = "BUSY";
  return w;
}

} // namespace

CAF_TEST(the workers list shows each worker with its models) {
  cluster_stats stats;
  auto b = admin_worker("w2");
  auto ready = model_on("tinylm", "READY");
  ready.last_used_ms = 1714564800123;
  b.models = {ready, model_on("classifier", "FAILED", "cannot load")};
  b.metrics.emplace_back(); // not part of the admin shape
  auto a = worker_with("w1", {model_on("tinylm", "UNLOADED")}, "DRAINING");
  b.session = "s-1";
  stats.workers = {b, a}; // answered sorted by id
  auto r = workers_reply(stats);
  CAF_CHECK_EQUAL(r.status, 200u);
  CAF_CHECK_EQUAL(r.content_type, "application/json");
  CAF_CHECK_EQUAL(
      r.body,
      R"({"workers":[)"
      R"({"id":"w1","state":"DRAINING","device":"cpu","host":"","claim_path":"",)"
      R"("last_seen":null,"running_jobs":0,"session":null,"memory_budget_mb":0,"models":[)"
      R"({"name":"tinylm","state":"UNLOADED","memory_mb":64,"last_used":null}]},)"
      R"({"id":"w2","state":"BUSY","device":"cuda:0","host":"node-a","claim_path":"direct",)"
      R"("last_seen":"2024-05-01T12:00:00.123Z","running_jobs":2,"session":"s-1",)"
      R"("memory_budget_mb":4096,"models":[{"name":"tinylm","state":"READY","memory_mb":64,)"
      R"("last_used":"2024-05-01T12:00:00.123Z"},)"
      R"({"name":"classifier","state":"FAILED","error":"cannot load","memory_mb":64,)"
      R"("last_used":null}]}]})");
  CAF_CHECK_EQUAL(workers_reply(cluster_stats{}).body, R"({"workers":[]})");
}

CAF_TEST(drain and resume answer the worker in the list shape) {
  auto w = admin_worker("w2");
  w.phase = "DRAINING";
  auto r = worker_reply(w);
  CAF_CHECK_EQUAL(r.status, 200u);
  CAF_CHECK_EQUAL(r.body, worker_json(w));
  CAF_CHECK_EQUAL(
      r.body,
      R"({"id":"w2","state":"DRAINING","device":"cuda:0","host":"node-a",)"
      R"("claim_path":"direct","last_seen":"2024-05-01T12:00:00.123Z","running_jobs":2,)"
      R"("session":null,"memory_budget_mb":4096,"models":[]})");
  // The list holds the same object.
  cluster_stats stats;
  stats.workers = {w};
  CAF_CHECK_EQUAL(workers_reply(stats).body, R"({"workers":[)" + r.body + "]}");
  // An unknown worker is the gateway's not_found.
  auto nf = error_reply(make_error(errc::not_found, "no worker 'x'"));
  CAF_CHECK_EQUAL(nf.status, 404u);
}

CAF_TEST(the queue shows counts by state and the workers) {
  cluster_stats stats;
  stats.jobs_by_state
      = {{"cancelled", 1}, {"dead", 0},       {"failed", 2}, {"queued", 7},
         {"running", 3},   {"succeeded", 40}, {"paused", 9}};
  stats.interactive_waiting = 4;
  stats.sessions_active = 1;
  stats.sessions_waiting = 2;
  stats.workers_total = 3;
  stats.workers_ready = 2;
  stats.workers_busy = 1;
  auto r = queue_reply(stats);
  CAF_CHECK_EQUAL(r.status, 200u);
  CAF_CHECK_EQUAL(r.body,
                  R"({"jobs_by_state":{"queued":7,"running":3,"succeeded":40,"failed":2,)"
                  R"("dead":0,"cancelled":1,"paused":9},"interactive_waiting":4,)"
                  R"("sessions_active":1,"sessions_waiting":2,)"
                  R"("workers_total":3,"workers_ready":2,"workers_busy":1})");
  // Every state is present even when the queue left one out.
  CAF_CHECK_EQUAL(
      queue_reply(cluster_stats{}).body,
      R"({"jobs_by_state":{"queued":0,"running":0,"succeeded":0,"failed":0,)"
      R"("dead":0,"cancelled":0},"interactive_waiting":0,"sessions_active":0,)"
      R"("sessions_waiting":0,"workers_total":0,"workers_ready":0,"workers_busy":0})");
}

CAF_TEST(the sessions list shows each reserved worker) {
  cluster_stats stats;
  worker_status a;
  a.worker_id = "w1";
  a.phase = "SESSION_PAUSED";
  a.session = "s-b";
  worker_status b;
  b.worker_id = "w2";
  b.phase = "IDLE";
  worker_status c;
  c.worker_id = "w3";
  c.phase = "SESSION_ACTIVE";
  c.session = "s-a";
  stats.workers = {a, b, c};
  stats.sessions_waiting = 3;
  auto r = sessions_reply(stats);
  CAF_CHECK_EQUAL(r.status, 200u);
  CAF_CHECK_EQUAL(r.body,
                  R"({"sessions":[)"
                  R"({"session_id":"s-a","worker":"w3","state":"SESSION_ACTIVE"},)"
                  R"({"session_id":"s-b","worker":"w1","state":"SESSION_PAUSED"}],)"
                  R"("waiting":3})");
  CAF_CHECK_EQUAL(sessions_reply(cluster_stats{}).body, R"({"sessions":[],"waiting":0})");
}
