// The durable job table on SQLite: connection settings, schema migrations and
// the short BEGIN IMMEDIATE transactions behind job_store (docs/storage.md).
#include "persistence/job_store.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstddef>
#include <random>
#include <thread>
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
};

constexpr int schema_version
    = static_cast<int>(sizeof(migrations) / sizeof(migrations[0]));

/// Every statement that returns jobs selects these columns in this order
/// (read_record below depends on it).
#define INFERGRID_JOB_COLUMNS                                                            \
  "id, model, state, priority, attempts, max_attempts, timeout_ms, input, "              \
  "output, error_code, error_message, error_retryable, worker, lease_seq, "              \
  "lease_until, created_at, started_at, finished_at"

constexpr int job_column_count = 18;

// -- statements ---------------------------------------------------------------

// INDEXED BY: with sqlite_stat1 statistics (PRAGMA optimize, ANALYZE) and
// many queued rows the planner would rather scan the whole table.
const char* const sql_count_queued
    = "SELECT count(*) FROM jobs INDEXED BY jobs_ready WHERE state = 'queued'";

const char* const sql_insert
    = "INSERT INTO jobs (model, state, priority, attempts, max_attempts, "
      "timeout_ms, input, run_at, created_at) "
      "VALUES (?1, 'queued', ?2, 0, ?3, ?4, ?5, ?6, ?6)";

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

const char* const sql_claim
    = "UPDATE jobs SET state = 'running', worker = ?1, attempts = attempts + 1, "
      "lease_seq = lease_seq + 1, lease_until = ?2, started_at = ?3 "
      "WHERE id IN (SELECT id FROM jobs INDEXED BY jobs_ready "
      "WHERE state = 'queued' AND run_at <= ?3 "
      "AND model IN (SELECT value FROM json_each(?4)) "
      "ORDER BY priority DESC, id LIMIT ?5) "
      "RETURNING " INFERGRID_JOB_COLUMNS;

const char* const sql_complete
    = "UPDATE jobs SET state = 'succeeded', output = ?1, finished_at = ?2, "
      "lease_until = NULL, error_code = NULL, error_message = NULL, "
      "error_retryable = NULL "
      "WHERE id = ?3 AND state = 'running' AND lease_seq = ?4";

const char* const sql_lease_attempts
    = "SELECT attempts, max_attempts FROM jobs "
      "WHERE id = ?1 AND state = 'running' AND lease_seq = ?2";

const char* const sql_fail
    = "UPDATE jobs SET state = ?1, error_code = ?2, error_message = ?3, "
      "error_retryable = ?4, run_at = coalesce(?5, run_at), lease_until = NULL, "
      "finished_at = ?6 "
      "WHERE id = ?7 AND state = 'running' AND lease_seq = ?8";

const char* const sql_renew = "UPDATE jobs SET lease_until = ?1 "
                              "WHERE id = ?2 AND state = 'running' AND lease_seq = ?3";

const char* const sql_rescue_dead
    = "UPDATE jobs SET state = 'dead', lease_until = NULL, finished_at = ?1, "
      "error_code = 'worker_lost', "
      "error_message = 'lease expired on worker ' || coalesce(worker, '?') "
      "|| ' after the last attempt', error_retryable = 1 "
      "WHERE state = 'running' AND lease_until < ?1 "
      "AND attempts >= max_attempts";

const char* const sql_rescue_requeue
    = "UPDATE jobs SET state = 'queued', run_at = ?1, lease_until = NULL, "
      "error_code = 'worker_lost', "
      "error_message = 'lease expired on worker ' || coalesce(worker, '?'), "
      "error_retryable = 1 "
      "WHERE state = 'running' AND lease_until < ?1";

const char* const sql_count_by_state = "SELECT state, count(*) FROM jobs GROUP BY state";

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

int bind_one(sqlite3_stmt* s, int i, const std::string& x) {
  if (x.size() > static_cast<std::size_t>(INT_MAX))
    return SQLITE_TOOBIG;
  return sqlite3_bind_text(s, i, x.data(), static_cast<int>(x.size()), SQLITE_STATIC);
}

int bind_one(sqlite3_stmt* s, int i, const std::optional<int64_t>& x) {
  return x ? sqlite3_bind_int64(s, i, *x) : sqlite3_bind_null(s, i);
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
  out.position = -1;
  return true;
}

/// `models` as a JSON array of strings for json_each().
std::string to_json_array(const std::vector<std::string>& models) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out = "[";
  for (std::size_t i = 0; i < models.size(); ++i) {
    if (i > 0)
      out += ',';
    out += '"';
    for (unsigned char c : models[i]) {
      switch (c) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
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
    }
    out += '"';
  }
  out += ']';
  return out;
}

caf::error storage_error(const std::string& op, const std::string& what) {
  return make_error(errc::storage_error, op + ": " + what);
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

  connection conn_;
  store_options opts_;
  std::minstd_rand rng_{std::random_device{}()};
  /// SQLite's message for the last failing call, captured before a rollback
  /// overwrites it.
  std::string last_error_;

  statement begin_;
  statement commit_;
  statement rollback_;
  statement count_queued_;
  statement insert_;
  statement get_;
  statement claim_;
  statement complete_;
  statement lease_attempts_;
  statement fail_;
  statement renew_;
  statement rescue_dead_;
  statement rescue_requeue_;
  statement count_by_state_;

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
  /// half-written: every failure rolls back.
  template <class Body>
  caf::error write_transaction(const std::string& op, Body&& body) {
    caf::error refusal;
    auto err = with_busy_retry(op, [&] {
      int rc = run(begin_);
      if (rc != SQLITE_OK) {
        rollback_if_open();
        return rc;
      }
      refusal = caf::error{};
      rc = body(refusal);
      if (rc == SQLITE_OK && !refusal) {
        rc = run(commit_);
        if (rc == SQLITE_OK)
          return rc;
      }
      rollback_if_open();
      return refusal ? SQLITE_OK : rc;
    });
    if (err)
      return err;
    return refusal;
  }

  /// Runs one fenced UPDATE (complete, renew) in a write transaction. Returns
  /// whether a row changed: false means the lease was lost.
  template <class... Ts>
  caf::expected<bool> fenced_update(const std::string& op, const statement& stmt,
                                    const Ts&... args) {
    bool changed = false;
    auto err = write_transaction(op, [&](caf::error&) {
      statement_use use{stmt};
      int rc = bind_all(use.get(), args...);
      if (rc != SQLITE_OK)
        return failed(rc);
      if (rc = step(use.get()); rc != SQLITE_DONE)
        return rc;
      changed = sqlite3_changes(db()) > 0;
      return SQLITE_OK;
    });
    if (err)
      return err;
    return changed;
  }

  /// A read (one statement, autocommit) with the busy retry.
  template <class Body>
  caf::error read(const std::string& op, Body&& body) {
    return with_busy_retry(op, std::forward<Body>(body));
  }

  /// Reads job `id` with its position into `out` (nullopt if there is no
  /// such row).
  int load(int64_t id, std::optional<job_record>& out) {
    out.reset();
    statement_use use{get_};
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
    rec.position = column_int(use.get(), job_column_count);
    out = std::move(rec);
    return SQLITE_OK;
  }

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
        {sql_insert, &insert_},
        {sql_get, &get_},
        {sql_claim, &claim_},
        {sql_complete, &complete_},
        {sql_lease_attempts, &lease_attempts_},
        {sql_fail, &fail_},
        {sql_renew, &renew_},
        {sql_rescue_dead, &rescue_dead_},
        {sql_rescue_requeue, &rescue_requeue_},
        {sql_count_by_state, &count_by_state_},
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
  if (job.model.empty())
    return make_error(errc::invalid_input, "enqueue: model is empty");
  if (job.max_attempts < 1)
    return make_error(errc::invalid_input, "enqueue: max_attempts must be at least 1");
  if (job.timeout_ms < 0)
    return make_error(errc::invalid_input, "enqueue: timeout_ms must not be negative");
  auto& d = *impl_;
  std::optional<job_record> result;
  auto err = d.write_transaction("enqueue", [&](caf::error& refusal) {
    int64_t queued = 0;
    {
      statement_use use{d.count_queued_};
      int rc = d.step(use.get());
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
      statement_use use{d.insert_};
      int rc
          = bind_all(use.get(), job.model, int64_t{job.priority},
                     int64_t{job.max_attempts}, job.timeout_ms, job.input_json, now_ms);
      if (rc != SQLITE_OK)
        return d.failed(rc);
      if (rc = d.step(use.get()); rc != SQLITE_DONE)
        return rc;
    }
    if (int rc = d.load(sqlite3_last_insert_rowid(d.db()), result); rc != SQLITE_OK)
      return rc;
    if (!result) {
      d.last_error_ = "inserted row vanished";
      return SQLITE_INTERNAL;
    }
    return SQLITE_OK;
  });
  if (err)
    return err;
  return std::move(*result);
}

caf::expected<std::vector<job_record>>
job_store::claim(const std::string& worker, const std::vector<std::string>& models, int n,
                 int64_t lease_ms, int64_t now_ms) {
  std::vector<job_record> result;
  if (n <= 0 || models.empty())
    return result;
  auto& d = *impl_;
  auto models_json = to_json_array(models);
  auto err = d.write_transaction("claim", [&](caf::error&) {
    result.clear();
    statement_use use{d.claim_};
    int rc
        = bind_all(use.get(), worker, now_ms + lease_ms, now_ms, models_json, int64_t{n});
    if (rc != SQLITE_OK)
      return d.failed(rc);
    while ((rc = d.step(use.get())) == SQLITE_ROW) {
      job_record rec;
      if (!read_record(use.get(), rec)) {
        d.last_error_ = "a claimed job has an unknown state";
        return SQLITE_CORRUPT;
      }
      result.push_back(std::move(rec));
    }
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
  });
  if (err)
    return err;
  // RETURNING yields rows in no particular order.
  std::sort(result.begin(), result.end(), [](const auto& x, const auto& y) {
    return x.priority != y.priority ? x.priority > y.priority : x.id < y.id;
  });
  return result;
}

caf::expected<bool> job_store::complete(int64_t id, int64_t lease_seq,
                                        const std::string& output_json, int64_t now_ms) {
  return impl_->fenced_update("complete", impl_->complete_, output_json, now_ms, id,
                              lease_seq);
}

caf::expected<std::optional<job_state>>
job_store::fail(int64_t id, int64_t lease_seq, const job_error& error, int64_t now_ms) {
  auto& d = *impl_;
  std::optional<job_state> result;
  auto err = d.write_transaction("fail", [&](caf::error&) {
    result.reset();
    int32_t attempts = 0;
    int32_t max_attempts = 0;
    {
      statement_use use{d.lease_attempts_};
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
    }
    job_state next;
    std::optional<int64_t> run_at;
    std::optional<int64_t> finished_at;
    if (!error.retryable) {
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
    statement_use use{d.fail_};
    int rc
        = bind_all(use.get(), state_name, error.code, error.message,
                   int64_t{error.retryable ? 1 : 0}, run_at, finished_at, id, lease_seq);
    if (rc != SQLITE_OK)
      return d.failed(rc);
    if (rc = d.step(use.get()); rc != SQLITE_DONE)
      return rc;
    if (sqlite3_changes(d.db()) > 0)
      result = next;
    return SQLITE_OK;
  });
  if (err)
    return err;
  return result;
}

caf::expected<bool> job_store::renew(int64_t id, int64_t lease_seq, int64_t lease_ms,
                                     int64_t now_ms) {
  return impl_->fenced_update("renew", impl_->renew_, now_ms + lease_ms, id, lease_seq);
}

caf::expected<int64_t> job_store::rescue_expired(int64_t now_ms) {
  auto& d = *impl_;
  int64_t changed = 0;
  auto err = d.write_transaction("rescue_expired", [&](caf::error&) {
    changed = 0;
    // Dead-letter first: the requeue below then only sees jobs with
    // attempts left.
    for (auto* stmt : {&d.rescue_dead_, &d.rescue_requeue_}) {
      statement_use use{*stmt};
      int rc = bind_all(use.get(), now_ms);
      if (rc != SQLITE_OK)
        return d.failed(rc);
      if (rc = d.step(use.get()); rc != SQLITE_DONE)
        return rc;
      changed += sqlite3_changes(d.db());
    }
    return SQLITE_OK;
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
  return result;
}

caf::expected<std::map<job_state, int64_t>> job_store::count_by_state() {
  auto& d = *impl_;
  std::map<job_state, int64_t> result;
  auto err = d.read("count_by_state", [&] {
    result.clear();
    statement_use use{d.count_by_state_};
    int rc;
    while ((rc = d.step(use.get())) == SQLITE_ROW) {
      job_state state;
      if (!job_state_from_string(column_text(use.get(), 0), state)) {
        d.last_error_ = "unknown state '" + column_text(use.get(), 0) + "'";
        return SQLITE_CORRUPT;
      }
      result[state] = column_int(use.get(), 1);
    }
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
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
