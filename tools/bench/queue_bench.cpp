// `infergrid bench queue`: forked claim+complete loops through job_store and
// through the raw-SQLite baseline, a table and a JSON line (docs/benchmarks.md).
#include "tools/bench/queue_bench.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>
#include <utility>

#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "messages/errors.hpp"
#include "persistence/job_store.hpp"
#include "persistence/raw_baseline.hpp"
#include "tools/bench/format.hpp"

namespace infergrid::bench {

namespace {

namespace fs = std::filesystem;

/// One classifier row as the HTTP API stores it (16 floats) and a
/// classifier answer: the sizes the store writes for a real job.
const char* const job_model = "classifier";
const char* const job_input
    = R"({"inputs":[{"name":"x","shape":[1,16],"datatype":"FP32","data":)"
      R"([-0.5,0.0385,0.577,-0.385,0.154,-0.308,0.231,-0.231,0.308,-0.154,)"
      R"(0.385,-0.0769,0.462,0,-0.462,0.0769]}]})";
const char* const job_output
    = R"({"model_name":"classifier","outputs":[{"name":"probabilities",)"
      R"("shape":[1,4],"datatype":"FP32","data":[0.21,0.33,0.18,0.28]}]})";

/// The lease the loops claim with (queue.lease_ms's default).
constexpr int64_t lease_ms = 30'000;

int64_t wall_clock_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

// -- forked children ------------------------------------------------------------

/// What a child sends back through its pipe (one write, under PIPE_BUF).
struct child_report {
  int ok = 0;
  int64_t jobs = 0;
  double seconds = 0;
  /// CPU time (user + system) of the child from its start signal to the
  /// end of its body.
  double cpu_seconds = 0;
  int64_t busy_retries = 0;
  char message[512] = {};
};

child_report failure(const std::string& what) {
  child_report r;
  std::snprintf(r.message, sizeof r.message, "%s", what.c_str());
  return r;
}

bool write_all(int fd, const void* data, std::size_t size) {
  auto* p = static_cast<const char*>(data);
  while (size > 0) {
    auto n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

/// Reads exactly `size` bytes; false at EOF or on error.
bool read_all(int fd, void* data, std::size_t size) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    auto n = ::read(fd, p, size);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

/// User + system CPU time of this process so far.
double cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto secs = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return secs(ru.ru_utime) + secs(ru.ru_stime);
}

/// Body of a child: `ready()` signals that it is set up and blocks until
/// every child is (the start signal); a body that never calls it is
/// treated as ready when it ends.
using child_body
    = std::function<child_report(int index, const std::function<void()>& ready)>;

/// Forks `n` children running `body`, starts them together once all are
/// ready, and collects their reports. A child that dies reports ok = 0.
/// Only the children touch SQLite; each ends with _exit (no atexit
/// handlers, no second flush of the parent's buffers).
std::vector<child_report> run_children(int n, const child_body& body) {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  int go[2];
  if (::pipe(go) != 0)
    return {failure(std::string{"pipe: "} + std::strerror(errno))};
  struct child {
    std::size_t index = 0;
    pid_t pid = -1;
    int fd = -1;
  };
  std::vector<child> kids;
  std::vector<child_report> reports(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    int out[2];
    if (::pipe(out) != 0) {
      reports[static_cast<std::size_t>(i)] = failure("pipe failed");
      continue;
    }
    pid_t pid = ::fork();
    if (pid == 0) {
      ::close(go[1]);
      ::close(out[0]);
      for (auto& k : kids)
        ::close(k.fd);
      bool signalled = false;
      double cpu_at_start = 0;
      auto ready = [&] {
        char r = 'R';
        signalled = true;
        write_all(out[1], &r, 1);
        char c;
        while (::read(go[0], &c, 1) < 0 && errno == EINTR) {
        }
        cpu_at_start = cpu_seconds();
      };
      child_report report;
      try {
        report = body(i, ready);
      } catch (const std::exception& e) {
        report = failure(std::string{"exception: "} + e.what());
      }
      if (signalled) {
        report.cpu_seconds = cpu_seconds() - cpu_at_start;
      } else {
        char r = 'R';
        write_all(out[1], &r, 1);
      }
      write_all(out[1], &report, sizeof report);
      std::fflush(nullptr);
      ::_exit(report.ok ? 0 : 1);
    }
    ::close(out[1]);
    if (pid < 0) {
      ::close(out[0]);
      reports[static_cast<std::size_t>(i)]
          = failure(std::string{"fork: "} + std::strerror(errno));
      continue;
    }
    kids.push_back({static_cast<std::size_t>(i), pid, out[0]});
  }
  ::close(go[0]);
  // Everyone ready (or dead), then the start signal: EOF on `go`.
  for (auto& k : kids) {
    char r;
    read_all(k.fd, &r, 1);
  }
  ::close(go[1]);
  for (auto& k : kids) {
    child_report r;
    if (!read_all(k.fd, &r, sizeof r))
      r = failure("child " + std::to_string(k.pid) + " ended without a report");
    ::close(k.fd);
    int status = 0;
    while (::waitpid(k.pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || (WEXITSTATUS(status) != 0 && r.ok)) {
      r.ok = 0;
      std::snprintf(r.message, sizeof r.message, "child %d ended with status %d",
                    static_cast<int>(k.pid), status);
    }
    reports[k.index] = r;
  }
  return reports;
}

/// The first failure among `reports`, if any.
caf::error first_failure(const std::vector<child_report>& reports,
                         const std::string& what) {
  for (auto& r : reports)
    if (!r.ok)
      return make_error(errc::internal, what + ": " + r.message);
  return {};
}

persistence::store_options store_opts(const queue_round& round, const std::string& path) {
  persistence::store_options opts;
  opts.path = path;
  opts.synchronous_full = round.synchronous_full;
  return opts;
}

persistence::raw_options raw_opts(const queue_round& round, const std::string& path) {
  persistence::raw_options opts;
  opts.path = path;
  opts.synchronous_full = round.synchronous_full;
  return opts;
}

void remove_database(const std::string& path) {
  std::error_code ec;
  for (auto suffix : {"", "-wal", "-shm", "-journal"})
    fs::remove(path + suffix, ec);
}

/// The store's loop, the twin of persistence::raw_claim_complete().
child_report store_loop(const queue_round& round, const std::string& path, int index,
                        const std::function<void()>& ready) {
  auto store = persistence::job_store::open(store_opts(round, path));
  if (!store)
    return failure(message_of(store.error()));
  auto& s = **store;
  const std::string worker = "bench-" + std::to_string(index + 1);
  const std::vector<std::string> models{job_model};
  const std::string output = job_output;
  ready();
  child_report r;
  using clock = std::chrono::steady_clock;
  auto start = clock::now();
  auto deadline = start
                  + std::chrono::duration_cast<clock::duration>(
                      std::chrono::duration<double>(round.seconds));
  while (clock::now() < deadline) {
    auto claimed = s.claim(worker, models, round.batch, lease_ms, wall_clock_ms());
    if (!claimed)
      return failure(message_of(claimed.error()));
    if (claimed->empty())
      break;
    for (auto& job : *claimed) {
      auto done = s.complete(job.id, job.lease_seq, output, wall_clock_ms());
      if (!done)
        return failure(message_of(done.error()));
    }
    r.jobs += static_cast<int64_t>(claimed->size());
    // The owner publishes the events; here they are dropped.
    s.take_events();
  }
  r.seconds = std::chrono::duration<double>(clock::now() - start).count();
  r.ok = 1;
  return r;
}

child_report raw_loop(const queue_round& round, const std::string& path, int index,
                      const std::function<void()>& ready) {
  persistence::raw_loop loop;
  loop.worker = "bench-" + std::to_string(index + 1);
  loop.model = job_model;
  loop.batch = round.batch;
  loop.output_json = job_output;
  loop.seconds = round.seconds;
  loop.on_ready = ready;
  auto res = persistence::raw_claim_complete(raw_opts(round, path), loop);
  if (!res)
    return failure(message_of(res.error()));
  child_report r;
  r.ok = 1;
  r.jobs = res->jobs;
  r.seconds = res->seconds;
  r.busy_retries = res->busy_retries;
  return r;
}

const char* engine_name(queue_engine e) {
  return e == queue_engine::store ? "store" : "raw";
}

/// `text` as a JSON string literal (ASCII control characters escaped).
std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string json_array(const std::vector<double>& xs, int digits) {
  std::string out = "[";
  for (std::size_t i = 0; i < xs.size(); ++i) {
    if (i > 0)
      out += ',';
    out += fixed(xs[i], digits);
  }
  return out + "]";
}

} // namespace

double median(std::vector<double> xs) {
  if (xs.empty())
    return 0;
  std::sort(xs.begin(), xs.end());
  auto n = xs.size();
  return n % 2 == 1 ? xs[n / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2;
}

scratch_dir::~scratch_dir() {
  std::error_code ec;
  if (!keep)
    fs::remove_all(path, ec);
}

std::string make_bench_dir(const std::string& parent, const std::string& prefix) {
  std::string base = parent;
  if (base.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    base = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  std::string templ = (fs::path{base} / (prefix + "-XXXXXX")).string();
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr)
    return {};
  return buf.data();
}

caf::expected<queue_round_result> run_queue_round(const queue_round& round) {
  auto path = (fs::path{round.dir}
               / ("queue-" + std::string{engine_name(round.engine)} + "-p"
                  + std::to_string(round.processes) + "-b" + std::to_string(round.batch)
                  + ".db"))
                  .string();
  remove_database(path);
  struct cleanup {
    std::string path;
    ~cleanup() {
      remove_database(path);
    }
  } guard{path};

  // Set-up: job_store::open creates the schema (the raw loop gets the very
  // same file layout), then the fill.
  auto setup = run_children(1, [&](int, const std::function<void()>&) {
    {
      auto store = persistence::job_store::open(store_opts(round, path));
      if (!store)
        return failure(message_of(store.error()));
    }
    auto filled = persistence::raw_fill(raw_opts(round, path), job_model, job_input,
                                        round.jobs, wall_clock_ms());
    if (!filled)
      return failure(message_of(filled.error()));
    child_report r;
    r.ok = 1;
    return r;
  });
  if (auto err = first_failure(setup, "set-up of " + path))
    return err;

  auto reports
      = run_children(round.processes, [&](int index, const std::function<void()>& ready) {
          return round.engine == queue_engine::store
                     ? store_loop(round, path, index, ready)
                     : raw_loop(round, path, index, ready);
        });
  if (auto err = first_failure(reports, std::string{engine_name(round.engine)} + " loop"))
    return err;
  queue_round_result result;
  for (auto& r : reports) {
    result.jobs += r.jobs;
    result.seconds = std::max(result.seconds, r.seconds);
    result.busy_retries += r.busy_retries;
    result.cpu_seconds += r.cpu_seconds;
  }
  result.jobs_per_s
      = result.seconds > 0 ? static_cast<double>(result.jobs) / result.seconds : 0;
  result.cpu_us_per_job
      = result.jobs > 0 ? result.cpu_seconds * 1e6 / static_cast<double>(result.jobs) : 0;

  // Both engines must have done the real work: exactly that many jobs
  // succeeded, and the rest is still queued.
  int64_t expected_jobs = result.jobs;
  auto check = run_children(1, [&](int, const std::function<void()>&) {
    auto store = persistence::job_store::open(store_opts(round, path));
    if (!store)
      return failure(message_of(store.error()));
    auto counts = (*store)->count_by_state();
    if (!counts)
      return failure(message_of(counts.error()));
    auto count = [&](job_state s) {
      auto i = counts->find(s);
      return i == counts->end() ? int64_t{0} : i->second;
    };
    if (count(job_state::succeeded) != expected_jobs
        || count(job_state::queued) != round.jobs - expected_jobs) {
      return failure("the database holds " + std::to_string(count(job_state::succeeded))
                     + " succeeded and " + std::to_string(count(job_state::queued))
                     + " queued jobs; the loops reported " + std::to_string(expected_jobs)
                     + " of " + std::to_string(round.jobs));
    }
    child_report r;
    r.ok = 1;
    return r;
  });
  if (auto err = first_failure(check, std::string{"check after the "}
                                          + engine_name(round.engine) + " loop"))
    return err;
  return result;
}

int run_bench_queue(const queue_bench_options& opts) {
  auto dir = make_bench_dir(opts.dir, "infergrid-bench-queue");
  if (dir.empty()) {
    std::cerr << "bench queue: cannot create a directory under "
              << (opts.dir.empty() ? "$TMPDIR or /tmp" : opts.dir) << ": "
              << std::strerror(errno) << '\n';
    return 1;
  }
  scratch_dir guard{dir};

  const char* sync = opts.synchronous_full ? "FULL" : "NORMAL";
  auto version = persistence::sqlite_version();
  std::cout << "bench queue: claim+complete jobs/s, job_store vs the same SQL on a bare "
               "sqlite3 connection\n"
            << "SQLite " << version << ", synchronous " << sync << ", " << opts.jobs
            << " jobs queued per round, rounds of at most " << opts.seconds
            << " s, median of " << opts.rounds << ", in " << dir << '\n'
            << std::flush;

  struct config {
    int processes;
    int batch;
    std::vector<double> store = {};
    std::vector<double> raw = {};
    std::vector<double> store_cpu = {};
    std::vector<double> raw_cpu = {};
    int64_t raw_busy = 0;
    int store_failures = 0;
    int raw_failures = 0;
    std::string first_failure = {};
  };
  int failed_rounds = 0;
  std::vector<config> configs;
  for (int p : opts.processes)
    for (int b : opts.batches)
      configs.push_back({p, b});
  for (auto& c : configs) {
    for (int r = 0; r < opts.rounds; ++r) {
      // Alternate which engine goes first, so neither always gets the
      // warmer (or the noisier) slot.
      queue_engine order[2] = {queue_engine::store, queue_engine::raw};
      if (r % 2 == 1)
        std::swap(order[0], order[1]);
      for (auto engine : order) {
        queue_round round;
        round.engine = engine;
        round.processes = c.processes;
        round.batch = c.batch;
        round.jobs = opts.jobs;
        round.seconds = opts.seconds;
        round.synchronous_full = opts.synchronous_full;
        round.dir = dir;
        auto res = run_queue_round(round);
        bool store = engine == queue_engine::store;
        if (!res) {
          // A failed round is a finding (e.g. a process starved past the
          // busy budget): report it and go on with the others.
          auto msg = std::string{engine_name(engine)} + ": " + message_of(res.error());
          std::cerr << "bench queue: P=" << c.processes << " B=" << c.batch
                    << " round failed: " << msg << '\n';
          ++(store ? c.store_failures : c.raw_failures);
          ++failed_rounds;
          if (c.first_failure.empty())
            c.first_failure = msg;
          continue;
        }
        (store ? c.store : c.raw).push_back(res->jobs_per_s);
        (store ? c.store_cpu : c.raw_cpu).push_back(res->cpu_us_per_job);
        if (!store)
          c.raw_busy += res->busy_retries;
      }
    }
  }

  constexpr double aim = 0.8;
  std::printf("\n%-10s %13s %11s %10s %16s %14s   %s\n", "config", "store jobs/s",
              "raw jobs/s", "store/raw", "store CPU us/job", "raw CPU us/job",
              "jobs/s per round: store | raw");
  std::vector<std::string> below;
  std::vector<std::string> failures;
  std::ostringstream json;
  json << R"({"bench":"queue","sqlite":")" << version << R"(","synchronous":")" << sync
       << R"(","jobs":)" << opts.jobs << R"(,"seconds":)" << opts.seconds
       << R"(,"rounds":)" << opts.rounds << R"(,"aim_ratio":)" << aim
       << R"(,"configs":[)";
  for (std::size_t i = 0; i < configs.size(); ++i) {
    auto& c = configs[i];
    double store = median(c.store);
    double raw = median(c.raw);
    double ratio = raw > 0 ? store / raw : 0;
    double store_cpu = median(c.store_cpu);
    double raw_cpu = median(c.raw_cpu);
    auto name = "P=" + std::to_string(c.processes) + " B=" + std::to_string(c.batch);
    if (ratio < aim)
      below.push_back(name);
    std::string rounds;
    for (auto x : c.store)
      rounds += thousands(x) + " ";
    rounds += "|";
    for (auto x : c.raw)
      rounds += " " + thousands(x);
    std::printf("%-10s %13s %11s %10s %16s %14s   %s\n", name.c_str(),
                thousands(store).c_str(), thousands(raw).c_str(), fixed(ratio, 2).c_str(),
                fixed(store_cpu, 0).c_str(), fixed(raw_cpu, 0).c_str(), rounds.c_str());
    json << (i > 0 ? "," : "") << R"({"processes":)" << c.processes << R"(,"batch":)"
         << c.batch << R"(,"store_jobs_s":)" << fixed(store, 0) << R"(,"raw_jobs_s":)"
         << fixed(raw, 0) << R"(,"ratio":)" << fixed(ratio, 3) << R"(,"store_rounds":)"
         << json_array(c.store, 0) << R"(,"raw_rounds":)" << json_array(c.raw, 0)
         << R"(,"store_cpu_us_per_job":)" << fixed(store_cpu, 1)
         << R"(,"raw_cpu_us_per_job":)" << fixed(raw_cpu, 1) << R"(,"raw_busy_retries":)"
         << c.raw_busy << R"(,"store_failed_rounds":)" << c.store_failures
         << R"(,"raw_failed_rounds":)" << c.raw_failures;
    if (!c.first_failure.empty())
      json << R"(,"first_failure":)" << json_string(c.first_failure);
    json << '}';
    if (!c.first_failure.empty())
      failures.push_back(name + ": " + std::to_string(c.store_failures) + " store and "
                         + std::to_string(c.raw_failures)
                         + " raw round(s) failed; first: " + c.first_failure);
  }
  json << "]}";
  std::printf("P: processes, each its own connection; B: jobs per claim; one job = its "
              "share of a claim + one complete transaction.\nCPU: user + system time of "
              "the loop processes per job (less sensitive to other load than jobs/s).\n");
  if (below.empty()) {
    std::printf("aim (store >= %.0f%% of raw): met in every configuration\n", aim * 100);
  } else {
    std::string names;
    for (auto& b : below)
      names += (names.empty() ? "" : ", ") + b;
    std::printf("aim (store >= %.0f%% of raw): not met for %s\n", aim * 100,
                names.c_str());
  }
  for (auto& f : failures)
    std::printf("FAILED %s\n", f.c_str());
  std::fflush(stdout);
  std::cout << json.str() << std::endl;
  return failed_rounds > 0 ? 1 : 0;
}

} // namespace infergrid::bench
