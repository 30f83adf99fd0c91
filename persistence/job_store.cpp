// The durable job table on SQLite: connection settings, schema migrations and
// the short BEGIN IMMEDIATE transactions behind job_store (docs/storage.md).
#include "persistence/job_store.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstddef>
#include <deque>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>

#include <sqlite3.h>
#include <spdlog/spdlog.h>

#include "messages/errors.hpp"

namespace infergrid::persistence {

namespace {

// -- schema -------------------------------------------------------------------

/// Script i takes the schema from version i to i + 1 (PRAGMA user_version).
/// Each runs in its own transaction. Append new versions; never edit a
/// script that has shipped.
const char* const migrations[] = {
    // Version 1: the job table, the two partial indexes the claim and the
    // rescue use, a meta table and a view with readable times for operators.
    R"sql(
CREATE TABLE jobs (
  id              INTEGER PRIMARY KEY AUTOINCREMENT,
  model           TEXT    NOT NULL,
  state           TEXT    NOT NULL CHECK (state IN
                    ('queued','running','succeeded','failed','dead','cancelled')),
  priority        INTEGER NOT NULL DEFAULT 0,
  attempts        INTEGER NOT NULL DEFAULT 0,
  max_attempts    INTEGER NOT NULL,
  timeout_ms      INTEGER NOT NULL DEFAULT 0,
  input           TEXT    NOT NULL,
  output          TEXT,
  error_code      TEXT,
  error_message   TEXT,
  error_retryable INTEGER,
  worker          TEXT,
  lease_seq       INTEGER NOT NULL DEFAULT 0,
  lease_until     INTEGER,
  run_at          INTEGER NOT NULL,
  created_at      INTEGER NOT NULL,
  started_at      INTEGER,
  finished_at     INTEGER
);
CREATE INDEX jobs_ready ON jobs (model, priority DESC, id)
  WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_until)
  WHERE state = 'running';
CREATE TABLE meta (
  key   TEXT PRIMARY KEY,
  value TEXT
);
INSERT INTO meta (key, value)
  VALUES ('created_at', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
CREATE VIEW jobs_readable AS
SELECT id, model, state, priority, attempts, max_attempts, worker, lease_seq,
       strftime('%Y-%m-%d %H:%M:%f', created_at / 1000.0, 'unixepoch') AS created,
       strftime('%Y-%m-%d %H:%M:%f', run_at / 1000.0, 'unixepoch') AS run_at,
       strftime('%Y-%m-%d %H:%M:%f', started_at / 1000.0, 'unixepoch') AS started,
       strftime('%Y-%m-%d %H:%M:%f', lease_until / 1000.0, 'unixepoch') AS lease_until,
       strftime('%Y-%m-%d %H:%M:%f', finished_at / 1000.0, 'unixepoch') AS finished,
       timeout_ms, error_code, error_message,
       length(input) AS input_bytes, length(output) AS output_bytes
FROM jobs;
)sql",
    // Version 2: cancel requests, idempotency keys, progress, the event log
    // (one row per state change, progress report or streamed piece), the
    // indexes behind list() and throughput(), and the number of queued jobs
    // kept by triggers (the capacity check used to count jobs_ready on every
    // enqueue: O(queue depth) under the write lock). No new index holds
    // `state` for every row: each claim and completion would then rewrite two
    // more index pages (that halved claim+complete throughput).
    R"sql(
ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
ALTER TABLE jobs ADD COLUMN progress REAL;
CREATE UNIQUE INDEX jobs_idempotency ON jobs (idempotency_key)
  WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_by_model ON jobs (model, id);
CREATE INDEX jobs_ended ON jobs (state, id)
  WHERE state IN ('failed', 'dead', 'cancelled');
CREATE INDEX jobs_succeeded ON jobs (model, finished_at)
  WHERE state = 'succeeded';
CREATE TABLE queue_stats (
  id     INTEGER PRIMARY KEY CHECK (id = 1),
  queued INTEGER NOT NULL
);
INSERT INTO queue_stats (id, queued)
  VALUES (1, (SELECT count(*) FROM jobs WHERE state = 'queued'));
CREATE TRIGGER jobs_queued_insert AFTER INSERT ON jobs
  WHEN new.state = 'queued'
BEGIN
  UPDATE queue_stats SET queued = queued + 1 WHERE id = 1;
END;
CREATE TRIGGER jobs_queued_update AFTER UPDATE OF state ON jobs
  WHEN (old.state = 'queued') != (new.state = 'queued')
BEGIN
  UPDATE queue_stats
    SET queued = queued + CASE WHEN new.state = 'queued' THEN 1 ELSE -1 END
    WHERE id = 1;
END;
CREATE TRIGGER jobs_queued_delete AFTER DELETE ON jobs
  WHEN old.state = 'queued'
BEGIN
  UPDATE queue_stats SET queued = queued - 1 WHERE id = 1;
END;
CREATE TABLE job_events (
  seq        INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id     INTEGER NOT NULL REFERENCES jobs (id),
  kind       TEXT    NOT NULL CHECK (kind IN ('status','progress','data')),
  data       TEXT    NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, seq);
DROP VIEW IF EXISTS jobs_readable;
CREATE VIEW jobs_readable AS
SELECT id, model, state, priority, attempts, max_attempts, worker, lease_seq,
       cancel_requested, progress, idempotency_key,
       strftime('%Y-%m-%d %H:%M:%f', created_at / 1000.0, 'unixepoch') AS created,
       strftime('%Y-%m-%d %H:%M:%f', run_at / 1000.0, 'unixepoch') AS run_at,
       strftime('%Y-%m-%d %H:%M:%f', started_at / 1000.0, 'unixepoch') AS started,
       strftime('%Y-%m-%d %H:%M:%f', lease_until / 1000.0, 'unixepoch') AS lease_until,
       strftime('%Y-%m-%d %H:%M:%f', finished_at / 1000.0, 'unixepoch') AS finished,
       timeout_ms, error_code, error_message,
       length(input) AS input_bytes, length(output) AS output_bytes
FROM jobs;
)sql",
    // Version 3: one row per worker the control node has seen (upserted on
    // state changes and heartbeats), and a view with readable times and the
    // age of the last heartbeat. current_job is NULL when the worker runs no
    // durable job; no foreign key (a row must never fail for a job id).
    R"sql(
CREATE TABLE workers (
  id             TEXT    PRIMARY KEY,
  state          TEXT    NOT NULL,
  models         TEXT    NOT NULL,
  current_job    INTEGER,
  started_at     INTEGER NOT NULL,
  last_heartbeat INTEGER NOT NULL
);
CREATE VIEW workers_readable AS
SELECT id, state, models,
       CASE WHEN current_job IS NOT NULL THEN 'j_' || current_job END AS current_job,
       strftime('%Y-%m-%d %H:%M:%f', started_at / 1000.0, 'unixepoch') AS started,
       strftime('%Y-%m-%d %H:%M:%f', last_heartbeat / 1000.0, 'unixepoch')
         AS last_heartbeat,
       round((julianday('now') - 2440587.5) * 86400.0 - last_heartbeat / 1000.0, 1)
         AS heartbeat_age_s
FROM workers;
)sql",
    // Version 4: the number of jobs in every state, next to the queued count
    // and kept the same way, so that count_by_state() (polled by /readyz,
    // /metrics and drains) reads one row instead of scanning every job ever
    // run (7-30 ms at 20k jobs on the 2-core build machine, growing without
    // bound). Same row, same page as `queued`: a claim writes no extra page,
    // a completion transaction one (4,120 WAL bytes, ~7% more per job with
    // unbatched completes; complete_batch shares it). The three queued
    // triggers become three that keep all six counts; the counts start from
    // the table.
    R"sql(
ALTER TABLE queue_stats ADD COLUMN running INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue_stats ADD COLUMN succeeded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue_stats ADD COLUMN failed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue_stats ADD COLUMN dead INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue_stats ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0;
UPDATE queue_stats SET (queued, running, succeeded, failed, dead, cancelled) = (
  SELECT count(*) FILTER (WHERE state = 'queued'),
         count(*) FILTER (WHERE state = 'running'),
         count(*) FILTER (WHERE state = 'succeeded'),
         count(*) FILTER (WHERE state = 'failed'),
         count(*) FILTER (WHERE state = 'dead'),
         count(*) FILTER (WHERE state = 'cancelled')
  FROM jobs)
WHERE id = 1;
DROP TRIGGER jobs_queued_insert;
DROP TRIGGER jobs_queued_update;
DROP TRIGGER jobs_queued_delete;
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
BEGIN
  UPDATE queue_stats SET
    queued = queued + (new.state = 'queued'),
    running = running + (new.state = 'running'),
    succeeded = succeeded + (new.state = 'succeeded'),
    failed = failed + (new.state = 'failed'),
    dead = dead + (new.state = 'dead'),
    cancelled = cancelled + (new.state = 'cancelled')
    WHERE id = 1;
END;
CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON jobs
  WHEN old.state != new.state
BEGIN
  UPDATE queue_stats SET
    queued = queued + (new.state = 'queued') - (old.state = 'queued'),
    running = running + (new.state = 'running') - (old.state = 'running'),
    succeeded = succeeded + (new.state = 'succeeded') - (old.state = 'succeeded'),
    failed = failed + (new.state = 'failed') - (old.state = 'failed'),
    dead = dead + (new.state = 'dead') - (old.state = 'dead'),
    cancelled = cancelled + (new.state = 'cancelled') - (old.state = 'cancelled')
    WHERE id = 1;
END;
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs
BEGIN
  UPDATE queue_stats SET
    queued = queued - (old.state = 'queued'),
    running = running - (old.state = 'running'),
    succeeded = succeeded - (old.state = 'succeeded'),
    failed = failed - (old.state = 'failed'),
    dead = dead - (old.state = 'dead'),
    cancelled = cancelled - (old.state = 'cancelled')
    WHERE id = 1;
END;
)sql",
};

constexpr int schema_version
    = static_cast<int>(sizeof(migrations) / sizeof(migrations[0]));

/// Every statement that returns jobs selects these columns in this order
/// (read_record below depends on it).
#define INFERGRID_JOB_COLUMNS                                                            \
  "id, model, state, priority, attempts, max_attempts, timeout_ms, input, "              \
  "output, error_code, error_message, error_retryable, worker, lease_seq, "              \
  "lease_until, created_at, started_at, finished_at, cancel_requested, "                 \
  "idempotency_key, run_at, progress"

constexpr int job_column_count = 22;

/// Window of the recent throughput behind a queued job's ETA, and how long
/// one connection reuses a computed rate (counting a busy minute of
/// successes costs a range scan over up to that many index entries).
constexpr int64_t eta_window_ms = 60'000;
constexpr int64_t rate_cache_ms = 1'000;

/// Events a connection keeps for take_events() before dropping the oldest.
constexpr std::size_t max_buffered_events = 100'000;

/// Largest data_json add_event() stores.
constexpr std::size_t max_event_bytes = 1 << 20;

// -- statements ---------------------------------------------------------------

// Kept by triggers (jobs_count_* since version 4) in the statement that changes
// the row.
const char* const sql_count_queued = "SELECT queued FROM queue_stats WHERE id = 1";

// INDEXED BY, here and below: with sqlite_stat1 statistics (PRAGMA
// optimize, ANALYZE) and many queued rows the planner would rather scan the
// whole table; it also fails loudly at open if an index is missing.

const char* const sql_find_key
    = "SELECT id, model, input FROM jobs INDEXED BY jobs_idempotency "
      "WHERE idempotency_key = ?1";

const char* const sql_insert
    = "INSERT INTO jobs (model, state, priority, attempts, max_attempts, "
      "timeout_ms, input, run_at, created_at, idempotency_key) "
      "VALUES (?1, 'queued', ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8)";

const char* const sql_insert_event
    = "INSERT INTO job_events (job_id, kind, data, created_at) VALUES (?1, ?2, ?3, ?4) "
      "RETURNING seq, (SELECT max(e.seq) FROM job_events e "
      "WHERE e.job_id = ?1 AND e.seq < job_events.seq)";

// Position = queued jobs of the same model that a claim takes first. Two
// counts keep both halves range scans over jobs_ready.
const char* const sql_get
    = "SELECT " INFERGRID_JOB_COLUMNS ", "
      "CASE WHEN j.state = 'queued' THEN"
      " (SELECT count(*) FROM jobs q WHERE q.state = 'queued'"
      "   AND q.model = j.model AND q.priority > j.priority)"
      " + (SELECT count(*) FROM jobs q WHERE q.state = 'queued'"
      "   AND q.model = j.model AND q.priority = j.priority AND q.id < j.id)"
      " ELSE -1 END "
      "FROM jobs j WHERE j.id = ?1";

/// One row without its position (list() computes positions per model).
const char* const sql_row = "SELECT " INFERGRID_JOB_COLUMNS " FROM jobs WHERE id = ?1";

// The claim: two statements inside one BEGIN IMMEDIATE. First the next
// ready jobs of each model, an index range that stops after n rows (with
// `model IN (SELECT value FROM json_each(?))` the planner read every queued
// row of those models and sorted them: O(queue depth) under the write
// lock); then, after merging in code, one UPDATE of the chosen ids.
const char* const sql_ready = "SELECT id, priority FROM jobs INDEXED BY jobs_ready "
                              "WHERE state = 'queued' AND model = ?1 AND run_at <= ?2 "
                              "ORDER BY priority DESC, id LIMIT ?3";

const char* const sql_claim
    = "UPDATE jobs SET state = 'running', worker = ?1, attempts = attempts + 1, "
      "lease_seq = lease_seq + 1, lease_until = ?2, started_at = ?3, progress = NULL "
      "WHERE id IN (SELECT value FROM json_each(?4)) AND state = 'queued' "
      "RETURNING " INFERGRID_JOB_COLUMNS;

// A cancel requested meanwhile turns the success into cancelled and drops
// the output.
const char* const sql_complete
    = "UPDATE jobs SET "
      "state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'succeeded' END, "
      "output = CASE WHEN cancel_requested THEN NULL ELSE ?1 END, finished_at = ?2, "
      "lease_until = NULL, error_code = NULL, error_message = NULL, "
      "error_retryable = NULL "
      "WHERE id = ?3 AND state = 'running' AND lease_seq = ?4 "
      "RETURNING state, attempts";

const char* const sql_lease = "SELECT attempts, max_attempts, cancel_requested FROM jobs "
                              "WHERE id = ?1 AND state = 'running' AND lease_seq = ?2";

const char* const sql_fail
    = "UPDATE jobs SET state = ?1, error_code = ?2, error_message = ?3, "
      "error_retryable = ?4, run_at = coalesce(?5, run_at), lease_until = NULL, "
      "finished_at = ?6 "
      "WHERE id = ?7 AND state = 'running' AND lease_seq = ?8";

const char* const sql_renew = "UPDATE jobs SET lease_until = ?1 "
                              "WHERE id = ?2 AND state = 'running' AND lease_seq = ?3 "
                              "RETURNING cancel_requested";

const char* const sql_finish_cancelled
    = "UPDATE jobs SET state = 'cancelled', finished_at = ?1, lease_until = NULL, "
      "output = NULL, error_code = NULL, error_message = NULL, error_retryable = NULL "
      "WHERE id = ?2 AND state = 'running' AND lease_seq = ?3 "
      "RETURNING attempts";

const char* const sql_cancel_queued
    = "UPDATE jobs SET state = 'cancelled', finished_at = ?1, error_code = NULL, "
      "error_message = NULL, error_retryable = NULL "
      "WHERE id = ?2 AND state = 'queued' "
      "RETURNING attempts";

const char* const sql_cancel_running
    = "UPDATE jobs SET cancel_requested = 1 "
      "WHERE id = ?1 AND state = 'running' AND cancel_requested = 0 "
      "RETURNING attempts";

const char* const sql_set_progress
    = "UPDATE jobs SET progress = ?1 "
      "WHERE id = ?2 AND state = 'running' AND lease_seq = ?3";

// json_valid first: json_type() raises an error on malformed text.
const char* const sql_check_json
    = "SELECT json_valid(?1), CASE WHEN json_valid(?1) THEN json_type(?1) END, "
      "CASE WHEN json_valid(?1) THEN json_type(?1, '$.progress') END, "
      "CASE WHEN json_valid(?1) THEN json_extract(?1, '$.progress') END";

const char* const sql_events_after
    = "SELECT seq, job_id, kind, data, created_at, "
      "(SELECT coalesce(max(p.seq), 0) FROM job_events p "
      "WHERE p.job_id = ?1 AND p.seq <= ?2) FROM job_events "
      "WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3";

// list(): ids first, newest first, from the index that fits the filter
// (one query per state, merged in code), then the rows of one page. Queued
// and running jobs are few (bounded by max_queued and the workers), so
// sorting them is cheap; failed, dead and cancelled jobs have a partial
// index; succeeded ones are the bulk and come in id order from the table or
// from jobs_by_model. (The IN term of jobs_ended is repeated because the
// planner only uses a partial index whose WHERE appears in the query.)
const char* const sql_list_all
    = "SELECT id FROM jobs WHERE id < ?1 ORDER BY id DESC LIMIT ?2";

const char* const sql_list_model
    = "SELECT id FROM jobs INDEXED BY jobs_by_model "
      "WHERE model = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3";

const char* const sql_list_queued
    = "SELECT id FROM jobs INDEXED BY jobs_ready "
      "WHERE state = 'queued' AND id < ?1 ORDER BY id DESC LIMIT ?2";

const char* const sql_list_queued_model
    = "SELECT id FROM jobs INDEXED BY jobs_ready "
      "WHERE state = 'queued' AND model = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3";

const char* const sql_list_running
    = "SELECT id FROM jobs INDEXED BY jobs_leased "
      "WHERE state = 'running' AND id < ?1 AND (?2 = '' OR model = ?2) "
      "ORDER BY id DESC LIMIT ?3";

const char* const sql_list_succeeded
    = "SELECT id FROM jobs NOT INDEXED "
      "WHERE state = 'succeeded' AND id < ?1 ORDER BY id DESC LIMIT ?2";

const char* const sql_list_succeeded_model
    = "SELECT id FROM jobs INDEXED BY jobs_by_model "
      "WHERE model = ?1 AND state = 'succeeded' AND id < ?2 ORDER BY id DESC LIMIT ?3";

const char* const sql_list_ended
    = "SELECT id FROM jobs INDEXED BY jobs_ended "
      "WHERE state IN ('failed', 'dead', 'cancelled') AND state = ?1 "
      "AND id < ?2 AND (?3 = '' OR model = ?3) "
      "ORDER BY id DESC LIMIT ?4";

/// The queued jobs of a model in claim order (positions for a list page).
const char* const sql_queued_order
    = "SELECT id FROM jobs INDEXED BY jobs_ready "
      "WHERE state = 'queued' AND model = ?1 ORDER BY priority DESC, id";

const char* const sql_throughput
    = "SELECT count(*) FROM jobs INDEXED BY jobs_succeeded "
      "WHERE state = 'succeeded' AND model = ?1 AND finished_at > ?2 "
      "AND finished_at <= ?3";

/// Puts back a running job whose worker is gone (`who` names it in the
/// error): queued at ?1 while attempts remain, else dead; cancelled without
/// an error when a cancel was requested (nobody needs the result).
#define INFERGRID_LOST_SET(who)                                                          \
  "state = CASE WHEN cancel_requested THEN 'cancelled' "                                 \
  "WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, "                        \
  "run_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN run_at "         \
  "ELSE ?1 END, "                                                                        \
  "finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN ?1 "        \
  "ELSE finished_at END, "                                                               \
  "lease_until = NULL, "                                                                 \
  "error_code = CASE WHEN cancel_requested THEN NULL ELSE 'worker_lost' END, "           \
  "error_message = CASE WHEN cancel_requested THEN NULL ELSE " who                       \
  " || CASE WHEN attempts >= max_attempts THEN ' after the last attempt' ELSE '' END "   \
  "END, "                                                                                \
  "error_retryable = CASE WHEN cancel_requested THEN NULL ELSE 1 END "

#define INFERGRID_LOST_RETURNING                                                         \
  "RETURNING id, state, attempts, error_code, error_message, error_retryable"

// clang-format off
const char* const sql_rescue
    = "UPDATE jobs INDEXED BY jobs_leased SET "
      INFERGRID_LOST_SET("'lease expired on worker ' || coalesce(worker, '?')")
      "WHERE state = 'running' AND lease_until < ?1 "
      INFERGRID_LOST_RETURNING;

const char* const sql_requeue_worker
    = "UPDATE jobs INDEXED BY jobs_leased SET "
      INFERGRID_LOST_SET("'worker ' || coalesce(worker, '?') || ' is gone'")
      "WHERE state = 'running' AND worker = ?2 "
      INFERGRID_LOST_RETURNING;
// clang-format on

// Kept by the jobs_count_* triggers (version 4); the columns in the order of
// count_states below.
const char* const sql_count_by_state
    = "SELECT queued, running, succeeded, failed, dead, cancelled FROM queue_stats "
      "WHERE id = 1";

constexpr job_state count_states[]
    = {job_state::queued, job_state::running, job_state::succeeded,
       job_state::failed, job_state::dead,    job_state::cancelled};

// One savepoint per job of an enqueue batch: a refused job is rolled back to
// it, leaving the jobs before it in the transaction.
const char* const sql_savepoint = "SAVEPOINT enqueue_job";
const char* const sql_rollback_to = "ROLLBACK TO enqueue_job";
const char* const sql_release = "RELEASE enqueue_job";

// started_at only on the first insert; everything else follows the worker.
const char* const sql_upsert_worker
    = "INSERT INTO workers (id, state, models, current_job, started_at, last_heartbeat) "
      "VALUES (?1, ?2, ?3, ?4, ?5, ?6) "
      "ON CONFLICT (id) DO UPDATE SET state = excluded.state, "
      "models = excluded.models, current_job = excluded.current_job, "
      "last_heartbeat = excluded.last_heartbeat";

const char* const sql_list_workers
    = "SELECT id, state, models, current_job, started_at, last_heartbeat "
      "FROM workers ORDER BY id";

// -- helpers ------------------------------------------------------------------

bool is_busy(int rc) {
  return (rc & 0xff) == SQLITE_BUSY;
}

/// Owns a prepared statement.
class statement {
public:
  statement() = default;
  explicit statement(sqlite3_stmt* ptr) : ptr_(ptr) {}
  ~statement() {
    sqlite3_finalize(ptr_);
  }
  statement(statement&& other) noexcept : ptr_(other.ptr_) {
    other.ptr_ = nullptr;
  }
  statement& operator=(statement&& other) noexcept {
    std::swap(ptr_, other.ptr_);
    return *this;
  }
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;

  sqlite3_stmt* get() const {
    return ptr_;
  }

private:
  sqlite3_stmt* ptr_ = nullptr;
};

/// Resets a statement and drops its bindings when the scope ends, so that no
/// statement keeps a read snapshot open between calls.
class statement_use {
public:
  explicit statement_use(const statement& stmt) : ptr_(stmt.get()) {}
  ~statement_use() {
    sqlite3_reset(ptr_);
    sqlite3_clear_bindings(ptr_);
  }
  statement_use(const statement_use&) = delete;
  statement_use& operator=(const statement_use&) = delete;

  sqlite3_stmt* get() const {
    return ptr_;
  }

private:
  sqlite3_stmt* ptr_;
};

// Binding: text is bound SQLITE_STATIC; callers keep it alive until the
// statement_use guarding the statement ends.

int bind_one(sqlite3_stmt* s, int i, int64_t x) {
  return sqlite3_bind_int64(s, i, x);
}

int bind_one(sqlite3_stmt* s, int i, double x) {
  return sqlite3_bind_double(s, i, x);
}

int bind_one(sqlite3_stmt* s, int i, const std::string& x) {
  if (x.size() > static_cast<std::size_t>(INT_MAX))
    return SQLITE_TOOBIG;
  return sqlite3_bind_text(s, i, x.data(), static_cast<int>(x.size()), SQLITE_STATIC);
}

int bind_one(sqlite3_stmt* s, int i, const std::optional<int64_t>& x) {
  return x ? sqlite3_bind_int64(s, i, *x) : sqlite3_bind_null(s, i);
}

int bind_one(sqlite3_stmt* s, int i, const std::optional<std::string>& x) {
  return x ? bind_one(s, i, *x) : sqlite3_bind_null(s, i);
}

template <class... Ts>
int bind_all(sqlite3_stmt* s, const Ts&... xs) {
  int i = 0;
  int rc = SQLITE_OK;
  ((rc = rc == SQLITE_OK ? bind_one(s, ++i, xs) : rc), ...);
  return rc;
}

std::string column_text(sqlite3_stmt* s, int i) {
  auto ptr = reinterpret_cast<const char*>(sqlite3_column_text(s, i));
  if (ptr == nullptr)
    return {};
  return std::string(ptr, static_cast<std::size_t>(sqlite3_column_bytes(s, i)));
}

/// NULL reads as 0 ("not yet").
int64_t column_int(sqlite3_stmt* s, int i) {
  return sqlite3_column_int64(s, i);
}

int32_t column_int32(sqlite3_stmt* s, int i) {
  return static_cast<int32_t>(sqlite3_column_int64(s, i));
}

/// Reads the INFERGRID_JOB_COLUMNS of the current row; false if the state
/// column holds something unknown.
bool read_record(sqlite3_stmt* s, job_record& out) {
  out.id = column_int(s, 0);
  out.model = column_text(s, 1);
  if (!job_state_from_string(column_text(s, 2), out.state))
    return false;
  out.priority = column_int32(s, 3);
  out.attempts = column_int32(s, 4);
  out.max_attempts = column_int32(s, 5);
  out.timeout_ms = column_int(s, 6);
  out.input_json = column_text(s, 7);
  out.output_json = column_text(s, 8);
  out.has_error = sqlite3_column_type(s, 9) != SQLITE_NULL;
  out.error.code = column_text(s, 9);
  out.error.message = column_text(s, 10);
  out.error.retryable = column_int(s, 11) != 0;
  out.worker = column_text(s, 12);
  out.lease_seq = column_int(s, 13);
  out.lease_until_ms = column_int(s, 14);
  out.created_at_ms = column_int(s, 15);
  out.started_at_ms = column_int(s, 16);
  out.finished_at_ms = column_int(s, 17);
  out.cancel_requested = column_int(s, 18) != 0;
  out.idempotency_key = column_text(s, 19);
  out.run_at_ms = column_int(s, 20);
  out.progress
      = sqlite3_column_type(s, 21) == SQLITE_NULL ? -1.0 : sqlite3_column_double(s, 21);
  out.position = -1;
  out.eta_ms = -1;
  return true;
}

/// Length of the well-formed UTF-8 sequence at `s[i]`, or 0 when it is not
/// one (overlong forms, surrogates and code points past U+10FFFF included).
std::size_t utf8_length(const std::string& s, std::size_t i) {
  auto at = [&](std::size_t k) -> unsigned {
    return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0u;
  };
  auto cont = [](unsigned c) { return c >= 0x80 && c <= 0xbf; };
  unsigned c = at(0);
  if (c >= 0xc2 && c <= 0xdf)
    return cont(at(1)) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    unsigned lo = c == 0xe0 ? 0xa0 : 0x80;
    unsigned hi = c == 0xed ? 0x9f : 0xbf;
    return at(1) >= lo && at(1) <= hi && cont(at(2)) ? 3 : 0;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    unsigned lo = c == 0xf0 ? 0x90 : 0x80;
    unsigned hi = c == 0xf4 ? 0x8f : 0xbf;
    return at(1) >= lo && at(1) <= hi && cont(at(2)) && cont(at(3)) ? 4 : 0;
  }
  return 0;
}

/// Appends `text` as a JSON string literal; bytes that are not well-formed
/// UTF-8 become U+FFFD so that the result is always valid JSON.
void append_json_string(std::string& out, const std::string& text) {
  static constexpr char hex[] = "0123456789abcdef";
  out += '"';
  for (std::size_t i = 0; i < text.size();) {
    auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      auto n = utf8_length(text, i);
      if (n == 0) {
        out += "\\ufffd";
        ++i;
      } else {
        out.append(text, i, n);
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 0xf];
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
}

/// The data of a "status" event: {"state", "attempt", "error"?,
/// "cancel_requested"?}.
std::string status_json(job_state state, int32_t attempt, const job_error* error,
                        bool cancel_requested) {
  std::string out = "{\"state\":";
  append_json_string(out, to_string(state));
  out += ",\"attempt\":";
  out += std::to_string(attempt);
  if (error != nullptr) {
    out += ",\"error\":{\"code\":";
    append_json_string(out, error->code);
    out += ",\"message\":";
    append_json_string(out, error->message);
    out += ",\"retryable\":";
    out += error->retryable ? "true" : "false";
    out += '}';
  }
  if (cancel_requested)
    out += ",\"cancel_requested\":true";
  out += '}';
  return out;
}

caf::error storage_error(const std::string& op, const std::string& what) {
  return make_error(errc::storage_error, op + ": " + what);
}

int64_t wall_clock_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

/// Why enqueue refuses `job` before looking at the table (errc::invalid_input
/// named after `op`), or no error.
caf::error check_new_job(const std::string& op, const new_job& job) {
  if (job.model.empty())
    return make_error(errc::invalid_input, op + ": model is empty");
  if (job.max_attempts < 1)
    return make_error(errc::invalid_input, op + ": max_attempts must be at least 1");
  if (job.timeout_ms < 0)
    return make_error(errc::invalid_input, op + ": timeout_ms must not be negative");
  if (job.run_at_ms < 0)
    return make_error(errc::invalid_input, op + ": run_at_ms must not be negative");
  return {};
}

} // namespace

// -- impl -------------------------------------------------------------------

struct job_store::impl {
  /// Closes the connection last, after every statement is finalized.
  struct connection {
    sqlite3* db = nullptr;
    ~connection() {
      sqlite3_close_v2(db);
    }
  };

  /// A throughput computed at `at_ms`, reused for rate_cache_ms.
  struct cached_rate {
    int64_t at_ms = 0;
    double per_s = 0;
  };

  connection conn_;
  store_options opts_;
  std::minstd_rand rng_{std::random_device{}()};
  /// SQLite's message for the last failing call, captured before a rollback
  /// overwrites it.
  std::string last_error_;
  /// Events written by the current transaction attempt; they move to
  /// `events_` only once its COMMIT succeeded.
  std::vector<job_event> pending_;
  /// Committed events not yet taken (at most max_buffered_events).
  std::deque<job_event> events_;
  /// Events dropped from `events_` since the last take_events().
  int64_t dropped_events_ = 0;
  /// Recent throughput per model for ETAs (bounded: cleared past 1024).
  std::unordered_map<std::string, cached_rate> rates_;

  statement begin_;
  statement begin_read_;
  statement commit_;
  statement rollback_;
  statement count_queued_;
  statement find_key_;
  statement insert_;
  statement insert_event_;
  statement get_;
  statement row_;
  statement ready_;
  statement claim_;
  statement complete_;
  statement lease_;
  statement fail_;
  statement renew_;
  statement finish_cancelled_;
  statement cancel_queued_;
  statement cancel_running_;
  statement set_progress_;
  statement check_json_;
  statement events_after_;
  statement list_all_;
  statement list_model_;
  statement list_queued_;
  statement list_queued_model_;
  statement list_running_;
  statement list_succeeded_;
  statement list_succeeded_model_;
  statement list_ended_;
  statement queued_order_;
  statement throughput_;
  statement rescue_;
  statement requeue_worker_;
  statement count_by_state_;
  statement savepoint_;
  statement rollback_to_;
  statement release_;
  statement upsert_worker_;
  statement list_workers_;

  explicit impl(store_options opts) : opts_(std::move(opts)) {}

  sqlite3* db() const {
    return conn_.db;
  }

  /// Records SQLite's message for `rc` and passes `rc` on.
  int failed(int rc) {
    last_error_ = sqlite3_errmsg(db());
    if (last_error_.empty() || last_error_ == "not an error")
      last_error_ = sqlite3_errstr(rc);
    return rc;
  }

  /// sqlite3_step that records the message of a failure; returns SQLITE_ROW,
  /// SQLITE_DONE or an error code.
  int step(sqlite3_stmt* s) {
    int rc = sqlite3_step(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
      return failed(rc);
    return rc;
  }

  /// Steps `s` to its end, calling `on_row()` (returning an SQLite code) for
  /// every row; SQLITE_OK or the first error.
  template <class OnRow>
  int each_row(sqlite3_stmt* s, OnRow&& on_row) {
    int rc;
    while ((rc = step(s)) == SQLITE_ROW)
      if (int row_rc = on_row(); row_rc != SQLITE_OK)
        return row_rc;
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
  }

  /// Runs a statement without result rows; SQLITE_OK or an error code.
  int run(const statement& stmt) {
    statement_use use{stmt};
    int rc = step(use.get());
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
  }

  /// Runs SQL text (pragmas, migration scripts); SQLITE_OK or an error code.
  int exec(const char* sql) {
    int rc = sqlite3_exec(db(), sql, nullptr, nullptr, nullptr);
    return rc == SQLITE_OK ? rc : failed(rc);
  }

  int prepare(const char* sql, statement& out, bool persistent = true) {
    sqlite3_stmt* ptr = nullptr;
    int rc = sqlite3_prepare_v3(db(), sql, -1, persistent ? SQLITE_PREPARE_PERSISTENT : 0,
                                &ptr, nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_finalize(ptr);
      return failed(rc);
    }
    out = statement{ptr};
    return SQLITE_OK;
  }

  /// Runs a one-row query and reads its first column as text.
  int query_text(const char* sql, std::string& out) {
    statement stmt;
    if (int rc = prepare(sql, stmt, false); rc != SQLITE_OK)
      return rc;
    statement_use use{stmt};
    int rc = step(use.get());
    if (rc == SQLITE_ROW) {
      out = column_text(use.get(), 0);
      return SQLITE_OK;
    }
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
  }

  void rollback_if_open() {
    if (sqlite3_get_autocommit(db()) == 0) {
      auto saved = std::move(last_error_);
      if (run(rollback_) != SQLITE_OK)
        spdlog::warn("job_store: ROLLBACK failed on {}: {}", opts_.path, last_error_);
      last_error_ = std::move(saved);
    }
  }

  /// The fault-injection seam (store_options::fault_hook): the code the hook
  /// returns for `step` of `op`, handled like SQLite's own.
  int inject(const std::string& op, const char* step_name) {
    if (!opts_.fault_hook)
      return SQLITE_OK;
    int rc = opts_.fault_hook(op, step_name);
    if (rc != SQLITE_OK)
      last_error_
          = std::string{sqlite3_errstr(rc)} + " (injected before " + step_name + ")";
    return rc;
  }

  /// Calls `attempt()` (returning an SQLite result code) until it returns
  /// something other than a busy code or the retry budget is spent, sleeping
  /// 50-250 us between tries and doubling that up to ~5 ms. Turns failures
  /// into errc::storage_error naming `op`.
  template <class Attempt>
  caf::error with_busy_retry(const std::string& op, Attempt&& attempt) {
    using clock = std::chrono::steady_clock;
    auto deadline = clock::now()
                    + std::chrono::milliseconds(std::max(opts_.busy_retry_budget_ms, 0));
    int64_t lo_us = 50;
    int64_t hi_us = 250;
    for (;;) {
      int rc = attempt();
      if (rc == SQLITE_OK)
        return {};
      if (!is_busy(rc))
        return storage_error(op, last_error_);
      if (clock::now() >= deadline) {
        spdlog::warn("job_store: {} gave up after {} ms of SQLITE_BUSY on {}", op,
                     opts_.busy_retry_budget_ms, opts_.path);
        return storage_error(op, "database busy (gave up after "
                                     + std::to_string(opts_.busy_retry_budget_ms)
                                     + " ms)");
      }
      std::uniform_int_distribution<int64_t> pick{lo_us, hi_us};
      std::this_thread::sleep_for(std::chrono::microseconds(pick(rng_)));
      hi_us = std::min<int64_t>(hi_us * 2, 5000);
      lo_us = hi_us / 5;
    }
  }

  /// Runs `body(refusal)` inside BEGIN IMMEDIATE ... COMMIT with the busy
  /// retry. The body returns SQLITE_OK or the code of a failed call; setting
  /// `refusal` rolls back and returns it without retrying. Nothing stays
  /// half-written: every failure rolls back. Events the body wrote reach
  /// take_events() only when the COMMIT succeeded.
  template <class Body>
  caf::error write_transaction(const std::string& op, Body&& body) {
    caf::error refusal;
    auto err = with_busy_retry(op, [&] {
      pending_.clear();
      int rc = inject(op, "begin");
      if (rc == SQLITE_OK)
        rc = run(begin_);
      if (rc != SQLITE_OK) {
        rollback_if_open();
        return rc;
      }
      refusal = caf::error{};
      rc = body(refusal);
      if (rc == SQLITE_OK && !refusal) {
        rc = inject(op, "commit");
        if (rc == SQLITE_OK)
          rc = run(commit_);
        if (rc == SQLITE_OK) {
          publish_pending();
          return rc;
        }
      }
      pending_.clear();
      rollback_if_open();
      return refusal ? SQLITE_OK : rc;
    });
    if (err)
      return err;
    return refusal;
  }

  /// Several reads in one snapshot (a deferred BEGIN that never writes, so
  /// it never needs the write lock), with the busy retry.
  template <class Body>
  caf::error read_transaction(const std::string& op, Body&& body) {
    return with_busy_retry(op, [&] {
      int rc = run(begin_read_);
      if (rc == SQLITE_OK)
        rc = body();
      if (rc == SQLITE_OK)
        rc = run(commit_);
      if (rc != SQLITE_OK)
        rollback_if_open();
      return rc;
    });
  }

  /// A read (one statement, autocommit) with the busy retry.
  template <class Body>
  caf::error read(const std::string& op, Body&& body) {
    return with_busy_retry(op, std::forward<Body>(body));
  }

  // -- events ---------------------------------------------------------------

  /// Inserts one job_events row in the open transaction and remembers it for
  /// take_events().
  int add_event(int64_t job_id, const std::string& kind, std::string data,
                int64_t now_ms) {
    int64_t seq = 0;
    int64_t prev = 0;
    {
      statement_use use{insert_event_};
      int rc = bind_all(use.get(), job_id, kind, data, now_ms);
      if (rc != SQLITE_OK)
        return failed(rc);
      if (rc = step(use.get()); rc != SQLITE_ROW)
        return rc == SQLITE_DONE ? failed(SQLITE_INTERNAL) : rc;
      seq = sqlite3_column_int64(use.get(), 0);
      prev = sqlite3_column_int64(use.get(), 1); // NULL (first event) reads 0
      if (rc = step(use.get()); rc != SQLITE_DONE)
        return rc;
    }
    job_event ev;
    ev.seq = seq;
    ev.prev_seq = prev;
    ev.job_id = job_id;
    ev.kind = kind;
    ev.data_json = std::move(data);
    ev.time_ms = now_ms;
    pending_.push_back(std::move(ev));
    return SQLITE_OK;
  }

  int status_event(int64_t job_id, job_state state, int32_t attempt,
                   const job_error* error, int64_t now_ms,
                   bool cancel_requested = false) {
    return add_event(job_id, "status",
                     status_json(state, attempt, error, cancel_requested), now_ms);
  }

  /// Moves the events of a committed transaction to the take_events()
  /// buffer, dropping the oldest beyond max_buffered_events.
  void publish_pending() {
    for (auto& ev : pending_)
      events_.push_back(std::move(ev));
    pending_.clear();
    if (events_.size() > max_buffered_events) {
      auto excess = events_.size() - max_buffered_events;
      if (dropped_events_ == 0)
        spdlog::warn("job_store: over {} events on {} not taken; dropping the oldest",
                     max_buffered_events, opts_.path);
      dropped_events_ += static_cast<int64_t>(excess);
      events_.erase(events_.begin(),
                    events_.begin() + static_cast<std::ptrdiff_t>(excess));
    }
  }

  /// Reads the RETURNING id, state, attempts, error_code, error_message,
  /// error_retryable rows of a lost-worker UPDATE and writes their status
  /// events. `changed` counts the rows.
  int lost_worker_update(const statement& stmt, int64_t now_ms, const std::string* worker,
                         int64_t& changed) {
    struct row {
      int64_t id;
      job_state state;
      int32_t attempts;
      bool has_error;
      job_error error;
    };
    std::vector<row> rows;
    {
      statement_use use{stmt};
      int rc = worker != nullptr ? bind_all(use.get(), now_ms, *worker)
                                 : bind_all(use.get(), now_ms);
      if (rc != SQLITE_OK)
        return failed(rc);
      rc = each_row(use.get(), [&] {
        row r;
        r.id = column_int(use.get(), 0);
        if (!job_state_from_string(column_text(use.get(), 1), r.state)) {
          last_error_ = "job " + std::to_string(r.id) + " has an unknown state";
          return SQLITE_CORRUPT;
        }
        r.attempts = column_int32(use.get(), 2);
        r.has_error = sqlite3_column_type(use.get(), 3) != SQLITE_NULL;
        r.error.code = column_text(use.get(), 3);
        r.error.message = column_text(use.get(), 4);
        r.error.retryable = column_int(use.get(), 5) != 0;
        rows.push_back(std::move(r));
        return SQLITE_OK;
      });
      if (rc != SQLITE_OK)
        return rc;
    }
    // RETURNING order is arbitrary; events go out by id.
    std::sort(rows.begin(), rows.end(),
              [](const row& x, const row& y) { return x.id < y.id; });
    for (auto& r : rows)
      if (int rc = status_event(r.id, r.state, r.attempts,
                                r.has_error ? &r.error : nullptr, now_ms);
          rc != SQLITE_OK)
        return rc;
    changed = static_cast<int64_t>(rows.size());
    return SQLITE_OK;
  }

  // -- completion and heartbeat ----------------------------------------------

  /// complete() of one job inside the open write transaction (also a step
  /// of complete_batch()): `changed` says whether the lease held.
  int complete_step(int64_t id, int64_t lease_seq, const std::string& output_json,
                    int64_t now_ms, bool& changed) {
    changed = false;
    job_state state = job_state::succeeded;
    int32_t attempts = 0;
    {
      statement_use use{complete_};
      int rc = bind_all(use.get(), output_json, now_ms, id, lease_seq);
      if (rc != SQLITE_OK)
        return failed(rc);
      rc = each_row(use.get(), [&] {
        if (!job_state_from_string(column_text(use.get(), 0), state)) {
          last_error_ = "job " + std::to_string(id) + " has an unknown state";
          return SQLITE_CORRUPT;
        }
        attempts = column_int32(use.get(), 1);
        changed = true;
        return SQLITE_OK;
      });
      if (rc != SQLITE_OK)
        return rc;
    }
    if (!changed)
      return SQLITE_OK; // lease lost
    return status_event(id, state, attempts, nullptr, now_ms);
  }

  /// renew() of one lease inside the open write transaction (also a step of
  /// renew_batch()).
  int renew_step(int64_t id, int64_t lease_seq, int64_t lease_ms, int64_t now_ms,
                 lease_status& out) {
    out = lease_status{};
    statement_use use{renew_};
    int rc = bind_all(use.get(), now_ms + lease_ms, id, lease_seq);
    if (rc != SQLITE_OK)
      return failed(rc);
    return each_row(use.get(), [&] {
      out.held = true;
      out.cancel_requested = column_int(use.get(), 0) != 0;
      return SQLITE_OK;
    });
  }

  // -- reads ----------------------------------------------------------------

  /// Reads job `id` into `out` (nullopt if there is no such row), with its
  /// position when `with_position` (the row statement skips that count).
  int load(int64_t id, std::optional<job_record>& out, bool with_position = true) {
    out.reset();
    statement_use use{with_position ? get_ : row_};
    if (int rc = bind_all(use.get(), id); rc != SQLITE_OK)
      return failed(rc);
    int rc = step(use.get());
    if (rc == SQLITE_DONE)
      return SQLITE_OK;
    if (rc != SQLITE_ROW)
      return rc;
    job_record rec;
    if (!read_record(use.get(), rec)) {
      last_error_ = "job " + std::to_string(id) + " has an unknown state";
      return SQLITE_CORRUPT;
    }
    if (with_position)
      rec.position = column_int(use.get(), job_column_count);
    out = std::move(rec);
    return SQLITE_OK;
  }

  /// Successes of `model` with finished_at in (now - window, now].
  int count_succeeded(const std::string& model, int64_t window_ms, int64_t now_ms,
                      int64_t& out) {
    statement_use use{throughput_};
    int rc = bind_all(use.get(), model, now_ms - window_ms, now_ms);
    if (rc != SQLITE_OK)
      return failed(rc);
    if (rc = step(use.get()); rc != SQLITE_ROW)
      return rc == SQLITE_DONE ? SQLITE_INTERNAL : rc;
    out = column_int(use.get(), 0);
    return SQLITE_OK;
  }

  /// Jobs of `model` per second over the last eta_window_ms, reusing a rate
  /// computed less than rate_cache_ms ago.
  int recent_rate(const std::string& model, int64_t now_ms, double& out) {
    auto i = rates_.find(model);
    if (i != rates_.end() && now_ms >= i->second.at_ms
        && now_ms - i->second.at_ms < rate_cache_ms) {
      out = i->second.per_s;
      return SQLITE_OK;
    }
    int64_t n = 0;
    if (int rc = count_succeeded(model, eta_window_ms, now_ms, n); rc != SQLITE_OK)
      return rc;
    out = static_cast<double>(n) * 1000.0 / static_cast<double>(eta_window_ms);
    if (rates_.size() >= 1024)
      rates_.clear();
    rates_[model] = cached_rate{now_ms, out};
    return SQLITE_OK;
  }

  /// Sets the ETA of a queued job with a known position: (position + 1) jobs
  /// at the recent rate, and not before its run_at.
  int set_eta(job_record& rec, int64_t now_ms) {
    rec.eta_ms = -1;
    if (rec.state != job_state::queued || rec.position < 0)
      return SQLITE_OK;
    double rate = 0;
    if (int rc = recent_rate(rec.model, now_ms, rate); rc != SQLITE_OK)
      return rc;
    if (rate <= 0)
      return SQLITE_OK;
    double per_job_ms = 1000.0 / rate;
    double eta = static_cast<double>(rec.position + 1) * per_job_ms;
    double wait = static_cast<double>(rec.run_at_ms - now_ms) + per_job_ms;
    rec.eta_ms = std::llround(std::max(eta, wait));
    return SQLITE_OK;
  }

  /// Sets the position of every queued record in `recs` (the others keep
  /// theirs): per model, one walk of jobs_ready in claim order, stopping at
  /// the deepest of them. Cheaper than one count per record when a model has
  /// several (a list page, an enqueue batch).
  int set_positions(const std::vector<job_record*>& recs) {
    std::unordered_map<std::string, std::set<int64_t>> wanted;
    for (auto* rec : recs)
      if (rec->state == job_state::queued)
        wanted[rec->model].insert(rec->id);
    std::unordered_map<int64_t, int64_t> positions;
    for (auto& [model, ids] : wanted) {
      statement_use use{queued_order_};
      int rc = bind_all(use.get(), model);
      if (rc != SQLITE_OK)
        return failed(rc);
      int64_t position = 0;
      std::size_t found = 0;
      while (found < ids.size() && (rc = step(use.get())) == SQLITE_ROW) {
        auto id = column_int(use.get(), 0);
        if (ids.count(id) > 0) {
          positions[id] = position;
          ++found;
        }
        ++position;
      }
      if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return rc;
    }
    for (auto* rec : recs)
      if (auto i = positions.find(rec->id); i != positions.end())
        rec->position = i->second;
    return SQLITE_OK;
  }

  // -- enqueue --------------------------------------------------------------

  /// One valid job of enqueue()/enqueue_batch() inside the open write
  /// transaction. A stored idempotency key answers first (also a key
  /// inserted earlier in this transaction): same model and input -> `out` is
  /// that job with created=false, another body -> `refusal` conflict. Then
  /// the capacity check against queue_stats (its triggers already count the
  /// jobs inserted earlier in this transaction) -> `refusal` queue_full.
  /// Otherwise inserts the job and its "queued" event and reads it back into
  /// `out`. Every refusal is decided before the first write; the caller's
  /// savepoint makes a refusal leave nothing behind regardless.
  int enqueue_step(const new_job& job, int64_t max_queued, int64_t now_ms,
                   std::optional<job_record>& out, caf::error& refusal) {
    out.reset();
    int64_t run_at = job.run_at_ms > 0 ? job.run_at_ms : now_ms;
    std::optional<std::string> key;
    if (!job.idempotency_key.empty())
      key = job.idempotency_key;
    // A stored key answers before the capacity check: a retried request
    // gets its job even when the queue has filled up meanwhile.
    if (key) {
      int64_t existing = 0;
      bool same_body = false;
      {
        statement_use use{find_key_};
        int rc = bind_all(use.get(), *key);
        if (rc != SQLITE_OK)
          return failed(rc);
        rc = step(use.get());
        if (rc == SQLITE_ROW) {
          existing = column_int(use.get(), 0);
          same_body = column_text(use.get(), 1) == job.model
                      && column_text(use.get(), 2) == job.input_json;
        } else if (rc != SQLITE_DONE) {
          return rc;
        }
      }
      if (existing > 0 && !same_body) {
        refusal = make_error(errc::conflict,
                             "idempotency_key '" + *key + "' belongs to job "
                                 + job_id_string(existing) + " with another body");
        return SQLITE_OK;
      }
      if (existing > 0) {
        if (int rc = load(existing, out, false); rc != SQLITE_OK)
          return rc;
        if (!out) {
          last_error_ = "job " + std::to_string(existing) + " vanished";
          return SQLITE_INTERNAL;
        }
        out->created = false;
        return SQLITE_OK;
      }
    }
    int64_t queued = 0;
    {
      statement_use use{count_queued_};
      int rc = step(use.get());
      if (rc == SQLITE_DONE) {
        last_error_ = "queue_stats has no row";
        return SQLITE_CORRUPT;
      }
      if (rc != SQLITE_ROW)
        return rc;
      queued = column_int(use.get(), 0);
    }
    if (queued >= max_queued) {
      refusal
          = make_error(errc::queue_full, "queue holds " + std::to_string(queued) + " of "
                                             + std::to_string(max_queued) + " jobs");
      return SQLITE_OK;
    }
    {
      statement_use use{insert_};
      int rc = bind_all(use.get(), job.model, int64_t{job.priority},
                        int64_t{job.max_attempts}, job.timeout_ms, job.input_json, run_at,
                        now_ms, key);
      if (rc != SQLITE_OK)
        return failed(rc);
      if (rc = step(use.get()); rc != SQLITE_DONE)
        return rc;
    }
    auto id = sqlite3_last_insert_rowid(db());
    if (int rc = status_event(id, job_state::queued, 0, nullptr, now_ms); rc != SQLITE_OK)
      return rc;
    if (int rc = load(id, out, false); rc != SQLITE_OK)
      return rc;
    if (!out) {
      last_error_ = "inserted row vanished";
      return SQLITE_INTERNAL;
    }
    return SQLITE_OK;
  }

  /// enqueue() (a batch of one) and enqueue_batch(): every valid job runs
  /// enqueue_step in its own savepoint inside ONE write transaction named
  /// `op` (one COMMIT, one fsync under synchronous=FULL); a refused job is
  /// rolled back to its savepoint and its events dropped, the others go on.
  /// A transaction that wrote nothing (every job refused or already stored)
  /// is rolled back instead of committed. Positions and ETAs are read after
  /// the commit, outside the write lock.
  caf::expected<std::vector<caf::expected<job_record>>>
  enqueue_jobs(const std::string& op, const new_job* jobs, std::size_t n,
               int64_t max_queued, int64_t now_ms) {
    std::vector<caf::error> refused(n);
    std::vector<bool> invalid(n);
    std::vector<std::optional<job_record>> stored(n);
    std::size_t valid = 0;
    for (std::size_t i = 0; i < n; ++i) {
      refused[i] = check_new_job(op, jobs[i]);
      invalid[i] = static_cast<bool>(refused[i]);
      if (!invalid[i])
        ++valid;
    }
    bool nothing_written = false;
    if (valid > 0) {
      auto err = write_transaction(op, [&](caf::error& abort) {
        nothing_written = false;
        bool wrote = false;
        for (std::size_t i = 0; i < n; ++i) {
          stored[i].reset();
          if (invalid[i])
            continue; // refused[i] says why
          refused[i] = caf::error{};
          auto mark = pending_.size();
          if (int rc = run(savepoint_); rc != SQLITE_OK)
            return rc;
          caf::error refusal;
          if (int rc = enqueue_step(jobs[i], max_queued, now_ms, stored[i], refusal);
              rc != SQLITE_OK)
            return rc;
          if (refusal) {
            if (int rc = run(rollback_to_); rc != SQLITE_OK)
              return rc;
            pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(mark),
                           pending_.end());
            stored[i].reset();
            refused[i] = std::move(refusal);
          } else if (stored[i]->created) {
            wrote = true;
          }
          if (int rc = run(release_); rc != SQLITE_OK)
            return rc;
        }
        if (!wrote) {
          // Nothing to make durable: roll back, skip the COMMIT.
          nothing_written = true;
          abort = make_error(errc::internal, "nothing written");
        }
        return SQLITE_OK;
      });
      if (err && !nothing_written)
        return err;
    }
    // Position and ETA are reads after the commit, outside the write lock
    // (counting the jobs ahead is O(queue depth)); they see the jobs as they
    // are by then. The jobs are stored: a failing read only loses them (an
    // error here would make clients enqueue again).
    std::vector<job_record*> found;
    for (auto& rec : stored)
      if (rec)
        found.push_back(&*rec);
    if (!found.empty()) {
      auto after = read_transaction(op, [&] { return refresh(found, now_ms); });
      if (after)
        spdlog::warn("job_store: {} jobs are stored but their positions are unknown: {}",
                     found.size(), message_of(after));
    }
    std::vector<caf::expected<job_record>> result;
    result.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (stored[i])
        result.emplace_back(std::move(*stored[i]));
      else
        result.emplace_back(std::move(refused[i]));
    }
    return result;
  }

  /// Reloads enqueued jobs with their positions and ETAs (keeping
  /// `created`): one count for a model with a single job, one walk of
  /// jobs_ready for a model with several.
  int refresh(const std::vector<job_record*>& recs, int64_t now_ms) {
    std::unordered_map<std::string, std::size_t> per_model;
    for (auto* rec : recs)
      ++per_model[rec->model];
    std::vector<job_record*> walk;
    for (auto* rec : recs) {
      bool alone = per_model[rec->model] == 1;
      std::optional<job_record> fresh;
      if (int rc = load(rec->id, fresh, alone); rc != SQLITE_OK)
        return rc;
      if (fresh) {
        fresh->created = rec->created;
        *rec = std::move(*fresh);
      }
      if (!alone)
        walk.push_back(rec);
    }
    if (int rc = set_positions(walk); rc != SQLITE_OK)
      return rc;
    for (auto* rec : recs)
      if (int rc = set_eta(*rec, now_ms); rc != SQLITE_OK)
        return rc;
    return SQLITE_OK;
  }

  // -- schema ---------------------------------------------------------------

  /// Applies every migration the file lacks, one transaction each.
  caf::error migrate() {
    for (int target = 1; target <= schema_version; ++target) {
      auto err = write_transaction("migrate", [&](caf::error& refusal) {
        std::string text;
        if (int rc = query_text("PRAGMA user_version", text); rc != SQLITE_OK)
          return rc;
        int current = std::atoi(text.c_str());
        if (current > schema_version) {
          refusal = storage_error("open " + opts_.path,
                                  "schema version " + std::to_string(current)
                                      + " is newer than this build supports ("
                                      + std::to_string(schema_version) + ")");
          return SQLITE_OK;
        }
        if (current >= target)
          return SQLITE_OK;
        if (current != target - 1) {
          refusal = storage_error("open " + opts_.path, "schema version "
                                                            + std::to_string(current)
                                                            + " cannot be migrated");
          return SQLITE_OK;
        }
        if (int rc = exec(migrations[target - 1]); rc != SQLITE_OK)
          return rc;
        auto version = std::to_string(target);
        auto pragma = "PRAGMA user_version = " + version;
        if (int rc = exec(pragma.c_str()); rc != SQLITE_OK)
          return rc;
        auto meta = "INSERT OR REPLACE INTO meta (key, value) "
                    "VALUES ('schema_version', '"
                    + version + "')";
        if (int rc = exec(meta.c_str()); rc != SQLITE_OK)
          return rc;
        spdlog::info("job_store: migrated {} to schema version {}", opts_.path, target);
        return SQLITE_OK;
      });
      if (err)
        return err;
    }
    return {};
  }

  /// Prepares the job statements (the schema must exist by now).
  int prepare_all() {
    std::pair<const char*, statement*> all[] = {
        {sql_count_queued, &count_queued_},
        {sql_find_key, &find_key_},
        {sql_insert, &insert_},
        {sql_insert_event, &insert_event_},
        {sql_get, &get_},
        {sql_row, &row_},
        {sql_ready, &ready_},
        {sql_claim, &claim_},
        {sql_complete, &complete_},
        {sql_lease, &lease_},
        {sql_fail, &fail_},
        {sql_renew, &renew_},
        {sql_finish_cancelled, &finish_cancelled_},
        {sql_cancel_queued, &cancel_queued_},
        {sql_cancel_running, &cancel_running_},
        {sql_set_progress, &set_progress_},
        {sql_check_json, &check_json_},
        {sql_events_after, &events_after_},
        {sql_list_all, &list_all_},
        {sql_list_model, &list_model_},
        {sql_list_queued, &list_queued_},
        {sql_list_queued_model, &list_queued_model_},
        {sql_list_running, &list_running_},
        {sql_list_succeeded, &list_succeeded_},
        {sql_list_succeeded_model, &list_succeeded_model_},
        {sql_list_ended, &list_ended_},
        {sql_queued_order, &queued_order_},
        {sql_throughput, &throughput_},
        {sql_rescue, &rescue_},
        {sql_requeue_worker, &requeue_worker_},
        {sql_count_by_state, &count_by_state_},
        {sql_savepoint, &savepoint_},
        {sql_rollback_to, &rollback_to_},
        {sql_release, &release_},
        {sql_upsert_worker, &upsert_worker_},
        {sql_list_workers, &list_workers_},
    };
    for (auto& [sql, stmt] : all)
      if (int rc = prepare(sql, *stmt); rc != SQLITE_OK)
        return rc;
    return SQLITE_OK;
  }

  /// Back-off before attempt `attempts + 1`: 1 s * 2^(attempts-1), capped at
  /// 5 min, +-10 % jitter.
  int64_t backoff_ms(int32_t attempts) {
    constexpr int64_t base_ms = 1000;
    constexpr int64_t cap_ms = 5 * 60 * 1000;
    int shift = std::clamp(attempts - 1, 0, 20);
    int64_t delay = std::min(base_ms << shift, cap_ms);
    std::uniform_int_distribution<int64_t> jitter{-delay / 10, delay / 10};
    return delay + jitter(rng_);
  }
};

// -- job_store ----------------------------------------------------------------

job_store::job_store(std::unique_ptr<impl> ptr) : impl_(std::move(ptr)) {}

job_store::~job_store() = default;

caf::expected<std::unique_ptr<job_store>> job_store::open(const store_options& opts) {
  auto op = "open " + opts.path;
  auto ptr = std::make_unique<impl>(opts);
  auto& d = *ptr;
  int rc = sqlite3_open_v2(
      opts.path.c_str(), &d.conn_.db,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = d.db() != nullptr ? sqlite3_errmsg(d.db()) : sqlite3_errstr(rc);
    return storage_error(op, msg);
  }
  sqlite3_busy_timeout(d.db(), std::max(opts.busy_timeout_ms, 0));
  // Only the checkpointer checkpoints, also not on close (WAL-reset race in
  // SQLite < 3.51.3, see docs/storage.md).
  if (!opts.checkpointer)
    sqlite3_db_config(d.db(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
  // Switching to WAL needs a lock for a moment; retry it like any write.
  std::string mode;
  if (auto err = d.with_busy_retry(
          op, [&] { return d.query_text("PRAGMA journal_mode = WAL", mode); }))
    return err;
  if (mode != "wal")
    return storage_error(op, "cannot use WAL (journal_mode is '" + mode
                                 + "'); the file must be on a local disk");
  std::string settings = opts.synchronous_full ? "PRAGMA synchronous = FULL;"
                                               : "PRAGMA synchronous = NORMAL;";
  // No connection checkpoints on its own commits: the checkpointer's owner
  // calls checkpoint() on a spaced schedule (auto-checkpoints starved the
  // checkpointer's own writes under load, see docs/storage.md).
  settings += "PRAGMA mmap_size = 0; PRAGMA foreign_keys = ON;"
              " PRAGMA wal_autocheckpoint = 0;";
  if (auto err = d.with_busy_retry(op, [&] { return d.exec(settings.c_str()); }))
    return err;
  if (int rc = d.prepare("BEGIN IMMEDIATE", d.begin_); rc != SQLITE_OK)
    return storage_error(op, d.last_error_);
  if (int rc = d.prepare("BEGIN", d.begin_read_); rc != SQLITE_OK)
    return storage_error(op, d.last_error_);
  if (int rc = d.prepare("COMMIT", d.commit_); rc != SQLITE_OK)
    return storage_error(op, d.last_error_);
  if (int rc = d.prepare("ROLLBACK", d.rollback_); rc != SQLITE_OK)
    return storage_error(op, d.last_error_);
  if (auto err = d.migrate())
    return err;
  if (int rc = d.prepare_all(); rc != SQLITE_OK)
    return storage_error(op, d.last_error_);
  spdlog::debug("job_store: opened {} (schema {}, synchronous {}, {})", opts.path,
                schema_version, opts.synchronous_full ? "FULL" : "NORMAL",
                opts.checkpointer ? "checkpointer" : "no checkpoints");
  return std::unique_ptr<job_store>{new job_store(std::move(ptr))};
}

caf::expected<job_record> job_store::enqueue(const new_job& job, int64_t max_queued,
                                             int64_t now_ms) {
  auto results = impl_->enqueue_jobs("enqueue", &job, 1, max_queued, now_ms);
  if (!results)
    return std::move(results.error());
  return std::move(results->front());
}

caf::expected<std::vector<caf::expected<job_record>>>
job_store::enqueue_batch(const std::vector<new_job>& jobs, int64_t max_queued,
                         int64_t now_ms) {
  if (jobs.empty())
    return std::vector<caf::expected<job_record>>{};
  return impl_->enqueue_jobs("enqueue_batch", jobs.data(), jobs.size(), max_queued,
                             now_ms);
}

caf::expected<void> job_store::record_worker(const worker_row& row, int64_t now_ms) {
  if (row.id.empty())
    return make_error(errc::invalid_input, "record_worker: id is empty");
  if (row.current_job < 0)
    return make_error(errc::invalid_input,
                      "record_worker: current_job must not be negative");
  auto& d = *impl_;
  std::optional<int64_t> job;
  if (row.current_job > 0)
    job = row.current_job;
  // Used only when the row is new (ON CONFLICT keeps the stored one).
  int64_t started_at = row.started_at_ms > 0 ? row.started_at_ms : now_ms;
  auto err = d.write_transaction("record_worker", [&](caf::error&) {
    statement_use use{d.upsert_worker_};
    int rc = bind_all(use.get(), row.id, row.state, row.models, job, started_at, now_ms);
    if (rc != SQLITE_OK)
      return d.failed(rc);
    rc = d.step(use.get());
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
  });
  if (err)
    return err;
  return {};
}

caf::expected<std::vector<worker_row>> job_store::list_workers() {
  auto& d = *impl_;
  std::vector<worker_row> result;
  auto err = d.read("list_workers", [&] {
    result.clear();
    statement_use use{d.list_workers_};
    return d.each_row(use.get(), [&] {
      worker_row row;
      row.id = column_text(use.get(), 0);
      row.state = column_text(use.get(), 1);
      row.models = column_text(use.get(), 2);
      row.current_job = column_int(use.get(), 3); // NULL reads as 0
      row.started_at_ms = column_int(use.get(), 4);
      row.last_heartbeat_ms = column_int(use.get(), 5);
      result.push_back(std::move(row));
      return SQLITE_OK;
    });
  });
  if (err)
    return err;
  return result;
}

caf::expected<std::vector<job_record>>
job_store::claim(const std::string& worker, const std::vector<std::string>& models, int n,
                 int64_t lease_ms, int64_t now_ms) {
  std::vector<job_record> result;
  if (n <= 0 || models.empty())
    return result;
  auto& d = *impl_;
  std::set<std::string> unique_models{models.begin(), models.end()};
  auto err = d.write_transaction("claim", [&](caf::error&) {
    result.clear();
    // (priority, id) of the next ready jobs of every model, best first.
    std::vector<std::pair<int64_t, int64_t>> ready;
    for (auto& model : unique_models) {
      statement_use use{d.ready_};
      int rc = bind_all(use.get(), model, now_ms, int64_t{n});
      if (rc != SQLITE_OK)
        return d.failed(rc);
      rc = d.each_row(use.get(), [&] {
        ready.emplace_back(column_int(use.get(), 1), column_int(use.get(), 0));
        return SQLITE_OK;
      });
      if (rc != SQLITE_OK)
        return rc;
    }
    if (ready.empty())
      return SQLITE_OK;
    std::sort(ready.begin(), ready.end(), [](const auto& x, const auto& y) {
      return x.first != y.first ? x.first > y.first : x.second < y.second;
    });
    if (ready.size() > static_cast<std::size_t>(n))
      ready.resize(static_cast<std::size_t>(n));
    std::string ids = "[";
    for (auto& [priority, id] : ready) {
      if (ids.size() > 1)
        ids += ',';
      ids += std::to_string(id);
    }
    ids += ']';
    {
      statement_use use{d.claim_};
      int rc = bind_all(use.get(), worker, now_ms + lease_ms, now_ms, ids);
      if (rc != SQLITE_OK)
        return d.failed(rc);
      rc = d.each_row(use.get(), [&] {
        job_record rec;
        if (!read_record(use.get(), rec)) {
          d.last_error_ = "a claimed job has an unknown state";
          return SQLITE_CORRUPT;
        }
        result.push_back(std::move(rec));
        return SQLITE_OK;
      });
      if (rc != SQLITE_OK)
        return rc;
    }
    // RETURNING yields rows in no particular order.
    std::sort(result.begin(), result.end(), [](const auto& x, const auto& y) {
      return x.priority != y.priority ? x.priority > y.priority : x.id < y.id;
    });
    for (auto& rec : result)
      if (int rc = d.status_event(rec.id, rec.state, rec.attempts, nullptr, now_ms);
          rc != SQLITE_OK)
        return rc;
    return SQLITE_OK;
  });
  if (err)
    return err;
  return result;
}

caf::expected<bool> job_store::complete(int64_t id, int64_t lease_seq,
                                        const std::string& output_json, int64_t now_ms) {
  auto& d = *impl_;
  bool changed = false;
  auto err = d.write_transaction("complete", [&](caf::error&) {
    return d.complete_step(id, lease_seq, output_json, now_ms, changed);
  });
  if (err)
    return err;
  return changed;
}

caf::expected<std::vector<bool>>
job_store::complete_batch(const std::vector<job_completion>& xs, int64_t now_ms) {
  std::vector<bool> result;
  if (xs.empty())
    return result;
  auto& d = *impl_;
  // No savepoints (unlike enqueue_batch): a lost lease writes nothing, and
  // any SQLite failure rolls the whole batch back.
  auto err = d.write_transaction("complete_batch", [&](caf::error&) {
    result.assign(xs.size(), false);
    for (std::size_t i = 0; i < xs.size(); ++i) {
      bool changed = false;
      auto& x = xs[i];
      if (int rc = d.complete_step(x.id, x.lease_seq, x.output_json, now_ms, changed);
          rc != SQLITE_OK)
        return rc;
      result[i] = changed;
    }
    return SQLITE_OK;
  });
  if (err)
    return err;
  return result;
}

caf::expected<std::optional<job_state>>
job_store::fail(int64_t id, int64_t lease_seq, const job_error& error, int64_t now_ms) {
  auto& d = *impl_;
  std::optional<job_state> result;
  auto err = d.write_transaction("fail", [&](caf::error&) {
    result.reset();
    int32_t attempts = 0;
    int32_t max_attempts = 0;
    bool cancel_requested = false;
    {
      statement_use use{d.lease_};
      int rc = bind_all(use.get(), id, lease_seq);
      if (rc != SQLITE_OK)
        return d.failed(rc);
      rc = d.step(use.get());
      if (rc == SQLITE_DONE)
        return SQLITE_OK; // lease lost
      if (rc != SQLITE_ROW)
        return rc;
      attempts = column_int32(use.get(), 0);
      max_attempts = column_int32(use.get(), 1);
      cancel_requested = column_int(use.get(), 2) != 0;
    }
    job_state next;
    std::optional<int64_t> run_at;
    std::optional<int64_t> finished_at;
    if (cancel_requested) {
      // Nobody waits for a retry: the job ends cancelled, without an error.
      next = job_state::cancelled;
      finished_at = now_ms;
    } else if (!error.retryable) {
      next = job_state::failed;
      finished_at = now_ms;
    } else if (attempts < max_attempts) {
      next = job_state::queued;
      run_at = now_ms + d.backoff_ms(attempts);
    } else {
      next = job_state::dead;
      finished_at = now_ms;
    }
    auto state_name = to_string(next);
    std::optional<std::string> code;
    std::optional<std::string> message;
    std::optional<int64_t> retryable;
    if (!cancel_requested) {
      code = error.code;
      message = error.message;
      retryable = error.retryable ? 1 : 0;
    }
    {
      statement_use use{d.fail_};
      int rc = bind_all(use.get(), state_name, code, message, retryable, run_at,
                        finished_at, id, lease_seq);
      if (rc != SQLITE_OK)
        return d.failed(rc);
      if (rc = d.step(use.get()); rc != SQLITE_DONE)
        return rc;
      if (sqlite3_changes(d.db()) == 0)
        return SQLITE_OK;
    }
    result = next;
    return d.status_event(id, next, attempts, cancel_requested ? nullptr : &error,
                          now_ms);
  });
  if (err)
    return err;
  return result;
}

caf::expected<lease_status> job_store::renew(int64_t id, int64_t lease_seq,
                                             int64_t lease_ms, int64_t now_ms) {
  auto& d = *impl_;
  lease_status result;
  auto err = d.write_transaction("renew", [&](caf::error&) {
    return d.renew_step(id, lease_seq, lease_ms, now_ms, result);
  });
  if (err)
    return err;
  return result;
}

caf::expected<std::vector<lease_status>>
job_store::renew_batch(const std::vector<held_lease>& xs, int64_t lease_ms,
                       int64_t now_ms) {
  std::vector<lease_status> result;
  if (xs.empty())
    return result;
  auto& d = *impl_;
  auto err = d.write_transaction("renew_batch", [&](caf::error&) {
    result.assign(xs.size(), lease_status{});
    for (std::size_t i = 0; i < xs.size(); ++i)
      if (int rc = d.renew_step(xs[i].id, xs[i].lease_seq, lease_ms, now_ms, result[i]);
          rc != SQLITE_OK)
        return rc;
    return SQLITE_OK;
  });
  if (err)
    return err;
  return result;
}

caf::expected<bool> job_store::finish_cancelled(int64_t id, int64_t lease_seq,
                                                int64_t now_ms) {
  auto& d = *impl_;
  bool changed = false;
  auto err = d.write_transaction("finish_cancelled", [&](caf::error&) {
    changed = false;
    int32_t attempts = 0;
    {
      statement_use use{d.finish_cancelled_};
      int rc = bind_all(use.get(), now_ms, id, lease_seq);
      if (rc != SQLITE_OK)
        return d.failed(rc);
      rc = d.each_row(use.get(), [&] {
        attempts = column_int32(use.get(), 0);
        changed = true;
        return SQLITE_OK;
      });
      if (rc != SQLITE_OK)
        return rc;
    }
    if (!changed)
      return SQLITE_OK; // lease lost
    return d.status_event(id, job_state::cancelled, attempts, nullptr, now_ms);
  });
  if (err)
    return err;
  return changed;
}

caf::expected<std::optional<job_record>> job_store::cancel(int64_t id, int64_t now_ms) {
  auto& d = *impl_;
  std::optional<job_record> result;
  auto err = d.write_transaction("cancel", [&](caf::error& refusal) {
    // Rows only: the result is never queued, so it has no position.
    if (int rc = d.load(id, result, false); rc != SQLITE_OK || !result)
      return rc;
    if (is_final(result->state)) {
      refusal = make_error(errc::conflict, "job " + job_id_string(id) + " is already "
                                               + to_string(result->state));
      return SQLITE_OK;
    }
    bool queued = result->state == job_state::queued;
    // A running job whose cancel was already requested stays as it is.
    if (!queued && result->cancel_requested)
      return SQLITE_OK;
    bool changed = false;
    int32_t attempts = 0;
    {
      statement_use use{queued ? d.cancel_queued_ : d.cancel_running_};
      int rc = queued ? bind_all(use.get(), now_ms, id) : bind_all(use.get(), id);
      if (rc != SQLITE_OK)
        return d.failed(rc);
      rc = d.each_row(use.get(), [&] {
        attempts = column_int32(use.get(), 0);
        changed = true;
        return SQLITE_OK;
      });
      if (rc != SQLITE_OK)
        return rc;
    }
    if (!changed) {
      d.last_error_ = "job " + std::to_string(id) + " changed inside a transaction";
      return SQLITE_INTERNAL;
    }
    int rc = queued ? d.status_event(id, job_state::cancelled, attempts, nullptr, now_ms)
                    : d.status_event(id, job_state::running, attempts, nullptr, now_ms,
                                     true);
    if (rc != SQLITE_OK)
      return rc;
    return d.load(id, result, false);
  });
  if (err)
    return err;
  return result;
}

caf::expected<bool> job_store::add_event(int64_t id, int64_t lease_seq,
                                         const std::string& kind,
                                         const std::string& data_json, int64_t now_ms) {
  bool progress = kind == "progress";
  if (!progress && kind != "data")
    return make_error(errc::invalid_input,
                      "add_event: kind must be progress or data, not '" + kind + "'");
  if (data_json.size() > max_event_bytes)
    return make_error(errc::invalid_input, "add_event: data is larger than "
                                               + std::to_string(max_event_bytes)
                                               + " bytes");
  auto& d = *impl_;
  // Validated by SQLite's JSON functions (no table read, no snapshot).
  bool object = false;
  bool number = false;
  double value = 0;
  auto err = d.read("add_event", [&] {
    statement_use use{d.check_json_};
    int rc = bind_all(use.get(), data_json);
    if (rc != SQLITE_OK)
      return d.failed(rc);
    if (rc = d.step(use.get()); rc != SQLITE_ROW)
      return rc == SQLITE_DONE ? SQLITE_INTERNAL : rc;
    object = column_int(use.get(), 0) != 0 && column_text(use.get(), 1) == "object";
    auto type = column_text(use.get(), 2);
    number = type == "integer" || type == "real";
    value = sqlite3_column_double(use.get(), 3);
    return SQLITE_OK;
  });
  if (err)
    return err;
  if (!object)
    return make_error(errc::invalid_input, "add_event: data must be a JSON object");
  if (progress && (!number || !(value >= 0.0 && value <= 1.0)))
    return make_error(
        errc::invalid_input,
        "add_event: progress event needs {\"progress\": p} with p in [0, 1]");
  bool held = false;
  err = d.write_transaction("add_event", [&](caf::error&) {
    held = false;
    if (progress) {
      statement_use use{d.set_progress_};
      int rc = bind_all(use.get(), value, id, lease_seq);
      if (rc != SQLITE_OK)
        return d.failed(rc);
      if (rc = d.step(use.get()); rc != SQLITE_DONE)
        return rc;
      held = sqlite3_changes(d.db()) > 0;
    } else {
      statement_use use{d.lease_};
      int rc = bind_all(use.get(), id, lease_seq);
      if (rc != SQLITE_OK)
        return d.failed(rc);
      rc = d.step(use.get());
      if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return rc;
      held = rc == SQLITE_ROW;
    }
    if (!held)
      return SQLITE_OK; // lease lost
    return d.add_event(id, kind, data_json, now_ms);
  });
  if (err)
    return err;
  return held;
}

caf::expected<std::vector<job_event>>
job_store::events_after(int64_t id, int64_t after_seq, int32_t limit) {
  if (limit < 1 || limit > 10'000)
    return make_error(errc::invalid_input, "events_after: limit must be 1..10000");
  auto& d = *impl_;
  std::vector<job_event> result;
  auto err = d.read("events_after", [&] {
    result.clear();
    statement_use use{d.events_after_};
    int rc = bind_all(use.get(), id, after_seq, int64_t{limit});
    if (rc != SQLITE_OK)
      return d.failed(rc);
    return d.each_row(use.get(), [&] {
      job_event ev;
      ev.seq = column_int(use.get(), 0);
      ev.job_id = column_int(use.get(), 1);
      ev.kind = column_text(use.get(), 2);
      ev.data_json = column_text(use.get(), 3);
      ev.time_ms = column_int(use.get(), 4);
      // The first row's predecessor comes from the query; then they chain.
      ev.prev_seq = result.empty() ? column_int(use.get(), 5) : result.back().seq;
      result.push_back(std::move(ev));
      return SQLITE_OK;
    });
  });
  if (err)
    return err;
  return result;
}

std::vector<job_event> job_store::take_events() {
  auto& d = *impl_;
  if (d.dropped_events_ > 0) {
    spdlog::warn("job_store: dropped {} events on {} that nobody took", d.dropped_events_,
                 d.opts_.path);
    d.dropped_events_ = 0;
  }
  std::vector<job_event> result{std::make_move_iterator(d.events_.begin()),
                                std::make_move_iterator(d.events_.end())};
  d.events_.clear();
  return result;
}

caf::expected<job_page> job_store::list(const job_filter& filter) {
  if (filter.limit < 1 || filter.limit > 1000)
    return make_error(errc::invalid_input, "list: limit must be 1..1000");
  if (filter.before_id < 0)
    return make_error(errc::invalid_input, "list: before_id must not be negative");
  auto& d = *impl_;
  int64_t before = filter.before_id > 0 ? filter.before_id : INT64_MAX;
  int64_t want = int64_t{filter.limit} + 1;
  std::set<job_state> states{filter.states.begin(), filter.states.end()};
  const auto& model = filter.model;
  job_page page;
  auto err = d.read_transaction("list", [&] {
    page = job_page{};
    // Newest `want` ids: one index range per state, merged.
    std::vector<int64_t> ids;
    auto collect = [&](const statement& stmt, auto&&... args) {
      statement_use use{stmt};
      int rc = bind_all(use.get(), args...);
      if (rc != SQLITE_OK)
        return d.failed(rc);
      return d.each_row(use.get(), [&] {
        ids.push_back(column_int(use.get(), 0));
        return SQLITE_OK;
      });
    };
    if (states.empty()) {
      int rc = model.empty() ? collect(d.list_all_, before, want)
                             : collect(d.list_model_, model, before, want);
      if (rc != SQLITE_OK)
        return rc;
    }
    for (auto s : states) {
      int rc = SQLITE_OK;
      switch (s) {
        case job_state::queued:
          rc = model.empty() ? collect(d.list_queued_, before, want)
                             : collect(d.list_queued_model_, model, before, want);
          break;
        case job_state::running:
          rc = collect(d.list_running_, before, model, want);
          break;
        case job_state::succeeded:
          rc = model.empty() ? collect(d.list_succeeded_, before, want)
                             : collect(d.list_succeeded_model_, model, before, want);
          break;
        default:
          rc = collect(d.list_ended_, to_string(s), before, model, want);
      }
      if (rc != SQLITE_OK)
        return rc;
    }
    std::sort(ids.begin(), ids.end(), std::greater<>{});
    if (ids.size() > static_cast<std::size_t>(filter.limit)) {
      ids.resize(static_cast<std::size_t>(filter.limit));
      page.next_before_id = ids.back();
    }
    // The rows, then the positions of the queued ones: one walk per model
    // through jobs_ready in claim order, stopping at the last one needed.
    for (auto id : ids) {
      std::optional<job_record> rec;
      if (int rc = d.load(id, rec, false); rc != SQLITE_OK)
        return rc;
      if (rec)
        page.jobs.push_back(std::move(*rec));
    }
    std::vector<job_record*> recs;
    for (auto& rec : page.jobs)
      recs.push_back(&rec);
    return d.set_positions(recs);
  });
  if (err)
    return err;
  auto now_ms = wall_clock_ms();
  err = d.read("list", [&] {
    for (auto& rec : page.jobs)
      if (int rc = d.set_eta(rec, now_ms); rc != SQLITE_OK)
        return rc;
    return SQLITE_OK;
  });
  if (err)
    return err;
  return page;
}

caf::expected<int64_t> job_store::requeue_worker(const std::string& worker,
                                                 int64_t now_ms) {
  auto& d = *impl_;
  int64_t changed = 0;
  auto err = d.write_transaction("requeue_worker", [&](caf::error&) {
    changed = 0;
    return d.lost_worker_update(d.requeue_worker_, now_ms, &worker, changed);
  });
  if (err)
    return err;
  if (changed > 0)
    spdlog::info("job_store: put back {} jobs of worker {}", changed, worker);
  return changed;
}

caf::expected<double> job_store::throughput(const std::string& model, int64_t window_ms,
                                            int64_t now_ms) {
  if (window_ms <= 0)
    return make_error(errc::invalid_input, "throughput: window_ms must be positive");
  auto& d = *impl_;
  int64_t n = 0;
  if (auto err = d.read("throughput",
                        [&] { return d.count_succeeded(model, window_ms, now_ms, n); }))
    return err;
  return static_cast<double>(n) * 1000.0 / static_cast<double>(window_ms);
}

caf::expected<int64_t> job_store::rescue_expired(int64_t now_ms) {
  auto& d = *impl_;
  int64_t changed = 0;
  auto err = d.write_transaction("rescue_expired", [&](caf::error&) {
    changed = 0;
    return d.lost_worker_update(d.rescue_, now_ms, nullptr, changed);
  });
  if (err)
    return err;
  if (changed > 0)
    spdlog::info("job_store: rescued {} jobs with expired leases", changed);
  return changed;
}

caf::expected<std::optional<job_record>> job_store::get(int64_t id) {
  auto& d = *impl_;
  std::optional<job_record> result;
  if (auto err = d.read("get", [&] { return d.load(id, result); }))
    return err;
  if (result && result->state == job_state::queued) {
    auto now_ms = wall_clock_ms();
    if (auto err = d.read("get", [&] { return d.set_eta(*result, now_ms); }))
      return err;
  }
  return result;
}

caf::expected<std::map<job_state, int64_t>> job_store::count_by_state() {
  auto& d = *impl_;
  std::map<job_state, int64_t> result;
  auto err = d.read("count_by_state", [&] {
    result.clear();
    statement_use use{d.count_by_state_};
    int rc = d.step(use.get());
    if (rc == SQLITE_DONE) {
      d.last_error_ = "queue_stats has no row";
      return SQLITE_CORRUPT;
    }
    if (rc != SQLITE_ROW)
      return rc;
    int column = 0;
    for (auto state : count_states) {
      auto n = column_int(use.get(), column++);
      if (n < 0) {
        d.last_error_
            = "queue_stats holds " + std::to_string(n) + " " + to_string(state) + " jobs";
        return SQLITE_CORRUPT;
      }
      if (n > 0)
        result[state] = n;
    }
    return SQLITE_OK;
  });
  if (err)
    return err;
  return result;
}

caf::expected<void> job_store::checkpoint() {
  auto& d = *impl_;
  // A connection that is not the checkpointer never checkpoints: that is the
  // mitigation for the WAL-reset race (docs/storage.md).
  if (!d.opts_.checkpointer)
    return {};
  int log_frames = 0;
  int done_frames = 0;
  int rc = sqlite3_wal_checkpoint_v2(d.db(), nullptr, SQLITE_CHECKPOINT_PASSIVE,
                                     &log_frames, &done_frames);
  // PASSIVE does what it can without waiting; busy just means "later".
  if (rc != SQLITE_OK && !is_busy(rc))
    return storage_error("checkpoint", sqlite3_errmsg(d.db()));
  spdlog::debug("job_store: checkpoint of {}: {} of {} WAL frames", d.opts_.path,
                done_frames, log_frames);
  return {};
}

} // namespace infergrid::persistence
