// The executor: a detached actor (its own thread) that owns one worker's loaded
// models, the device's memory budget, and makes every blocking LibTorch call,
// so no event-based actor waits.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/typed_actor.hpp>

#include "actors/cancel_flags.hpp"
#include "actors/interfaces.hpp"
#include "inference/model_repository.hpp"

namespace infergrid {

/// A file a job made, to be stored by the worker (data/artifacts/{job}/).
struct named_bytes {
  std::string name;
  std::string bytes;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, named_bytes& x) {
  return f(caf::meta::type_name("named_bytes"), x.name, x.bytes);
}

/// What became of one durable job the executor ran.
struct job_outcome {
  int64_t id = 0;
  bool ok = false;
  /// Output JSON when ok.
  std::string output_json;
  /// The error code name and message when not ok (errc names).
  std::string error_code;
  std::string error_message;
  /// Files the output refers to; the worker stores them before it
  /// completes the job.
  std::vector<named_bytes> artifacts;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, job_outcome& x) {
  return f(caf::meta::type_name("job_outcome"), x.id, x.ok, x.output_json, x.error_code,
           x.error_message, x.artifacts);
}

using executor_actor = caf::typed_actor<
    // Loads (within the memory budget) and warms the models marked preload;
    // answers which models this worker serves and which failed.
    caf::replies_to<load_atom>::with<worker_registration>,
    // Loads (evicting the least recently used models if the budget needs it)
    // or unloads one model; answers every model's state afterwards.
    caf::replies_to<load_atom, std::string>::with<std::vector<model_status>>,
    caf::replies_to<unload_atom, std::string>::with<std::vector<model_status>>,
    // Runs durable jobs of one model: tensor jobs as one batched forward call
    // (inputs that do not match the model fail alone), the others one by one.
    // Generated text and speech phrases go to the worker as data events.
    caf::replies_to<run_job_atom,
                    std::vector<job_record>>::with<std::vector<job_outcome>>,
    // Interactive work; the int64_t is the cancel key the worker raises when
    // the client goes away.
    caf::replies_to<infer_atom, infer_batch>::with<infer_batch_result>,
    caf::replies_to<generate_atom, generate_request, int64_t>::with<generate_reply>,
    caf::replies_to<speech_atom, speech_request, int64_t>::with<speech_reply>,
    // The worker closed a session: forget what its model saw.
    caf::reacts_to<session_atom, std::string>,
    // Self-timer: send the latest model states and metrics to the worker.
    caf::reacts_to<status_atom>>;

/// A way into the executor's models for one thread outside CAF that reads
/// tensor batches itself (a worker process's local link reader): it runs a
/// batch on that thread when the executor is between messages and the model
/// is resident, which saves waking the executor's thread for it. The
/// executor holds the lane's lock while it handles any message, so the two
/// never touch the models at once.
class executor_lane {
public:
  using result = direct_batch_result;
  using run_fn = direct_batch_fn;

  /// Runs `batch` on this thread now, or answers std::nullopt and leaves it
  /// untouched: the executor is busy or gone, or the model is not resident
  /// (loading it is the executor's work). Then send it to the executor.
  result try_infer(infer_batch& batch) {
    // The executor waiting for the lock goes first: std::mutex is not fair,
    // and a reader with batches in its socket could otherwise keep it.
    if (executor_waiting_.load(std::memory_order_acquire))
      return std::nullopt;
    std::unique_lock<std::mutex> guard{mtx_, std::try_to_lock};
    if (!guard.owns_lock() || !run_)
      return std::nullopt;
    return run_(batch);
  }

  // -- for the executor ------------------------------------------------------

  /// The executor's lock for one message: try_infer yields while it waits.
  std::unique_lock<std::mutex> hold() {
    std::unique_lock<std::mutex> guard{mtx_, std::try_to_lock};
    if (!guard.owns_lock()) {
      executor_waiting_.store(true, std::memory_order_release);
      guard.lock();
      executor_waiting_.store(false, std::memory_order_release);
    }
    return guard;
  }

  /// Sets how batches run; an empty function unbinds (the executor ends).
  void bind(run_fn run) {
    std::lock_guard<std::mutex> guard{mtx_};
    run_ = std::move(run);
  }

private:
  std::mutex mtx_;
  std::atomic<bool> executor_waiting_{false};
  run_fn run_;
};

struct executor_config {
  std::string worker_id;
  std::vector<inference::model_entry> models;
  int intra_op_threads = 1;
  /// Memory budget of this worker's device in MB (each model's memory_mb
  /// counts against it); <= 0: unlimited.
  int64_t memory_budget_mb = 0;
  /// Streamed text leaves at most this often (the first token at once); a
  /// fast model would otherwise pay a message, wake-ups and a socket write
  /// per token. 0: every token alone.
  std::chrono::milliseconds stream_interval{5};
  /// The longest an interactive generation or synthesis may run
  /// (workers.generate_timeout_ms); checked after every token or phrase,
  /// so it costs no timer. Past it the run stops with errc::timeout.
  std::chrono::milliseconds run_timeout{600000};
  /// Raised by the worker for a job or request to stop (cancel, timeout,
  /// client gone); generation checks it after every token.
  std::shared_ptr<cancel_flags> cancels;
  /// Receives data events of running jobs and model status/metrics.
  worker_actor worker;
  /// When set, the executor binds it (and unbinds it when it ends) so that
  /// one thread outside CAF may run tensor batches itself.
  std::shared_ptr<executor_lane> lane;
  /// The lane takes a model's batches only while its latest forward call
  /// took at most this long: the lane's thread reads nothing while it runs
  /// one, so a slow model's batches go to the executor (where the wake-up
  /// the lane saves is noise anyway).
  std::chrono::microseconds lane_max_forward{2000};
};

/// Spawns an executor on its own thread (caf::detached). It loads nothing
/// until asked with load_atom.
executor_actor spawn_executor(caf::actor_system& sys, executor_config cfg);

} // namespace infergrid
