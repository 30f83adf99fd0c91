// The commands of the `infergrid` executable that run something.
#pragma once

#include <cstdint>
#include <string>

#include <caf/fwd.hpp>

#include "messages/settings.hpp"

namespace infergrid {

/// `infergrid serve`: gateway, queue and `workers.count` worker actors in
/// this process, HTTP on http.host:http.port. Blocks until SIGINT/SIGTERM,
/// then stops accepting, drains in-flight work within
/// shutdown.drain_timeout_ms and returns 0. Returns non-zero when start-up
/// fails (port in use, unreadable database).
int run_serve(const settings& s);

/// Applies actors.scheduler and actors.threads to an actor system's config.
void configure_scheduler(caf::actor_system_config& cfg, const actors_settings& a);

/// `infergrid make-models`: writes the demo models under `out_dir`.
int run_make_models(const std::string& out_dir, uint64_t seed);

} // namespace infergrid
