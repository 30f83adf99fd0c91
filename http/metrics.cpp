// Prometheus counters and histograms of the HTTP layer, plus cluster gauges.
#include "http/metrics.hpp"

#include <charconv>
#include <cmath>

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
  }
  return out;
}

} // namespace infergrid::http
