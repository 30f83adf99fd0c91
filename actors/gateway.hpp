// The gateway actor: admission in front of the queue. It knows every model's
// declared interface and refuses bad input before anything is stored.
#pragma once

#include <cstdint>
#include <vector>

#include <caf/fwd.hpp>

#include "actors/interfaces.hpp"

namespace infergrid {

struct gateway_config {
  /// The valid models of the repository (what clients may name).
  std::vector<model_info> models;
  /// Attempts given to a job that does not ask for a number.
  int32_t default_max_attempts = 3;
};

/// Job queries and commands go to `queue`; event subscriptions to `broker`.
gateway_actor spawn_gateway(caf::actor_system& sys, queue_actor queue,
                            broker_actor broker, gateway_config cfg);

} // namespace infergrid
