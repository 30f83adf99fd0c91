// A job_store client for the multi-process queue test (test_multiprocess.py):
// fills a database, claims and completes jobs as one worker process, rescues
// lapsed leases, and dumps the final table with its event log.
//
//   claimer --fill N --db PATH
//   claimer --run --db PATH --worker W --log FILE [--batch B] [--delay-us D]
//           [--lease-ms L] [--exit-after N] [--stall-after N --stall-ms M]
//   claimer --rescue --db PATH [--interval-ms I]
//   claimer --dump --db PATH
//
// Every mode stops after --max-seconds (default 55) with exit code 2.
#include "persistence/job_store.hpp"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include "messages/errors.hpp"

using namespace infergrid;
using namespace infergrid::persistence;

namespace {

const std::string model = "m";

struct options {
  std::string mode;
  std::string db;
  std::string worker;
  std::string log;
  int64_t fill = 0;
  int batch = 8;
  int64_t delay_us = 0;
  int64_t lease_ms = 500;
  int64_t exit_after = 0;
  int64_t stall_after = 0;
  int64_t stall_ms = 0;
  int64_t interval_ms = 200;
  int64_t max_seconds = 55;
};

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "claimer: %s\n", what.c_str());
  std::exit(1);
}

template <class T>
T must(caf::expected<T> x, const char* what) {
  if (!x)
    die(std::string{what} + ": " + message_of(x.error()));
  return std::move(*x);
}

bool parse(int argc, char** argv, options& opts) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc)
        die("missing value for " + arg);
      return argv[++i];
    };
    auto number = [&] { return std::strtoll(value().c_str(), nullptr, 10); };
    if (arg == "--run" || arg == "--rescue" || arg == "--dump")
      opts.mode = arg.substr(2);
    else if (arg == "--fill") {
      opts.mode = "fill";
      opts.fill = number();
    } else if (arg == "--db")
      opts.db = value();
    else if (arg == "--worker")
      opts.worker = value();
    else if (arg == "--log")
      opts.log = value();
    else if (arg == "--batch")
      opts.batch = static_cast<int>(number());
    else if (arg == "--delay-us")
      opts.delay_us = number();
    else if (arg == "--lease-ms")
      opts.lease_ms = number();
    else if (arg == "--exit-after")
      opts.exit_after = number();
    else if (arg == "--stall-after")
      opts.stall_after = number();
    else if (arg == "--stall-ms")
      opts.stall_ms = number();
    else if (arg == "--interval-ms")
      opts.interval_ms = number();
    else if (arg == "--max-seconds")
      opts.max_seconds = number();
    else
      return false;
  }
  return !opts.mode.empty() && !opts.db.empty();
}

std::unique_ptr<job_store> open_store(const options& opts, bool checkpointer) {
  store_options so;
  so.path = opts.db;
  so.checkpointer = checkpointer;
  // Four processes share one write lock; ride out long waits instead of
  // failing (a failure would show up as an error in the summary).
  so.busy_retry_budget_ms = 10'000;
  return must(job_store::open(so), "open");
}

/// Unbuffered append-only log: a line written before a SIGKILL is in the
/// file.
class line_log {
public:
  explicit line_log(const std::string& path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0644);
    if (fd_ < 0)
      die("cannot open " + path);
  }
  ~line_log() {
    ::close(fd_);
  }
  void write(const std::string& line) {
    auto text = line + "\n";
    if (::write(fd_, text.data(), text.size()) != static_cast<ssize_t>(text.size()))
      die("log write failed");
  }

private:
  int fd_ = -1;
};

int fill(const options& opts) {
  auto store = open_store(opts, true);
  auto start = std::chrono::steady_clock::now();
  new_job job;
  job.model = model;
  job.max_attempts = 5;
  for (int64_t i = 0; i < opts.fill; ++i) {
    // Rising priority classes of 100 jobs: enqueue counts the jobs ahead of
    // the new one (its position), which is O(queue depth) with one class
    // and O(100) like this. Claims then take the newest class first.
    job.priority = static_cast<int32_t>(i / 100);
    job.input_json = "{\"n\":" + std::to_string(i) + "}";
    must(store->enqueue(job, opts.fill, now_ms()), "enqueue");
    store->take_events();
  }
  if (auto done = store->checkpoint(); !done)
    die("checkpoint: " + message_of(done.error()));
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start);
  std::printf("fill jobs %lld seconds %.3f\n", static_cast<long long>(opts.fill),
              secs.count());
  return 0;
}

int run(const options& opts) {
  if (opts.worker.empty() || opts.log.empty())
    die("--run needs --worker and --log");
  auto store = open_store(opts, false);
  line_log log{opts.log};
  auto start = std::chrono::steady_clock::now();
  auto deadline = start + std::chrono::seconds(opts.max_seconds);
  int64_t claimed = 0;
  int64_t completed = 0;
  int64_t lost = 0;
  int64_t errors = 0;
  int64_t mismatches = 0;
  int64_t idle_since = 0;
  bool stalled = false;
  auto output = "{\"by\":\"" + opts.worker + "\"}";
  for (;;) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::printf("worker %s timed out\n", opts.worker.c_str());
      return 2;
    }
    auto now = now_ms();
    auto batch = store->claim(opts.worker, {model}, opts.batch, opts.lease_ms, now);
    if (!batch) {
      ++errors;
      std::fprintf(stderr, "claimer %s: claim: %s\n", opts.worker.c_str(),
                   message_of(batch.error()).c_str());
      continue;
    }
    // The events of this claim, and only those.
    auto events = store->take_events();
    if (events.size() != batch->size())
      ++mismatches;
    for (std::size_t i = 0; i < events.size() && i < batch->size(); ++i)
      if (events[i].job_id != (*batch)[i].id
          || events[i].data_json.find("\"running\"") == std::string::npos)
        ++mismatches;
    if (batch->empty()) {
      // Done once nothing is queued or running for a second (the rescue
      // puts back what a dead claimer held).
      auto counts = store->count_by_state();
      if (!counts) {
        ++errors;
        continue;
      }
      auto busy = (*counts)[job_state::queued] + (*counts)[job_state::running];
      if (busy > 0) {
        idle_since = 0;
      } else if (idle_since == 0) {
        idle_since = now;
      } else if (now - idle_since >= 1000) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      continue;
    }
    idle_since = 0;
    for (auto& job : *batch)
      log.write("C " + std::to_string(job.id) + " " + std::to_string(job.lease_seq));
    claimed += static_cast<int64_t>(batch->size());
    if (opts.exit_after > 0 && completed >= opts.exit_after) {
      std::fflush(stdout);
      ::_exit(3); // a crash holding a claimed batch
    }
    if (opts.stall_after > 0 && completed >= opts.stall_after && !stalled) {
      stalled = true; // a pause longer than the lease (GC, swap, partition)
      std::this_thread::sleep_for(std::chrono::milliseconds(opts.stall_ms));
    }
    for (auto& job : *batch) {
      if (opts.delay_us > 0)
        std::this_thread::sleep_for(std::chrono::microseconds(opts.delay_us));
      auto ok = store->complete(job.id, job.lease_seq, output, now_ms());
      if (!ok) {
        ++errors;
        std::fprintf(stderr, "claimer %s: complete: %s\n", opts.worker.c_str(),
                     message_of(ok.error()).c_str());
        continue;
      }
      auto done = store->take_events();
      if (done.size() != (*ok ? 1u : 0u)
          || (*ok
              && (done[0].job_id != job.id
                  || done[0].data_json.find("\"succeeded\"") == std::string::npos)))
        ++mismatches;
      log.write(std::string{"D "} + std::to_string(job.id) + " "
                + std::to_string(job.lease_seq) + (*ok ? " ok" : " lost"));
      if (*ok)
        ++completed;
      else
        ++lost;
    }
  }
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start);
  std::printf("worker %s claimed %lld completed %lld lost %lld errors %lld "
              "event_mismatches %lld seconds %.3f\n",
              opts.worker.c_str(), static_cast<long long>(claimed),
              static_cast<long long>(completed), static_cast<long long>(lost),
              static_cast<long long>(errors), static_cast<long long>(mismatches),
              secs.count());
  return 0;
}

/// The rescue loop of the control node: rescue_expired() and a PASSIVE
/// checkpoint every interval, until nothing is queued or running for 1.5 s.
int rescue(const options& opts) {
  auto store = open_store(opts, true);
  auto deadline
      = std::chrono::steady_clock::now() + std::chrono::seconds(opts.max_seconds);
  int64_t rescued = 0;
  int64_t errors = 0;
  int64_t idle_since = 0;
  for (;;) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::printf("rescue timed out\n");
      return 2;
    }
    auto now = now_ms();
    auto n = store->rescue_expired(now);
    store->take_events();
    if (n)
      rescued += *n;
    else
      ++errors;
    if (!store->checkpoint())
      ++errors;
    auto counts = store->count_by_state();
    if (counts && (*counts)[job_state::queued] + (*counts)[job_state::running] == 0) {
      if (idle_since == 0)
        idle_since = now;
      else if (now - idle_since >= 1500)
        break;
    } else {
      idle_since = 0;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(opts.interval_ms));
  }
  std::printf("rescue rescued %lld errors %lld\n", static_cast<long long>(rescued),
              static_cast<long long>(errors));
  return 0;
}

/// Reads `"key":value` out of a status event's JSON (enough for the
/// fixed shape job_store writes).
std::string json_field(const std::string& json, const std::string& key) {
  auto needle = "\"" + key + "\":";
  auto at = json.find(needle);
  if (at == std::string::npos)
    return {};
  at += needle.size();
  if (json[at] == '"') {
    auto end = json.find('"', at + 1);
    return json.substr(at + 1, end - at - 1);
  }
  auto end = json.find_first_of(",}", at);
  return json.substr(at, end - at);
}

/// One line per job, newest first, through list() and events_after():
/// "id state lease_seq attempts worker output_by events_ok".
/// events_ok: the log is queued(0), running(1), then per rescue queued(k),
/// running(k+1), and ends succeeded(attempts), with seqs increasing.
int dump(const options& opts) {
  auto store = open_store(opts, false);
  job_filter filter;
  filter.limit = 1000;
  int64_t rows = 0;
  for (;;) {
    auto page = must(store->list(filter), "list");
    for (auto& job : page.jobs) {
      std::vector<job_event> events;
      int64_t after = 0;
      for (;;) {
        auto more = must(store->events_after(job.id, after, 1000), "events_after");
        if (more.empty())
          break;
        after = more.back().seq;
        events.insert(events.end(), more.begin(), more.end());
      }
      std::vector<std::string> expected{"queued/0", "running/1"};
      for (int k = 1; k < job.attempts; ++k) {
        expected.push_back("queued/" + std::to_string(k));
        expected.push_back("running/" + std::to_string(k + 1));
      }
      expected.push_back("succeeded/" + std::to_string(job.attempts));
      bool ok = events.size() == expected.size();
      for (std::size_t i = 0; ok && i < events.size(); ++i) {
        auto& ev = events[i];
        ok = ev.kind == "status" && ev.job_id == job.id
             && (i == 0 || ev.seq > events[i - 1].seq)
             && json_field(ev.data_json, "state") + "/"
                        + json_field(ev.data_json, "attempt")
                    == expected[i];
      }
      auto by = json_field(job.output_json, "by");
      std::printf("%lld %s %lld %d %s %s %d\n", static_cast<long long>(job.id),
                  to_string(job.state).c_str(), static_cast<long long>(job.lease_seq),
                  job.attempts, job.worker.empty() ? "-" : job.worker.c_str(),
                  by.empty() ? "-" : by.c_str(), ok ? 1 : 0);
      ++rows;
    }
    if (page.next_before_id == 0)
      break;
    filter.before_id = page.next_before_id;
  }
  std::fprintf(stderr, "dump rows %lld\n", static_cast<long long>(rows));
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  options opts;
  if (!parse(argc, argv, opts)) {
    std::fprintf(stderr, "usage: claimer --fill N|--run|--rescue|--dump --db PATH "
                         "[options] (see claimer.cpp)\n");
    return 64;
  }
  spdlog::set_level(spdlog::level::warn);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (opts.mode == "fill")
    return fill(opts);
  if (opts.mode == "run")
    return run(opts);
  if (opts.mode == "rescue")
    return rescue(opts);
  return dump(opts);
}
