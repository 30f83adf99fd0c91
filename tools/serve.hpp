// The commands of the `infergrid` executable that run something.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/fwd.hpp>

#include "messages/settings.hpp"

namespace infergrid {

/// `infergrid serve`: gateway, queue and `workers.count` worker actors in
/// this process, HTTP on http.host:http.port. Blocks until SIGINT/SIGTERM,
/// then stops accepting, drains in-flight work within
/// shutdown.drain_timeout_ms and returns 0. Returns non-zero when start-up
/// fails (port in use, unreadable database).
int run_serve(const settings& s);

/// `infergrid gateway`: the control node without local workers; worker
/// nodes join at cluster.host:cluster.port with cluster.secret.
int run_gateway(const settings& s);

enum class control_role { serve, gateway };

/// What serve and gateway share: queue, gateway, broker, HTTP; the door for
/// worker nodes when workers run as processes (serve's own, supervised, or
/// other nodes'); in-process workers otherwise.
int run_control_node(const settings& s, control_role role);

/// What `infergrid worker` needs beyond the settings.
struct worker_options {
  /// HOST:PORT of the control node's cluster port.
  std::string join;
  /// Worker id; default: host name and pid.
  std::string id;
  /// The control node's SQLite file when this node may open it (same host);
  /// empty: claim through the queue actor.
  std::string db_path;
  /// Serve only these models (default: every model of storage.models_dir).
  std::vector<std::string> models;
  /// Overrides each model's device ("cpu", "cuda:0"); empty: as configured.
  std::string device;
};

/// `infergrid worker --join HOST:PORT`: one worker node. Joins with
/// cluster.secret, runs until SIGINT/SIGTERM, rejoins with back-off when the
/// control node goes away. Returns 2 when the control node refuses the join.
int run_worker(const settings& s, const worker_options& opts);

/// 32 random hex characters: a cluster secret for worker processes that
/// serve (or a benchmark) starts itself.
std::string random_secret();

/// True when cluster.tls_* asks for TLS between nodes.
bool tls_enabled(const cluster_settings& c);

/// Loads the middleman, registers the cluster's message types, and with TLS
/// loads libcaf_openssl with the certificate, key and CA file. Returns an
/// error message naming the key when the TLS keys are incomplete or a file
/// is missing; empty when all is well.
std::string configure_cluster(caf::actor_system_config& cfg, const cluster_settings& c);

/// Applies actors.scheduler and actors.threads to an actor system's config.
void configure_scheduler(caf::actor_system_config& cfg, const actors_settings& a);

/// `infergrid make-models`: writes the demo models under `out_dir`.
int run_make_models(const std::string& out_dir, uint64_t seed);

} // namespace infergrid
