// `serve` wires the actors and the HTTP server together and owns shutdown.
#include "tools/serve.hpp"

#include <csignal>
#include <chrono>
#include <filesystem>
#include <memory>
#include <thread>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include <spdlog/spdlog.h>

#include "actors/broker.hpp"
#include "actors/gateway.hpp"
#include "actors/queue.hpp"
#include "actors/worker.hpp"
#include "http/server.hpp"
#include "inference/demo_models.hpp"
#include "inference/model_repository.hpp"
#include "messages/errors.hpp"

namespace infergrid {

namespace {

namespace fs = std::filesystem;

bool has_models(const std::string& dir) {
  std::error_code ec;
  for (auto& entry : fs::directory_iterator(dir, ec))
    if (entry.is_directory() && fs::exists(entry.path() / "config.yaml"))
      return true;
  return false;
}

// Blocks SIGINT and SIGTERM in this thread and every thread started later, so
// that only the sigwait below receives them.
sigset_t block_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

// Asks the queue for a snapshot from this plain thread (never an I/O thread).
caf::expected<cluster_stats> query_stats(caf::actor_system& sys, const queue_actor& q) {
  caf::scoped_actor self{sys};
  caf::expected<cluster_stats> out = make_error(errc::timeout);
  self->request(q, std::chrono::seconds(2), stats_atom::value)
    .receive([&](cluster_stats& s) { out = std::move(s); },
             [&](caf::error& err) { out = std::move(err); });
  return out;
}

} // namespace

void configure_scheduler(caf::actor_system_config& cfg, const actors_settings& a) {
  // Work stealing polls and sleeps 50 µs between polls when idle; on a small
  // machine the shared queue (woken by a condition variable) answers faster
  // and burns less CPU (docs/benchmarks.md, bench infer).
  cfg.set("scheduler.policy",
          a.scheduler == "stealing" ? caf::atom("stealing") : caf::atom("sharing"));
  if (a.threads > 0)
    cfg.set("scheduler.max-threads", static_cast<size_t>(a.threads));
}

int run_make_models(const std::string& out_dir, uint64_t seed) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  auto names = inference::make_demo_models(out_dir, seed);
  if (!names) {
    spdlog::error("make-models: {}", message_of(names.error()));
    return 1;
  }
  for (auto& n : *names)
    spdlog::info("make-models: wrote {}", (fs::path{out_dir} / n).string());
  return 0;
}

int run_serve(const settings& s) {
  auto stop_signals = block_stop_signals();
  if (!has_models(s.storage.models_dir)) {
    spdlog::info("serve: {} holds no models; building the demo models",
                 s.storage.models_dir);
    if (auto rc = run_make_models(s.storage.models_dir, 42); rc != 0)
      return rc;
  }
  auto entries = inference::scan_model_repository(s.storage.models_dir);
  std::vector<model_info> valid;
  for (auto& e : entries) {
    if (e.error.empty())
      valid.push_back(e.info);
    else
      spdlog::error("serve: model {} is broken and will not be served: {}",
                    e.info.name, e.error);
  }
  spdlog::info("serve: {} model(s) in {}", valid.size(), s.storage.models_dir);

  persistence::store_options store_opts;
  store_opts.path = (fs::path{s.storage.data_dir} / "infergrid.db").string();
  store_opts.synchronous_full = s.storage.synchronous == "FULL";
  auto queue_store_opts = store_opts;
  queue_store_opts.checkpointer = true;
  auto queue_store = persistence::job_store::open(queue_store_opts);
  if (!queue_store) {
    spdlog::error("serve: {}", message_of(queue_store.error()));
    return 1;
  }

  caf::actor_system_config cfg;
  configure_scheduler(cfg, s.actors);
  caf::actor_system sys{cfg};
  auto broker = spawn_broker(sys, broker_config{});
  queue_config qcfg;
  qcfg.settings = s.queue;
  qcfg.interactive_timeout_ms = s.http.request_timeout_ms;
  qcfg.models = valid;
  auto artifacts_dir = (fs::path{s.storage.data_dir} / "artifacts").string();
  qcfg.artifacts_dir = artifacts_dir;
  auto queue = spawn_queue(sys, qcfg,
                           std::shared_ptr<persistence::job_store>(std::move(*queue_store)),
                           broker);
  gateway_config gcfg;
  gcfg.models = valid;
  gcfg.default_max_attempts = s.queue.max_attempts;
  auto gateway = spawn_gateway(sys, queue, broker, gcfg);
  std::vector<worker_actor> workers;
  for (int i = 0; i < s.workers.count; ++i) {
    worker_config wcfg;
    wcfg.id = "w" + std::to_string(i + 1);
    wcfg.models = entries;
    wcfg.store = store_opts;
    wcfg.lease_ms = s.queue.lease_ms;
    wcfg.intra_op_threads = s.workers.intra_op_threads;
    wcfg.infer_timeout_ms = s.http.request_timeout_ms;
    wcfg.generate_timeout_ms = s.workers.generate_timeout_ms;
    wcfg.memory_budget_mb = s.workers.memory_budget_mb;
    wcfg.artifacts_dir = artifacts_dir;
    workers.push_back(spawn_worker(sys, queue, broker, std::move(wcfg)));
  }

  auto stop_actors = [&] {
    for (auto& w : workers)
      caf::anon_send_exit(w, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(gateway, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(queue, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(broker, caf::exit_reason::user_shutdown);
  };

  auto http_opts = s.http;
  http_opts.run_timeout_ms = s.workers.generate_timeout_ms;
  http::server server{sys, gateway, http_opts};
  auto port = server.start();
  if (!port) {
    spdlog::error("serve: {}", message_of(port.error()));
    stop_actors();
    return 1;
  }
  spdlog::info("serve: listening on http://{}:{} with {} worker(s); data in {}",
               s.http.host, *port, s.workers.count, s.storage.data_dir);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  spdlog::info("serve: {} received; no longer accepting, draining for up to {} ms",
               sig == SIGINT ? "SIGINT" : "SIGTERM", s.shutdown.drain_timeout_ms);
  server.stop_accepting();

  // Drain: wait for answered requests and idle workers, or the deadline, or
  // a second signal.
  auto deadline = std::chrono::steady_clock::now()
                  + std::chrono::milliseconds(s.shutdown.drain_timeout_ms);
  for (;;) {
    auto stats = query_stats(sys, queue);
    bool workers_idle = stats && stats->workers_busy == 0;
    if (server.in_flight() == 0 && workers_idle)
      break;
    if (std::chrono::steady_clock::now() >= deadline) {
      spdlog::warn("serve: drain deadline passed with {} request(s) in flight; "
                   "unfinished jobs return to the queue when their lease lapses",
                   server.in_flight());
      break;
    }
    timespec wait{0, 50 * 1000 * 1000};
    if (sigtimedwait(&stop_signals, nullptr, &wait) > 0) {
      spdlog::warn("serve: second signal; stopping now");
      break;
    }
  }
  server.stop();
  stop_actors();
  spdlog::info("serve: stopped");
  return 0;
}

} // namespace infergrid
