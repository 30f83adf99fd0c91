#define CAF_SUITE metrics
#include "tests/unit/test_support.hpp"

#include "http/metrics.hpp"

#include <caf/test/unit_test.hpp>

#include <cmath>
#include <limits>
#include <sstream>
#include <thread>
#include <vector>

using namespace infergrid;
using infergrid::http::metrics_registry;

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in{text};
  for (std::string line; std::getline(in, line);)
    out.push_back(line);
  return out;
}

bool has_line(const std::string& text, const std::string& line) {
  for (auto& x : lines_of(text))
    if (x == line)
      return true;
  return false;
}

std::size_t count_prefix(const std::string& text, const std::string& prefix) {
  std::size_t n = 0;
  for (auto& x : lines_of(text))
    if (x.compare(0, prefix.size(), prefix) == 0)
      ++n;
  return n;
}

} // namespace

CAF_TEST(counters count per route method and status) {
  metrics_registry m;
  m.observe("/v1/jobs", "POST", 202, 0.001);
  m.observe("/v1/jobs", "POST", 202, 0.002);
  m.observe("/v1/jobs", "POST", 400, 0.001);
  m.observe("/v1/jobs/{id}", "GET", 200, 0.001);
  CAF_CHECK_EQUAL(m.requests("/v1/jobs", "POST", 202), 2);
  CAF_CHECK_EQUAL(m.requests("/v1/jobs", "POST", 400), 1);
  CAF_CHECK_EQUAL(m.requests("/v1/jobs/{id}", "GET", 200), 1);
  CAF_CHECK_EQUAL(m.requests("/v1/jobs", "GET", 202), 0);
  auto text = m.render();
  CAF_CHECK(has_line(text, "# TYPE infergrid_http_requests_total counter"));
  CAF_CHECK(has_line(
      text,
      R"(infergrid_http_requests_total{route="/v1/jobs",method="POST",code="202"} 2)"));
  CAF_CHECK(has_line(
      text,
      R"(infergrid_http_requests_total{route="/v1/jobs",method="POST",code="400"} 1)"));
  CAF_CHECK(has_line(
      text,
      R"(infergrid_http_requests_total{route="/v1/jobs/{id}",method="GET",code="200"} 1)"));
  CAF_CHECK_EQUAL(count_prefix(text, "infergrid_http_requests_total{"), 3u);
}

CAF_TEST(histogram buckets are cumulative and bounds are inclusive) {
  metrics_registry m;
  // Exactly representable values, so the sum prints exactly.
  m.observe("/r", "GET", 200, 0.0001220703125); // 2^-13: first bucket
  m.observe("/r", "GET", 200, 0.25);            // on a bound: counts there
  m.observe("/r", "GET", 200, 0.5);
  m.observe("/r", "GET", 200, 2.0);
  m.observe("/r", "GET", 500, 16.0); // above 10: only +Inf
  auto text = m.render();
  CAF_CHECK(has_line(text, "# TYPE infergrid_http_request_duration_seconds histogram"));
  auto bucket = [](const char* le, int n) {
    return std::string{"infergrid_http_request_duration_seconds_bucket{"
                       "route=\"/r\",le=\""}
           + le + "\"} " + std::to_string(n);
  };
  CAF_CHECK(has_line(text, bucket("0.0005", 1)));
  CAF_CHECK(has_line(text, bucket("0.001", 1)));
  CAF_CHECK(has_line(text, bucket("0.0025", 1)));
  CAF_CHECK(has_line(text, bucket("0.005", 1)));
  CAF_CHECK(has_line(text, bucket("0.01", 1)));
  CAF_CHECK(has_line(text, bucket("0.025", 1)));
  CAF_CHECK(has_line(text, bucket("0.05", 1)));
  CAF_CHECK(has_line(text, bucket("0.1", 1)));
  CAF_CHECK(has_line(text, bucket("0.25", 2)));
  CAF_CHECK(has_line(text, bucket("0.5", 3)));
  CAF_CHECK(has_line(text, bucket("1", 3)));
  CAF_CHECK(has_line(text, bucket("2.5", 4)));
  CAF_CHECK(has_line(text, bucket("5", 4)));
  CAF_CHECK(has_line(text, bucket("10", 4)));
  CAF_CHECK(has_line(text, bucket("+Inf", 5)));
  CAF_CHECK(has_line(
      text,
      R"(infergrid_http_request_duration_seconds_sum{route="/r"} 18.7501220703125)"));
  CAF_CHECK(
      has_line(text, R"(infergrid_http_request_duration_seconds_count{route="/r"} 5)"));
  // One histogram per route template, 15 buckets each.
  CAF_CHECK_EQUAL(count_prefix(text, "infergrid_http_request_duration_seconds_bucket{"),
                  15u);
  // Cumulative: the values never decrease along the buckets.
  int64_t last = -1;
  for (auto& line : lines_of(text)) {
    if (line.compare(0, 46, "infergrid_http_request_duration_seconds_bucket") != 0)
      continue;
    auto value = std::stoll(line.substr(line.rfind(' ') + 1));
    CAF_CHECK_GREATER_OR_EQUAL(value, last);
    last = value;
  }
  CAF_CHECK_EQUAL(last, 5);
}

CAF_TEST(odd durations land in the first bucket without touching the sum) {
  metrics_registry m;
  m.observe("/r", "GET", 200, -1.0);
  m.observe("/r", "GET", 200, std::numeric_limits<double>::quiet_NaN());
  auto text = m.render();
  CAF_CHECK(has_line(
      text,
      R"(infergrid_http_request_duration_seconds_bucket{route="/r",le="0.0005"} 2)"));
  CAF_CHECK(
      has_line(text, R"(infergrid_http_request_duration_seconds_sum{route="/r"} 0)"));
}

CAF_TEST(cluster gauges appear with stats and list all six job states) {
  metrics_registry m;
  cluster_stats stats;
  stats.jobs_by_state = {{"queued", 4}, {"running", 1}, {"dead", 2}};
  stats.workers_total = 3;
  stats.workers_ready = 2;
  stats.workers_busy = 1;
  stats.interactive_waiting = 7;
  auto text = m.render(&stats, 5);
  CAF_CHECK(has_line(text, "# TYPE infergrid_jobs gauge"));
  CAF_CHECK(has_line(text, R"(infergrid_jobs{state="queued"} 4)"));
  CAF_CHECK(has_line(text, R"(infergrid_jobs{state="running"} 1)"));
  CAF_CHECK(has_line(text, R"(infergrid_jobs{state="succeeded"} 0)"));
  CAF_CHECK(has_line(text, R"(infergrid_jobs{state="failed"} 0)"));
  CAF_CHECK(has_line(text, R"(infergrid_jobs{state="dead"} 2)"));
  CAF_CHECK(has_line(text, R"(infergrid_jobs{state="cancelled"} 0)"));
  CAF_CHECK_EQUAL(count_prefix(text, "infergrid_jobs{"), 6u);
  CAF_CHECK(has_line(text, "# TYPE infergrid_workers gauge"));
  CAF_CHECK(has_line(text, R"(infergrid_workers{state="ready"} 2)"));
  CAF_CHECK(has_line(text, R"(infergrid_workers{state="busy"} 1)"));
  CAF_CHECK(has_line(text, R"(infergrid_workers{state="total"} 3)"));
  CAF_CHECK(has_line(text, "# TYPE infergrid_interactive_waiting gauge"));
  CAF_CHECK(has_line(text, "infergrid_interactive_waiting 7"));
  CAF_CHECK(has_line(text, "infergrid_http_in_flight 5"));
}

CAF_TEST(without stats only the http series are rendered) {
  metrics_registry m;
  auto text = m.render();
  CAF_CHECK(has_line(text, "# TYPE infergrid_http_requests_total counter"));
  CAF_CHECK_EQUAL(count_prefix(text, "infergrid_jobs"), 0u);
  CAF_CHECK_EQUAL(count_prefix(text, "infergrid_workers"), 0u);
  CAF_CHECK_EQUAL(count_prefix(text, "infergrid_http_in_flight"), 0u);
  // Text format 0.0.4: every line ends with a newline.
  CAF_REQUIRE(!text.empty());
  CAF_CHECK_EQUAL(text.back(), '\n');
}

CAF_TEST(label values are escaped and numbers print the shortest way) {
  CAF_CHECK_EQUAL(http::prometheus_escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  CAF_CHECK_EQUAL(http::prometheus_number(10.0), "10");
  CAF_CHECK_EQUAL(http::prometheus_number(0.5), "0.5");
  CAF_CHECK_EQUAL(http::prometheus_number(std::nan("")), "NaN");
  CAF_CHECK_EQUAL(http::prometheus_number(std::numeric_limits<double>::infinity()),
                  "+Inf");
  metrics_registry m;
  m.observe("/x\"y", "GET", 200, 0.0);
  CAF_CHECK(has_line(
      m.render(),
      R"(infergrid_http_requests_total{route="/x\"y",method="GET",code="200"} 1)"));
}

CAF_TEST(concurrent observations are all counted) {
  metrics_registry m;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&m] {
      for (int i = 0; i < 1000; ++i)
        m.observe("/healthz", "GET", 200, 0.0001);
    });
  for (auto& t : threads)
    t.join();
  CAF_CHECK_EQUAL(m.requests("/healthz", "GET", 200), 4000);
  CAF_CHECK(has_line(
      m.render(),
      R"(infergrid_http_request_duration_seconds_count{route="/healthz"} 4000)"));
}
