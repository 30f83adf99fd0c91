// HTTP request metrics and the Prometheus text exposition (format 0.0.4).
// Beast-free so that tests link it without the server.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "actors/interfaces.hpp"

namespace infergrid::http {

/// Counts answered requests per (route template, method, status) and keeps a
/// latency histogram per route template. Thread-safe: every member may be
/// called from any thread; each call holds one mutex for a map update.
class metrics_registry {
public:
  /// Upper bounds (seconds) of the duration histogram, without +Inf.
  static constexpr std::array<double, 14> bucket_bounds{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
      0.1,    0.25,  0.5,    1.0,   2.5,  5.0,   10.0};
  /// The `le` label of each bound, written as Prometheus clients write them.
  static constexpr std::array<const char*, bucket_bounds.size()> bucket_labels{
      "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
      "0.1",    "0.25",  "0.5",    "1",     "2.5",  "5",     "10"};

  /// Records one answered request. `route` is the route template
  /// ("/v1/jobs/{id}"), never the raw target, so label sets stay bounded.
  void observe(const std::string& route, const std::string& method, unsigned status,
               double seconds);

  /// Value of infergrid_http_requests_total for one label set (0 if unseen).
  int64_t requests(const std::string& route, const std::string& method,
                   unsigned status) const;

  /// Renders every series in Prometheus text format 0.0.4. The cluster
  /// gauges (jobs, workers, interactive waiting) and the per-model series
  /// (render_model_metrics) appear only when `stats` is given; `in_flight` < 0 leaves out
  /// infergrid_http_in_flight.
  std::string render(const cluster_stats* stats = nullptr, int64_t in_flight = -1) const;

private:
  struct histogram {
    std::array<int64_t, bucket_bounds.size() + 1> buckets{}; // last: +Inf
    double sum = 0;
    int64_t count = 0;
  };

  mutable std::mutex mtx_;
  std::map<std::tuple<std::string, std::string, unsigned>, int64_t> requests_;
  std::map<std::string, histogram> durations_;
};

/// Appends the per-model series of `workers` (requests, failures, queue,
/// compute and batch-size histograms, tokens, audio, residency, memory) and
/// infergrid_worker_state, each family with its HELP and TYPE lines, labelled
/// {model, worker}. Histogram counts in histogram_data are per bucket; they
/// are rendered cumulative. Part of render() when stats are given.
void render_model_metrics(std::string& out, const std::vector<worker_status>& workers);

/// Renders a double the shortest way that reads back exactly ("0.0005",
/// "10", "+Inf", "NaN"), as Prometheus clients do.
std::string prometheus_number(double x);

/// Escapes a label value (backslash, double quote, newline).
std::string prometheus_escape(const std::string& x);

} // namespace infergrid::http
