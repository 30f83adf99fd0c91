// The durable job table in SQLite (WAL). One job_store = one connection: it
// belongs to one actor or thread. Every call is a short transaction that runs
// in the caller's thread and may wait up to busy_timeout_ms plus a bounded,
// jittered retry when another connection holds the write lock.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <functional>

#include <caf/expected.hpp>

#include "messages/job.hpp"

namespace infergrid::persistence {

struct store_options {
  /// Path of the database file; its directory must exist.
  std::string path;
  /// synchronous=FULL instead of NORMAL (fsync on every commit).
  bool synchronous_full = false;
  /// SQLite's own busy wait per attempt.
  int busy_timeout_ms = 20;
  /// Total time spent retrying SQLITE_BUSY before giving up with
  /// errc::storage_error (retryable).
  int busy_retry_budget_ms = 2000;
  /// Only the control node's connection checkpoints the WAL (SQLite < 3.51.3
  /// WAL-reset race, see docs/storage.md). Every connection sets
  /// wal_autocheckpoint=0; the checkpointer's owner calls checkpoint().
  bool checkpointer = false;
  /// Test seam for fault injection: called before each COMMIT (step
  /// "commit") and each BEGIN IMMEDIATE (step "begin") of operation `op`;
  /// a non-zero SQLite result code (e.g. SQLITE_BUSY, SQLITE_IOERR) is
  /// treated as if SQLite had returned it. Empty in production.
  std::function<int(const std::string& op, const std::string& step)> fault_hook;
};

// lease_status, job_completion and held_lease live in messages/job.hpp:
// remote workers send them to the queue actor.
using infergrid::held_lease;
using infergrid::job_completion;
using infergrid::lease_status;

class job_store {
public:
  ~job_store();
  job_store(const job_store&) = delete;
  job_store& operator=(const job_store&) = delete;

  /// Opens (creating if needed) the database, applies pragmas and migrates the
  /// schema to the current version (PRAGMA user_version). Fails with
  /// errc::storage_error naming the path and SQLite's message.
  static caf::expected<std::unique_ptr<job_store>> open(const store_options& opts);

  /// Inserts a queued job (run_at = job.run_at_ms, or now when 0) unless
  /// `max_queued` jobs are already queued, in which case it fails with
  /// errc::queue_full and writes nothing. With an idempotency key that is
  /// already stored: same model and input -> the existing job with
  /// created=false (nothing written); otherwise errc::conflict. Writes a
  /// "status" event {"state":"queued"}. The returned record carries its
  /// position (jobs ahead of it for its model).
  caf::expected<job_record> enqueue(const new_job& job, int64_t max_queued,
                                    int64_t now_ms);

  /// Atomically claims up to `n` queued jobs with run_at <= now for `models`
  /// (BEGIN IMMEDIATE + one UPDATE ... RETURNING), highest priority first,
  /// then FIFO by id; sets state running, worker, attempts+1, lease_seq+1,
  /// lease_until = now + lease_ms, started_at. The result is sorted in that
  /// order. An empty result means nothing is ready.
  caf::expected<std::vector<job_record>> claim(const std::string& worker,
                                               const std::vector<std::string>& models,
                                               int n, int64_t lease_ms, int64_t now_ms);

  /// Marks a running job succeeded with `output_json` if its lease_seq still
  /// equals `lease_seq` (cancelled instead, output dropped, when a cancel was
  /// requested meanwhile). Returns false (and changes nothing) when the lease
  /// was lost. Writes a "status" event.
  caf::expected<bool> complete(int64_t id, int64_t lease_seq,
                               const std::string& output_json, int64_t now_ms);

  /// Completes several running jobs in ONE transaction (BEGIN IMMEDIATE ...
  /// COMMIT: one fsync under synchronous=FULL for a whole batch), each
  /// exactly as complete() would (fencing by lease_seq, cancelled instead
  /// when a cancel was requested, a "status" event each), in the order of
  /// `xs` (an id given twice answers false the second time). result[i] is
  /// complete()'s answer for xs[i]. A storage failure fails the whole call
  /// and changes nothing. Empty input: no transaction, empty result.
  caf::expected<std::vector<bool>> complete_batch(const std::vector<job_completion>& xs,
                                                  int64_t now_ms);

  /// Records a failed attempt if `lease_seq` still holds. A retryable error
  /// with attempts left puts the job back to queued with run_at pushed out by
  /// exponential back-off with jitter (base 1 s * 2^(attempts-1), capped at
  /// 5 min, +-10%); a retryable error without attempts left makes it dead; a
  /// non-retryable error makes it failed; a job whose cancel was requested
  /// becomes cancelled. Returns the resulting state, or nullopt when the
  /// lease was lost. Writes a "status" event with the error.
  caf::expected<std::optional<job_state>> fail(int64_t id, int64_t lease_seq,
                                               const job_error& error, int64_t now_ms);

  /// Extends the lease of a running job and reports whether a cancel was
  /// requested (the heartbeat is how a worker learns of it).
  caf::expected<lease_status> renew(int64_t id, int64_t lease_seq, int64_t lease_ms,
                                    int64_t now_ms);

  /// Renews several leases in ONE transaction, each as renew() would;
  /// result[i] is renew()'s answer for xs[i]. A storage failure fails the
  /// whole call and extends nothing. Empty input: no transaction, empty
  /// result.
  caf::expected<std::vector<lease_status>> renew_batch(const std::vector<held_lease>& xs,
                                                       int64_t lease_ms, int64_t now_ms);

  /// Ends a running job whose cancel the worker has acted on: state
  /// cancelled if `lease_seq` still holds (false otherwise). Writes a
  /// "status" event.
  caf::expected<bool> finish_cancelled(int64_t id, int64_t lease_seq, int64_t now_ms);

  /// Cancels a job: queued -> cancelled at once; running -> cancel_requested
  /// (its worker stops at its next heartbeat or step). nullopt: no such job;
  /// errc::conflict "job j_N is already <state>" for a final job. Returns the
  /// job after the change. Writes a "status" event when the state changes.
  caf::expected<std::optional<job_record>> cancel(int64_t id, int64_t now_ms);

  /// Records a "progress" (progress in [0,1], also stored on the row) or
  /// "data" event for a running job if `lease_seq` still holds.
  caf::expected<bool> add_event(int64_t id, int64_t lease_seq, const std::string& kind,
                                const std::string& data_json, int64_t now_ms);

  /// Events of one job with seq > after_seq, oldest first, at most `limit`.
  caf::expected<std::vector<job_event>> events_after(int64_t id, int64_t after_seq,
                                                     int32_t limit);

  /// The events this connection wrote since the last call, in commit order,
  /// for its owner to publish to live subscribers. Rolled-back writes never
  /// appear here.
  std::vector<job_event> take_events();

  /// Newest first, filtered, a page at a time (see job_filter).
  caf::expected<job_page> list(const job_filter& filter);

  /// Puts back at once the running jobs held by `worker` (it is known to be
  /// gone): queued with error worker_lost while attempts remain, else dead.
  /// Returns how many changed.
  caf::expected<int64_t> requeue_worker(const std::string& worker, int64_t now_ms);

  /// Jobs of `model` that succeeded in (now - window_ms, now], per second:
  /// the recent throughput behind a queued job's ETA.
  caf::expected<double> throughput(const std::string& model, int64_t window_ms,
                                   int64_t now_ms);

  /// Returns running jobs whose lease lapsed before `now_ms` to queued (or
  /// dead when attempts are used up, with error worker_lost). Returns how
  /// many rows changed.
  caf::expected<int64_t> rescue_expired(int64_t now_ms);

  /// Inserts several jobs in ONE write transaction (group commit: the queue
  /// batches submits that arrive together). Each job is judged as enqueue()
  /// would judge it, in order: capacity (counting the jobs accepted earlier
  /// in the batch), idempotency (also against keys earlier in the batch),
  /// validity. Returns one result per job, in order; a refused job writes
  /// nothing and does not affect the others. A storage failure fails the
  /// whole call (nothing written).
  caf::expected<std::vector<caf::expected<job_record>>>
  enqueue_batch(const std::vector<new_job>& jobs, int64_t max_queued, int64_t now_ms);

  /// Upserts a worker's row (state, models, current job, heartbeat = now;
  /// started_at set on first insert). Schema version 3 adds the table.
  caf::expected<void> record_worker(const worker_row& row, int64_t now_ms);

  /// Every worker row, by id.
  caf::expected<std::vector<worker_row>> list_workers();

  /// Reads one job; nullopt if there is no such id. Queued jobs carry their
  /// position and, when the model has recent throughput, an ETA.
  caf::expected<std::optional<job_record>> get(int64_t id);

  /// Number of jobs in each state (states without jobs are absent). One row
  /// read: the counts are kept by triggers in queue_stats (schema version
  /// 4), exact in every snapshot.
  caf::expected<std::map<job_state, int64_t>> count_by_state();

  /// Runs a PASSIVE WAL checkpoint (only meaningful on the checkpointer).
  caf::expected<void> checkpoint();

private:
  struct impl;
  explicit job_store(std::unique_ptr<impl> ptr);
  std::unique_ptr<impl> impl_;
};

} // namespace infergrid::persistence
