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
};

class job_store {
public:
  ~job_store();
  job_store(const job_store&) = delete;
  job_store& operator=(const job_store&) = delete;

  /// Opens (creating if needed) the database, applies pragmas and migrates the
  /// schema to the current version (PRAGMA user_version). Fails with
  /// errc::storage_error naming the path and SQLite's message.
  static caf::expected<std::unique_ptr<job_store>>
  open(const store_options& opts);

  /// Inserts a queued job (run_at = now) unless `max_queued` jobs are already
  /// queued, in which case it fails with errc::queue_full and writes nothing.
  /// The returned record carries its position (jobs ahead of it for its model).
  caf::expected<job_record> enqueue(const new_job& job, int64_t max_queued,
                                    int64_t now_ms);

  /// Atomically claims up to `n` queued jobs with run_at <= now for `models`
  /// (BEGIN IMMEDIATE + one UPDATE ... RETURNING), highest priority first,
  /// then FIFO by id; sets state running, worker, attempts+1, lease_seq+1,
  /// lease_until = now + lease_ms, started_at. The result is sorted in that
  /// order. An empty result means nothing is ready.
  caf::expected<std::vector<job_record>>
  claim(const std::string& worker, const std::vector<std::string>& models,
        int n, int64_t lease_ms, int64_t now_ms);

  /// Marks a running job succeeded with `output_json` if its lease_seq still
  /// equals `lease_seq`. Returns false (and changes nothing) when the lease
  /// was lost.
  caf::expected<bool> complete(int64_t id, int64_t lease_seq,
                               const std::string& output_json, int64_t now_ms);

  /// Records a failed attempt if `lease_seq` still holds. A retryable error
  /// with attempts left puts the job back to queued with run_at pushed out by
  /// exponential back-off with jitter (base 1 s * 2^(attempts-1), capped at
  /// 5 min, +-10%); a retryable error without attempts left makes it dead; a
  /// non-retryable error makes it failed. Returns the resulting state, or
  /// nullopt when the lease was lost.
  caf::expected<std::optional<job_state>>
  fail(int64_t id, int64_t lease_seq, const job_error& error, int64_t now_ms);

  /// Extends the lease of a running job; false when the lease was lost.
  caf::expected<bool> renew(int64_t id, int64_t lease_seq, int64_t lease_ms,
                            int64_t now_ms);

  /// Returns running jobs whose lease lapsed before `now_ms` to queued (or
  /// dead when attempts are used up, with error worker_lost). Returns how
  /// many rows changed.
  caf::expected<int64_t> rescue_expired(int64_t now_ms);

  /// Reads one job; nullopt if there is no such id. Queued jobs carry their
  /// position.
  caf::expected<std::optional<job_record>> get(int64_t id);

  /// Number of jobs in each state (states without jobs are absent).
  caf::expected<std::map<job_state, int64_t>> count_by_state();

  /// Runs a PASSIVE WAL checkpoint (only meaningful on the checkpointer).
  caf::expected<void> checkpoint();

private:
  struct impl;
  explicit job_store(std::unique_ptr<impl> ptr);
  std::unique_ptr<impl> impl_;
};

} // namespace infergrid::persistence
