// Per-model serving metrics as plain data: a worker accumulates them, sends
// snapshots to the queue, and http/ renders them for Prometheus. Header-only.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <caf/meta/type_name.hpp>

namespace infergrid {

/// A cumulative histogram with fixed upper bounds (the last count is +Inf).
struct histogram_data {
  std::vector<double> bounds;
  /// bounds.size() + 1 counts; counts[i] holds observations <= bounds[i]
  /// and > bounds[i-1] (not cumulative; the renderer sums them).
  std::vector<int64_t> counts;
  double sum = 0;
  int64_t count = 0;

  histogram_data() = default;
  explicit histogram_data(std::vector<double> upper_bounds)
      : bounds(std::move(upper_bounds)), counts(bounds.size() + 1, 0) {}

  void observe(double x) {
    if (counts.size() != bounds.size() + 1)
      counts.assign(bounds.size() + 1, 0);
    std::size_t i = 0;
    while (i < bounds.size() && x > bounds[i])
      ++i;
    ++counts[i];
    sum += x;
    ++count;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, histogram_data& x) {
  return f(caf::meta::type_name("histogram_data"), x.bounds, x.counts, x.sum, x.count);
}

/// Seconds: 100 µs .. 60 s.
inline std::vector<double> latency_bounds() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1.0,   2.5,    5.0,   10.0, 30.0,  60.0};
}

/// Requests per batch: 1 .. 256.
inline std::vector<double> batch_size_bounds() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256};
}

/// What one worker measured for one model since it started (cumulative).
struct model_metrics {
  std::string model;
  /// Requests and durable jobs run to an answer (success or failure).
  int64_t requests = 0;
  /// Failed requests and jobs by error code.
  std::map<std::string, int64_t> failures;
  /// From arrival (interactive) or run_at/created (durable) to execution start.
  histogram_data queue_seconds{latency_bounds()};
  /// Executor time of each batch or call.
  histogram_data compute_seconds{latency_bounds()};
  /// Requests per forward call.
  histogram_data batch_size{batch_size_bounds()};
  /// Generate models: tokens made and the seconds spent making them.
  int64_t generated_tokens = 0;
  double generate_seconds = 0;
  /// Speech models: seconds of audio made and the seconds spent making it
  /// (real-time factor = synthesis_seconds / audio_seconds).
  double audio_seconds = 0;
  double synthesis_seconds = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, model_metrics& x) {
  return f(caf::meta::type_name("model_metrics"), x.model, x.requests, x.failures,
           x.queue_seconds, x.compute_seconds, x.batch_size, x.generated_tokens,
           x.generate_seconds, x.audio_seconds, x.synthesis_seconds);
}

/// One model on one worker, as /v1/models and /metrics show it.
struct model_status {
  std::string name;
  /// READY (resident and warm), LOADING, UNLOADED (loads on demand) or FAILED.
  std::string state;
  /// Why it FAILED; empty otherwise.
  std::string error;
  int64_t memory_mb = 0;
  /// Unix ms of its last use; 0 never.
  int64_t last_used_ms = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, model_status& x) {
  return f(caf::meta::type_name("model_status"), x.name, x.state, x.error, x.memory_mb,
           x.last_used_ms);
}

/// A worker as the queue last heard of it.
struct worker_status {
  std::string worker_id;
  /// LOADING, IDLE, BUSY, SESSION_ACTIVE, SESSION_PAUSED, ERROR or DRAINING.
  std::string phase;
  /// "cpu", "cuda:0", ...
  std::string device;
  /// 0: no budget.
  int64_t memory_budget_mb = 0;
  std::vector<model_status> models;
  std::vector<model_metrics> metrics;
  /// The node it runs on ("" for a worker inside the control process).
  std::string host;
  /// "in-process", "direct" (a process that opens the SQLite file) or
  /// "queue" (a process that claims through the queue actor).
  std::string claim_path;
  /// Unix ms of its last message to the queue.
  int64_t last_seen_ms = 0;
  /// Durable jobs it holds now, and the first of them (0: none).
  int64_t running_jobs = 0;
  int64_t current_job = 0;
  /// The interactive session it is reserved for ("" when none).
  std::string session;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_status& x) {
  return f(caf::meta::type_name("worker_status"), x.worker_id, x.phase, x.device,
           x.memory_budget_mb, x.models, x.metrics, x.host, x.claim_path, x.last_seen_ms,
           x.running_jobs, x.current_job, x.session);
}

} // namespace infergrid
