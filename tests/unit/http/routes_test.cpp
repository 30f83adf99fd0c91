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
  m = match_route("GET", "/v1/jobs");
  CAF_CHECK(m.id == route_id::none);
  CAF_CHECK_EQUAL(m.allow, "POST");
  CAF_CHECK_EQUAL(m.pattern, "/v1/jobs");
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
      R"("position":null,"progress":null,"created_at":"2024-05-01T12:00:00.123Z","started_at":null,)"
      R"("finished_at":null,"worker":null,"output":null,"error":{"code":"oom","message":"out of memory","retryable":true}})");
}
