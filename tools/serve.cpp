// `serve` wires the actors and the HTTP server together and owns shutdown.
#include "tools/serve.hpp"
#include "tools/stop_signals.hpp"

#include <csignal>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/openssl/publish.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include <spdlog/spdlog.h>

#include "actors/broker.hpp"
#include "actors/cluster.hpp"
#include "actors/gateway.hpp"
#include "actors/local_link.hpp"
#include "actors/queue.hpp"
#include "actors/supervisor.hpp"
#include "actors/worker.hpp"
#include "http/server.hpp"
#include "inference/demo_models.hpp"
#include "inference/model_repository.hpp"
#include "messages/errors.hpp"
#include "tools/config.hpp"
#include "tools/tls_guard.hpp"

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

// Asks the queue for a snapshot from this plain thread (never an I/O thread).
caf::expected<cluster_stats> query_stats(caf::actor_system& sys, const queue_actor& q) {
  caf::scoped_actor self{sys};
  caf::expected<cluster_stats> out = make_error(errc::timeout);
  self->request(q, std::chrono::seconds(2), stats_atom::value)
      .receive([&](cluster_stats& s) { out = std::move(s); },
               [&](caf::error& err) { out = std::move(err); });
  return out;
}

std::string self_exe() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string{"/proc/self/exe"} : p.string();
}

// The worker processes serve starts: the same binary as `infergrid worker`,
// with serve's effective settings (its file, environment and flags together)
// in their environment, so every setting a worker reads reaches it, and the
// secret serve generated when none was configured.
supervisor_config worker_processes(const settings& s, uint16_t cluster_port,
                                   const std::string& secret,
                                   const std::string& db_path) {
  supervisor_config sup;
  auto exe = self_exe();
  std::vector<std::string> env;
  for (auto& [key, value] : setting_values(s))
    env.push_back(env_name(key) + "=" + value);
  env.push_back(env_name("cluster.secret") + "=" + secret);
  for (int i = 0; i < s.workers.count; ++i) {
    child_spec c;
    c.name = "w" + std::to_string(i + 1);
    c.argv = {exe,    "worker", "--join", "127.0.0.1:" + std::to_string(cluster_port),
              "--id", c.name,   "--db",   db_path};
    c.env = env;
    sup.children.push_back(std::move(c));
  }
  return sup;
}

} // namespace

std::string random_secret() {
  return random_hex(32);
}

bool tls_enabled(const cluster_settings& c) {
  return !c.tls_certificate.empty() || !c.tls_key.empty() || !c.tls_cafile.empty();
}

std::string configure_cluster(caf::actor_system_config& cfg, const cluster_settings& c) {
  cfg.load<caf::io::middleman>();
  add_cluster_message_types(cfg);
  cfg.set("middleman.app-identifiers", std::vector<std::string>{wire_version});
  // A frozen peer keeps its TCP connection open; only missing heartbeats
  // tell (CAF 0.17 sends none by default).
  cfg.set("middleman.heartbeat-interval",
          caf::timespan{std::chrono::milliseconds{c.heartbeat_ms}});
  auto timeout = c.peer_timeout_ms > 0 ? std::chrono::milliseconds{c.peer_timeout_ms}
                                       : std::chrono::hours{24 * 365};
  cfg.set("middleman.connection-timeout", caf::timespan{timeout});
  // No BASP deserialisation workers: the multiplexer thread decodes an
  // arriving message and enqueues it at its receiver itself. A worker would
  // be one more scheduler wake-up per message (CAF 0.17 defaults to one);
  // our messages are small, so decoding in place costs less than the hop.
  cfg.set("middleman.workers", size_t{0});
  if (!tls_enabled(c))
    return {};
  std::pair<const char*, const std::string*> files[] = {
      {"cluster.tls_certificate", &c.tls_certificate},
      {"cluster.tls_key", &c.tls_key},
      {"cluster.tls_cafile", &c.tls_cafile},
  };
  for (auto& [key, path] : files) {
    if (path->empty())
      return std::string{key}
             + ": missing (TLS needs the certificate, the key and the CA file)";
    std::error_code ec;
    if (!fs::is_regular_file(*path, ec))
      return std::string{key} + ": no file '" + *path + "'";
  }
  cfg.load<caf::openssl::manager>();
  cfg.openssl_certificate = c.tls_certificate;
  cfg.openssl_key = c.tls_key;
  cfg.openssl_cafile = c.tls_cafile;
  // Without the error-queue guard above, every refused TLS handshake drops
  // this node's good connections as well.
  if (!tls_error_queue_guard_active())
    spdlog::warn(
        "cluster: TLS: this binary's SSL_read does not take the place of OpenSSL's "
        "(not exported?); a refused TLS handshake will also drop good connections");
  return {};
}

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
  return run_control_node(s, control_role::serve);
}

int run_gateway(const settings& s) {
  return run_control_node(s, control_role::gateway);
}

int run_control_node(const settings& s, control_role role) {
  const char* name = role == control_role::gateway ? "gateway" : "serve";
  bool local_processes
      = role == control_role::serve && !s.workers.in_process && s.workers.count > 0;
  bool publish = role == control_role::gateway || local_processes;
  std::string secret = s.cluster.secret;
  if (role == control_role::gateway && secret.empty()) {
    spdlog::error(
        "gateway: cluster.secret is empty; set it (INFERGRID_CLUSTER__SECRET) so "
        "that worker nodes can join");
    return 2;
  }
  if (secret.empty())
    secret = random_secret();
  stop_signals stop;
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
      spdlog::error("serve: model {} is broken and will not be served: {}", e.info.name,
                    e.error);
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
  if (publish) {
    if (auto problem = configure_cluster(cfg, s.cluster); !problem.empty()) {
      spdlog::error("{}: {}", name, problem);
      return 2;
    }
  }
  caf::actor_system sys{cfg};
  // The local link for worker processes on this host (cluster.local_link).
  std::shared_ptr<link_hub> links;
  if (publish && s.cluster.local_link) {
    if (auto hub = link_hub::open(sys))
      links = *hub;
    else
      spdlog::warn("{}: no local link, batches take the cluster connection: {}", name,
                   message_of(hub.error()));
  }
  auto broker = spawn_broker(sys, broker_config{});
  queue_config qcfg;
  qcfg.settings = s.queue;
  qcfg.sessions = s.sessions;
  qcfg.interactive_timeout_ms = s.http.request_timeout_ms;
  qcfg.models = valid;
  routing_from_string(s.cluster.routing, qcfg.routing);
  auto artifacts_dir = (fs::path{s.storage.data_dir} / "artifacts").string();
  qcfg.artifacts_dir = artifacts_dir;
  qcfg.links = links;
  auto queue = spawn_queue(
      sys, qcfg, std::shared_ptr<persistence::job_store>(std::move(*queue_store)),
      broker);
  gateway_config gcfg;
  gcfg.models = valid;
  gcfg.default_max_attempts = s.queue.max_attempts;
  auto gateway = spawn_gateway(sys, queue, broker, gcfg);
  std::vector<worker_actor> workers;
  int in_process_workers
      = role == control_role::serve && !local_processes ? s.workers.count : 0;
  for (int i = 0; i < in_process_workers; ++i) {
    worker_config wcfg;
    wcfg.id = "w" + std::to_string(i + 1);
    wcfg.models = entries;
    wcfg.store = store_opts;
    wcfg.lease_ms = s.queue.lease_ms;
    wcfg.intra_op_threads = s.workers.intra_op_threads;
    wcfg.infer_timeout_ms = s.http.request_timeout_ms;
    wcfg.generate_timeout_ms = s.workers.generate_timeout_ms;
    wcfg.stream_interval_ms = s.workers.stream_interval_ms;
    wcfg.memory_budget_mb = s.workers.memory_budget_mb;
    wcfg.artifacts_dir = artifacts_dir;
    workers.push_back(spawn_worker(sys, queue, broker, std::move(wcfg)));
  }

  door_actor door;
  supervisor_actor supervisor;
  auto stop_actors = [&] {
    if (supervisor) {
      // Workers first, while the queue still hears them go.
      caf::scoped_actor self{sys};
      self->request(supervisor, std::chrono::seconds(30), halt_atom::value)
          .receive([](std::vector<child_status>&) {},
                   [](caf::error& err) {
                     spdlog::warn("serve: stopping the worker processes: {}",
                                  message_of(err));
                   });
      caf::anon_send_exit(supervisor, caf::exit_reason::user_shutdown);
    }
    if (door)
      caf::anon_send_exit(door, caf::exit_reason::user_shutdown);
    for (auto& w : workers)
      caf::anon_send_exit(w, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(gateway, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(queue, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(broker, caf::exit_reason::user_shutdown);
    // Its reader threads deliver to actors: closed before the system goes.
    if (links)
      links->close();
  };

  if (publish) {
    door_config dcfg;
    dcfg.secret = secret;
    dcfg.db_path = store_opts.path;
    dcfg.lease_ms = s.queue.lease_ms;
    dcfg.queue = queue;
    dcfg.broker = broker;
    dcfg.links = links;
    door = spawn_door(sys, dcfg);
    auto cluster_port
        = tls_enabled(s.cluster)
              ? caf::openssl::publish(door, s.cluster.port, s.cluster.host.c_str(), true)
              : sys.middleman().publish(door, s.cluster.port, s.cluster.host.c_str(),
                                        true);
    if (!cluster_port) {
      spdlog::error("{}: cannot listen for worker nodes on {}:{}: {}", name,
                    s.cluster.host, s.cluster.port, sys.render(cluster_port.error()));
      stop_actors();
      return 1;
    }
    spdlog::info("{}: worker nodes join at {}:{}{}", name, s.cluster.host, *cluster_port,
                 tls_enabled(s.cluster) ? " (TLS)" : "");
    if (local_processes)
      supervisor = spawn_supervisor(
          sys, worker_processes(s, *cluster_port, secret, store_opts.path));
  }

  auto http_opts = s.http;
  http_opts.run_timeout_ms = s.workers.generate_timeout_ms;
  http::server server{sys, gateway, http_opts};
  auto port = server.start();
  if (!port) {
    spdlog::error("serve: {}", message_of(port.error()));
    stop_actors();
    return 1;
  }
  spdlog::info("{}: listening on http://{}:{} with {} {}; data in {}", name, s.http.host,
               *port, role == control_role::gateway ? 0 : s.workers.count,
               local_processes ? "worker process(es)" : "in-process worker(s)",
               s.storage.data_dir);

  int sig = 0;
  while (sig == 0)
    sig = stop.wait(std::chrono::hours(1));
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
    if (stop.wait(std::chrono::milliseconds(50)) > 0) {
      spdlog::warn("serve: second signal; stopping now");
      break;
    }
  }
  server.stop();
  stop_actors();
  spdlog::info("serve: stopped");
  // The actor system's destructor awaits the actors stopped above; in-process
  // workers have detached executors (stop_signals.hpp).
  arm_exit_deadline(std::chrono::seconds(2), 0, name);
  return 0;
}

} // namespace infergrid
