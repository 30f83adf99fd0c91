// `infergrid bench infer`: a child `infergrid serve`, interactive inference
// over HTTP, and the same models run in this process as the baseline
// (docs/benchmarks.md, "bench infer").
#include "tools/bench/infer_bench.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sched.h>
#include <time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "inference/demo_models.hpp"
#include "inference/model_repository.hpp"
#include "inference/model_runner.hpp"
#include "inference/phrases.hpp"
#include "messages/audio.hpp"
#include "messages/errors.hpp"
#include "messages/tensor.hpp"
#include "tools/bench/format.hpp"
#include "tools/bench/child.hpp"
#include "tools/bench/http_client.hpp"
#include "tools/bench/queue_bench.hpp"

extern char** environ;

namespace infergrid::bench {

namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;
using inference::model_runner;

/// How long a server may take to build the demo models, load and warm them.
constexpr auto ready_deadline = std::chrono::seconds(180);
/// How long SIGTERM may take (shutdown.drain_timeout_ms is 10 s).
constexpr auto stop_deadline = std::chrono::seconds(30);
/// Receive timeout of the bench's connections: a streamed completion or a
/// synthesis must show progress within this.
constexpr int io_timeout_ms = 30'000;
/// Classifier requests and forward() calls before the counted ones.
constexpr int64_t warm_up_requests = 200;
/// Length of the warm-up before each throughput run (not counted).
constexpr double throughput_warm_up_s = 1.0;
/// Length of each direct forward() throughput loop: classifier, heavy model
/// (a call costs ~1 ms, so 1 s is still ~500-1,000 calls).
constexpr double direct_loop_s = 2.0;
constexpr double heavy_direct_loop_s = 1.0;
/// Bytes of a server answer quoted in a failure.
constexpr std::size_t quote_bytes = 300;

const char* const lm_model = "tinylm";
const char* const lm_prompt = "Once upon a time, in a small town by the sea,";
constexpr uint64_t lm_seed = 7;
const char* const speech_model = "tinyspeech";
/// The MLP of section 5, built by the bench into both models directories.
const char* const heavy_model = "heavy";
/// Its batching on server 1 (server 2: max_batch_size 1): batches form only
/// while the worker is busy, so a lone request never waits.
constexpr int64_t heavy_max_batch = 32;
constexpr int64_t heavy_queue_delay_us = 0;
/// Seed of the demo models, as `serve` uses when it builds them itself.
constexpr uint64_t demo_seed = 42;
/// Five sentences, 465 bytes: five phrases for the server's splitter.
const char* const speech_text
    = "The harbour was quiet in the early morning, and the boats rocked gently "
      "against the old stone wall. A few gulls circled over the fish market, "
      "waiting for the first crates to be opened. Down the lane, the baker "
      "pulled fresh loaves from the oven and set them in the window to cool. "
      "Children ran past on their way to school, shouting to each other about "
      "the storm that had kept them awake. By nine o'clock the sun had burned "
      "off the mist, and the town was fully awake.";

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

double micros_since(clock_type::time_point t) {
  return std::chrono::duration<double, std::micro>(clock_type::now() - t).count();
}

/// CPU time of the calling thread.
double thread_cpu_s() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

/// CPU ticks so far and the CPU it last ran on, of a process or thread.
struct thread_sample {
  double ticks = 0;
  int cpu = -1;
};

/// Reads a /proc/.../stat file: after "(comm)" comes the state (field 3);
/// utime and stime are fields 14 and 15, the CPU last run on field 39.
/// false when unreadable.
bool read_stat(const fs::path& path, thread_sample& out) {
  std::ifstream in{path};
  std::string stat;
  std::getline(in, stat);
  auto paren = stat.rfind(')');
  if (paren == std::string::npos)
    return false;
  std::istringstream fields{stat.substr(paren + 1)};
  std::string field;
  out = thread_sample{};
  for (int i = 3; i <= 39 && fields >> field; ++i) {
    if (i == 14 || i == 15)
      out.ticks += std::strtod(field.c_str(), nullptr);
    else if (i == 39)
      out.cpu = std::atoi(field.c_str());
  }
  return static_cast<bool>(fields);
}

/// User + system CPU seconds of process `pid` (all its threads) from
/// /proc/<pid>/stat, to a clock tick (10 ms); -1 when unreadable.
double process_cpu_s(pid_t pid) {
  thread_sample sample;
  if (!read_stat("/proc/" + std::to_string(pid) + "/stat", sample))
    return -1;
  return sample.ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

/// The processes `pid` started that are still running, from
/// /proc/<pid>/task/*/children (empty when the kernel lacks that file).
std::vector<pid_t> child_pids(pid_t pid) {
  std::vector<pid_t> out;
  std::error_code ec;
  fs::directory_iterator tasks{"/proc/" + std::to_string(pid) + "/task", ec};
  if (ec)
    return out;
  for (auto& task : tasks) {
    std::ifstream in{task.path() / "children"};
    for (long child = 0; in >> child;)
      out.push_back(static_cast<pid_t>(child));
  }
  return out;
}

/// process_cpu_s of `pid` plus that of every running descendant: `serve`
/// runs its workers as child processes unless workers.in_process is set.
/// -1 when `pid` is unreadable; a descendant that is not (it just exited)
/// counts 0.
double tree_cpu_s(pid_t pid, int depth = 0) {
  double total = process_cpu_s(pid);
  if (total < 0 || depth >= 4)
    return total;
  for (auto child : child_pids(pid))
    total += std::max(0.0, tree_cpu_s(child, depth + 1));
  return total;
}

/// Context switches (voluntary + involuntary) of every thread of `pid` and
/// of its running descendants so far, from /proc/<pid>/task/*/status; -1
/// when `pid` is unreadable. Each is a thread going to sleep or being
/// preempted: on this VM a wake-up costs more than the classifier's forward.
double tree_switches(pid_t pid, int depth = 0) {
  std::error_code ec;
  fs::directory_iterator tasks{"/proc/" + std::to_string(pid) + "/task", ec};
  if (ec)
    return -1;
  double total = 0;
  for (auto& task : tasks) {
    std::ifstream in{task.path() / "status"};
    for (std::string line; std::getline(in, line);)
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0
          || line.rfind("nonvoluntary_ctxt_switches:", 0) == 0)
        total += std::strtod(line.c_str() + line.find(':') + 1, nullptr);
  }
  if (depth < 4)
    for (auto child : child_pids(pid))
      total += std::max(0.0, tree_switches(child, depth + 1));
  return total;
}

/// thread_sample of every thread of `pid` and of its running descendants,
/// from /proc/<pid>/task/*/stat.
void tree_thread_samples(pid_t pid, std::map<pid_t, thread_sample>& out, int depth = 0) {
  std::error_code ec;
  fs::directory_iterator tasks{"/proc/" + std::to_string(pid) + "/task", ec};
  if (ec)
    return;
  for (auto& task : tasks) {
    thread_sample sample;
    if (read_stat(task.path() / "stat", sample))
      out[static_cast<pid_t>(std::atol(task.path().filename().c_str()))] = sample;
  }
  if (depth < 4)
    for (auto child : child_pids(pid))
      tree_thread_samples(child, out, depth + 1);
}

/// The CPU that the busiest thread of `after` (most ticks since `before`)
/// last ran on; -1 when no thread used a tick.
int busiest_thread_cpu(const std::map<pid_t, thread_sample>& before,
                       const std::map<pid_t, thread_sample>& after) {
  double most = 0;
  int cpu = -1;
  for (auto& [tid, now] : after) {
    auto i = before.find(tid);
    double used = now.ticks - (i == before.end() ? 0 : i->second.ticks);
    if (used > most) {
      most = used;
      cpu = now.cpu;
    }
  }
  return cpu;
}

std::string clip(std::string_view s, std::size_t n = quote_bytes) {
  std::string out{s.substr(0, n)};
  for (auto& c : out)
    if (c == '\n' || c == '\r')
      c = ' ';
  if (s.size() > n)
    out += "...";
  return out;
}

/// One classifier row, as tests/integration/harness.py's classifier_input(1).
std::vector<float> classifier_row() {
  std::vector<float> row;
  for (int i = 0; i < 16; ++i)
    row.push_back(static_cast<float>(((i * 7) % 13) / 13.0 - 0.5));
  return row;
}

std::string infer_body() {
  std::string data;
  for (auto x : classifier_row()) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%.9g", data.empty() ? "" : ",", x);
    data += buf;
  }
  return R"({"inputs":[{"name":"x","shape":[1,16],"datatype":"FP32","data":[)" + data
         + "]}]}";
}

std::string completion_body(int tokens) {
  nlohmann::json body{{"model", lm_model},
                      {"prompt", lm_prompt},
                      {"max_tokens", tokens},
                      {"temperature", 0},
                      {"seed", lm_seed},
                      {"stream", true},
                      {"stream_options", {{"include_usage", true}}}};
  return body.dump();
}

std::string speech_body() {
  nlohmann::json body{
      {"model", speech_model}, {"input", speech_text}, {"response_format", "wav"}};
  return body.dump();
}

/// The params of completion_body() as model_runner::generate takes them.
inference::generate_params generate_params_of(int tokens) {
  inference::generate_params p;
  p.prompt = lm_prompt;
  p.max_tokens = tokens;
  p.temperature = 0;
  p.has_seed = true;
  p.seed = lm_seed;
  return p;
}

// -- figures -----------------------------------------------------------------

struct latency_summary {
  int64_t n = 0;
  double p50 = 0;
  double p90 = 0;
  double p99 = 0;
  double mean = 0;
};

/// Nearest-rank percentiles.
latency_summary summarize(std::vector<double> xs) {
  latency_summary s;
  if (xs.empty())
    return s;
  std::sort(xs.begin(), xs.end());
  auto at = [&](double q) {
    auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(xs.size())));
    return xs[std::min(xs.size() - 1, rank > 0 ? rank - 1 : 0)];
  };
  s.n = static_cast<int64_t>(xs.size());
  s.p50 = at(0.50);
  s.p90 = at(0.90);
  s.p99 = at(0.99);
  double total = 0;
  for (auto x : xs)
    total += x;
  s.mean = total / static_cast<double>(xs.size());
  return s;
}

/// A non-2xx answer or a failed exchange, for a section's problem line.
std::string problem_of(const std::string& what, const http_response& resp,
                       const std::string& error, bool exchanged) {
  if (!exchanged)
    return what + ": no answer: " + error;
  std::string hint;
  if (resp.status == 404 || resp.status == 405 || resp.status == 501)
    hint = " (route or model not available in this server)";
  return what + ": HTTP " + std::to_string(resp.status) + hint + ": " + clip(resp.body);
}

/// The sum over all lines of a /metrics page that start with `prefix` (a
/// metric name with the start of its labels); -1 when none does.
double metric_sum(const std::string& page, const std::string& prefix) {
  double total = 0;
  bool seen = false;
  std::istringstream in{page};
  for (std::string line; std::getline(in, line);) {
    if (line.compare(0, prefix.size(), prefix) != 0)
      continue;
    auto space = line.rfind(' ');
    if (space == std::string::npos)
      continue;
    total += std::strtod(line.c_str() + space + 1, nullptr);
    seen = true;
  }
  return seen ? total : -1;
}

/// Requests per forward call of `model` so far: {sum, count}, from the
/// infergrid_model_batch_size histogram; {-1, -1} when absent.
std::pair<double, double> batch_histogram(uint16_t port, const std::string& model) {
  http_connection conn{port, io_timeout_ms};
  http_response resp;
  std::string error;
  if (!conn.exchange(http_request("GET", "/metrics"), resp, error) || resp.status != 200)
    return {-1, -1};
  auto label = "{model=\"" + model + "\"";
  return {metric_sum(resp.body, "infergrid_model_batch_size_sum" + label),
          metric_sum(resp.body, "infergrid_model_batch_size_count" + label)};
}

// -- the child server ----------------------------------------------------------

/// A child `infergrid serve --workers 1` on a free loopback port, logging at
/// warn to a file. Killed when destroyed while still running. Belongs to the
/// thread that made it.
class server_process {
public:
  server_process(std::string data, std::string models, std::string log)
      : data_(std::move(data)), models_(std::move(models)), log_(std::move(log)) {}

  ~server_process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      wait_for_exit(pid_, stop_deadline);
    }
  }

  server_process(const server_process&) = delete;
  server_process& operator=(const server_process&) = delete;

  /// Forks and execs; then polls /readyz until it answers 200. The bench
  /// process may have threads (LibTorch, clients) by now, so the child only
  /// calls dup2 and execve: everything else is prepared before fork().
  bool start(std::string& error) {
    port_ = free_loopback_port();
    if (port_ == 0) {
      error = "no free loopback port";
      return false;
    }
    std::vector<std::string> args{
        "infergrid",           "serve",      "--host",      "127.0.0.1",    "--port",
        std::to_string(port_), "--data-dir", data_,         "--models-dir", models_,
        "--workers",           "1",          "--log-level", "warn"};
    // Flags beat the environment; a configuration file would not.
    std::vector<std::string> env;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e)
      if (std::strncmp(*e, "CONFIG_PATH=", 12) != 0)
        env.emplace_back(*e);
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<char*> envp;
    for (auto& e : env)
      envp.push_back(e.data());
    envp.push_back(nullptr);
    int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
      error = "cannot open " + log_ + ": " + std::strerror(errno);
      return false;
    }
    static const char exec_failed[] = "bench infer: exec /proc/self/exe failed\n";
    std::cout.flush();
    std::cerr.flush();
    std::fflush(nullptr);
    started_ = clock_type::now();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
      ::execve("/proc/self/exe", argv.data(), envp.data());
      auto ignored = ::write(STDERR_FILENO, exec_failed, sizeof exec_failed - 1);
      static_cast<void>(ignored);
      ::_exit(127);
    }
    ::close(fd);
    if (pid_ < 0) {
      error = std::string{"fork: "} + std::strerror(errno);
      return false;
    }
    http_connection conn{port_, 2000};
    auto request = http_request("GET", "/readyz");
    for (;;) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        error = "the server ended before it was ready (" + describe_status(status) + ")";
        return false;
      }
      http_response resp;
      std::string ignored;
      if (conn.exchange(request, resp, ignored) && resp.status == 200)
        break;
      if (clock_type::now() - started_ > ready_deadline) {
        error = "the server was not ready after " + std::to_string(ready_deadline.count())
                + " s";
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ready_s_ = seconds_since(started_);
    return true;
  }

  /// SIGTERM, then waits for the exit; true when it exited 0. Kills it
  /// after stop_deadline.
  bool stop() {
    if (pid_ <= 0)
      return false;
    ::kill(pid_, SIGTERM);
    auto t = clock_type::now();
    int status = wait_for_exit(pid_, stop_deadline);
    stop_s_ = seconds_since(t);
    exit_ = describe_status(status);
    if (status < 0) {
      ::kill(pid_, SIGKILL);
      wait_for_exit(pid_, stop_deadline);
    }
    pid_ = -1;
    return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }

  uint16_t port() const {
    return port_;
  }
  /// CPU time the server and its worker processes have used so far; -1 when
  /// not running.
  double cpu_s() const {
    return pid_ > 0 ? tree_cpu_s(pid_) : -1;
  }
  /// Context switches of the server's and its workers' threads so far.
  double switches() const {
    return pid_ > 0 ? tree_switches(pid_) : -1;
  }
  /// CPU ticks and last CPU of every thread of the server and its workers.
  std::map<pid_t, thread_sample> thread_samples() const {
    std::map<pid_t, thread_sample> out;
    if (pid_ > 0)
      tree_thread_samples(pid_, out);
    return out;
  }
  const std::string& log() const {
    return log_;
  }
  double ready_s() const {
    return ready_s_;
  }
  double stop_s() const {
    return stop_s_;
  }
  const std::string& exit_text() const {
    return exit_;
  }

private:
  std::string data_;
  std::string models_;
  std::string log_;
  uint16_t port_ = 0;
  pid_t pid_ = -1;
  clock_type::time_point started_;
  double ready_s_ = 0;
  double stop_s_ = 0;
  std::string exit_ = "not stopped";
};

// -- in-process models ---------------------------------------------------------

/// Loads `name` from the models directory on the device its config names
/// (as the server does) and warms it up.
caf::expected<std::unique_ptr<model_runner>> load_runner(const std::string& models_dir,
                                                         const std::string& name) {
  for (auto& entry : inference::scan_model_repository(models_dir)) {
    if (entry.info.name != name)
      continue;
    if (!entry.error.empty())
      return make_error(errc::unavailable, name + ": " + entry.error);
    auto runner = model_runner::load(entry.info, entry.dir);
    if (!runner)
      return runner.error();
    if (auto warm = (*runner)->warm_up(); !warm)
      return warm.error();
    return std::move(*runner);
  }
  return make_error(errc::not_found, "no model '" + name + "' in " + models_dir);
}

// -- 1. classifier latency -----------------------------------------------------

struct http_latency {
  std::string problem;
  latency_summary us;
  double rps = 0;
  /// The server's CPU time per counted request; -1 unknown.
  double server_cpu_us = -1;
  /// Context switches of the server's threads per counted request; -1 unknown.
  double server_switches = -1;
};

/// `requests` classifier requests (or, with `floor`, GET /healthz) one at a
/// time over one keep-alive connection, after warm_up_requests not counted.
http_latency measure_http_latency(const server_process& server, int64_t requests,
                                  bool floor = false) {
  http_latency out;
  auto port = server.port();
  double cpu0 = -1;
  double sw0 = -1;
  const std::string what = floor ? "GET /healthz" : "POST /v2/models/classifier/infer";
  const auto request
      = floor ? http_request("GET", "/healthz")
              : http_request("POST", "/v2/models/classifier/infer", infer_body());
  http_connection conn{port, io_timeout_ms};
  http_response resp;
  std::string error;
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(requests));
  auto started = clock_type::now();
  for (int64_t i = -warm_up_requests; i < requests; ++i) {
    if (i == 0) {
      cpu0 = server.cpu_s();
      sw0 = server.switches();
      started = clock_type::now();
    }
    auto sent = clock_type::now();
    bool ok = conn.exchange(request, resp, error);
    double us = micros_since(sent);
    if (!ok || resp.status != 200) {
      out.problem = problem_of(what, resp, error, ok);
      return out;
    }
    if (!floor && i == -warm_up_requests
        && resp.body.find("\"outputs\"") == std::string::npos) {
      out.problem = what + ": 200 without \"outputs\": " + clip(resp.body);
      return out;
    }
    if (i >= 0)
      lat.push_back(us);
  }
  out.rps = static_cast<double>(requests) / seconds_since(started);
  out.us = summarize(std::move(lat));
  auto cpu1 = server.cpu_s();
  if (cpu0 >= 0 && cpu1 >= 0)
    out.server_cpu_us = (cpu1 - cpu0) * 1e6 / static_cast<double>(requests);
  auto sw1 = server.switches();
  if (sw0 >= 0 && sw1 >= 0)
    out.server_switches = (sw1 - sw0) / static_cast<double>(requests);
  return out;
}

struct direct_latency {
  std::string problem;
  latency_summary us;
  /// CPU time per forward() call.
  double cpu_us = -1;
};

/// forward() on the same [1, 16] input, timed call by call.
direct_latency measure_direct_latency(model_runner& m, int64_t requests) {
  direct_latency out;
  std::vector<tensor_data> input{make_float_tensor("x", {1, 16}, classifier_row())};
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(requests));
  double cpu0 = 0;
  for (int64_t i = -warm_up_requests; i < requests; ++i) {
    if (i == 0)
      cpu0 = thread_cpu_s();
    auto t = clock_type::now();
    auto r = m.forward(input);
    double us = micros_since(t);
    if (!r) {
      out.problem = "direct forward(): " + message_of(r.error());
      return out;
    }
    if (i >= 0)
      lat.push_back(us);
  }
  out.cpu_us = (thread_cpu_s() - cpu0) * 1e6 / static_cast<double>(requests);
  out.us = summarize(std::move(lat));
  return out;
}

// -- 2. generation -------------------------------------------------------------

/// Reads an OpenAI completion stream (text/event-stream) as it arrives.
struct completion_stream_reader {
  clock_type::time_point sent;
  /// Seconds from the send to the first non-empty choices[0].text; -1 if none.
  double first_text_s = -1;
  /// Seconds from the send to the last non-empty text, and the first text's
  /// bytes: the rate after the first token leaves the stream's fixed costs out.
  double last_text_s = -1;
  std::size_t first_text_bytes = 0;
  std::string text;
  /// usage.completion_tokens of the usage chunk; -1 without one.
  int64_t usage_tokens = -1;
  std::string finish_reason;
  bool done = false;
  int events = 0;
  std::string problem;
  std::string pending;

  void feed(std::string_view piece) {
    pending.append(piece.data(), piece.size());
    std::size_t end;
    while ((end = pending.find("\n\n")) != std::string::npos) {
      auto event = pending.substr(0, end);
      pending.erase(0, end + 2);
      on_event(event);
    }
  }

  void on_event(const std::string& event) {
    std::string data;
    bool has_data = false;
    std::istringstream in{event};
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r')
        line.pop_back();
      if (line.compare(0, 5, "data:") != 0)
        continue; // comments (": keep-alive"), id:, event:
      auto value = line.substr(5);
      if (!value.empty() && value.front() == ' ')
        value.erase(0, 1);
      data += (has_data ? "\n" : "") + value;
      has_data = true;
    }
    if (!has_data || !problem.empty())
      return;
    ++events;
    if (data == "[DONE]") {
      done = true;
      return;
    }
    if (done) {
      problem = "data after [DONE]: " + clip(data);
      return;
    }
    auto j = nlohmann::json::parse(data, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      problem = "an event that is not a JSON object: " + clip(data);
      return;
    }
    if (j.contains("error")) {
      problem = "error event: " + clip(data);
      return;
    }
    auto choices = j.find("choices");
    if (choices != j.end() && choices->is_array() && !choices->empty()) {
      auto& c0 = (*choices)[0];
      auto t = c0.find("text");
      if (t != c0.end() && t->is_string()) {
        auto delta = t->get<std::string>();
        if (!delta.empty()) {
          last_text_s = seconds_since(sent);
          if (first_text_s < 0) {
            first_text_s = last_text_s;
            first_text_bytes = delta.size();
          }
        }
        text += delta;
      }
      auto f = c0.find("finish_reason");
      if (f != c0.end() && f->is_string())
        finish_reason = f->get<std::string>();
    }
    auto usage = j.find("usage");
    if (usage != j.end() && usage->is_object()) {
      auto n = usage->find("completion_tokens");
      if (n != usage->end() && n->is_number_integer())
        usage_tokens = n->get<int64_t>();
    }
  }
};

struct generation_section {
  std::string http_problem;
  std::string direct_problem;
  int64_t http_tokens = 0;
  /// The server's CPU time over the counted streams; -1 unknown.
  double server_cpu_s = -1;
  double http_seconds = 0;
  latency_summary http_first_ms;
  /// After the first token: text bytes (= tokens of a byte-level model)
  /// from the second on, and the seconds from the first text to the last.
  int64_t http_decode_tokens = 0;
  double http_decode_seconds = 0;
  int64_t direct_decode_tokens = 0;
  double direct_decode_seconds = 0;
  bool usage_seen = true;
  std::string http_text;
  std::string finish_reason;
  int64_t direct_tokens = 0;
  double direct_seconds = 0;
  double direct_cpu_s = 0;
  latency_summary direct_first_ms;
  /// From the last text to the end of the response (HTTP: the final chunk,
  /// [DONE] and the chunked body's end; direct: generate() returning).
  latency_summary http_tail_ms;
  latency_summary direct_tail_ms;
  std::vector<double> http_tail; // ms per counted run, summarised above
  std::vector<double> direct_tail;
  std::string direct_text;
  /// Per counted run: the CPU the generating thread last ran on (-1 when
  /// unknown) and its tokens/s. On a VM whose vCPUs differ in speed, only
  /// runs on the same CPU compare fairly (docs/benchmarks.md).
  std::vector<std::pair<int, double>> http_runs;
  std::vector<std::pair<int, double>> direct_runs;
};

/// One streamed completion; false with `out.http_problem` set on failure.
bool one_stream(http_connection& conn, const std::string& request, bool counted,
                generation_section& out, std::vector<double>& first_ms) {
  completion_stream_reader reader;
  http_response resp;
  std::string error;
  reader.sent = clock_type::now();
  bool ok = conn.exchange(request, resp, error,
                          [&](std::string_view piece) { reader.feed(piece); });
  double s = seconds_since(reader.sent);
  if (!ok || resp.status != 200) {
    out.http_problem = problem_of("POST /v1/completions (stream)", resp, error, ok);
    return false;
  }
  if (!reader.pending.empty())
    reader.on_event(reader.pending);
  std::string why;
  if (!reader.problem.empty())
    why = reader.problem;
  else if (!reader.done)
    why = "the stream ended without data: [DONE] after " + std::to_string(reader.events)
          + " event(s); body: " + clip(resp.body);
  else if (reader.first_text_s < 0)
    why = "no text in " + std::to_string(reader.events) + " event(s)";
  if (!why.empty()) {
    out.http_problem = "POST /v1/completions (stream): " + why;
    return false;
  }
  // Byte-level tokens: without a usage chunk, the text's bytes.
  auto tokens = reader.usage_tokens >= 0 ? reader.usage_tokens
                                         : static_cast<int64_t>(reader.text.size());
  if (!counted)
    return true;
  if (reader.usage_tokens < 0)
    out.usage_seen = false;
  out.http_tokens += tokens;
  out.http_seconds += s;
  out.http_decode_tokens
      += static_cast<int64_t>(reader.text.size() - reader.first_text_bytes);
  out.http_decode_seconds += reader.last_text_s - reader.first_text_s;
  first_ms.push_back(reader.first_text_s * 1e3);
  out.http_tail.push_back((s - reader.last_text_s) * 1e3);
  out.http_text = reader.text;
  out.finish_reason = reader.finish_reason;
  return true;
}

/// One generate() in this process; false with `out.direct_problem` set.
bool one_generate(model_runner& lm, const inference::generate_params& params,
                  bool counted, generation_section& out, std::vector<double>& first_ms) {
  auto cpu0 = thread_cpu_s();
  auto t = clock_type::now();
  double first = -1;
  double last = -1;
  std::size_t first_bytes = 0;
  auto r = lm.generate(params, [&](const std::string& delta) {
    if (!delta.empty()) {
      last = seconds_since(t);
      if (first < 0) {
        first = last;
        first_bytes = delta.size();
      }
    }
    return true;
  });
  double s = seconds_since(t);
  double cpu = thread_cpu_s() - cpu0;
  if (!r) {
    out.direct_problem = "direct generate(): " + message_of(r.error());
    return false;
  }
  if (!counted)
    return true;
  out.direct_tokens += r->tokens;
  out.direct_seconds += s;
  out.direct_decode_tokens += static_cast<int64_t>(r->text.size() - first_bytes);
  out.direct_decode_seconds += last - first;
  out.direct_cpu_s += cpu;
  first_ms.push_back(first * 1e3);
  out.direct_tail.push_back((s - last) * 1e3);
  out.direct_text = r->text;
  if (s > 0)
    out.direct_runs.emplace_back(::sched_getcpu(), static_cast<double>(r->tokens) / s);
  return true;
}

/// `streams` streamed completions, each followed by the same generate() in
/// this process (alternating, so both see the same machine), after one of
/// each not counted.
generation_section measure_generation(const server_process& server, model_runner* lm,
                                      int tokens, int streams) {
  generation_section out;
  auto port = server.port();
  double cpu0 = -1;
  const auto request = http_request("POST", "/v1/completions", completion_body(tokens));
  const auto params = generate_params_of(tokens);
  http_connection conn{port, io_timeout_ms};
  std::vector<double> http_first;
  std::vector<double> direct_first;
  bool http_on = true;
  bool direct_on = lm != nullptr;
  for (int i = -1; i < streams && (http_on || direct_on); ++i) {
    // The server idles while this process generates.
    if (i == 0)
      cpu0 = server.cpu_s();
    if (http_on) {
      auto before = i >= 0 ? server.thread_samples() : std::map<pid_t, thread_sample>{};
      auto tokens0 = out.http_tokens;
      auto seconds0 = out.http_seconds;
      http_on = one_stream(conn, request, i >= 0, out, http_first);
      if (http_on && i >= 0 && out.http_seconds > seconds0) {
        out.http_runs.emplace_back(busiest_thread_cpu(before, server.thread_samples()),
                                   static_cast<double>(out.http_tokens - tokens0)
                                       / (out.http_seconds - seconds0));
      }
    }
    if (direct_on)
      direct_on = one_generate(*lm, params, i >= 0, out, direct_first);
  }
  auto cpu1 = server.cpu_s();
  if (cpu0 >= 0 && cpu1 >= 0 && http_on)
    out.server_cpu_s = cpu1 - cpu0;
  out.http_first_ms = summarize(std::move(http_first));
  out.direct_first_ms = summarize(std::move(direct_first));
  out.http_tail_ms = summarize(std::move(out.http_tail));
  out.direct_tail_ms = summarize(std::move(out.direct_tail));
  return out;
}

// -- 3. speech -----------------------------------------------------------------

struct speech_section {
  std::string http_problem;
  std::string direct_problem;
  double audio_s = 0;
  int64_t sample_rate = 0;
  int64_t http_samples = 0;
  std::vector<double> http_wall_s;
  /// Wall time / WAV duration, per request.
  std::vector<double> http_wall_rtf;
  /// X-Real-Time-Factor per request; empty when a response lacked it.
  std::vector<double> server_rtf;
  bool server_rtf_missing = false;
  /// The server's CPU time over the counted requests; -1 unknown.
  double server_cpu_s = -1;
  std::size_t phrases = 0;
  /// CPU time of the phrase-by-phrase syntheses counted.
  double direct_cpu_s = 0;
  int64_t direct_samples = 0;
  std::vector<double> direct_phrases_s;
  std::vector<double> direct_phrases_rtf;
  std::vector<double> direct_whole_s;
  std::vector<double> direct_whole_rtf;
};

double best(const std::vector<double>& xs) {
  return xs.empty() ? 0 : *std::min_element(xs.begin(), xs.end());
}

/// One POST /v1/audio/speech; false with `out.http_problem` set on failure.
bool one_speech(http_connection& conn, const std::string& request, bool counted,
                speech_section& out) {
  http_response resp;
  std::string error;
  auto t = clock_type::now();
  bool ok = conn.exchange(request, resp, error);
  double s = seconds_since(t);
  if (!ok || resp.status != 200) {
    out.http_problem = problem_of("POST /v1/audio/speech", resp, error, ok);
    return false;
  }
  auto wav = parse_wav(resp.body);
  if (!wav) {
    out.http_problem = "POST /v1/audio/speech: not a WAV (" + message_of(wav.error())
                       + "); Content-Type " + resp.header("Content-Type") + ", "
                       + std::to_string(resp.body.size()) + " bytes";
    return false;
  }
  if (wav->channels != 1 || wav->bits_per_sample != 16 || wav->sample_rate <= 0
      || wav->data_bytes <= 0) {
    out.http_problem = "POST /v1/audio/speech: WAV with " + std::to_string(wav->channels)
                       + " channel(s), " + std::to_string(wav->bits_per_sample)
                       + " bits, " + std::to_string(wav->sample_rate) + " Hz, "
                       + std::to_string(wav->data_bytes)
                       + " data bytes (expected mono PCM16 with samples)";
    return false;
  }
  out.sample_rate = wav->sample_rate;
  out.http_samples = wav->data_bytes / 2;
  out.audio_s
      = static_cast<double>(out.http_samples) / static_cast<double>(wav->sample_rate);
  if (!counted)
    return true;
  out.http_wall_s.push_back(s);
  out.http_wall_rtf.push_back(s / out.audio_s);
  auto rtf = resp.header("X-Real-Time-Factor");
  if (rtf.empty())
    out.server_rtf_missing = true;
  else
    out.server_rtf.push_back(std::strtod(rtf.c_str(), nullptr));
  return true;
}

/// synthesize() in this process: phrase by phrase as the executor does
/// (actors/executor.cpp, inference::split_phrases), then the whole text in
/// one call. False with `out.direct_problem` set on failure.
bool one_synthesis(model_runner& tts, bool counted, speech_section& out) {
  auto rate = static_cast<double>(tts.info().sample_rate);
  if (rate <= 0) {
    out.direct_problem = "tinyspeech: no sample_rate in its config";
    return false;
  }
  auto phrases = inference::split_phrases(speech_text);
  out.phrases = phrases.size();
  auto cpu0 = thread_cpu_s();
  auto t = clock_type::now();
  int64_t samples = 0;
  for (auto& phrase : phrases) {
    auto r = tts.synthesize(phrase);
    if (!r) {
      out.direct_problem = "direct synthesize(): " + message_of(r.error());
      return false;
    }
    samples += static_cast<int64_t>(r->size());
  }
  double by_phrase_s = seconds_since(t);
  double cpu = thread_cpu_s() - cpu0;
  t = clock_type::now();
  auto whole = tts.synthesize(speech_text);
  double whole_s = seconds_since(t);
  if (!whole) {
    out.direct_problem = "direct synthesize(): " + message_of(whole.error());
    return false;
  }
  out.direct_samples = samples;
  if (!counted || samples == 0 || whole->empty())
    return true;
  out.direct_cpu_s += cpu;
  out.direct_phrases_s.push_back(by_phrase_s);
  out.direct_phrases_rtf.push_back(by_phrase_s / (static_cast<double>(samples) / rate));
  out.direct_whole_s.push_back(whole_s);
  out.direct_whole_rtf.push_back(whole_s / (static_cast<double>(whole->size()) / rate));
  return true;
}

/// `requests` speech requests, each followed by the same synthesis in this
/// process (alternating), after one of each not counted.
speech_section measure_speech(const server_process& server, model_runner* tts,
                              int requests) {
  speech_section out;
  auto port = server.port();
  double cpu0 = -1;
  const auto request = http_request("POST", "/v1/audio/speech", speech_body());
  http_connection conn{port, io_timeout_ms};
  bool http_on = true;
  bool direct_on = tts != nullptr;
  for (int i = -1; i < requests && (http_on || direct_on); ++i) {
    // The server idles while this process synthesises.
    if (i == 0)
      cpu0 = server.cpu_s();
    if (http_on)
      http_on = one_speech(conn, request, i >= 0, out);
    if (direct_on)
      direct_on = one_synthesis(*tts, i >= 0, out);
  }
  auto cpu1 = server.cpu_s();
  if (cpu0 >= 0 && cpu1 >= 0 && http_on)
    out.server_cpu_s = cpu1 - cpu0;
  return out;
}

// -- 4. and 5. throughput --------------------------------------------------------

struct throughput_run {
  std::string problem;
  double rps = 0;
  latency_summary latency_us;
  /// Requests per forward call during the run; -1 when /metrics lacks it.
  double mean_batch = -1;
  /// The server's CPU time per request during the run; -1 unknown.
  double server_cpu_us = -1;
};

std::string statuses(const load_result& r) {
  std::string out;
  for (auto& [status, n] : r.statuses)
    out += (out.empty() ? "" : ", ") + std::to_string(n) + " x " + std::to_string(status);
  if (r.errors > 0)
    out += (out.empty() ? "" : ", ") + std::to_string(r.errors) + " without answer";
  return out;
}

/// A warm-up, then `connections` closed-loop clients sending one [1,16] row
/// to `model` (the classifier or an MLP of make_mlp_model) for `seconds`.
throughput_run measure_throughput(const server_process& server, const std::string& model,
                                  double seconds, int connections) {
  throughput_run out;
  auto port = server.port();
  auto route = "/v2/models/" + model + "/infer";
  const auto request = http_request("POST", route, infer_body());
  auto what = "POST " + route + " x " + std::to_string(connections);
  auto warm = drive_for(port, request, throughput_warm_up_s, connections);
  if (warm.ok == 0 || warm.ok != static_cast<int64_t>(warm.latencies_us.size())) {
    out.problem = what + " (warm-up): " + statuses(warm)
                  + "; first problem: " + clip(warm.first_problem);
    return out;
  }
  auto before = batch_histogram(port, model);
  auto cpu0 = server.cpu_s();
  auto run = drive_for(port, request, seconds, connections);
  auto cpu1 = server.cpu_s();
  auto after = batch_histogram(port, model);
  if (run.ok == 0 || run.ok != static_cast<int64_t>(run.latencies_us.size())) {
    out.problem
        = what + ": " + statuses(run) + "; first problem: " + clip(run.first_problem);
    return out;
  }
  out.rps = static_cast<double>(run.ok) / run.seconds;
  if (cpu0 >= 0 && cpu1 >= 0)
    out.server_cpu_us = (cpu1 - cpu0) * 1e6 / static_cast<double>(run.ok);
  out.latency_us = summarize(std::move(run.latencies_us));
  if (before.second >= 0 && after.second > before.second)
    out.mean_batch = (after.first - before.first) / (after.second - before.second);
  return out;
}

/// forward() on a [batch, 16] input for `seconds` (after a warm-up of at most
/// 100 calls or ~0.2 s): rows per second; -1 and `problem` set on failure.
/// With `cpu_ms`, also this thread's CPU time per call in ms, which other
/// processes on the machine move much less than the wall time.
double direct_rows_per_s(model_runner& m, int batch, double seconds, std::string& problem,
                         double* cpu_ms = nullptr) {
  std::vector<float> rows;
  auto row = classifier_row();
  for (int i = 0; i < batch; ++i)
    rows.insert(rows.end(), row.begin(), row.end());
  std::vector<tensor_data> input{make_float_tensor("x", {batch, 16}, rows)};
  auto call = [&] {
    auto r = m.forward(input);
    if (!r)
      problem = "direct forward() at batch " + std::to_string(batch) + ": "
                + message_of(r.error());
    return static_cast<bool>(r);
  };
  auto warm = clock_type::now();
  for (int i = 0; i < 100 && seconds_since(warm) < 0.2; ++i)
    if (!call())
      return -1;
  int64_t calls = 0;
  auto cpu0 = thread_cpu_s();
  auto t = clock_type::now();
  double elapsed = 0;
  do {
    if (!call())
      return -1;
    ++calls;
    elapsed = seconds_since(t);
  } while (elapsed < seconds);
  if (cpu_ms != nullptr)
    *cpu_ms = (thread_cpu_s() - cpu0) * 1e3 / static_cast<double>(calls);
  return static_cast<double>(calls * batch) / elapsed;
}

/// Rewrites the line `max_batch_size: N` of `config` to `max_batch_size: 1`.
/// Empty on success, else why not.
std::string rewrite_to_batch1(const fs::path& config) {
  std::ifstream in{config};
  if (!in)
    return "cannot read " + config.string();
  std::string text;
  int rewritten = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.compare(0, 15, "max_batch_size:") == 0) {
      line = "max_batch_size: 1";
      ++rewritten;
    }
    text += line + '\n';
  }
  in.close();
  if (rewritten != 1)
    return config.string() + " has " + std::to_string(rewritten)
           + " max_batch_size lines (expected 1)";
  std::ofstream out{config, std::ios::trunc};
  out << text;
  out.close();
  if (!out)
    return "cannot write " + config.string();
  return {};
}

/// Copies `from` to `to` and rewrites the max_batch_size of `models` there
/// to 1. Empty on success, else why not.
std::string make_batch1_models(const std::string& from, const std::string& to,
                               std::initializer_list<const char*> models) {
  std::error_code ec;
  fs::copy(from, to, fs::copy_options::recursive, ec);
  if (ec)
    return "cannot copy " + from + " to " + to + ": " + ec.message();
  for (auto* model : models)
    if (auto why = rewrite_to_batch1(fs::path{to} / model / "config.yaml"); !why.empty())
      return why;
  return {};
}

// -- output --------------------------------------------------------------------

std::string us_text(double x) {
  return fixed(x, x < 100 ? 1 : 0);
}

std::string ms_text(double x) {
  return fixed(x, x < 10 ? 2 : 1);
}

/// Prints FAILED lines for the non-empty problems; true when there were any.
bool print_failures(std::initializer_list<const std::string*> problems) {
  bool any = false;
  for (auto* p : problems)
    if (!p->empty()) {
      std::printf("FAILED: %s\n", p->c_str());
      any = true;
    }
  return any;
}

/// Rounds for the JSON line.
double round_to(double x, int digits) {
  double f = std::pow(10.0, digits);
  return std::round(x * f) / f;
}

/// A figure for the JSON line; null when it was not measured.
nlohmann::ordered_json figure(bool measured, double x, int digits) {
  return measured ? nlohmann::ordered_json(round_to(x, digits))
                  : nlohmann::ordered_json(nullptr);
}

void progress(const char* what) {
  std::cout << what << std::flush;
}

} // namespace

int run_bench_infer(const infer_bench_options& opts) {
  auto dir = make_bench_dir(opts.dir, "infergrid-bench-infer");
  if (dir.empty()) {
    std::cerr << "bench infer: cannot create a directory under "
              << (opts.dir.empty() ? "$TMPDIR or /tmp" : opts.dir) << ": "
              << std::strerror(errno) << '\n';
    return 1;
  }
  scratch_dir guard{dir};
  auto path = [&](const char* name) { return (fs::path{dir} / name).string(); };
  auto models = path("models");
  auto models_b1 = path("models-batch1");
  std::error_code ec;
  fs::create_directories(path("data"), ec);
  fs::create_directories(path("data-batch1"), ec);
  fs::create_directories(models, ec);

  std::cout << "bench infer: interactive inference over HTTP through a child `infergrid "
               "serve --workers 1`, beside the same models run in this process "
               "(model_runner, 1 intra-op thread)\nfiles in "
            << dir << '\n'
            << std::flush;

  // One LibTorch thread here, as the server's default workers.intra_op_threads;
  // set before any LibTorch work.
  inference::configure_runtime(1);

  // The models of server 1: the demo models as `serve` (or make-models)
  // writes them, and the heavy MLP of section 5.
  std::string error;
  if (auto made = inference::make_demo_models(models, demo_seed); !made)
    error = "make_demo_models: " + message_of(made.error());
  else if (auto heavy_made = inference::make_mlp_model(
               models, heavy_model, opts.heavy_width, opts.heavy_depth, heavy_max_batch,
               heavy_queue_delay_us, demo_seed);
           !heavy_made)
    error = "make_mlp_model: " + message_of(heavy_made.error());
  if (!error.empty()) {
    guard.keep = true;
    std::cerr << "bench infer: " << error << '\n';
    return 1;
  }

  // Server 1: those models with their batching configs.
  server_process server{path("data"), models, path("serve.log")};
  if (!server.start(error)) {
    guard.keep = true;
    std::cerr << "bench infer: " << error << "\nserver log (" << server.log()
              << ", kept):\n"
              << log_tail(server.log());
    return 1;
  }
  std::cout << "server 1: 127.0.0.1:" << server.port() << ", ready "
            << fixed(server.ready_s(), 1) << " s after start\n"
            << std::flush;

  // The baselines: the models server 1 serves, loaded here.
  auto load = [&](const char* name, std::string& problem) {
    std::unique_ptr<model_runner> m;
    auto r = load_runner(models, name);
    if (r)
      m = std::move(*r);
    else
      problem = "direct baseline: " + message_of(r.error());
    return m;
  };
  std::string classifier_problem;
  std::string lm_problem;
  std::string tts_problem;
  auto classifier = load("classifier", classifier_problem);
  auto lm = load(lm_model, lm_problem);
  auto tts = load(speech_model, tts_problem);
  std::string heavy_problem;
  auto heavy = load(heavy_model, heavy_problem);
  int64_t max_batch = classifier ? classifier->info().max_batch_size : 0;
  int64_t queue_delay_us = classifier ? classifier->info().max_queue_delay_us : 0;

  progress("measuring on server 1: latency");
  auto floor = measure_http_latency(server, opts.requests, true);
  auto lat = measure_http_latency(server, opts.requests);
  direct_latency direct_lat;
  direct_lat.problem = classifier_problem;
  if (classifier)
    direct_lat = measure_direct_latency(*classifier, opts.requests);
  progress(", generation");
  auto gen = measure_generation(server, lm.get(), opts.tokens, opts.streams);
  if (!lm)
    gen.direct_problem = lm_problem;
  progress(", speech");
  auto sp = measure_speech(server, tts.get(), opts.speech_requests);
  if (!tts)
    sp.direct_problem = tts_problem;
  progress(", throughput");
  auto batched = measure_throughput(server, "classifier", opts.seconds, opts.concurrency);
  progress(", heavy model");
  auto heavy_batched
      = measure_throughput(server, heavy_model, opts.seconds, opts.concurrency);
  std::string direct_tp_problem = classifier_problem;
  double direct_b1 = -1;
  double direct_b16 = -1;
  if (classifier) {
    direct_b1 = direct_rows_per_s(*classifier, 1, direct_loop_s, direct_tp_problem);
    if (direct_b1 > 0)
      direct_b16 = direct_rows_per_s(*classifier, 16, direct_loop_s, direct_tp_problem);
  }
  std::string heavy_direct_problem = heavy_problem;
  double heavy_b1 = -1;
  double heavy_b16 = -1;
  double heavy_b1_cpu_ms = -1;
  double heavy_b16_cpu_ms = -1;
  if (heavy) {
    heavy_b1 = direct_rows_per_s(*heavy, 1, heavy_direct_loop_s, heavy_direct_problem,
                                 &heavy_b1_cpu_ms);
    if (heavy_b1 > 0)
      heavy_b16 = direct_rows_per_s(*heavy, 16, heavy_direct_loop_s, heavy_direct_problem,
                                    &heavy_b16_cpu_ms);
  }
  bool server_ok = server.stop();
  auto [warnings, first_warning] = log_lines(server.log());
  if (!server_ok)
    std::cerr << "\nbench infer: server 1 did not exit 0 after SIGTERM ("
              << server.exit_text() << ")\nserver log:\n"
              << log_tail(server.log());

  // Server 2: a copy of the models whose classifier and heavy model take one
  // request per forward call (and so never wait for a batch to fill).
  http_latency lat_b1;
  throughput_run single;
  throughput_run heavy_single;
  server_process server_b1{path("data-batch1"), models_b1, path("serve-batch1.log")};
  bool server_b1_ok = false;
  if (auto why = make_batch1_models(models, models_b1, {"classifier", heavy_model});
      !why.empty()) {
    single.problem = lat_b1.problem = heavy_single.problem
        = "models with max_batch_size 1: " + why;
  } else if (!server_b1.start(error)) {
    single.problem = lat_b1.problem = heavy_single.problem
        = "server 2 (max_batch_size 1): " + error + "; log:\n"
          + log_tail(server_b1.log());
  } else {
    progress("\nmeasuring on server 2 (max_batch_size 1): latency");
    lat_b1 = measure_http_latency(server_b1, opts.requests);
    progress(", throughput");
    single = measure_throughput(server_b1, "classifier", opts.seconds, opts.concurrency);
    progress(", heavy model");
    heavy_single
        = measure_throughput(server_b1, heavy_model, opts.seconds, opts.concurrency);
    server_b1_ok = server_b1.stop();
    if (!server_b1_ok)
      std::cerr << "\nbench infer: server 2 did not exit 0 after SIGTERM ("
                << server_b1.exit_text() << ")\nserver log:\n"
                << log_tail(server_b1.log());
  }
  auto [warnings_b1, first_warning_b1] = log_lines(server_b1.log());
  progress("\n");
  std::vector<std::string> failed;

  // 1. Latency at concurrency 1.
  bool lat_ok = lat.us.n > 0 && direct_lat.us.n > 0;
  bool lat_b1_ok = lat_b1.us.n > 0 && direct_lat.us.n > 0;
  double overhead_us = lat.us.p50 - direct_lat.us.p50;
  double overhead_b1_us = lat_b1.us.p50 - direct_lat.us.p50;
  std::printf("\n1. classifier latency, concurrency 1: %lld requests over one keep-alive "
              "connection, [1,16] FP32 (after %lld not counted)\n",
              static_cast<long long>(opts.requests),
              static_cast<long long>(warm_up_requests));
  std::printf("%-46s %8s %8s %8s %8s %8s %9s\n", "", "p50 us", "p90 us", "p99 us",
              "mean us", "per s", "CPU us/r");
  auto latency_row = [](const std::string& label, const latency_summary& s, double rps,
                        double cpu_us) {
    if (s.n == 0)
      return;
    std::printf("%-46s %8s %8s %8s %8s %8s %9s\n", label.c_str(), us_text(s.p50).c_str(),
                us_text(s.p90).c_str(), us_text(s.p99).c_str(), us_text(s.mean).c_str(),
                thousands(rps).c_str(), cpu_us >= 0 ? us_text(cpu_us).c_str() : "n/a");
  };
  latency_row("HTTP, server 1: max_batch_size " + std::to_string(max_batch) + ", delay "
                  + std::to_string(queue_delay_us) + " us",
              lat.us, lat.rps, lat.server_cpu_us);
  latency_row("HTTP, server 2: max_batch_size 1", lat_b1.us, lat_b1.rps,
              lat_b1.server_cpu_us);
  latency_row("GET /healthz, server 1 (HTTP floor)", floor.us, floor.rps,
              floor.server_cpu_us);
  latency_row("direct forward() in this process ("
                  + (classifier ? classifier->device() : "") + ")",
              direct_lat.us, direct_lat.us.mean > 0 ? 1e6 / direct_lat.us.mean : 0,
              direct_lat.cpu_us);
  if (lat_b1.server_switches >= 0 && floor.server_switches >= 0)
    std::printf("thread context switches per request, server and its workers: %.1f with "
                "max_batch_size 1, %.1f for GET /healthz\n",
                lat_b1.server_switches, floor.server_switches);
  if (lat_ok || lat_b1_ok)
    std::printf("overhead per request at p50 (HTTP - direct): %s us with the config's "
                "batching, %s us with max_batch_size 1 (aim: under 150 us)\n",
                lat_ok ? us_text(overhead_us).c_str() : "-",
                lat_b1_ok ? us_text(overhead_b1_us).c_str() : "-");
  if (lat_ok && max_batch > 1 && queue_delay_us > 0)
    std::printf("(alone, a request waits up to max_queue_delay_us = %lld us for a batch "
                "that never fills)\n",
                static_cast<long long>(queue_delay_us));
  if (print_failures(
          {&lat.problem, &lat_b1.problem, &floor.problem, &direct_lat.problem}))
    failed.emplace_back("latency");

  // 2. Generation.
  double http_tps = gen.http_seconds > 0 ? gen.http_tokens / gen.http_seconds : 0;
  double direct_tps = gen.direct_seconds > 0 ? gen.direct_tokens / gen.direct_seconds : 0;
  double gen_ratio = direct_tps > 0 ? http_tps / direct_tps : 0;
  bool gen_ok = http_tps > 0 && direct_tps > 0;
  bool same_text = gen_ok && gen.direct_text == gen.http_text;
  std::printf(
      "\n2. generation: %d streamed completions of %s, max_tokens %d, temperature "
      "0, seed %llu, each followed by generate() in this process (after 1 of each "
      "not counted)\n",
      opts.streams, lm_model, opts.tokens, static_cast<unsigned long long>(lm_seed));
  std::printf("%-46s %8s %8s %9s %13s %9s\n", "", "tokens", "seconds", "tokens/s",
              "1st token p50", "CPU us/t");
  double server_us_per_token = gen.server_cpu_s >= 0 && gen.http_tokens > 0
                                   ? gen.server_cpu_s * 1e6 / gen.http_tokens
                                   : -1;
  double direct_us_per_token
      = gen.direct_tokens > 0 ? gen.direct_cpu_s * 1e6 / gen.direct_tokens : -1;
  if (http_tps > 0)
    std::printf("%-46s %8lld %8s %9s %10s ms %9s\n",
                gen.usage_seen ? "POST /v1/completions SSE (usage tokens)"
                               : "POST /v1/completions SSE (text bytes)",
                static_cast<long long>(gen.http_tokens),
                fixed(gen.http_seconds, 3).c_str(), thousands(http_tps).c_str(),
                ms_text(gen.http_first_ms.p50).c_str(),
                server_us_per_token >= 0 ? us_text(server_us_per_token).c_str() : "n/a");
  if (direct_tps > 0)
    std::printf("%-46s %8lld %8s %9s %10s ms %9s\n", "direct generate() in this process",
                static_cast<long long>(gen.direct_tokens),
                fixed(gen.direct_seconds, 3).c_str(), thousands(direct_tps).c_str(),
                ms_text(gen.direct_first_ms.p50).c_str(),
                us_text(direct_us_per_token).c_str());
  if (gen_ok)
    std::printf("HTTP / direct tokens/s: %s (aim: 0.95 or more); finish_reason %s; text "
                "the same as in-process: %s\n",
                fixed(gen_ratio, 2).c_str(),
                gen.finish_reason.empty() ? "(none)" : gen.finish_reason.c_str(),
                same_text ? "yes" : "NO");
  double http_decode_tps = gen.http_decode_seconds > 0
                               ? gen.http_decode_tokens / gen.http_decode_seconds
                               : 0;
  double direct_decode_tps = gen.direct_decode_seconds > 0
                                 ? gen.direct_decode_tokens / gen.direct_decode_seconds
                                 : 0;
  double decode_ratio = direct_decode_tps > 0 ? http_decode_tps / direct_decode_tps : 0;
  if (gen_ok && http_decode_tps > 0 && direct_decode_tps > 0)
    std::printf(
        "after the first token (first text to last, the stream's fixed costs left "
        "out): HTTP %s, direct %s tokens/s: %s\n",
        thousands(http_decode_tps).c_str(), thousands(direct_decode_tps).c_str(),
        fixed(decode_ratio, 2).c_str());
  if (gen_ok)
    std::printf("last text to the end of the response, p50: HTTP %s ms, direct %s ms\n",
                ms_text(gen.http_tail_ms.p50).c_str(),
                ms_text(gen.direct_tail_ms.p50).c_str());
  // Where each side ran: the VM's vCPUs differ in speed from time to time,
  // so a ratio of runs on different CPUs carries that difference too.
  double same_cpu_ratio = 0;
  if (gen_ok) {
    std::map<int, std::pair<std::vector<double>, std::vector<double>>> by_cpu;
    for (auto& [cpu, tps] : gen.http_runs)
      by_cpu[cpu].first.push_back(tps);
    for (auto& [cpu, tps] : gen.direct_runs)
      by_cpu[cpu].second.push_back(tps);
    std::string line;
    std::size_t best = 0;
    for (auto& [cpu, runs] : by_cpu) {
      auto side = [&](const std::vector<double>& v) {
        return std::to_string(v.size())
               + (v.empty() ? "" : " at " + thousands(median(v)) + " tokens/s");
      };
      line += std::string{line.empty() ? "" : "; "}
              + (cpu < 0 ? "cpu unknown" : "cpu " + std::to_string(cpu)) + ": HTTP "
              + side(runs.first) + ", direct " + side(runs.second);
      auto both = std::min(runs.first.size(), runs.second.size());
      if (cpu >= 0 && both >= 3 && both > best) {
        best = both;
        same_cpu_ratio = median(runs.first) / median(runs.second);
      }
    }
    std::printf("where each run generated (the busiest server thread's CPU, this "
                "thread's), medians: %s\n",
                line.c_str());
    if (same_cpu_ratio > 0)
      std::printf("HTTP / direct tokens/s on the same CPU: %s (at least 3 runs of each "
                  "there)\n",
                  fixed(same_cpu_ratio, 2).c_str());
  }
  if (print_failures({&gen.http_problem, &gen.direct_problem}))
    failed.emplace_back("generation");

  // 3. Speech.
  bool sp_http = !sp.http_wall_rtf.empty();
  bool sp_direct = !sp.direct_phrases_rtf.empty();
  std::printf("\n3. speech: %d x POST /v1/audio/speech of %s, %zu bytes of text",
              opts.speech_requests, speech_model, std::strlen(speech_text));
  if (sp.audio_s > 0)
    std::printf(" -> %s s of audio at %lld Hz", fixed(sp.audio_s, 2).c_str(),
                static_cast<long long>(sp.sample_rate));
  std::printf(", each followed by synthesize() in this process (after 1 of each not "
              "counted)\n");
  std::printf("%-46s %8s %10s %10s %9s\n", "", "median s", "RTF median", "RTF best",
              "CPU ms/r");
  auto speech_row = [](const std::string& label, const std::vector<double>& secs,
                       const std::vector<double>& rtf, double cpu_ms) {
    std::printf("%-46s %8s %10s %10s %9s\n", label.c_str(),
                secs.empty() ? "" : fixed(median(secs), 4).c_str(),
                fixed(median(rtf), 4).c_str(), fixed(best(rtf), 4).c_str(),
                cpu_ms >= 0 ? ms_text(cpu_ms).c_str() : "");
  };
  if (sp_http) {
    speech_row("HTTP: wall time / WAV duration", sp.http_wall_s, sp.http_wall_rtf,
               sp.server_cpu_s >= 0
                   ? sp.server_cpu_s * 1e3 / static_cast<double>(sp.http_wall_s.size())
                   : -1);
    if (sp.server_rtf_missing)
      std::printf("%-46s %8s %10s\n", "HTTP: X-Real-Time-Factor (server)", "", "missing");
    else
      speech_row("HTTP: X-Real-Time-Factor (server)", {}, sp.server_rtf, -1);
  }
  if (sp_direct) {
    speech_row("direct synthesize(), " + std::to_string(sp.phrases)
                   + " phrases as the executor",
               sp.direct_phrases_s, sp.direct_phrases_rtf,
               sp.direct_cpu_s * 1e3 / static_cast<double>(sp.direct_phrases_s.size()));
    speech_row("direct synthesize(), whole text in one call", sp.direct_whole_s,
               sp.direct_whole_rtf, -1);
  }
  if (sp_http && sp_direct)
    std::printf("samples: HTTP %lld, in-process by phrase %lld (%s)\n",
                static_cast<long long>(sp.http_samples),
                static_cast<long long>(sp.direct_samples),
                sp.http_samples == sp.direct_samples ? "same" : "DIFFERENT");
  std::string server_rtf_problem;
  if (sp_http && sp.server_rtf_missing)
    server_rtf_problem = "POST /v1/audio/speech: no X-Real-Time-Factor header";
  if (print_failures({&sp.http_problem, &sp.direct_problem, &server_rtf_problem}))
    failed.emplace_back("speech");

  // 4. Throughput.
  double batching_ratio = single.rps > 0 ? batched.rps / single.rps : 0;
  std::printf("\n4. classifier throughput: %d connections (one thread, one request in "
              "flight each) for %s s after %s s not counted\n",
              opts.concurrency, fixed(opts.seconds, 1).c_str(),
              fixed(throughput_warm_up_s, 1).c_str());
  std::printf("%-46s %10s %8s %8s %10s %9s\n", "", "requests/s", "p50 ms", "p99 ms",
              "mean batch", "CPU us/r");
  auto throughput_row = [](const std::string& label, const throughput_run& r) {
    if (r.rps <= 0)
      return;
    std::printf("%-46s %10s %8s %8s %10s %9s\n", label.c_str(), thousands(r.rps).c_str(),
                ms_text(r.latency_us.p50 / 1e3).c_str(),
                ms_text(r.latency_us.p99 / 1e3).c_str(),
                r.mean_batch >= 0 ? fixed(r.mean_batch, 2).c_str() : "n/a",
                r.server_cpu_us >= 0 ? us_text(r.server_cpu_us).c_str() : "n/a");
  };
  throughput_row("HTTP, server 1: max_batch_size " + std::to_string(max_batch)
                     + ", delay " + std::to_string(queue_delay_us) + " us",
                 batched);
  throughput_row("HTTP, server 2: max_batch_size 1", single);
  if (direct_b1 > 0)
    std::printf("%-46s %10s\n", "direct forward() [1,16] here, rows/s",
                thousands(direct_b1).c_str());
  if (direct_b16 > 0)
    std::printf("%-46s %10s\n", "direct forward() [16,16] here, rows/s",
                thousands(direct_b16).c_str());
  if (batched.rps > 0 && single.rps > 0)
    std::printf("batching / batch 1: %s (aim: 3 or more)\n",
                fixed(batching_ratio, 2).c_str());
  if (batched.rps > 0 && max_batch > opts.concurrency && queue_delay_us > 0)
    std::printf("(%d connections < max_batch_size %lld: a batch runs when its oldest "
                "request has waited %lld us)\n",
                opts.concurrency, static_cast<long long>(max_batch),
                static_cast<long long>(queue_delay_us));
  if (classifier && direct_b16 <= 0 && direct_tp_problem.empty())
    direct_tp_problem = "direct forward() throughput: no figure";
  if (print_failures({&batched.problem, &single.problem, &direct_tp_problem}))
    failed.emplace_back("throughput");

  // 5. Batching on a heavier model.
  double heavy_ratio = heavy_single.rps > 0 ? heavy_batched.rps / heavy_single.rps : 0;
  std::printf("\n5. batching on a heavier model: %s, MLP 16 -> %lld x %lld -> 4, %d "
              "connections for %s s after %s s not counted\n",
              heavy_model, static_cast<long long>(opts.heavy_width),
              static_cast<long long>(opts.heavy_depth), opts.concurrency,
              fixed(opts.seconds, 1).c_str(), fixed(throughput_warm_up_s, 1).c_str());
  std::printf("%-46s %10s %8s %8s %10s %9s\n", "", "requests/s", "p50 ms", "p99 ms",
              "mean batch", "CPU us/r");
  throughput_row("HTTP, server 1: max_batch_size " + std::to_string(heavy_max_batch)
                     + ", delay " + std::to_string(heavy_queue_delay_us) + " us",
                 heavy_batched);
  throughput_row("HTTP, server 2: max_batch_size 1", heavy_single);
  auto heavy_direct_row = [](const char* label, double rows_s, int batch, double cpu_ms) {
    if (rows_s > 0)
      std::printf("%-46s %10s  per call: %s ms, CPU %s ms\n", label,
                  thousands(rows_s).c_str(), ms_text(1e3 * batch / rows_s).c_str(),
                  ms_text(cpu_ms).c_str());
  };
  heavy_direct_row("direct forward() [1,16] here, rows/s", heavy_b1, 1, heavy_b1_cpu_ms);
  heavy_direct_row("direct forward() [16,16] here, rows/s", heavy_b16, 16,
                   heavy_b16_cpu_ms);
  if (heavy_batched.rps > 0 && heavy_single.rps > 0)
    std::printf("batching / batch 1: %s (aim: 3 or more)\n",
                fixed(heavy_ratio, 2).c_str());
  if (heavy && heavy_b16 <= 0 && heavy_direct_problem.empty())
    heavy_direct_problem = "direct forward() of the heavy model: no figure";
  if (print_failures(
          {&heavy_batched.problem, &heavy_single.problem, &heavy_direct_problem}))
    failed.emplace_back("heavy");

  std::printf("\nservers: 1 ready after %s s, %s %s s after SIGTERM; 2 %s; log lines at "
              "warn or above: %d and %d\n",
              fixed(server.ready_s(), 1).c_str(), server.exit_text().c_str(),
              fixed(server.stop_s(), 2).c_str(), server_b1.exit_text().c_str(), warnings,
              warnings_b1);
  if (warnings > 0)
    std::printf("server 1 log, first line: %s\n", clip(first_warning, 400).c_str());
  if (warnings_b1 > 0)
    std::printf("server 2 log, first line: %s\n", clip(first_warning_b1, 400).c_str());
  std::fflush(stdout);

  nlohmann::ordered_json json;
  json["bench"] = "infer";
  json["requests"] = opts.requests;
  json["seconds"] = opts.seconds;
  json["concurrency"] = opts.concurrency;
  json["tokens"] = opts.tokens;
  json["streams"] = opts.streams;
  json["speech_requests"] = opts.speech_requests;
  json["http_cpu_us"] = figure(lat.server_cpu_us >= 0, lat.server_cpu_us, 1);
  json["http_batch1_switches"]
      = figure(lat_b1.server_switches >= 0, lat_b1.server_switches, 1);
  json["healthz_switches"] = figure(floor.server_switches >= 0, floor.server_switches, 1);
  json["http_batch1_cpu_us"] = figure(lat_b1.server_cpu_us >= 0, lat_b1.server_cpu_us, 1);
  json["healthz_p50_us"] = figure(floor.us.n > 0, floor.us.p50, 1);
  json["http_p50_us"] = figure(lat.us.n > 0, lat.us.p50, 1);
  json["http_p90_us"] = figure(lat.us.n > 0, lat.us.p90, 1);
  json["http_p99_us"] = figure(lat.us.n > 0, lat.us.p99, 1);
  json["http_batch1_p50_us"] = figure(lat_b1.us.n > 0, lat_b1.us.p50, 1);
  json["http_batch1_p99_us"] = figure(lat_b1.us.n > 0, lat_b1.us.p99, 1);
  json["direct_p50_us"] = figure(direct_lat.us.n > 0, direct_lat.us.p50, 1);
  json["overhead_p50_us"] = figure(lat_ok, overhead_us, 1);
  json["overhead_batch1_p50_us"] = figure(lat_b1_ok, overhead_b1_us, 1);
  json["gen_http_tokens_s"] = figure(http_tps > 0, http_tps, 1);
  json["gen_direct_tokens_s"] = figure(direct_tps > 0, direct_tps, 1);
  json["gen_ratio"] = figure(gen_ok, gen_ratio, 3);
  json["gen_decode_ratio"] = figure(gen_ok && decode_ratio > 0, decode_ratio, 3);
  json["gen_same_cpu_ratio"] = figure(same_cpu_ratio > 0, same_cpu_ratio, 3);
  json["gen_ttft_p50_ms"] = figure(http_tps > 0, gen.http_first_ms.p50, 2);
  json["gen_tail_p50_ms"] = figure(http_tps > 0, gen.http_tail_ms.p50, 3);
  json["gen_direct_tail_p50_ms"] = figure(direct_tps > 0, gen.direct_tail_ms.p50, 3);
  json["gen_direct_first_token_p50_ms"]
      = figure(direct_tps > 0, gen.direct_first_ms.p50, 2);
  json["gen_same_text"] = same_text;
  json["gen_server_cpu_us_per_token"]
      = figure(server_us_per_token >= 0, server_us_per_token, 1);
  json["gen_direct_cpu_us_per_token"]
      = figure(direct_us_per_token >= 0, direct_us_per_token, 1);
  json["speech_audio_s"] = figure(sp_http, sp.audio_s, 3);
  json["speech_http_wall_rtf"] = figure(sp_http, median(sp.http_wall_rtf), 4);
  json["speech_server_rtf"] = figure(!sp.server_rtf.empty(), median(sp.server_rtf), 4);
  json["speech_direct_phrases_rtf"] = figure(sp_direct, median(sp.direct_phrases_rtf), 4);
  json["speech_direct_whole_rtf"] = figure(sp_direct, median(sp.direct_whole_rtf), 4);
  json["batched_rps"] = figure(batched.rps > 0, batched.rps, 0);
  json["batched_mean_batch"] = figure(batched.mean_batch >= 0, batched.mean_batch, 2);
  json["batched_cpu_us"] = figure(batched.server_cpu_us >= 0, batched.server_cpu_us, 1);
  json["batch1_cpu_us"] = figure(single.server_cpu_us >= 0, single.server_cpu_us, 1);
  json["batch1_rps"] = figure(single.rps > 0, single.rps, 0);
  json["batching_ratio"] = figure(batched.rps > 0 && single.rps > 0, batching_ratio, 2);
  json["direct_b1_rows_s"] = figure(direct_b1 > 0, direct_b1, 0);
  json["direct_b16_rows_s"] = figure(direct_b16 > 0, direct_b16, 0);
  json["heavy_width"] = opts.heavy_width;
  json["heavy_depth"] = opts.heavy_depth;
  json["heavy_batched_rps"] = figure(heavy_batched.rps > 0, heavy_batched.rps, 0);
  json["heavy_batched_mean_batch"]
      = figure(heavy_batched.mean_batch >= 0, heavy_batched.mean_batch, 2);
  json["heavy_batched_p50_ms"]
      = figure(heavy_batched.rps > 0, heavy_batched.latency_us.p50 / 1e3, 3);
  json["heavy_batched_p99_ms"]
      = figure(heavy_batched.rps > 0, heavy_batched.latency_us.p99 / 1e3, 3);
  json["heavy_batched_cpu_us"]
      = figure(heavy_batched.server_cpu_us >= 0, heavy_batched.server_cpu_us, 1);
  json["heavy_batch1_rps"] = figure(heavy_single.rps > 0, heavy_single.rps, 0);
  json["heavy_batch1_mean_batch"]
      = figure(heavy_single.mean_batch >= 0, heavy_single.mean_batch, 2);
  json["heavy_batch1_p50_ms"]
      = figure(heavy_single.rps > 0, heavy_single.latency_us.p50 / 1e3, 3);
  json["heavy_batch1_p99_ms"]
      = figure(heavy_single.rps > 0, heavy_single.latency_us.p99 / 1e3, 3);
  json["heavy_batch1_cpu_us"]
      = figure(heavy_single.server_cpu_us >= 0, heavy_single.server_cpu_us, 1);
  json["heavy_batching_ratio"]
      = figure(heavy_batched.rps > 0 && heavy_single.rps > 0, heavy_ratio, 2);
  json["heavy_direct_b1_ms"] = figure(heavy_b1 > 0, 1e3 / heavy_b1, 3);
  json["heavy_direct_b16_ms"] = figure(heavy_b16 > 0, 16e3 / heavy_b16, 3);
  json["heavy_direct_b1_cpu_ms"] = figure(heavy_b1 > 0, heavy_b1_cpu_ms, 3);
  json["heavy_direct_b16_cpu_ms"] = figure(heavy_b16 > 0, heavy_b16_cpu_ms, 3);
  json["ready_s"] = round_to(server.ready_s(), 2);
  json["servers_exit_ok"] = server_ok && server_b1_ok;
  json["server_log_lines"] = warnings + warnings_b1;
  json["failed"] = failed;
  std::cout << json.dump() << std::endl;

  bool ok = failed.empty() && server_ok && server_b1_ok;
  if (!ok) {
    guard.keep = true;
    std::string what;
    for (auto& f : failed)
      what += (what.empty() ? "" : ", ") + f;
    if (!server_ok || !server_b1_ok)
      what += std::string{what.empty() ? "" : "; "} + "a server did not exit 0";
    std::cerr << "bench infer: failed: " << what << "; files and server logs kept in "
              << dir << '\n';
  }
  return ok ? 0 : 1;
}

} // namespace infergrid::bench
