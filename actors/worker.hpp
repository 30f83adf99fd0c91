// The worker actor: one device's state machine (LOADING -> IDLE <-> BUSY,
// DRAINING, or ERROR). It claims durable jobs with its own SQLite connection
// (same host) or through the queue actor (another node), renews their
// leases, and hands every LibTorch call to its executor thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/fwd.hpp>

#include "actors/interfaces.hpp"
#include "actors/local_link.hpp"
#include "inference/model_repository.hpp"
#include "persistence/job_store.hpp"

namespace infergrid {

/// Worker states as ARCHITECTURE.md names them.
enum class worker_phase : uint8_t {
  loading,
  idle,
  busy,
  /// Reserved for one interactive session (its turns run here), or that
  /// session paused.
  session_active,
  session_paused,
  error,
  draining,
};

std::string to_string(worker_phase p);

struct worker_config {
  std::string id;
  /// Models to load (entries with an error are reported as failed).
  std::vector<inference::model_entry> models;
  /// The worker's own connection to the job table (same-host worker);
  /// ignored when `claim_via` is set.
  persistence::store_options store;
  /// A worker on another node claims, completes and renews through the
  /// queue actor (the same store functions, run on the control node).
  queue_actor claim_via;
  /// For the registration: the node's host name ("" inside the control
  /// process) and how it claims ("in-process", "direct", "queue").
  std::string host;
  std::string claim_path = "in-process";
  int64_t lease_ms = 30000;
  int32_t intra_op_threads = 1;
  /// Deadline of one interactive tensor request on the executor.
  int64_t infer_timeout_ms = 30000;
  /// Deadline of one interactive generation or synthesis on the executor.
  int64_t generate_timeout_ms = 600000;
  /// workers.stream_interval_ms: how often streamed text leaves the executor.
  int32_t stream_interval_ms = 5;
  /// Memory budget of the device in MB; <= 0: unlimited.
  int64_t memory_budget_mb = 0;
  /// data_dir/artifacts: where durable jobs' files go (with a store of its
  /// own; through the queue otherwise).
  std::string artifacts_dir;
  /// Most durable jobs of one tensor model claimed and run as one batch
  /// (also bounded by the model's max_batch_size).
  int32_t max_job_batch = 32;
  /// A local link to the control node (a worker process on its host): the
  /// executor serves the batches that come over it (or the link's reader
  /// runs them through the executor's lane), the worker actor the
  /// generations and syntheses.
  std::shared_ptr<link_client> link;
};

/// Spawns a worker. It loads its models in the background and registers with
/// `queue` once they are warm; until then it only holds its place. Job events
/// it commits go to `broker` (may be a null handle).
worker_actor spawn_worker(caf::actor_system& sys, queue_feedback_actor queue,
                          broker_actor broker, worker_config cfg);

} // namespace infergrid
