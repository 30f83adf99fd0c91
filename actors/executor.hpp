// The executor: a detached actor (its own thread) that owns one worker's loaded
// models and makes every blocking LibTorch call, so no event-based actor waits.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <caf/fwd.hpp>
#include <caf/typed_actor.hpp>

#include "actors/cancel_flags.hpp"
#include "actors/interfaces.hpp"
#include "inference/model_repository.hpp"

namespace infergrid {

using executor_actor = caf::typed_actor<
    // Loads and warms every model given at spawn; answers which ones are ready.
    caf::replies_to<load_atom>::with<worker_registration>,
    // Runs a durable job's input (JSON text of the model's kind) to output JSON.
    caf::replies_to<run_job_atom, job_record>::with<std::string>,
    // Runs an interactive request on a tensor model.
    caf::replies_to<infer_atom, infer_request>::with<std::vector<tensor_data>>>;

struct executor_config {
  std::string worker_id;
  std::vector<inference::model_entry> models;
  int intra_op_threads = 1;
  /// Raised by the worker for a job to stop (cancel, timeout); generation
  /// checks it after every token.
  std::shared_ptr<cancel_flags> cancels;
};

/// Spawns an executor on its own thread (caf::detached). It loads nothing
/// until asked with load_atom.
executor_actor spawn_executor(caf::actor_system& sys, executor_config cfg);

} // namespace infergrid
