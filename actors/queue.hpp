// The queue actor: owns the control node's job-table connection, worker
// membership, the bounded interactive FIFO and the one dispatch step that
// hands work to idle workers.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <caf/expected.hpp>
#include <caf/fwd.hpp>

#include "actors/interfaces.hpp"
#include "actors/local_link.hpp"
#include "messages/settings.hpp"
#include "persistence/job_store.hpp"

namespace infergrid {

/// How interactive work picks among idle workers that serve its model
/// (after preferring those that hold the model resident).
enum class routing_strategy : uint8_t {
  /// The worker given the least work so far (all candidates are idle).
  queue_depth,
  /// Each in turn, in registration order.
  round_robin,
  /// The lowest recent latency for that model (an EWMA of round trips).
  latency,
};

/// Parses "queue_depth" | "round_robin" | "latency".
bool routing_from_string(const std::string& name, routing_strategy& out);

struct queue_config {
  queue_settings settings;
  /// Deadline of an interactive request waiting in the FIFO and running
  /// (tensor requests), or waiting only (generations and synthesis, which
  /// stream and are bounded by the worker's own deadline).
  int64_t interactive_timeout_ms = 30000;
  /// Pause and idle timeouts of interactive sessions.
  sessions_settings sessions;
  /// Every model of the repository: batching settings per model.
  std::vector<model_info> models;
  /// data_dir/artifacts: where durable jobs' files are found.
  std::string artifacts_dir;
  routing_strategy routing = routing_strategy::queue_depth;
  /// The local link hub: a registration that names a link token gets its
  /// batches sent over that link. Null: every batch takes CAF's BASP.
  std::shared_ptr<link_hub> links;
  /// Arm the periodic tick (rescue of lapsed leases, wake-ups). Tests that
  /// drive the queue by hand turn it off.
  bool tick = true;
};

/// Spawns the queue on an already opened store (the checkpointing
/// connection). The queue owns the store from now on and publishes the job
/// events it commits to `broker` (may be a null handle).
queue_actor spawn_queue(caf::actor_system& sys, queue_config cfg,
                        std::shared_ptr<persistence::job_store> store,
                        broker_actor broker = {});

} // namespace infergrid
