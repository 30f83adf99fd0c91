// The commands of the `infergrid` executable that run something.
#pragma once

#include <cstdint>
#include <string>

#include "messages/settings.hpp"

namespace infergrid {

/// `infergrid serve`: gateway, queue and `workers.count` worker actors in
/// this process, HTTP on http.host:http.port. Blocks until SIGINT/SIGTERM,
/// then stops accepting, drains in-flight work within
/// shutdown.drain_timeout_ms and returns 0. Returns non-zero when start-up
/// fails (port in use, unreadable database).
int run_serve(const settings& s);

/// `infergrid make-models`: writes the demo models under `out_dir`.
int run_make_models(const std::string& out_dir, uint64_t seed);

} // namespace infergrid
