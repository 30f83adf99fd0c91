// The raw-SQLite baseline of `infergrid bench queue`: job_store's claim and
// complete statements as bare prepared statements, nothing around them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <caf/expected.hpp>

namespace infergrid::persistence {

/// The connection settings job_store::open applies (store_options' subset).
struct raw_options {
  /// A database that job_store::open has created (schema, triggers).
  std::string path;
  bool synchronous_full = false;
  int busy_timeout_ms = 20;
  int busy_retry_budget_ms = 2000;
};

/// What one raw_claim_complete() loop did.
struct raw_result {
  /// Jobs claimed and completed.
  int64_t jobs = 0;
  /// Wall time of the loop (steady clock), from its first claim.
  double seconds = 0;
  /// Transactions rolled back and retried after SQLITE_BUSY.
  int64_t busy_retries = 0;
};

/// Inserts `n` queued jobs of `model` with `input_json` (run_at = created_at
/// = now_ms) and their "queued" status events with job_store's INSERT
/// statements in one transaction, then folds the WAL into the file
/// (TRUNCATE). Only for a file nobody else has open: it checkpoints.
caf::expected<void> raw_fill(const raw_options& opts, const std::string& model,
                             const std::string& input_json, int64_t n, int64_t now_ms);

/// The SQLite library's version, e.g. "3.40.1".
std::string sqlite_version();

/// One claim+complete loop of raw_claim_complete().
struct raw_loop {
  std::string worker;
  std::string model;
  /// Jobs per claim.
  int batch = 1;
  /// What each completion stores as the job's output.
  std::string output_json;
  /// The loop stops at the first claim after this many seconds.
  double seconds = 1;
  /// Called once the connection is open and the statements prepared, right
  /// before the first claim (a benchmark waits there for its start signal).
  std::function<void()> on_ready;
};

/// Opens its own connection with job_store's settings, prepares job_store's
/// claim and complete SQL, then loops until `loop.seconds` have passed
/// (checked once per batch) or nothing is ready: claim up to `loop.batch`
/// jobs (BEGIN IMMEDIATE; the ready range read; the UPDATE ... RETURNING;
/// one "running" event per job; COMMIT), then complete each (BEGIN
/// IMMEDIATE; the fenced UPDATE ... RETURNING; one "succeeded" event;
/// COMMIT), every transaction with job_store's jittered retry on
/// SQLITE_BUSY. Runs in the caller's thread; closes the connection before it
/// returns. Call it after any fork(), never before one.
caf::expected<raw_result> raw_claim_complete(const raw_options& opts,
                                             const raw_loop& loop);

} // namespace infergrid::persistence
