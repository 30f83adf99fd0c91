// The raw-SQLite baseline of `infergrid bench queue`: job_store's claim and
// complete SQL on a plain sqlite3 connection, as prepared statements with
// only the busy retry around them (docs/benchmarks.md).
#include "persistence/raw_baseline.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include <sqlite3.h>

#include "messages/errors.hpp"

namespace infergrid::persistence {

namespace {

// -- the statements -------------------------------------------------------------

// Copies of job_store.cpp's sql_insert, sql_insert_event, sql_ready,
// sql_claim and sql_complete, character for character: the baseline means
// "the same SQL without job_store around it". Change them together.

#define INFERGRID_RAW_JOB_COLUMNS                                                        \
  "id, model, state, priority, attempts, max_attempts, timeout_ms, input, "              \
  "output, error_code, error_message, error_retryable, worker, lease_seq, "              \
  "lease_until, created_at, started_at, finished_at, cancel_requested, "                 \
  "idempotency_key, run_at, progress"

/// Columns of INFERGRID_RAW_JOB_COLUMNS the loop reads back.
constexpr int col_id = 0;
constexpr int col_attempts = 4;
constexpr int col_lease_seq = 13;

const char* const sql_insert
    = "INSERT INTO jobs (model, state, priority, attempts, max_attempts, "
      "timeout_ms, input, run_at, created_at, idempotency_key) "
      "VALUES (?1, 'queued', ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8)";

const char* const sql_insert_event
    = "INSERT INTO job_events (job_id, kind, data, created_at) VALUES (?1, ?2, ?3, ?4) "
      "RETURNING seq, (SELECT max(e.seq) FROM job_events e "
      "WHERE e.job_id = ?1 AND e.seq < job_events.seq)";

const char* const sql_ready = "SELECT id, priority FROM jobs INDEXED BY jobs_ready "
                              "WHERE state = 'queued' AND model = ?1 AND run_at <= ?2 "
                              "ORDER BY priority DESC, id LIMIT ?3";

const char* const sql_claim
    = "UPDATE jobs SET state = 'running', worker = ?1, attempts = attempts + 1, "
      "lease_seq = lease_seq + 1, lease_until = ?2, started_at = ?3, progress = NULL "
      "WHERE id IN (SELECT value FROM json_each(?4)) AND state = 'queued' "
      "RETURNING " INFERGRID_RAW_JOB_COLUMNS;

const char* const sql_complete
    = "UPDATE jobs SET "
      "state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'succeeded' END, "
      "output = CASE WHEN cancel_requested THEN NULL ELSE ?1 END, finished_at = ?2, "
      "lease_until = NULL, error_code = NULL, error_message = NULL, "
      "error_retryable = NULL "
      "WHERE id = ?3 AND state = 'running' AND lease_seq = ?4 "
      "RETURNING state, attempts";

/// The lease the loop claims with (job_store's callers pass queue.lease_ms).
constexpr int64_t lease_ms = 30'000;

int64_t wall_clock_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

bool is_busy(int rc) {
  return (rc & 0xff) == SQLITE_BUSY;
}

/// A connection with job_store's settings and the loop's statements. Not a
/// copy of job_store's impl: only what the claim and complete need.
class connection {
public:
  explicit connection(raw_options opts) : opts_(std::move(opts)) {}

  ~connection() {
    for (auto* s :
         {begin_, commit_, rollback_, insert_, insert_event_, ready_, claim_, complete_})
      sqlite3_finalize(s);
    sqlite3_close_v2(db_);
  }

  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  /// Opens and configures like job_store::open (NOMUTEX, busy_timeout, no
  /// checkpoint on close, WAL, synchronous, mmap_size 0, foreign keys,
  /// wal_autocheckpoint 0) and prepares the statements (persistent).
  caf::error open() {
    int rc = sqlite3_open_v2(opts_.path.c_str(), &db_,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc != SQLITE_OK)
      return fail("open", rc);
    sqlite3_busy_timeout(db_, std::max(opts_.busy_timeout_ms, 0));
    sqlite3_db_config(db_, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
    std::string settings = opts_.synchronous_full ? "PRAGMA synchronous = FULL;"
                                                  : "PRAGMA synchronous = NORMAL;";
    settings += "PRAGMA journal_mode = WAL; PRAGMA mmap_size = 0;"
                " PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;";
    if (rc = with_busy_retry([&] { return exec(settings.c_str()); }); rc != SQLITE_OK)
      return fail("open", rc);
    std::pair<const char*, sqlite3_stmt**> all[] = {
        {"BEGIN IMMEDIATE", &begin_},
        {"COMMIT", &commit_},
        {"ROLLBACK", &rollback_},
        {sql_insert, &insert_},
        {sql_insert_event, &insert_event_},
        {sql_ready, &ready_},
        {sql_claim, &claim_},
        {sql_complete, &complete_},
    };
    for (auto& [sql, stmt] : all) {
      rc = sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, stmt, nullptr);
      if (rc != SQLITE_OK)
        return fail("prepare", rc);
    }
    return {};
  }

  /// Runs `attempt()` until it returns something other than a busy code or
  /// the budget is spent; between tries a rollback and job_store's sleep of
  /// 50-250 us, doubling up to ~5 ms.
  template <class Attempt>
  int with_busy_retry(Attempt&& attempt) {
    using clock = std::chrono::steady_clock;
    auto deadline = clock::now()
                    + std::chrono::milliseconds(std::max(opts_.busy_retry_budget_ms, 0));
    int64_t lo_us = 50;
    int64_t hi_us = 250;
    for (;;) {
      int rc = attempt();
      if (rc != SQLITE_OK && sqlite3_get_autocommit(db_) == 0) {
        sqlite3_step(rollback_);
        sqlite3_reset(rollback_);
      }
      if (rc == SQLITE_OK || !is_busy(rc) || clock::now() >= deadline)
        return rc;
      ++busy_retries_;
      std::uniform_int_distribution<int64_t> pick{lo_us, hi_us};
      std::this_thread::sleep_for(std::chrono::microseconds(pick(rng_)));
      hi_us = std::min<int64_t>(hi_us * 2, 5000);
      lo_us = hi_us / 5;
    }
  }

  /// Steps a statement without result rows and resets it.
  static int run(sqlite3_stmt* s) {
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
  }

  int exec(const char* sql) {
    return sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
  }

  /// The job_events INSERT of one status event.
  int status_event(int64_t job_id, const char* state, int64_t attempt, int64_t now_ms) {
    char data[64];
    int len = std::snprintf(data, sizeof data, "{\"state\":\"%s\",\"attempt\":%lld}",
                            state, static_cast<long long>(attempt));
    sqlite3_bind_int64(insert_event_, 1, job_id);
    sqlite3_bind_text(insert_event_, 2, "status", 6, SQLITE_STATIC);
    sqlite3_bind_text(insert_event_, 3, data, len, SQLITE_STATIC);
    sqlite3_bind_int64(insert_event_, 4, now_ms);
    return run(insert_event_);
  }

  caf::error fail(const char* what, int rc) {
    std::string msg = db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    return make_error(errc::storage_error, std::string{"raw baseline: "} + what + " "
                                               + opts_.path + ": " + msg);
  }

  sqlite3* db_ = nullptr;
  raw_options opts_;
  std::minstd_rand rng_{std::random_device{}()};
  int64_t busy_retries_ = 0;
  sqlite3_stmt* begin_ = nullptr;
  sqlite3_stmt* commit_ = nullptr;
  sqlite3_stmt* rollback_ = nullptr;
  sqlite3_stmt* insert_ = nullptr;
  sqlite3_stmt* insert_event_ = nullptr;
  sqlite3_stmt* ready_ = nullptr;
  sqlite3_stmt* claim_ = nullptr;
  sqlite3_stmt* complete_ = nullptr;
};

/// A claimed job: what the completion needs.
struct claimed {
  int64_t id;
  int64_t lease_seq;
  int64_t attempt;
};

} // namespace

std::string sqlite_version() {
  return sqlite3_libversion();
}

caf::expected<void> raw_fill(const raw_options& opts, const std::string& model,
                             const std::string& input_json, int64_t n, int64_t now_ms) {
  connection c{opts};
  if (auto err = c.open())
    return err;
  int rc = c.with_busy_retry([&] {
    int rc = connection::run(c.begin_);
    for (int64_t i = 0; i < n && rc == SQLITE_OK; ++i) {
      auto* s = c.insert_;
      sqlite3_bind_text(s, 1, model.data(), static_cast<int>(model.size()),
                        SQLITE_STATIC);
      sqlite3_bind_int64(s, 2, 0);
      sqlite3_bind_int64(s, 3, 3);
      sqlite3_bind_int64(s, 4, 0);
      sqlite3_bind_text(s, 5, input_json.data(), static_cast<int>(input_json.size()),
                        SQLITE_STATIC);
      sqlite3_bind_int64(s, 6, now_ms);
      sqlite3_bind_int64(s, 7, now_ms);
      sqlite3_bind_null(s, 8);
      rc = connection::run(s);
      if (rc == SQLITE_OK)
        rc = c.status_event(sqlite3_last_insert_rowid(c.db_), "queued", 0, now_ms);
    }
    if (rc == SQLITE_OK)
      rc = connection::run(c.commit_);
    return rc;
  });
  if (rc != SQLITE_OK)
    return c.fail("fill", rc);
  rc = sqlite3_wal_checkpoint_v2(c.db_, nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr,
                                 nullptr);
  if (rc != SQLITE_OK)
    return c.fail("checkpoint", rc);
  return {};
}

caf::expected<raw_result> raw_claim_complete(const raw_options& opts,
                                             const raw_loop& loop) {
  connection c{opts};
  if (auto err = c.open())
    return err;
  const auto& worker = loop.worker;
  const auto& model = loop.model;
  const auto& output = loop.output_json;
  std::vector<claimed> batch;
  batch.reserve(static_cast<std::size_t>(std::max(loop.batch, 1)));
  std::string ids;

  // BEGIN IMMEDIATE; ready range; UPDATE ... RETURNING; events; COMMIT.
  auto claim = [&] {
    batch.clear();
    int64_t now = wall_clock_ms();
    int rc = connection::run(c.begin_);
    if (rc != SQLITE_OK)
      return rc;
    ids = "[";
    sqlite3_bind_text(c.ready_, 1, model.data(), static_cast<int>(model.size()),
                      SQLITE_STATIC);
    sqlite3_bind_int64(c.ready_, 2, now);
    sqlite3_bind_int64(c.ready_, 3, loop.batch);
    while ((rc = sqlite3_step(c.ready_)) == SQLITE_ROW) {
      if (ids.size() > 1)
        ids += ',';
      ids += std::to_string(sqlite3_column_int64(c.ready_, 0));
    }
    sqlite3_reset(c.ready_);
    if (rc != SQLITE_DONE)
      return rc;
    if (ids.size() == 1)
      return connection::run(c.commit_);
    ids += ']';
    sqlite3_bind_text(c.claim_, 1, worker.data(), static_cast<int>(worker.size()),
                      SQLITE_STATIC);
    sqlite3_bind_int64(c.claim_, 2, now + lease_ms);
    sqlite3_bind_int64(c.claim_, 3, now);
    sqlite3_bind_text(c.claim_, 4, ids.data(), static_cast<int>(ids.size()),
                      SQLITE_STATIC);
    while ((rc = sqlite3_step(c.claim_)) == SQLITE_ROW) {
      batch.push_back({sqlite3_column_int64(c.claim_, col_id),
                       sqlite3_column_int64(c.claim_, col_lease_seq),
                       sqlite3_column_int64(c.claim_, col_attempts)});
    }
    sqlite3_reset(c.claim_);
    if (rc != SQLITE_DONE)
      return rc;
    for (auto& job : batch)
      if (rc = c.status_event(job.id, "running", job.attempt, now); rc != SQLITE_OK)
        return rc;
    return connection::run(c.commit_);
  };

  // BEGIN IMMEDIATE; fenced UPDATE ... RETURNING; event; COMMIT.
  auto complete = [&](const claimed& job) {
    int64_t now = wall_clock_ms();
    int rc = connection::run(c.begin_);
    if (rc != SQLITE_OK)
      return rc;
    sqlite3_bind_text(c.complete_, 1, output.data(), static_cast<int>(output.size()),
                      SQLITE_STATIC);
    sqlite3_bind_int64(c.complete_, 2, now);
    sqlite3_bind_int64(c.complete_, 3, job.id);
    sqlite3_bind_int64(c.complete_, 4, job.lease_seq);
    bool changed = false;
    int64_t attempt = 0;
    bool cancelled = false;
    while ((rc = sqlite3_step(c.complete_)) == SQLITE_ROW) {
      changed = true;
      cancelled = sqlite3_column_text(c.complete_, 0)[0] == 'c';
      attempt = sqlite3_column_int64(c.complete_, 1);
    }
    sqlite3_reset(c.complete_);
    if (rc != SQLITE_DONE)
      return rc;
    if (changed)
      rc = c.status_event(job.id, cancelled ? "cancelled" : "succeeded", attempt, now);
    if (rc != SQLITE_OK)
      return rc;
    return connection::run(c.commit_);
  };

  if (loop.on_ready)
    loop.on_ready();
  raw_result result;
  using clock = std::chrono::steady_clock;
  auto start = clock::now();
  auto deadline = start
                  + std::chrono::duration_cast<clock::duration>(
                      std::chrono::duration<double>(loop.seconds));
  while (clock::now() < deadline) {
    if (int rc = c.with_busy_retry(claim); rc != SQLITE_OK)
      return c.fail("claim", rc);
    if (batch.empty())
      break;
    for (auto& job : batch)
      if (int rc = c.with_busy_retry([&] { return complete(job); }); rc != SQLITE_OK)
        return c.fail("complete", rc);
    result.jobs += static_cast<int64_t>(batch.size());
  }
  result.seconds = std::chrono::duration<double>(clock::now() - start).count();
  result.busy_retries = c.busy_retries_;
  return result;
}

} // namespace infergrid::persistence
