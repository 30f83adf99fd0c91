// The broker actor: fans job events out to live subscribers (SSE streams).
// It never touches SQLite: writers publish what they committed.
#pragma once

#include <cstddef>

#include <caf/fwd.hpp>

#include "actors/interfaces.hpp"

namespace infergrid {

struct broker_config {
  /// Subscriptions held at once; more are refused with errc::queue_full.
  std::size_t max_subscribers = 10000;
};

broker_actor spawn_broker(caf::actor_system& sys, broker_config cfg);

} // namespace infergrid
