// Prometheus counters and histograms of the HTTP layer, plus cluster gauges.
#include "http/metrics.hpp"

#include <charconv>
#include <cmath>
#include <vector>

namespace infergrid::http {

namespace {

const char* const job_states[]
    = {"queued", "running", "succeeded", "failed", "dead", "cancelled"};

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

} // namespace

std::string prometheus_number(double x) {
  if (std::isnan(x))
    return "NaN";
  if (std::isinf(x))
    return x > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), x);
  if (ec != std::errc{})
    return "NaN";
  return std::string(buf, end);
}

std::string prometheus_escape(const std::string& x) {
  std::string out;
  out.reserve(x.size());
  for (char c : x) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  return out;
}

void metrics_registry::observe(const std::string& route, const std::string& method,
                               unsigned status, double seconds) {
  if (!(seconds >= 0)) // also catches NaN
    seconds = 0;
  std::size_t bucket = 0;
  while (bucket < bucket_bounds.size() && seconds > bucket_bounds[bucket])
    ++bucket;
  std::lock_guard<std::mutex> guard{mtx_};
  ++requests_[std::make_tuple(route, method, status)];
  auto& h = durations_[route];
  ++h.buckets[bucket];
  h.sum += seconds;
  ++h.count;
}

int64_t metrics_registry::requests(const std::string& route, const std::string& method,
                                   unsigned status) const {
  std::lock_guard<std::mutex> guard{mtx_};
  auto i = requests_.find(std::make_tuple(route, method, status));
  return i == requests_.end() ? 0 : i->second;
}

std::string metrics_registry::render(const cluster_stats* stats,
                                     int64_t in_flight) const {
  std::string out;
  out.reserve(4096);
  {
    std::lock_guard<std::mutex> guard{mtx_};
    header(out, "infergrid_http_requests_total", "counter",
           "HTTP requests answered, by route template, method and status.");
    for (auto& [key, value] : requests_) {
      auto& [route, method, status] = key;
      out += "infergrid_http_requests_total{route=\"";
      out += prometheus_escape(route);
      out += "\",method=\"";
      out += prometheus_escape(method);
      out += "\",code=\"";
      out += std::to_string(status);
      out += "\"} ";
      out += std::to_string(value);
      out += '\n';
    }
    header(out, "infergrid_http_request_duration_seconds", "histogram",
           "Time from a complete request to its response, by route template.");
    for (auto& [route, h] : durations_) {
      auto label = prometheus_escape(route);
      int64_t cumulative = 0;
      for (std::size_t i = 0; i < h.buckets.size(); ++i) {
        cumulative += h.buckets[i];
        out += "infergrid_http_request_duration_seconds_bucket{route=\"";
        out += label;
        out += "\",le=\"";
        out += i < bucket_labels.size() ? bucket_labels[i] : "+Inf";
        out += "\"} ";
        out += std::to_string(cumulative);
        out += '\n';
      }
      out += "infergrid_http_request_duration_seconds_sum{route=\"";
      out += label;
      out += "\"} ";
      out += prometheus_number(h.sum);
      out += "\ninfergrid_http_request_duration_seconds_count{route=\"";
      out += label;
      out += "\"} ";
      out += std::to_string(h.count);
      out += '\n';
    }
  }
  if (in_flight >= 0) {
    header(out, "infergrid_http_in_flight", "gauge",
           "HTTP requests received and not yet answered.");
    out += "infergrid_http_in_flight ";
    out += std::to_string(in_flight);
    out += '\n';
  }
  if (stats != nullptr) {
    header(out, "infergrid_jobs", "gauge", "Durable jobs by state.");
    for (auto state : job_states) {
      auto i = stats->jobs_by_state.find(state);
      out += "infergrid_jobs{state=\"";
      out += state;
      out += "\"} ";
      out += std::to_string(i == stats->jobs_by_state.end() ? 0 : i->second);
      out += '\n';
    }
    header(out, "infergrid_workers", "gauge",
           "Registered workers: ready, busy and in total.");
    out += "infergrid_workers{state=\"ready\"} ";
    out += std::to_string(stats->workers_ready);
    out += "\ninfergrid_workers{state=\"busy\"} ";
    out += std::to_string(stats->workers_busy);
    out += "\ninfergrid_workers{state=\"total\"} ";
    out += std::to_string(stats->workers_total);
    out += '\n';
    header(out, "infergrid_interactive_waiting", "gauge",
           "Interactive requests waiting for a worker.");
    out += "infergrid_interactive_waiting ";
    out += std::to_string(stats->interactive_waiting);
    out += '\n';
    header(out, "infergrid_sessions", "gauge",
           "Interactive sessions holding a worker (active) or waiting for one.");
    out += "infergrid_sessions{state=\"active\"} ";
    out += std::to_string(stats->sessions_active);
    out += "\ninfergrid_sessions{state=\"waiting\"} ";
    out += std::to_string(stats->sessions_waiting);
    out += '\n';
    render_model_metrics(out, stats->workers);
  }
  return out;
}

namespace {

// `{model="m",worker="w"` (no closing brace: callers add labels, then "}").
std::string model_labels(const std::string& model, const std::string& worker) {
  std::string out = "{model=\"";
  out += prometheus_escape(model);
  out += "\",worker=\"";
  out += prometheus_escape(worker);
  out += '"';
  return out;
}

void sample(std::string& out, const char* name, const std::string& labels,
            const std::string& value) {
  out += name;
  out += labels;
  out += "} ";
  out += value;
  out += '\n';
}

// One family's samples over every (worker, model metrics) pair.
template <class F>
void each_metrics(const std::vector<worker_status>& workers, F&& f) {
  for (auto& w : workers)
    for (auto& m : w.metrics)
      f(model_labels(m.model, w.worker_id), m);
}

// An `le` value as Prometheus clients write it: plain decimals ("0.0001",
// "60"), not the shorter "1e-04", so a bucket keeps one label value.
std::string le_text(double x) {
  auto mag = std::fabs(x);
  if (x == 0 || (mag >= 1e-6 && mag < 1e15)) {
    char buf[64];
    auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), x, std::chars_format::fixed);
    if (ec == std::errc{})
      return std::string(buf, end);
  }
  return prometheus_number(x);
}

// Buckets, sum and count of one label set. The counts are per bucket; the
// exposition wants them cumulative, with +Inf equal to _count.
void histogram_samples(std::string& out, const std::string& name,
                       const std::string& labels, const histogram_data& h) {
  auto bucket = name + "_bucket";
  int64_t cumulative = 0;
  bool shaped = h.counts.size() == h.bounds.size() + 1;
  for (std::size_t i = 0; i < h.bounds.size(); ++i) {
    if (shaped)
      cumulative += h.counts[i];
    sample(out, bucket.c_str(), labels + ",le=\"" + le_text(h.bounds[i]) + '"',
           std::to_string(cumulative));
  }
  // A snapshot without per-bucket counts still has a consistent +Inf.
  auto total = shaped ? cumulative + h.counts.back() : h.count;
  sample(out, bucket.c_str(), labels + ",le=\"+Inf\"", std::to_string(total));
  sample(out, (name + "_sum").c_str(), labels, prometheus_number(h.sum));
  sample(out, (name + "_count").c_str(), labels, std::to_string(total));
}

const char* const worker_phases[] = {
    "LOADING", "IDLE", "BUSY", "SESSION_ACTIVE", "SESSION_PAUSED", "ERROR", "DRAINING"};

} // namespace

void render_model_metrics(std::string& out, const std::vector<worker_status>& workers) {
  header(out, "infergrid_model_requests_total", "counter",
         "Requests and durable jobs a worker ran to an answer, by model.");
  each_metrics(workers, [&](const std::string& labels, const model_metrics& m) {
    sample(out, "infergrid_model_requests_total", labels, std::to_string(m.requests));
  });
  header(out, "infergrid_model_failures_total", "counter",
         "Failed requests and jobs by model and error code.");
  each_metrics(workers, [&](const std::string& labels, const model_metrics& m) {
    for (auto& [code, n] : m.failures)
      sample(out, "infergrid_model_failures_total",
             labels + ",code=\"" + prometheus_escape(code) + '"', std::to_string(n));
  });
  struct histogram_family {
    const char* name;
    const char* help;
    histogram_data model_metrics::*member;
  };
  static constexpr histogram_family histograms[] = {
      {"infergrid_model_queue_seconds",
       "Seconds from arrival (interactive) or due time (durable) to execution start.",
       &model_metrics::queue_seconds},
      {"infergrid_model_compute_seconds", "Executor seconds per batch or call.",
       &model_metrics::compute_seconds},
      {"infergrid_model_batch_size", "Requests per forward call.",
       &model_metrics::batch_size},
  };
  for (auto& family : histograms) {
    header(out, family.name, "histogram", family.help);
    each_metrics(workers, [&](const std::string& labels, const model_metrics& m) {
      histogram_samples(out, family.name, labels, m.*family.member);
    });
  }
  auto generates = [](const model_metrics& m) {
    return m.generated_tokens > 0 || m.generate_seconds > 0;
  };
  auto speaks = [](const model_metrics& m) {
    return m.audio_seconds > 0 || m.synthesis_seconds > 0;
  };
  header(out, "infergrid_model_generated_tokens_total", "counter",
         "Tokens generated (generate models).");
  each_metrics(workers, [&](const std::string& labels, const model_metrics& m) {
    if (generates(m))
      sample(out, "infergrid_model_generated_tokens_total", labels,
             std::to_string(m.generated_tokens));
  });
  header(out, "infergrid_model_generate_seconds_total", "counter",
         "Seconds spent generating tokens (generate models).");
  each_metrics(workers, [&](const std::string& labels, const model_metrics& m) {
    if (generates(m))
      sample(out, "infergrid_model_generate_seconds_total", labels,
             prometheus_number(m.generate_seconds));
  });
  header(out, "infergrid_model_tokens_per_second", "gauge",
         "Generated tokens over generate seconds since the worker started.");
  each_metrics(workers, [&](const std::string& labels, const model_metrics& m) {
    if (m.generate_seconds > 0)
      sample(out, "infergrid_model_tokens_per_second", labels,
             prometheus_number(static_cast<double>(m.generated_tokens)
                               / m.generate_seconds));
  });
  header(out, "infergrid_model_audio_seconds_total", "counter",
         "Seconds of audio synthesised (speech models).");
  each_metrics(workers, [&](const std::string& labels, const model_metrics& m) {
    if (speaks(m))
      sample(out, "infergrid_model_audio_seconds_total", labels,
             prometheus_number(m.audio_seconds));
  });
  header(out, "infergrid_model_synthesis_seconds_total", "counter",
         "Seconds spent synthesising audio (speech models).");
  each_metrics(workers, [&](const std::string& labels, const model_metrics& m) {
    if (speaks(m))
      sample(out, "infergrid_model_synthesis_seconds_total", labels,
             prometheus_number(m.synthesis_seconds));
  });
  header(out, "infergrid_model_real_time_factor", "gauge",
         "Synthesis seconds over audio seconds since the worker started (< 1: "
         "faster than real time).");
  each_metrics(workers, [&](const std::string& labels, const model_metrics& m) {
    if (m.audio_seconds > 0)
      sample(out, "infergrid_model_real_time_factor", labels,
             prometheus_number(m.synthesis_seconds / m.audio_seconds));
  });
  header(out, "infergrid_model_resident", "gauge",
         "1 when the model is loaded (READY) on the worker, else 0.");
  for (auto& w : workers)
    for (auto& m : w.models)
      sample(out, "infergrid_model_resident", model_labels(m.name, w.worker_id),
             m.state == "READY" ? "1" : "0");
  header(out, "infergrid_model_memory_mb", "gauge",
         "Estimated memory of each loaded model (its memory_mb), by worker.");
  for (auto& w : workers)
    for (auto& m : w.models)
      if (m.state == "READY")
        sample(out, "infergrid_model_memory_mb", model_labels(m.name, w.worker_id),
               std::to_string(m.memory_mb));
  header(out, "infergrid_worker_state", "gauge",
         "1 for the phase each worker is in, 0 for the others.");
  for (auto& w : workers) {
    auto worker = "{worker=\"" + prometheus_escape(w.worker_id) + "\",state=\"";
    bool known = false;
    for (auto phase : worker_phases) {
      bool on = w.phase == phase;
      known = known || on;
      sample(out, "infergrid_worker_state", worker + phase + '"', on ? "1" : "0");
    }
    if (!known)
      sample(out, "infergrid_worker_state", worker + prometheus_escape(w.phase) + '"',
             "1");
  }
}

} // namespace infergrid::http
