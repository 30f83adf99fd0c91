#define CAF_SUITE metrics
#include "tests/unit/test_support.hpp"

#include "http/metrics.hpp"

#include <caf/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <thread>
#include <utility>
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

// -- a checker of the text exposition format 0.0.4 ----------------------------

bool is_name(const std::string& x, bool colon_ok) {
  if (x.empty())
    return false;
  for (std::size_t i = 0; i < x.size(); ++i) {
    char c = x[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'
              || (colon_ok && c == ':') || (i > 0 && c >= '0' && c <= '9');
    if (!ok)
      return false;
  }
  return true;
}

bool is_value(const std::string& x) {
  if (x == "+Inf" || x == "-Inf" || x == "NaN")
    return true;
  if (x.empty())
    return false;
  char* end = nullptr;
  std::strtod(x.c_str(), &end);
  return end == x.c_str() + x.size();
}

struct parsed_sample {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;
  std::string value;
};

// Parses `name{a="x",b="y"} value`; returns an error text or "".
std::string parse_sample(const std::string& line, parsed_sample& out) {
  auto i = line.find_first_of("{ ");
  if (i == std::string::npos)
    return "no value";
  out.name = line.substr(0, i);
  if (!is_name(out.name, true))
    return "bad metric name";
  if (line[i] == '{') {
    ++i;
    while (i < line.size() && line[i] != '}') {
      auto eq = line.find('=', i);
      if (eq == std::string::npos)
        return "label without '='";
      auto label = line.substr(i, eq - i);
      if (!is_name(label, false))
        return "bad label name '" + label + "'";
      if (eq + 1 >= line.size() || line[eq + 1] != '"')
        return "unquoted label value";
      std::string value;
      auto j = eq + 2;
      for (; j < line.size() && line[j] != '"'; ++j) {
        if (line[j] == '\\') {
          if (j + 1 >= line.size())
            return "dangling escape";
          char e = line[++j];
          if (e != '\\' && e != '"' && e != 'n')
            return "bad escape";
          value += e == 'n' ? '\n' : e;
        } else if (line[j] == '\n') {
          return "raw newline in a label value";
        } else {
          value += line[j];
        }
      }
      if (j >= line.size())
        return "unterminated label value";
      for (auto& [k, v] : out.labels)
        if (k == label)
          return "label '" + label + "' twice";
      out.labels.emplace_back(label, value);
      i = j + 1;
      if (i < line.size() && line[i] == ',')
        ++i;
    }
    if (i >= line.size())
      return "unterminated label set";
    ++i;
  }
  if (i >= line.size() || line[i] != ' ')
    return "no space before the value";
  out.value = line.substr(i + 1);
  if (!is_value(out.value))
    return "bad value '" + out.value + "'";
  return {};
}

std::string label_key(const std::vector<std::pair<std::string, std::string>>& labels,
                      const std::string& skip = {}) {
  auto sorted = labels;
  std::sort(sorted.begin(), sorted.end());
  std::string out;
  for (auto& [k, v] : sorted)
    if (k != skip)
      out += k + "=" + v + ";";
  return out;
}

bool ends_with(const std::string& x, const std::string& suffix) {
  return x.size() >= suffix.size()
         && x.compare(x.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Checks what Prometheus checks when it scrapes, plus the histogram rules:
// valid names, labels and values; HELP/TYPE once per family, TYPE before its
// samples; each family's samples together; no series twice; histograms with
// increasing `le` ending at +Inf, cumulative counts, +Inf == _count, and a
// _sum. Returns the problems found ("" when valid).
std::string check_exposition(const std::string& text) {
  std::string problems;
  auto problem = [&](std::size_t n, const std::string& line, const std::string& what) {
    problems += "line " + std::to_string(n) + ": " + what + ": " + line + "\n";
  };
  if (text.empty() || text.back() != '\n')
    problems += "does not end with a newline\n";
  std::map<std::string, std::string> types;
  std::set<std::string> helped;
  std::set<std::string> closed; // families whose samples ended
  std::string current;          // family of the previous sample or comment
  std::set<std::string> series;
  struct hist {
    std::vector<std::pair<double, int64_t>> buckets;
    bool has_inf = false;
    int64_t inf = 0;
    bool has_sum = false;
    bool has_count = false;
    int64_t count = 0;
  };
  std::map<std::string, hist> hists; // family + labels without le
  auto family_of = [&](const std::string& name) {
    for (auto suffix : {"_bucket", "_sum", "_count"}) {
      if (ends_with(name, suffix)) {
        auto base = name.substr(0, name.size() - std::strlen(suffix));
        auto t = types.find(base);
        if (t != types.end() && t->second == "histogram")
          return base;
      }
    }
    return name;
  };
  auto enter = [&](std::size_t n, const std::string& line, const std::string& family) {
    if (family == current)
      return;
    if (closed.count(family) > 0)
      problem(n, line, "family '" + family + "' continues after another began");
    if (!current.empty())
      closed.insert(current);
    current = family;
  };
  std::size_t n = 0;
  for (auto& line : lines_of(text)) {
    ++n;
    if (line.empty()) {
      problem(n, line, "empty line");
      continue;
    }
    if (line[0] == '#') {
      std::istringstream in{line};
      std::string hash, kind, name, rest;
      in >> hash >> kind >> name;
      std::getline(in, rest);
      if (kind == "HELP") {
        if (!is_name(name, true))
          problem(n, line, "bad name in HELP");
        if (!helped.insert(name).second)
          problem(n, line, "second HELP");
        enter(n, line, name);
      } else if (kind == "TYPE") {
        static const std::set<std::string> known{"counter", "gauge", "histogram",
                                                 "summary", "untyped"};
        auto type = rest.empty() ? rest : rest.substr(1);
        if (known.count(type) == 0)
          problem(n, line, "unknown type");
        if (types.count(name) > 0)
          problem(n, line, "second TYPE");
        if (series.end()
            != std::find_if(series.begin(), series.end(), [&](const std::string& x) {
                 return x.rfind(name + "{", 0) == 0 || x.rfind(name + "_", 0) == 0;
               }))
          problem(n, line, "TYPE after samples of its family");
        types[name] = type;
        enter(n, line, name);
      }
      continue;
    }
    parsed_sample x;
    if (auto err = parse_sample(line, x); !err.empty()) {
      problem(n, line, err);
      continue;
    }
    auto family = family_of(x.name);
    enter(n, line, family);
    if (!series.insert(x.name + "{" + label_key(x.labels) + "}").second)
      problem(n, line, "series twice");
    auto type = types.count(family) > 0 ? types[family] : std::string{};
    if (ends_with(x.name, "_total") && type != "counter")
      problem(n, line, "_total without TYPE counter");
    if (type == "counter" && x.value[0] == '-')
      problem(n, line, "negative counter");
    if (type != "histogram")
      continue;
    auto& h = hists[family + "{" + label_key(x.labels, "le") + "}"];
    if (x.name == family + "_bucket") {
      std::string le;
      for (auto& [k, v] : x.labels)
        if (k == "le")
          le = v;
      if (le.empty() || !is_value(le)) {
        problem(n, line, "bucket without a valid le");
        continue;
      }
      auto count = std::stoll(x.value);
      if (le == "+Inf") {
        h.has_inf = true;
        h.inf = count;
      } else {
        if (h.has_inf)
          problem(n, line, "bucket after +Inf");
        auto bound = std::stod(le);
        if (!h.buckets.empty() && bound <= h.buckets.back().first)
          problem(n, line, "le not increasing");
        if (!h.buckets.empty() && count < h.buckets.back().second)
          problem(n, line, "buckets not cumulative");
        h.buckets.emplace_back(bound, count);
      }
      if (h.has_inf && !h.buckets.empty() && h.inf < h.buckets.back().second)
        problem(n, line, "+Inf below the last bucket");
    } else if (x.name == family + "_sum") {
      h.has_sum = true;
    } else if (x.name == family + "_count") {
      h.has_count = true;
      h.count = std::stoll(x.value);
    } else {
      problem(n, line, "histogram sample that is no bucket, sum or count");
    }
  }
  for (auto& [key, h] : hists) {
    if (!h.has_inf)
      problems += key + ": no +Inf bucket\n";
    if (!h.has_sum || !h.has_count)
      problems += key + ": no _sum or _count\n";
    if (h.has_inf && h.has_count && h.inf != h.count)
      problems += key + ": +Inf bucket differs from _count\n";
  }
  return problems;
}

} // namespace

CAF_TEST(the format checker finds broken expositions) {
  CAF_CHECK_EQUAL(check_exposition("# TYPE a counter\na_total 1\n").size() > 0, true);
  CAF_CHECK_EQUAL(check_exposition("# TYPE a_total counter\na_total 1\n"), "");
  CAF_CHECK(!check_exposition("a 1").empty());                      // no final newline
  CAF_CHECK(!check_exposition("a{x=\"1\"} 1\nb 1\na 2\n").empty()); // split family
  CAF_CHECK(!check_exposition("a{x=\"1\"} 1\na{x=\"1\"} 2\n").empty()); // twice
  CAF_CHECK(!check_exposition("a{x=1} 1\n").empty());
  CAF_CHECK(!check_exposition("a 1 2\n").empty());
  CAF_CHECK(!check_exposition("# TYPE h histogram\nh_bucket{le=\"1\"} 2\n"
                              "h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n")
                 .empty());
  CAF_CHECK(!check_exposition("# TYPE h histogram\nh_bucket{le=\"1\"} 1\n"
                              "h_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n")
                 .empty());
  CAF_CHECK_EQUAL(check_exposition("# HELP h x\n# TYPE h histogram\n"
                                   "h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
                                   "h_sum 1.5\nh_count 2\n"),
                  "");
}

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

namespace {

cluster_stats stats_with_models() {
  cluster_stats stats;
  stats.jobs_by_state = {{"queued", 1}};
  stats.workers_total = 2;
  stats.workers_ready = 2;
  worker_status w1;
  w1.worker_id = "w1";
  w1.phase = "BUSY";
  w1.device = "cpu";
  model_metrics clf;
  clf.model = "classifier";
  clf.requests = 5;
  clf.failures = {{"invalid_input", 1}, {"timeout", 2}};
  clf.queue_seconds.observe(0.0001); // on the first bound
  clf.queue_seconds.observe(0.003);
  clf.queue_seconds.observe(100); // +Inf only
  clf.compute_seconds.observe(0.02);
  clf.batch_size.observe(1);
  clf.batch_size.observe(3);
  clf.batch_size.observe(3);
  clf.batch_size.observe(16);
  model_metrics lm;
  lm.model = "tinylm";
  lm.requests = 2;
  lm.generated_tokens = 300;
  lm.generate_seconds = 1.5;
  w1.metrics = {clf, lm};
  model_status clf_status;
  clf_status.name = "classifier";
  clf_status.state = "READY";
  clf_status.memory_mb = 64;
  model_status lm_status;
  lm_status.name = "tinylm";
  lm_status.state = "UNLOADED";
  lm_status.memory_mb = 32;
  w1.models = {clf_status, lm_status};
  worker_status w2;
  w2.worker_id = "w\"2";
  w2.phase = "RESTARTING"; // not a known phase: shown as is
  model_metrics speech;
  speech.model = "tinyspeech";
  speech.requests = 1;
  speech.audio_seconds = 4;
  speech.synthesis_seconds = 0.5;
  w2.metrics = {speech};
  model_status speech_status;
  speech_status.name = "tinyspeech";
  speech_status.state = "READY";
  speech_status.memory_mb = 16;
  w2.models = {speech_status};
  stats.workers = {w1, w2};
  return stats;
}

} // namespace

CAF_TEST(per model series render with model and worker labels) {
  metrics_registry m;
  m.observe("/v1/completions", "POST", 200, 0.01);
  auto stats = stats_with_models();
  auto text = m.render(&stats, 0);
  CAF_CHECK_EQUAL(check_exposition(text), "");
  const std::string clf = R"({model="classifier",worker="w1")";
  CAF_CHECK(has_line(text, "# TYPE infergrid_model_requests_total counter"));
  CAF_CHECK(has_line(text, "infergrid_model_requests_total" + clf + "} 5"));
  CAF_CHECK(has_line(
      text, R"(infergrid_model_requests_total{model="tinyspeech",worker="w\"2"} 1)"));
  CAF_CHECK(has_line(text, "infergrid_model_failures_total" + clf
                               + R"(,code="invalid_input"} 1)"));
  CAF_CHECK(
      has_line(text, "infergrid_model_failures_total" + clf + R"(,code="timeout"} 2)"));
  // Histograms: cumulative buckets with le labels, +Inf, _sum, _count.
  CAF_CHECK(has_line(text, "# TYPE infergrid_model_queue_seconds histogram"));
  auto bucket = [&](const char* family, const char* le, int n) {
    return std::string{family} + "_bucket" + clf + ",le=\"" + le + "\"} "
           + std::to_string(n);
  };
  CAF_CHECK(has_line(text, bucket("infergrid_model_queue_seconds", "0.0001", 1)));
  CAF_CHECK(has_line(text, bucket("infergrid_model_queue_seconds", "0.0025", 1)));
  CAF_CHECK(has_line(text, bucket("infergrid_model_queue_seconds", "0.005", 2)));
  CAF_CHECK(has_line(text, bucket("infergrid_model_queue_seconds", "60", 2)));
  CAF_CHECK(has_line(text, bucket("infergrid_model_queue_seconds", "+Inf", 3)));
  CAF_CHECK(has_line(text, "infergrid_model_queue_seconds_count" + clf + "} 3"));
  CAF_CHECK(has_line(text, "infergrid_model_queue_seconds_sum" + clf + "} 100.0031"));
  CAF_CHECK(has_line(text, bucket("infergrid_model_compute_seconds", "0.025", 1)));
  CAF_CHECK(has_line(text, bucket("infergrid_model_batch_size", "1", 1)));
  CAF_CHECK(has_line(text, bucket("infergrid_model_batch_size", "2", 1)));
  CAF_CHECK(has_line(text, bucket("infergrid_model_batch_size", "4", 3)));
  CAF_CHECK(has_line(text, bucket("infergrid_model_batch_size", "16", 4)));
  CAF_CHECK(has_line(text, bucket("infergrid_model_batch_size", "+Inf", 4)));
  CAF_CHECK(has_line(text, "infergrid_model_batch_size_sum" + clf + "} 23"));
  // 19 latency buckets (18 bounds + Inf) per model and worker.
  CAF_CHECK_EQUAL(count_prefix(text, "infergrid_model_queue_seconds_bucket{"), 3u * 19u);
  // Generate and speech series only where they apply.
  const std::string lm = R"({model="tinylm",worker="w1")";
  CAF_CHECK(has_line(text, "infergrid_model_generated_tokens_total" + lm + "} 300"));
  CAF_CHECK(has_line(text, "infergrid_model_generate_seconds_total" + lm + "} 1.5"));
  CAF_CHECK(has_line(text, "infergrid_model_tokens_per_second" + lm + "} 200"));
  CAF_CHECK_EQUAL(count_prefix(text, "infergrid_model_generated_tokens_total{"), 1u);
  const std::string sp = R"({model="tinyspeech",worker="w\"2")";
  CAF_CHECK(has_line(text, "infergrid_model_audio_seconds_total" + sp + "} 4"));
  CAF_CHECK(has_line(text, "infergrid_model_synthesis_seconds_total" + sp + "} 0.5"));
  CAF_CHECK(has_line(text, "infergrid_model_real_time_factor" + sp + "} 0.125"));
  CAF_CHECK_EQUAL(count_prefix(text, "infergrid_model_real_time_factor{"), 1u);
  // Residency and memory of loaded models.
  CAF_CHECK(has_line(text, "infergrid_model_resident" + clf + "} 1"));
  CAF_CHECK(has_line(text, "infergrid_model_resident" + lm + "} 0"));
  CAF_CHECK(has_line(text, "infergrid_model_memory_mb" + clf + "} 64"));
  CAF_CHECK(has_line(text, "infergrid_model_memory_mb" + sp + "} 16"));
  CAF_CHECK_EQUAL(count_prefix(text, "infergrid_model_memory_mb{"), 2u);
  // Worker phases: 1 for the current one.
  CAF_CHECK(has_line(text, R"(infergrid_worker_state{worker="w1",state="BUSY"} 1)"));
  CAF_CHECK(has_line(text, R"(infergrid_worker_state{worker="w1",state="IDLE"} 0)"));
  CAF_CHECK(
      has_line(text, R"(infergrid_worker_state{worker="w\"2",state="RESTARTING"} 1)"));
  CAF_CHECK_EQUAL(count_prefix(text, "infergrid_worker_state{"), 15u);
}

CAF_TEST(histograms without per bucket counts stay consistent) {
  cluster_stats stats;
  worker_status w;
  w.worker_id = "w1";
  w.phase = "IDLE";
  model_metrics odd;
  odd.model = "m";
  odd.batch_size.counts.clear(); // an older or damaged snapshot
  odd.batch_size.count = 4;
  odd.batch_size.sum = 9;
  w.metrics = {odd};
  stats.workers = {w};
  auto text = metrics_registry{}.render(&stats);
  CAF_CHECK_EQUAL(check_exposition(text), "");
  CAF_CHECK(has_line(
      text, R"(infergrid_model_batch_size_bucket{model="m",worker="w1",le="+Inf"} 4)"));
  CAF_CHECK(
      has_line(text, R"(infergrid_model_batch_size_count{model="m",worker="w1"} 4)"));
}

CAF_TEST(every rendering passes the format checker) {
  metrics_registry m;
  CAF_CHECK_EQUAL(check_exposition(m.render()), "");
  m.observe("/v1/jobs", "POST", 202, 0.001);
  m.observe("/x\"y\nz", "OTHER", 404, 20.0);
  cluster_stats empty;
  CAF_CHECK_EQUAL(check_exposition(m.render(&empty, 3)), "");
  auto stats = stats_with_models();
  CAF_CHECK_EQUAL(check_exposition(m.render(&stats, 1)), "");
}
