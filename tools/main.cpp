// The `infergrid` command line (CLI11): serve, make-models, bench.
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "messages/errors.hpp"
#include "tools/bench/e2e_bench.hpp"
#include "tools/bench/infer_bench.hpp"
#include "tools/bench/queue_bench.hpp"
#include "tools/config.hpp"
#include "tools/logging.hpp"
#include "tools/serve.hpp"

namespace {

// Flags shared by serve: each maps onto a configuration key.
struct serve_flags {
  std::string config;
  std::map<std::string, std::string> values;
};

void add_key_flag(CLI::App* app, serve_flags& flags, const std::string& flag,
                  const std::string& key, const std::string& help) {
  app->add_option_function<std::string>(
      flag, [&flags, key](const std::string& v) { flags.values[key] = v; }, help);
}

} // namespace

int main(int argc, char** argv) {
  using namespace infergrid;
  CLI::App app{"infergrid: serves TorchScript models over HTTP from durable "
               "SQLite queues and CAF actors"};
  app.require_subcommand(1);

  serve_flags flags;
  auto serve
      = app.add_subcommand("serve", "Run gateway, queue and workers (embedded default)");
  serve->add_option("--config", flags.config,
                    "YAML configuration (default: CONFIG_PATH, else built-in defaults)");
  add_key_flag(serve, flags, "--workers", "workers.count",
               "Worker actors to start (0 allowed)");
  add_key_flag(serve, flags, "--port", "http.port", "HTTP port (default 8080)");
  add_key_flag(serve, flags, "--host", "http.host",
               "HTTP listen address (default 127.0.0.1)");
  add_key_flag(serve, flags, "--data-dir", "storage.data_dir",
               "Data directory (default ./data)");
  add_key_flag(serve, flags, "--models-dir", "storage.models_dir",
               "Model repository (default ./models)");
  add_key_flag(serve, flags, "--log-level", "log.level",
               "trace|debug|info|warn|error|off");
  add_key_flag(serve, flags, "--log-format", "log.format", "text|json");

  serve->add_flag_function(
      "--in-process", [&flags](int64_t) { flags.values["workers.in_process"] = "true"; },
      "Workers as actors in this process instead of supervised worker processes");

  auto gateway = app.add_subcommand(
      "gateway", "Run the control node only: worker nodes join at cluster.port");
  gateway->add_option(
      "--config", flags.config,
      "YAML configuration (default: CONFIG_PATH, else built-in defaults)");
  add_key_flag(gateway, flags, "--port", "http.port", "HTTP port (default 8080)");
  add_key_flag(gateway, flags, "--host", "http.host",
               "HTTP listen address (default 127.0.0.1)");
  add_key_flag(gateway, flags, "--cluster-port", "cluster.port",
               "Port worker nodes join (default 0: any free port)");
  add_key_flag(gateway, flags, "--cluster-host", "cluster.host",
               "Address worker nodes join (default 127.0.0.1)");
  add_key_flag(gateway, flags, "--data-dir", "storage.data_dir",
               "Data directory (default ./data)");
  add_key_flag(gateway, flags, "--models-dir", "storage.models_dir",
               "Model repository (default ./models)");
  add_key_flag(gateway, flags, "--log-level", "log.level",
               "trace|debug|info|warn|error|off");
  add_key_flag(gateway, flags, "--log-format", "log.format", "text|json");

  worker_options wopts;
  auto worker
      = app.add_subcommand("worker", "Run one worker node that joins a control node");
  worker->add_option("--join", wopts.join, "HOST:PORT of the control node's cluster port")
      ->required();
  worker->add_option("--id", wopts.id, "Worker id (default: host name and pid)");
  worker->add_option("--db", wopts.db_path,
                     "The control node's SQLite file, when this node may open it (same "
                     "host); without it, jobs are claimed through the queue actor");
  worker->add_option("--models", wopts.models, "Serve only these models, e.g. a,b")
      ->delimiter(',');
  worker->add_option("--device", wopts.device,
                     "Device of every model: cpu, cuda, cuda:N");
  worker->add_option("--config", flags.config,
                     "YAML configuration (default: CONFIG_PATH, else built-in defaults)");
  add_key_flag(worker, flags, "--models-dir", "storage.models_dir",
               "Model repository (default ./models)");
  add_key_flag(worker, flags, "--log-level", "log.level",
               "trace|debug|info|warn|error|off");
  add_key_flag(worker, flags, "--log-format", "log.format", "text|json");

  std::string models_out = "models";
  uint64_t seed = 42;
  auto make_models
      = app.add_subcommand("make-models", "Build the demo TorchScript models");
  make_models->add_option("--out", models_out, "Output directory (default ./models)");
  make_models->add_option("--seed", seed, "Seed of the weights (default 42)");

  auto bench = app.add_subcommand(
      "bench", "Benchmarks, each against a baseline measured in the same run");
  bench->require_subcommand(1);
  std::string bench_sync = "NORMAL";
  bench::queue_bench_options queue_opts;
  auto bench_queue = bench->add_subcommand(
      "queue", "Claim+complete jobs/s through job_store vs raw SQLite, 1-2 processes");
  bench_queue
      ->add_option("--jobs", queue_opts.jobs, "Jobs queued per round (default 20000)")
      ->check(CLI::Range(int64_t{1}, int64_t{10'000'000}));
  bench_queue
      ->add_option("--seconds", queue_opts.seconds,
                   "Longest round in seconds (default 2)")
      ->check(CLI::Range(0.05, 600.0));
  bench_queue
      ->add_option("--rounds", queue_opts.rounds,
                   "Rounds per configuration; the median counts (default 3)")
      ->check(CLI::Range(1, 99));
  bench_queue
      ->add_option("--processes", queue_opts.processes,
                   "Processes to measure, e.g. 1,2 (default 1,2)")
      ->delimiter(',')
      ->check(CLI::Range(1, 64));
  bench_queue
      ->add_option("--batch", queue_opts.batches,
                   "Claim batches to measure, e.g. 1,16 (default 1,16)")
      ->delimiter(',')
      ->check(CLI::Range(1, 1000));
  bench_queue->add_option("--synchronous", bench_sync, "NORMAL|FULL (default NORMAL)")
      ->check(CLI::IsMember({"NORMAL", "FULL"}));
  bench_queue->add_option("--dir", queue_opts.dir,
                          "Parent of the scratch directory (default $TMPDIR or /tmp)");

  bench::e2e_bench_options e2e_opts;
  auto bench_e2e = bench->add_subcommand(
      "e2e",
      "Durable jobs over HTTP via `serve` (or `gateway` + workers) vs GET /healthz "
      "and the store");
  bench_e2e->add_option("--jobs", e2e_opts.jobs, "Jobs to submit (default 5000)")
      ->check(CLI::Range(int64_t{1}, int64_t{1'000'000}));
  bench_e2e
      ->add_option("--concurrency", e2e_opts.concurrency,
                   "Keep-alive connections (default 4)")
      ->check(CLI::Range(1, 256));
  bench_e2e->add_option("--workers", e2e_opts.workers, "Server workers (default 1)")
      ->check(CLI::Range(1, 64));
  std::string e2e_mode = "processes";
  bench_e2e
      ->add_option(
          "--mode", e2e_mode,
          "processes: serve's worker processes (default); in-process: serve "
          "--in-process; remote: gateway + worker processes claiming through the "
          "queue actor")
      ->check(CLI::IsMember({"processes", "in-process", "remote"}));
  bench_e2e
      ->add_option(
          "--model", e2e_opts.model,
          "classifier (claimed in batches, default) | tinylm (one token, claimed "
          "one job at a time)")
      ->check(CLI::IsMember({"classifier", "tinylm"}));
  bench_e2e->add_option("--synchronous", bench_sync, "NORMAL|FULL (default NORMAL)")
      ->check(CLI::IsMember({"NORMAL", "FULL"}));
  bench_e2e->add_option("--dir", e2e_opts.dir,
                        "Parent of the scratch directory (default $TMPDIR or /tmp)");

  bench::infer_bench_options infer_opts;
  auto bench_infer = bench->add_subcommand(
      "infer",
      "Interactive inference over HTTP via `serve` vs the same models in-process");
  bench_infer
      ->add_option("--requests", infer_opts.requests,
                   "Classifier requests at concurrency 1 (default 3000)")
      ->check(CLI::Range(int64_t{1}, int64_t{10'000'000}));
  bench_infer
      ->add_option("--seconds", infer_opts.seconds,
                   "Length of each throughput run (default 15)")
      ->check(CLI::Range(0.1, 600.0));
  bench_infer
      ->add_option("--concurrency", infer_opts.concurrency,
                   "Connections of the throughput runs (default 16)")
      ->check(CLI::Range(1, 256));
  bench_infer
      ->add_option("--tokens", infer_opts.tokens,
                   "max_tokens of each streamed completion (default 512)")
      ->check(CLI::Range(1, 4096));
  bench_infer
      ->add_option("--streams", infer_opts.streams, "Streamed completions (default 16)")
      ->check(CLI::Range(1, 10'000));
  bench_infer
      ->add_option("--speech-requests", infer_opts.speech_requests,
                   "Speech requests (default 15)")
      ->check(CLI::Range(1, 10'000));
  bench_infer
      ->add_option("--heavy-width", infer_opts.heavy_width,
                   "Hidden width of the heavy model of section 5 (default 1024)")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  bench_infer
      ->add_option("--heavy-depth", infer_opts.heavy_depth,
                   "Hidden layers of the heavy model of section 5 (default 3)")
      ->check(CLI::Range(int64_t{1}, int64_t{16}));
  bench_infer->add_option("--dir", infer_opts.dir,
                          "Parent of the scratch directory (default $TMPDIR or /tmp)");

  CLI11_PARSE(app, argc, argv);

  if (*make_models) {
    setup_logging("info", "text");
    return run_make_models(models_out, seed);
  }
  if (*bench) {
    setup_logging("warn", "text");
    if (*bench_queue) {
      queue_opts.synchronous_full = bench_sync == "FULL";
      return bench::run_bench_queue(queue_opts);
    }
    if (*bench_infer)
      return bench::run_bench_infer(infer_opts);
    e2e_opts.synchronous_full = bench_sync == "FULL";
    e2e_opts.mode = e2e_mode == "remote"       ? bench::e2e_mode::remote
                    : e2e_mode == "in-process" ? bench::e2e_mode::in_process
                                               : bench::e2e_mode::processes;
    return bench::run_bench_e2e(e2e_opts);
  }

  config_sources sources;
  sources.env = process_environment();
  sources.yaml_path = flags.config;
  if (sources.yaml_path.empty()) {
    if (auto i = sources.env.find("CONFIG_PATH"); i != sources.env.end())
      sources.yaml_path = i->second;
  }
  sources.flags = flags.values;
  auto s = load_settings(sources);
  if (!s) {
    std::cerr << "infergrid: configuration error: " << message_of(s.error()) << '\n';
    return 2;
  }
  setup_logging(s->log.level, s->log.format);
  if (*worker)
    return run_worker(*s, wopts);
  if (*gateway)
    return run_gateway(*s);
  return run_serve(*s);
}
