// `infergrid bench e2e`: a child `infergrid serve` (or `gateway` and
// `worker`s), durable classifier jobs over HTTP, the /healthz floor and the
// store-only figure (docs/benchmarks.md, docs/cluster.md).
#include "tools/bench/e2e_bench.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "messages/errors.hpp"
#include "tools/bench/child.hpp"
#include "tools/bench/http_client.hpp"
#include "tools/bench/queue_bench.hpp"
#include "tools/serve.hpp"
#include "tools/bench/format.hpp"

namespace infergrid::bench {

namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

/// How long the server may take to build the demo models, load and warm
/// them up.
constexpr auto ready_deadline = std::chrono::seconds(180);
/// How long the jobs may take once submitted, at most.
constexpr auto finish_deadline = std::chrono::seconds(600);
/// How long SIGTERM may take (shutdown.drain_timeout_ms is 10 s).
constexpr auto stop_deadline = std::chrono::seconds(30);
/// Interval of the /metrics polls while jobs run.
constexpr auto poll_interval = std::chrono::milliseconds(25);

/// One classifier row, as tests/integration/harness.py's classifier_input(1);
/// for tinylm one token of a one-byte prompt (claimed one job at a time: only
/// tensor models are claimed in batches).
std::string job_body(const std::string& model) {
  if (model == "tinylm")
    return R"({"model":"tinylm","input":{"prompt":"a","max_tokens":1,"seed":1}})";
  std::string data;
  for (int i = 0; i < 16; ++i) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%.6g", i > 0 ? "," : "",
                  ((i * 7) % 13) / 13.0 - 0.5);
    data += buf;
  }
  return R"({"model":"classifier","input":{"inputs":[{"name":"x","shape":[1,16],)"
         R"("datatype":"FP32","data":[)"
         + data + "]}]}}";
}

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

std::string statuses(const load_result& r) {
  std::string out;
  for (auto& [status, n] : r.statuses)
    out += (out.empty() ? "" : ", ") + std::to_string(n) + " x " + std::to_string(status);
  if (r.errors > 0)
    out += (out.empty() ? "" : ", ") + std::to_string(r.errors) + " without answer";
  return out;
}

/// The value of `infergrid_jobs{state="<state>"}` in a /metrics page; -1
/// when absent.
int64_t jobs_gauge(const std::string& page, const std::string& state) {
  auto key = "\ninfergrid_jobs{state=\"" + state + "\"} ";
  auto at = page.find(key);
  if (at == std::string::npos)
    return -1;
  return std::atoll(page.c_str() + at + key.size());
}

using env_list = std::vector<std::pair<std::string, std::string>>;

/// A child running this executable with `args` (after argv[0]) and `env`
/// added to the environment; its stdout and stderr are appended to `log`.
pid_t start_child(std::vector<std::string> args, const env_list& env,
                  const std::string& log) {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid != 0)
    return pid;
  // A bench killed outright takes its server and workers with it (the
  // remote mode's workers would otherwise retry their join forever).
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd >= 0) {
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
  }
  // Flags beat the environment; a configuration file would not.
  ::unsetenv("CONFIG_PATH");
  for (auto& [key, value] : env)
    ::setenv(key.c_str(), value.c_str(), 1);
  args.insert(args.begin(), "infergrid");
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  ::execv("/proc/self/exe", argv.data());
  std::fprintf(stderr, "bench e2e: exec /proc/self/exe: %s\n", std::strerror(errno));
  ::_exit(127);
}

/// The server's arguments: `serve` (processes, in-process) or `gateway`.
std::vector<std::string> server_args(const e2e_bench_options& opts, uint16_t port,
                                     uint16_t cluster_port, const std::string& data,
                                     const std::string& models) {
  bool remote = opts.mode == e2e_mode::remote;
  std::vector<std::string> args{remote ? "gateway" : "serve",
                                "--host",
                                "127.0.0.1",
                                "--port",
                                std::to_string(port),
                                "--data-dir",
                                data,
                                "--models-dir",
                                models,
                                "--log-level",
                                "warn"};
  if (remote) {
    args.insert(args.end(), {"--cluster-port", std::to_string(cluster_port)});
  } else {
    args.insert(args.end(), {"--workers", std::to_string(opts.workers)});
    if (opts.mode == e2e_mode::in_process)
      args.emplace_back("--in-process");
  }
  return args;
}

/// `"workers_ready":N` of a /readyz body; -1 when absent.
int64_t workers_ready(const std::string& body) {
  static const std::string key = "\"workers_ready\":";
  auto at = body.find(key);
  return at == std::string::npos ? -1 : std::atoll(body.c_str() + at + key.size());
}

} // namespace

const char* to_string(e2e_mode m) {
  switch (m) {
    case e2e_mode::processes:
      return "processes";
    case e2e_mode::in_process:
      return "in-process";
    case e2e_mode::remote:
      return "remote";
  }
  return "?";
}

int run_bench_e2e(const e2e_bench_options& opts) {
  auto dir = make_bench_dir(opts.dir, "infergrid-bench-e2e");
  if (dir.empty()) {
    std::cerr << "bench e2e: cannot create a directory under "
              << (opts.dir.empty() ? "$TMPDIR or /tmp" : opts.dir) << ": "
              << std::strerror(errno) << '\n';
    return 1;
  }
  scratch_dir guard{dir};
  auto data = (fs::path{dir} / "data").string();
  auto models = (fs::path{dir} / "models").string();
  auto log = (fs::path{dir} / "serve.log").string();
  std::error_code ec;
  fs::create_directories(data, ec);
  fs::create_directories(models, ec);

  bool remote = opts.mode == e2e_mode::remote;
  uint16_t port = free_loopback_port();
  uint16_t cluster_port = remote ? free_loopback_port() : 0;
  if (port == 0 || (remote && cluster_port == 0)) {
    std::cerr << "bench e2e: no free loopback port\n";
    return 1;
  }
  const char* how = opts.mode == e2e_mode::in_process ? "actors in the server"
                    : remote
                        ? "`worker --join` processes claiming through the queue actor"
                        : "supervised processes opening the SQLite file";
  std::cout
      << "bench e2e: " << opts.jobs << " durable " << opts.model << " jobs over HTTP, "
      << opts.concurrency << " keep-alive connection(s), " << opts.workers
      << " worker(s) (" << to_string(opts.mode) << ": " << how << "), synchronous "
      << (opts.synchronous_full ? "FULL" : "NORMAL")
      << (opts.model == "tinylm"
              ? "\ntinylm, one token per job, claimed one job at a time (only tensor "
                "models are claimed in batches): the backlog figure pays one claim and "
                "one completion per job.\n"
              : "\nThe classifier's forward pass costs ~20 us: each job is close to a "
                "no-op, so the figure is the serving overhead (HTTP, actors, "
                "SQLite).\n")
      << "server: 127.0.0.1:" << port << ", files in " << dir << '\n'
      << std::flush;

  // Every child logs into the same file.
  { std::ofstream truncate{log, std::ios::trunc}; }
  env_list env{
      {"INFERGRID_QUEUE__MAX_QUEUED",
       std::to_string(std::max<int64_t>(10'000, opts.jobs))},
      {"INFERGRID_STORAGE__SYNCHRONOUS", opts.synchronous_full ? "FULL" : "NORMAL"},
  };
  if (remote)
    env.emplace_back("INFERGRID_CLUSTER__SECRET", random_secret());
  auto started = clock_type::now();
  pid_t server
      = start_child(server_args(opts, port, cluster_port, data, models), env, log);
  if (server < 0) {
    std::cerr << "bench e2e: fork: " << std::strerror(errno) << '\n';
    return 1;
  }
  std::vector<pid_t> workers; // remote mode's worker processes
  // From here on every path stops the server (and the workers).
  auto fail = [&](const std::string& why) {
    guard.keep = true;
    std::cerr << "bench e2e: " << why << "\nserver log (" << log << ", kept):\n"
              << log_tail(log);
    // A pid of 0 was reaped already (never kill(0) or kill(-1)).
    for (auto pid : workers)
      if (pid > 0)
        ::kill(pid, SIGKILL);
    if (server > 0) {
      ::kill(server, SIGKILL);
      wait_for_exit(server, stop_deadline);
    }
    for (auto pid : workers)
      if (pid > 0)
        wait_for_exit(pid, stop_deadline);
    return 1;
  };
  // True (and `pid` set to 0, reaped) when the child has ended.
  auto ended = [&](pid_t& pid, const char* what) {
    int status = 0;
    if (pid <= 0 || ::waitpid(pid, &status, WNOHANG) != pid)
      return false;
    pid = 0;
    std::cerr << "bench e2e: " << what << " ended before it was ready ("
              << describe_status(status) << ")\n";
    return true;
  };

  // Remote: the workers start once the gateway answers (its models are
  // built and its cluster port is open by then).
  if (remote) {
    http_connection conn{port, 2000};
    auto request = http_request("GET", "/healthz");
    for (;;) {
      if (ended(server, "the gateway"))
        return fail("the gateway exited");
      http_response resp;
      std::string error;
      if (conn.exchange(request, resp, error) && resp.status == 200)
        break;
      if (clock_type::now() - started > ready_deadline)
        return fail("the gateway did not answer after "
                    + std::to_string(ready_deadline.count()) + " s");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    for (int i = 0; i < opts.workers; ++i) {
      pid_t w = start_child(
          {"worker", "--join", "127.0.0.1:" + std::to_string(cluster_port), "--id",
           "r" + std::to_string(i + 1), "--models-dir", models, "--log-level", "warn"},
          env, log);
      if (w < 0)
        return fail(std::string{"fork: "} + std::strerror(errno));
      workers.push_back(w);
    }
  }

  // Ready: /readyz counts every worker ready (models loaded and warm).
  double ready_s = 0;
  {
    http_connection conn{port, 2000};
    auto request = http_request("GET", "/readyz");
    for (;;) {
      if (ended(server, remote ? "the gateway" : "the server"))
        return fail("the server exited");
      for (auto& w : workers)
        if (ended(w, "a worker process"))
          return fail("a worker process exited");
      http_response resp;
      std::string error;
      if (conn.exchange(request, resp, error) && resp.status == 200
          && workers_ready(resp.body) >= opts.workers)
        break;
      if (clock_type::now() - started > ready_deadline)
        return fail("the server was not ready with " + std::to_string(opts.workers)
                    + " worker(s) after " + std::to_string(ready_deadline.count())
                    + " s");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ready_s = seconds_since(started);
  }

  // The HTTP floor: the same client, the cheapest route, after a warm-up
  // (connections, caches) that is not counted.
  drive(port, http_request("GET", "/healthz"), std::min<int64_t>(opts.jobs, 1000),
        opts.concurrency);
  auto floor = drive(port, http_request("GET", "/healthz"), opts.jobs, opts.concurrency);
  if (floor.ok != opts.jobs)
    return fail("GET /healthz: " + statuses(floor)
                + "; first problem: " + floor.first_problem);
  double floor_rps = floor.ok / floor.seconds;

  // The jobs: submit all, then poll /metrics until every one has ended.
  auto submit_start = clock_type::now();
  auto submit = drive(port, http_request("POST", "/v1/jobs", job_body(opts.model)),
                      opts.jobs, opts.concurrency);
  if (submit.ok != opts.jobs)
    return fail("POST /v1/jobs: " + statuses(submit)
                + "; first problem: " + submit.first_problem);
  double submit_rps = submit.ok / submit.seconds;
  double submit_end_s = seconds_since(submit_start);
  int64_t succeeded_at_submit_end = -1;
  int64_t succeeded = 0;
  int64_t ended_badly = 0;
  int polls = 0;
  double all_done_s = 0;
  {
    http_connection conn{port};
    auto request = http_request("GET", "/metrics");
    for (;;) {
      http_response resp;
      std::string error;
      if (!conn.exchange(request, resp, error))
        return fail("GET /metrics: " + error);
      ++polls;
      succeeded = jobs_gauge(resp.body, "succeeded");
      if (succeeded < 0)
        return fail("GET /metrics has no infergrid_jobs{state=\"succeeded\"}");
      if (succeeded_at_submit_end < 0)
        succeeded_at_submit_end = succeeded;
      ended_badly = 0;
      for (auto state : {"failed", "dead", "cancelled"})
        ended_badly += std::max<int64_t>(jobs_gauge(resp.body, state), 0);
      if (succeeded + ended_badly >= opts.jobs) {
        all_done_s = seconds_since(submit_start);
        break;
      }
      if (clock_type::now() - submit_start > finish_deadline)
        return fail(std::to_string(succeeded) + " of " + std::to_string(opts.jobs)
                    + " jobs succeeded after " + std::to_string(finish_deadline.count())
                    + " s");
      std::this_thread::sleep_for(poll_interval);
    }
  }
  double e2e_rps = succeeded / all_done_s;
  // The workers alone once the submissions stopped competing for the CPU.
  double drain_rps
      = all_done_s > submit_end_s && succeeded > succeeded_at_submit_end
            ? (succeeded - succeeded_at_submit_end) / (all_done_s - submit_end_s)
            : 0;

  // The backlog: the workers drained, the same number of jobs queued, the
  // workers resumed; from the first resume to the last success the workers
  // claim from a full queue (batches of up to max_batch_size), with no
  // submissions competing for the CPU.
  std::vector<std::string> worker_ids;
  for (int i = 0; i < opts.workers; ++i)
    worker_ids.push_back((remote ? "r" : "w") + std::to_string(i + 1));
  auto set_drain = [&](bool drain) -> std::string {
    http_connection conn{port};
    for (auto& id : worker_ids) {
      http_response resp;
      std::string error;
      auto target = "/admin/api/workers/" + id + (drain ? "/drain" : "/resume");
      if (!conn.exchange(http_request("POST", target), resp, error))
        return "POST " + target + ": " + error;
      if (resp.status != 200)
        return "POST " + target + ": " + std::to_string(resp.status) + " " + resp.body;
    }
    return {};
  };
  if (auto err = set_drain(true); !err.empty())
    return fail(err);
  auto backlog = drive(port, http_request("POST", "/v1/jobs", job_body(opts.model)),
                       opts.jobs, opts.concurrency);
  if (backlog.ok != opts.jobs)
    return fail("POST /v1/jobs (backlog): " + statuses(backlog)
                + "; first problem: " + backlog.first_problem);
  auto resume_start = clock_type::now();
  if (auto err = set_drain(false); !err.empty())
    return fail(err);
  double backlog_s = 0;
  {
    http_connection conn{port};
    auto request = http_request("GET", "/metrics");
    for (;;) {
      http_response resp;
      std::string error;
      if (!conn.exchange(request, resp, error))
        return fail("GET /metrics: " + error);
      ++polls;
      succeeded = jobs_gauge(resp.body, "succeeded");
      ended_badly = 0;
      for (auto state : {"failed", "dead", "cancelled"})
        ended_badly += std::max<int64_t>(jobs_gauge(resp.body, state), 0);
      if (succeeded + ended_badly >= 2 * opts.jobs) {
        backlog_s = seconds_since(resume_start);
        break;
      }
      if (clock_type::now() - resume_start > finish_deadline)
        return fail(std::to_string(succeeded) + " of " + std::to_string(2 * opts.jobs)
                    + " jobs succeeded " + std::to_string(finish_deadline.count())
                    + " s after the resume");
      std::this_thread::sleep_for(poll_interval);
    }
  }
  double backlog_rps = backlog_s > 0 ? opts.jobs / backlog_s : 0;

  auto [run_warnings, first_run_warning] = log_lines(log);

  // Stop: SIGTERM, drain, exit 0.
  ::kill(server, SIGTERM);
  auto stop_start = clock_type::now();
  int status = wait_for_exit(server, stop_deadline);
  double stop_s = seconds_since(stop_start);
  bool clean_exit = status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (status < 0) {
    ::kill(server, SIGKILL);
    wait_for_exit(server, stop_deadline);
  }
  if (!clean_exit)
    std::cerr << "bench e2e: the server did not exit 0 after SIGTERM ("
              << describe_status(status) << ")\nserver log (" << log << "):\n"
              << log_tail(log);
  // Remote: the workers outlive the gateway (they would rejoin); stop them.
  std::string worker_exits;
  for (auto w : workers) {
    ::kill(w, SIGTERM);
    int ws = wait_for_exit(w, stop_deadline);
    if (ws < 0) {
      ::kill(w, SIGKILL);
      wait_for_exit(w, stop_deadline);
    }
    worker_exits += (worker_exits.empty() ? "" : ", ") + describe_status(ws);
  }

  auto [warnings, first_warning] = log_lines(log);

  // The store alone, the way a worker uses it: one process, claim batch 1.
  std::vector<double> store_rounds;
  for (int r = 0; r < 3; ++r) {
    queue_round round;
    round.engine = queue_engine::store;
    round.jobs = opts.jobs;
    round.seconds = 60;
    round.synchronous_full = opts.synchronous_full;
    round.dir = dir;
    auto res = run_queue_round(round);
    if (!res) {
      std::cerr << "bench e2e: store-only round: " << message_of(res.error()) << '\n';
      return 1;
    }
    store_rounds.push_back(res->jobs_per_s);
  }
  double store_rps = median(store_rounds);

  std::printf("\n%-46s %12s\n", "figure", "per second");
  std::printf("%-46s %12s\n", "GET /healthz (HTTP floor, same client)",
              thousands(floor_rps).c_str());
  std::printf("%-46s %12s\n", "POST /v1/jobs accepted (submit phase)",
              thousands(submit_rps).c_str());
  std::printf("%-46s %12s\n", "jobs, first submit -> all succeeded (e2e)",
              thousands(e2e_rps).c_str());
  std::printf("%-46s %12s\n", "jobs after the last submit (drain)",
              thousands(drain_rps).c_str());
  std::printf("%-46s %12s\n", "backlog: queued jobs, resume -> all succeeded",
              thousands(backlog_rps).c_str());
  std::printf("%-46s %12s\n", "store only: claim+complete, 1 process, B=1",
              thousands(store_rps).c_str());
  std::printf("e2e / store only: %s; submit / healthz floor: %s\n",
              fixed(store_rps > 0 ? e2e_rps / store_rps : 0, 2).c_str(),
              fixed(floor_rps > 0 ? submit_rps / floor_rps : 0, 2).c_str());
  std::printf("server: ready %s s after start, %d /metrics polls, %lld succeeded, "
              "%lld failed/dead/cancelled, %s %s s after SIGTERM\n",
              fixed(ready_s, 1).c_str(), polls, static_cast<long long>(succeeded),
              static_cast<long long>(ended_badly),
              clean_exit ? "exited 0" : describe_status(status).c_str(),
              fixed(stop_s, 2).c_str());
  if (!workers.empty())
    std::printf("worker processes after SIGTERM: %s\n", worker_exits.c_str());
  if (run_warnings > 0)
    std::printf("server log until the stop: %d line(s) at warn or above, the first: %s\n",
                run_warnings, first_run_warning.c_str());
  else
    std::printf("server log until the stop: nothing at warn or above\n");
  if (warnings > run_warnings)
    std::printf("server log while stopping: %d line(s) at warn or above\n",
                warnings - run_warnings);
  std::fflush(stdout);
  std::ostringstream json;
  json << R"({"bench":"e2e","model":")" << opts.model << R"(","jobs":)" << opts.jobs
       << R"(,"concurrency":)" << opts.concurrency << R"(,"workers":)" << opts.workers
       << R"(,"mode":")" << to_string(opts.mode) << R"(","synchronous":")"
       << (opts.synchronous_full ? "FULL" : "NORMAL") << R"(","healthz_rps":)"
       << fixed(floor_rps, 0) << R"(,"submit_jobs_s":)" << fixed(submit_rps, 0)
       << R"(,"e2e_jobs_s":)" << fixed(e2e_rps, 0) << R"(,"e2e_seconds":)"
       << fixed(all_done_s, 3) << R"(,"submit_seconds":)" << fixed(submit_end_s, 3)
       << R"(,"succeeded_at_submit_end":)" << succeeded_at_submit_end
       << R"(,"drain_jobs_s":)" << fixed(drain_rps, 0) << R"(,"backlog_jobs_s":)"
       << fixed(backlog_rps, 0) << R"(,"backlog_seconds":)" << fixed(backlog_s, 3)
       << R"(,"store_only_jobs_s":)" << fixed(store_rps, 0)
       << R"(,"store_only_rounds":[)";
  for (std::size_t i = 0; i < store_rounds.size(); ++i)
    json << (i > 0 ? "," : "") << fixed(store_rounds[i], 0);
  json << R"(],"succeeded":)" << succeeded << R"(,"ended_badly":)" << ended_badly
       << R"(,"ready_s":)" << fixed(ready_s, 2) << R"(,"server_exit_ok":)"
       << (clean_exit ? "true" : "false") << R"(,"run_log_lines":)" << run_warnings
       << R"(,"server_log_lines":)" << warnings << '}';
  std::cout << json.str() << std::endl;
  if (ended_badly > 0)
    std::cerr << "bench e2e: " << ended_badly << " job(s) did not succeed\n";
  return clean_exit && ended_badly == 0 ? 0 : 1;
}

} // namespace infergrid::bench
