// job_store against real SQLite files in a temp dir: schema and migrations,
// claim order, fencing, back-off, rescue, events, cancel, idempotency,
// listing, ETAs, group commit (enqueue_batch, complete_batch, renew_batch),
// the per-state counts, the workers table, injected faults and two
// connections claiming one table.
#define CAF_SUITE job_store
#include "tests/unit/test_support.hpp"

#include "persistence/job_store.hpp"

#include <caf/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "messages/errors.hpp"

using namespace infergrid;
using namespace infergrid::persistence;

namespace {

/// A fixed "now" so that every time in the tests is exact.
constexpr int64_t t0 = 1'700'000'000'000;
constexpr int64_t lease_ms = 30'000;
constexpr int64_t no_limit = 1'000'000;

template <class T>
T value_of(caf::expected<T> x, const std::string& what) {
  if (!x)
    CAF_FAIL(what << " failed: " << message_of(x.error()));
  return std::move(*x);
}

new_job make_job(std::string model, int32_t priority = 0, int32_t max_attempts = 3) {
  new_job job;
  job.model = std::move(model);
  job.input_json = R"({"x":1})";
  job.priority = priority;
  job.max_attempts = max_attempts;
  return job;
}

std::vector<int64_t> ids_of(const std::vector<job_record>& jobs) {
  std::vector<int64_t> out;
  for (auto& job : jobs)
    out.push_back(job.id);
  return out;
}

/// The raw bytes of a file (to read the SQLite header without <sqlite3.h>).
std::string slurp(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  return {std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
}

/// PRAGMA user_version as stored in the file header (offset 60, big endian).
int64_t header_user_version(const std::string& bytes) {
  int64_t v = 0;
  for (int i = 60; i < 64; ++i)
    v = (v << 8) | static_cast<unsigned char>(bytes[i]);
  return v;
}

/// SQLite result codes for the fault hook (tests stay off <sqlite3.h>).
constexpr int sqlite_busy = 5;
constexpr int sqlite_ioerr = 10;

/// Migration 1 exactly as shipped (older files are built from these with the
/// sqlite3 shell and then migrated by job_store::open).
const char* const migration_1 = R"sql(
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
)sql";

/// Migration 2 exactly as shipped.
const char* const migration_2 = R"sql(
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
)sql";

/// Migration 3 exactly as shipped.
const char* const migration_3 = R"sql(
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
)sql";

bool have_sqlite3_shell() {
  return std::system("command -v sqlite3 >/dev/null 2>&1") == 0;
}

/// Runs `script` through the sqlite3 shell on `db` and returns its output
/// (read-only unless `write`).
std::string sqlite3_shell(const std::string& db, const std::string& script,
                          bool write = false) {
  auto file = db + ".script.sql";
  {
    std::ofstream out{file};
    out << script;
  }
  auto cmd = std::string{"sqlite3 -batch -bail "} + (write ? "" : "-readonly ") + "'" + db
             + "' < '" + file + "' 2>&1";
  std::string output;
  if (auto* pipe = popen(cmd.c_str(), "r")) {
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0)
      output.append(buf, n);
    pclose(pipe);
  }
  std::filesystem::remove(file);
  return output;
}

/// The data of a status event as job_store writes it.
std::string status_data(const std::string& state, int attempt,
                        const std::string& extra = {}) {
  return "{\"state\":\"" + state + "\",\"attempt\":" + std::to_string(attempt) + extra
         + "}";
}

std::string error_data(const std::string& code, const std::string& message,
                       bool retryable) {
  return ",\"error\":{\"code\":\"" + code + "\",\"message\":\"" + message
         + "\",\"retryable\":" + (retryable ? "true" : "false") + "}";
}

/// (job id, kind, data) of each event, to compare with one CHECK.
std::vector<std::string> describe(const std::vector<job_event>& events) {
  std::vector<std::string> out;
  for (auto& ev : events)
    out.push_back(std::to_string(ev.job_id) + " " + ev.kind + " " + ev.data_json);
  return out;
}

std::string describe_one(int64_t id, const std::string& kind, const std::string& data) {
  return std::to_string(id) + " " + kind + " " + data;
}

int64_t wall_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

/// A count per state as "queued=2 running=1", in enum order (a state
/// count_by_state() reports with 0 shows as "=0": it must be absent).
std::string describe_counts(const std::map<job_state, int64_t>& counts) {
  std::string out;
  for (auto& [state, n] : counts) {
    if (!out.empty())
      out += ' ';
    out += to_string(state) + "=" + std::to_string(n);
  }
  return out;
}

struct fixture {
  testing::temp_dir dir;
  std::string path = dir.str("infergrid.db");

  store_options options(bool checkpointer = false) {
    store_options opts;
    opts.path = path;
    opts.checkpointer = checkpointer;
    return opts;
  }

  std::unique_ptr<job_store> open(bool checkpointer = false) {
    return value_of(job_store::open(options(checkpointer)), "open");
  }

  std::unique_ptr<job_store> store = open(true);

  job_record enqueue(const new_job& job, int64_t now = t0) {
    return value_of(store->enqueue(job, no_limit, now), "enqueue");
  }

  std::vector<job_record> claim(const std::vector<std::string>& models, int n,
                                int64_t now = t0, const std::string& worker = "w1") {
    return value_of(store->claim(worker, models, n, lease_ms, now), "claim");
  }

  job_record get(int64_t id) {
    auto rec = value_of(store->get(id), "get");
    if (!rec)
      CAF_FAIL("no job " << id);
    return std::move(*rec);
  }

  int64_t count(job_state state) {
    auto counts = value_of(store->count_by_state(), "count_by_state");
    auto i = counts.find(state);
    return i == counts.end() ? 0 : i->second;
  }

  /// count_by_state() as "queued=2 running=1 ...", in enum order.
  std::string counts() {
    return describe_counts(value_of(store->count_by_state(), "count_by_state"));
  }

  /// The same figure the slow way, from every row (through list()).
  std::string counted_rows() {
    std::map<job_state, int64_t> out;
    job_filter filter;
    filter.limit = 1000;
    for (;;) {
      auto page = value_of(store->list(filter), "list");
      for (auto& job : page.jobs)
        ++out[job.state];
      if (page.next_before_id == 0)
        break;
      filter.before_id = page.next_before_id;
    }
    return describe_counts(out);
  }

  /// The state a fail() that must hold the lease leads to.
  job_state fail_to(int64_t id, int64_t lease_seq, const job_error& err, int64_t now) {
    auto state = value_of(store->fail(id, lease_seq, err, now), "fail");
    if (!state)
      CAF_FAIL("fail of job " << id << ": lease lost");
    return *state;
  }

  /// Every event of job `id`, oldest first.
  std::vector<job_event> events_of(int64_t id) {
    return value_of(store->events_after(id, 0, 10'000), "events_after");
  }

  /// The data of the newest event of job `id` (empty if none).
  std::string last_event_data(int64_t id) {
    auto events = events_of(id);
    return events.empty() ? std::string{} : events.back().data_json;
  }

  /// Runs `fn` and returns what the store's take_events() then holds.
  template <class Fn>
  std::vector<job_event> events_during(Fn&& fn) {
    store->take_events();
    fn();
    return store->take_events();
  }

  /// The exact run_at of a queued job: claims at every ms from `from` on
  /// (claims that find nothing change nothing) and returns the first time
  /// that succeeds, leaving the job claimed.
  int64_t probe_run_at(const std::string& model, int64_t from, int64_t to) {
    for (auto t = from; t <= to; ++t)
      if (!claim({model}, 1, t).empty())
        return t;
    return -1;
  }
};

} // namespace

CAF_TEST_FIXTURE_SCOPE(job_store_tests, fixture)

CAF_TEST(open creates the schema and reopening is idempotent) {
  CAF_CHECK(std::filesystem::exists(path));
  CAF_CHECK(value_of(store->count_by_state(), "count").empty());
  auto first = enqueue(make_job("m"));
  CAF_CHECK_EQUAL(first.id, 1);
  // The checkpointer checkpoints on close, so the header is in the file.
  store.reset();
  CAF_CHECK(!std::filesystem::exists(path + "-wal"));
  auto bytes = slurp(path);
  CAF_REQUIRE_GREATER_OR_EQUAL(bytes.size(), 100u);
  CAF_CHECK_EQUAL(bytes.substr(0, 16), std::string("SQLite format 3\0", 16));
  CAF_CHECK_EQUAL(static_cast<int>(bytes[18]), 2); // WAL
  CAF_CHECK_EQUAL(static_cast<int>(bytes[19]), 2);
  CAF_CHECK_EQUAL(header_user_version(bytes), 4);
  for (auto text :
       {"CREATE TABLE jobs", "CREATE INDEX jobs_ready", "WHERE state = 'queued'",
        "CREATE INDEX jobs_leased", "CREATE TABLE meta", "CREATE VIEW jobs_readable",
        "CREATE TABLE job_events", "CREATE UNIQUE INDEX jobs_idempotency",
        "CREATE INDEX jobs_by_model", "CREATE INDEX jobs_ended",
        "CREATE INDEX jobs_succeeded", "CREATE INDEX job_events_job",
        "cancel_requested INTEGER NOT NULL DEFAULT 0", "CREATE TABLE workers",
        "CREATE VIEW workers_readable", "CREATE TRIGGER jobs_count_update"})
    CAF_CHECK_NOT_EQUAL(bytes.find(text), std::string::npos);
  // Reopening (twice, one of them not the checkpointer) keeps the data and
  // the version.
  store = open(false);
  auto again = get(1);
  CAF_CHECK_EQUAL(again.model, "m");
  CAF_CHECK_EQUAL(again.state, job_state::queued);
  CAF_CHECK_EQUAL(enqueue(make_job("m")).id, 2);
  store.reset();
  // Others never checkpoint, not even on close: the WAL stays.
  CAF_CHECK(std::filesystem::exists(path + "-wal"));
  CAF_CHECK_GREATER(std::filesystem::file_size(path + "-wal"), 0u);
  store = open(true);
  CAF_CHECK_EQUAL(count(job_state::queued), 2);
  store.reset();
  CAF_CHECK(!std::filesystem::exists(path + "-wal"));
  CAF_CHECK_EQUAL(header_user_version(slurp(path)), 4);
}

CAF_TEST(open refuses a newer schema and a missing directory) {
  store.reset();
  auto bytes = slurp(path);
  bytes[63] = 99; // user_version 99
  {
    std::ofstream out{path, std::ios::binary | std::ios::trunc};
    out << bytes;
  }
  auto newer = job_store::open(options());
  CAF_REQUIRE(!newer);
  CAF_CHECK_EQUAL(code_of(newer.error()), errc::storage_error);
  CAF_CHECK_NOT_EQUAL(message_of(newer.error()).find("newer"), std::string::npos);
  store_options bad;
  bad.path = dir.str("no/such/dir/x.db");
  auto missing = job_store::open(bad);
  CAF_REQUIRE(!missing);
  CAF_CHECK_EQUAL(code_of(missing.error()), errc::storage_error);
  CAF_CHECK_NOT_EQUAL(message_of(missing.error()).find(bad.path), std::string::npos);
}

CAF_TEST(enqueue claim complete round trip) {
  new_job job = make_job("classifier", 7, 4);
  job.input_json = R"({"inputs":[{"name":"x","data":[1,2]}]})";
  job.timeout_ms = 60'000;
  auto rec = enqueue(job, t0);
  CAF_CHECK_GREATER(rec.id, 0);
  CAF_CHECK_EQUAL(rec.model, "classifier");
  CAF_CHECK_EQUAL(rec.state, job_state::queued);
  CAF_CHECK_EQUAL(rec.priority, 7);
  CAF_CHECK_EQUAL(rec.attempts, 0);
  CAF_CHECK_EQUAL(rec.max_attempts, 4);
  CAF_CHECK_EQUAL(rec.timeout_ms, 60'000);
  CAF_CHECK_EQUAL(rec.input_json, job.input_json);
  CAF_CHECK_EQUAL(rec.output_json, "");
  CAF_CHECK(!rec.has_error);
  CAF_CHECK_EQUAL(rec.worker, "");
  CAF_CHECK_EQUAL(rec.lease_seq, 0);
  CAF_CHECK_EQUAL(rec.lease_until_ms, 0);
  CAF_CHECK_EQUAL(rec.created_at_ms, t0);
  CAF_CHECK_EQUAL(rec.started_at_ms, 0);
  CAF_CHECK_EQUAL(rec.finished_at_ms, 0);
  CAF_CHECK_EQUAL(rec.position, 0);

  auto claimed = claim({"classifier"}, 4, t0 + 10, "worker-a");
  CAF_REQUIRE_EQUAL(claimed.size(), 1u);
  auto& run = claimed[0];
  CAF_CHECK_EQUAL(run.id, rec.id);
  CAF_CHECK_EQUAL(run.state, job_state::running);
  CAF_CHECK_EQUAL(run.worker, "worker-a");
  CAF_CHECK_EQUAL(run.attempts, 1);
  CAF_CHECK_EQUAL(run.lease_seq, 1);
  CAF_CHECK_EQUAL(run.lease_until_ms, t0 + 10 + lease_ms);
  CAF_CHECK_EQUAL(run.started_at_ms, t0 + 10);
  CAF_CHECK_EQUAL(run.finished_at_ms, 0);
  CAF_CHECK_EQUAL(run.position, -1);
  CAF_CHECK_EQUAL(run.input_json, job.input_json);
  CAF_CHECK_EQUAL(run.priority, 7);
  CAF_CHECK_EQUAL(run.timeout_ms, 60'000);
  CAF_CHECK_EQUAL(run.created_at_ms, t0);
  CAF_CHECK_EQUAL(get(rec.id).state, job_state::running);
  CAF_CHECK(claim({"classifier"}, 4, t0 + 11).empty());

  auto output = R"({"outputs":[{"name":"y","data":[0.5]}]})";
  CAF_CHECK(value_of(store->complete(rec.id, 1, output, t0 + 20), "complete"));
  auto done = get(rec.id);
  CAF_CHECK_EQUAL(done.state, job_state::succeeded);
  CAF_CHECK_EQUAL(done.output_json, output);
  CAF_CHECK_EQUAL(done.finished_at_ms, t0 + 20);
  CAF_CHECK_EQUAL(done.started_at_ms, t0 + 10);
  CAF_CHECK_EQUAL(done.lease_until_ms, 0);
  CAF_CHECK_EQUAL(done.lease_seq, 1);
  CAF_CHECK_EQUAL(done.attempts, 1);
  CAF_CHECK_EQUAL(done.worker, "worker-a");
  CAF_CHECK(!done.has_error);
  CAF_CHECK_EQUAL(done.position, -1);
  // A second complete finds no running job.
  CAF_CHECK(!value_of(store->complete(rec.id, 1, "{}", t0 + 30), "complete"));
  CAF_CHECK_EQUAL(get(rec.id).output_json, output);
  auto counts = value_of(store->count_by_state(), "count_by_state");
  CAF_CHECK_EQUAL(counts.size(), 1u);
  CAF_CHECK_EQUAL(counts[job_state::succeeded], 1);
}

CAF_TEST(claims take higher priority first then FIFO) {
  auto a = enqueue(make_job("m", 0));
  auto b = enqueue(make_job("m", 5));
  auto c = enqueue(make_job("m", 0));
  auto d = enqueue(make_job("m", 5));
  auto e = enqueue(make_job("m", 1));
  enqueue(make_job("other", 9));
  // Position when enqueued: jobs of the model a claim would take first.
  CAF_CHECK_EQUAL(a.position, 0);
  CAF_CHECK_EQUAL(b.position, 0);
  CAF_CHECK_EQUAL(c.position, 2);
  CAF_CHECK_EQUAL(d.position, 1);
  CAF_CHECK_EQUAL(e.position, 2);
  // Position now.
  CAF_CHECK_EQUAL(get(b.id).position, 0);
  CAF_CHECK_EQUAL(get(d.id).position, 1);
  CAF_CHECK_EQUAL(get(e.id).position, 2);
  CAF_CHECK_EQUAL(get(a.id).position, 3);
  CAF_CHECK_EQUAL(get(c.id).position, 4);
  auto first = claim({"m"}, 3);
  CAF_CHECK_EQUAL(ids_of(first), (std::vector<int64_t>{b.id, d.id, e.id}));
  CAF_CHECK_EQUAL(get(a.id).position, 0);
  CAF_CHECK_EQUAL(get(c.id).position, 1);
  auto rest = claim({"m"}, 10);
  CAF_CHECK_EQUAL(ids_of(rest), (std::vector<int64_t>{a.id, c.id}));
  CAF_CHECK(claim({"m"}, 10).empty());
  CAF_CHECK_EQUAL(count(job_state::queued), 1);
}

CAF_TEST(one batch claim is sorted by priority then id) {
  std::vector<int64_t> expected;
  std::vector<int64_t> low;
  for (int i = 0; i < 20; ++i) {
    auto rec = enqueue(make_job("m", i % 3 == 0 ? 2 : 0));
    (i % 3 == 0 ? expected : low).push_back(rec.id);
  }
  expected.insert(expected.end(), low.begin(), low.end());
  CAF_CHECK_EQUAL(ids_of(claim({"m"}, 50)), expected);
}

CAF_TEST(claims only take the asked models) {
  auto m1 = enqueue(make_job("m1"));
  auto m2 = enqueue(make_job("m2", 9));
  auto m3 = enqueue(make_job("m3"));
  auto odd = enqueue(make_job("we\"ird\\model\n"));
  CAF_CHECK(claim({}, 10).empty());
  CAF_CHECK(claim({"m1"}, 0).empty());
  CAF_CHECK(claim({"nope"}, 10).empty());
  CAF_CHECK_EQUAL(ids_of(claim({"m1", "m3"}, 10)), (std::vector<int64_t>{m1.id, m3.id}));
  CAF_CHECK_EQUAL(ids_of(claim({"we\"ird\\model\n", "m1"}, 10)),
                  (std::vector<int64_t>{odd.id}));
  CAF_CHECK_EQUAL(get(m2.id).state, job_state::queued);
  CAF_CHECK_EQUAL(ids_of(claim({"m2"}, 10)), (std::vector<int64_t>{m2.id}));
}

CAF_TEST(jobs are not claimable before run_at) {
  auto rec = enqueue(make_job("m"), t0 + 1000);
  CAF_CHECK(claim({"m"}, 1, t0 + 999).empty());
  CAF_CHECK_EQUAL(get(rec.id).state, job_state::queued);
  CAF_CHECK_EQUAL(ids_of(claim({"m"}, 1, t0 + 1000)), (std::vector<int64_t>{rec.id}));
}

CAF_TEST(enqueue refuses when the queue is full and writes nothing) {
  for (int i = 0; i < 3; ++i)
    CAF_CHECK(store->enqueue(make_job("m"), 3, t0));
  auto full = store->enqueue(make_job("m"), 3, t0);
  CAF_REQUIRE(!full);
  CAF_CHECK_EQUAL(code_of(full.error()), errc::queue_full);
  CAF_CHECK_EQUAL(message_of(full.error()), "queue holds 3 of 3 jobs");
  CAF_CHECK_EQUAL(count(job_state::queued), 3);
  CAF_CHECK(!value_of(store->get(4), "get"));
  // Only queued jobs count: a claim makes room.
  CAF_CHECK_EQUAL(claim({"m"}, 1).size(), 1u);
  auto next = store->enqueue(make_job("m"), 3, t0);
  CAF_REQUIRE(next);
  CAF_CHECK_EQUAL(next->id, 4);
  CAF_CHECK_EQUAL(next->position, 2);
  CAF_CHECK_EQUAL(count(job_state::queued), 3);
  CAF_CHECK_EQUAL(count(job_state::running), 1);
}

CAF_TEST(enqueue rejects invalid jobs) {
  auto no_attempts = store->enqueue(make_job("m", 0, 0), no_limit, t0);
  CAF_REQUIRE(!no_attempts);
  CAF_CHECK_EQUAL(code_of(no_attempts.error()), errc::invalid_input);
  auto no_model = store->enqueue(make_job(""), no_limit, t0);
  CAF_REQUIRE(!no_model);
  CAF_CHECK_EQUAL(code_of(no_model.error()), errc::invalid_input);
  CAF_CHECK(value_of(store->count_by_state(), "count").empty());
}

CAF_TEST(a stale lease_seq changes nothing) {
  auto rec = enqueue(make_job("m"));
  auto run = claim({"m"}, 1).at(0);
  CAF_REQUIRE_EQUAL(run.lease_seq, 1);
  job_error err{"model_error", "boom", true};
  for (int64_t stale : {int64_t{0}, int64_t{2}}) {
    CAF_CHECK(!value_of(store->complete(rec.id, stale, "{}", t0 + 1), "c"));
    CAF_CHECK(!value_of(store->fail(rec.id, stale, err, t0 + 1), "f"));
    CAF_CHECK(!value_of(store->renew(rec.id, stale, 99'000, t0 + 1), "r").held);
  }
  auto same = get(rec.id);
  CAF_CHECK_EQUAL(same.state, job_state::running);
  CAF_CHECK_EQUAL(same.lease_until_ms, run.lease_until_ms);
  CAF_CHECK_EQUAL(same.attempts, 1);
  CAF_CHECK(!same.has_error);
  CAF_CHECK_EQUAL(same.output_json, "");
  // The lease lapses and another worker claims the job: the first worker's
  // token is now stale.
  CAF_CHECK_EQUAL(value_of(store->rescue_expired(t0 + lease_ms + 1), "rescue"), 1);
  auto again = claim({"m"}, 1, t0 + lease_ms + 2, "w2").at(0);
  CAF_CHECK_EQUAL(again.lease_seq, 2);
  CAF_CHECK_EQUAL(again.attempts, 2);
  CAF_CHECK_EQUAL(again.worker, "w2");
  CAF_CHECK(!value_of(store->complete(rec.id, 1, "{\"old\":1}", t0), "c"));
  CAF_CHECK(!value_of(store->fail(rec.id, 1, err, t0), "f"));
  CAF_CHECK(!value_of(store->renew(rec.id, 1, lease_ms, t0), "r").held);
  CAF_CHECK(value_of(store->complete(rec.id, 2, "{\"new\":1}", t0), "c"));
  auto done = get(rec.id);
  CAF_CHECK_EQUAL(done.state, job_state::succeeded);
  CAF_CHECK_EQUAL(done.output_json, "{\"new\":1}");
  CAF_CHECK(!done.has_error); // the worker_lost of attempt 1 is cleared
}

CAF_TEST(retryable failures back off then dead letter) {
  auto rec = enqueue(make_job("m", 0, 3));
  job_error err{"oom", "out of memory", true};
  auto run = claim({"m"}, 1, t0).at(0);
  auto t1 = t0 + 50;
  auto state = value_of(store->fail(rec.id, run.lease_seq, err, t1), "fail");
  CAF_REQUIRE(state);
  CAF_CHECK_EQUAL(*state, job_state::queued);
  auto back = get(rec.id);
  CAF_CHECK_EQUAL(back.state, job_state::queued);
  CAF_CHECK_EQUAL(back.attempts, 1);
  CAF_CHECK(back.has_error);
  CAF_CHECK_EQUAL(back.error.code, "oom");
  CAF_CHECK_EQUAL(back.error.message, "out of memory");
  CAF_CHECK(back.error.retryable);
  CAF_CHECK_EQUAL(back.lease_until_ms, 0);
  CAF_CHECK_EQUAL(back.finished_at_ms, 0);
  CAF_CHECK_EQUAL(back.position, 0);
  // Attempt 1 backs off 1 s +-10 %.
  auto run_at = probe_run_at("m", t1 + 800, t1 + 1200);
  CAF_CHECK_GREATER_OR_EQUAL(run_at - t1, 900);
  CAF_CHECK_LESS_OR_EQUAL(run_at - t1, 1100);
  auto run2 = get(rec.id).lease_seq;
  CAF_CHECK_EQUAL(run2, 2);
  // Attempt 2 backs off 2 s +-10 %.
  auto t2 = run_at + 10;
  state = value_of(store->fail(rec.id, run2, err, t2), "fail");
  CAF_REQUIRE(state);
  CAF_CHECK_EQUAL(*state, job_state::queued);
  run_at = probe_run_at("m", t2 + 1700, t2 + 2300);
  CAF_CHECK_GREATER_OR_EQUAL(run_at - t2, 1800);
  CAF_CHECK_LESS_OR_EQUAL(run_at - t2, 2200);
  // Attempt 3 was the last one.
  auto t3 = run_at + 10;
  state = value_of(store->fail(rec.id, 3, err, t3), "fail");
  CAF_REQUIRE(state);
  CAF_CHECK_EQUAL(*state, job_state::dead);
  auto dead = get(rec.id);
  CAF_CHECK_EQUAL(dead.state, job_state::dead);
  CAF_CHECK_EQUAL(dead.attempts, 3);
  CAF_CHECK_EQUAL(dead.finished_at_ms, t3);
  CAF_CHECK_EQUAL(dead.error.code, "oom");
  CAF_CHECK_EQUAL(dead.lease_until_ms, 0);
  CAF_CHECK(claim({"m"}, 1, t3 + 3'600'000).empty());
}

CAF_TEST(non retryable failures are final) {
  auto rec = enqueue(make_job("m", 0, 5));
  claim({"m"}, 1);
  job_error err{"invalid_input", "bad shape", false};
  auto state = value_of(store->fail(rec.id, 1, err, t0 + 5), "fail");
  CAF_REQUIRE(state);
  CAF_CHECK_EQUAL(*state, job_state::failed);
  auto failed = get(rec.id);
  CAF_CHECK_EQUAL(failed.state, job_state::failed);
  CAF_CHECK_EQUAL(failed.attempts, 1);
  CAF_CHECK_EQUAL(failed.finished_at_ms, t0 + 5);
  CAF_CHECK(failed.has_error);
  CAF_CHECK_EQUAL(failed.error.code, "invalid_input");
  CAF_CHECK_EQUAL(failed.error.message, "bad shape");
  CAF_CHECK(!failed.error.retryable);
  CAF_CHECK(claim({"m"}, 1, t0 + 3'600'000).empty());
  CAF_CHECK_EQUAL(count(job_state::failed), 1);
}

CAF_TEST(rescue requeues lapsed leases then dead letters) {
  auto rec = enqueue(make_job("m", 0, 2));
  auto other = enqueue(make_job("m", 0, 2));
  claim({"m"}, 1, t0, "w1"); // lease until t0 + lease_ms
  CAF_CHECK_EQUAL(value_of(store->rescue_expired(t0 + lease_ms), "r"), 0);
  CAF_CHECK_EQUAL(value_of(store->rescue_expired(t0 + lease_ms + 1), "r"), 1);
  auto back = get(rec.id);
  CAF_CHECK_EQUAL(back.state, job_state::queued);
  CAF_CHECK_EQUAL(back.attempts, 1);
  CAF_CHECK_EQUAL(back.lease_until_ms, 0);
  CAF_CHECK(back.has_error);
  CAF_CHECK_EQUAL(back.error.code, "worker_lost");
  CAF_CHECK_EQUAL(back.position, 0);
  CAF_CHECK_EQUAL(get(other.id).state, job_state::queued);
  // Claimable at once (run_at = the rescue time), ahead of `other` (FIFO).
  auto t1 = t0 + lease_ms + 1;
  auto again = claim({"m"}, 1, t1, "w2").at(0);
  CAF_CHECK_EQUAL(again.id, rec.id);
  CAF_CHECK_EQUAL(again.attempts, 2);
  CAF_CHECK_EQUAL(value_of(store->rescue_expired(t1 + lease_ms + 1), "r"), 1);
  auto dead = get(rec.id);
  CAF_CHECK_EQUAL(dead.state, job_state::dead);
  CAF_CHECK_EQUAL(dead.error.code, "worker_lost");
  CAF_CHECK_EQUAL(dead.finished_at_ms, t1 + lease_ms + 1);
  CAF_CHECK_EQUAL(dead.lease_until_ms, 0);
  CAF_CHECK_EQUAL(value_of(store->rescue_expired(t1 + 10 * lease_ms), "r"), 0);
  CAF_CHECK_EQUAL(count(job_state::dead), 1);
  CAF_CHECK_EQUAL(count(job_state::queued), 1);
}

CAF_TEST(renew extends the lease) {
  auto rec = enqueue(make_job("m"));
  claim({"m"}, 1, t0);
  auto status = value_of(store->renew(rec.id, 1, lease_ms, t0 + 20'000), "renew");
  CAF_CHECK(status.held);
  CAF_CHECK(!status.cancel_requested);
  CAF_CHECK_EQUAL(get(rec.id).lease_until_ms, t0 + 20'000 + lease_ms);
  CAF_CHECK_EQUAL(value_of(store->rescue_expired(t0 + lease_ms + 1), "r"), 0);
  CAF_CHECK_EQUAL(get(rec.id).state, job_state::running);
  CAF_CHECK_EQUAL(value_of(store->rescue_expired(t0 + 20'000 + lease_ms + 1), "r"), 1);
}

CAF_TEST(get of an unknown id is nullopt) {
  CAF_CHECK(!value_of(store->get(1), "get"));
  auto rec = enqueue(make_job("m"));
  CAF_CHECK(value_of(store->get(rec.id), "get"));
  CAF_CHECK(!value_of(store->get(rec.id + 1), "get"));
  CAF_CHECK(!value_of(store->get(-5), "get"));
}

CAF_TEST(checkpoint succeeds on every connection) {
  enqueue(make_job("m"));
  CAF_CHECK(store->checkpoint());
  auto plain = open(false);
  CAF_CHECK(plain->checkpoint());
}

CAF_TEST(a held write lock costs the retry budget then database busy) {
  // Another process holds the write lock: the sqlite3 shell, if installed.
  if (std::system("command -v sqlite3 >/dev/null 2>&1") != 0) {
    CAF_MESSAGE("sqlite3 shell not installed: skipped");
    return;
  }
  auto rec = enqueue(make_job("m"));
  // Both stores open before the shell starts: an open may write, and one
  // that met the shell's lock would wait it out (seen under ASan, where
  // opening is slower than starting the shell).
  auto impatient_opts = options();
  impatient_opts.busy_timeout_ms = 2;
  impatient_opts.busy_retry_budget_ms = 40;
  auto impatient = value_of(job_store::open(impatient_opts), "open");
  auto patient_opts = options();
  patient_opts.busy_retry_budget_ms = 5000;
  auto patient = value_of(job_store::open(patient_opts), "open");
  auto script = dir.str("hold.sql");
  auto held = dir.str("held");
  {
    // The shell says when it holds the lock: starting it takes longer
    // than the poll below may wait under a sanitizer.
    std::ofstream out{script};
    out << "BEGIN IMMEDIATE;\n"
           "UPDATE jobs SET priority = priority;\n"
           ".shell touch '"
        << held
        << "'\n"
           ".shell sleep 0.6\n"
           "ROLLBACK;\n";
  }
  auto cmd = "sqlite3 -batch -bail '" + path + "' < '" + script + "'";
  std::atomic<int> holder_status{-2}; // -2: still running
  std::thread holder{[cmd, &holder_status] { holder_status = std::system(cmd.c_str()); }};
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!std::filesystem::exists(held) && holder_status.load() == -2
         && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  // Poll until the busy answer (renew of a missing job writes nothing but
  // still needs the lock).
  caf::error busy;
  double busy_ms = 0;
  for (int i = 0; i < 3000 && !busy; ++i) {
    auto start = std::chrono::steady_clock::now();
    auto res = impatient->renew(rec.id + 100, 1, lease_ms, t0);
    if (!res) {
      busy = res.error();
      busy_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now()
                                                          - start)
                    .count();
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  if (!busy) {
    holder.join();
    CAF_FAIL("the sqlite3 shell never held the write lock; std::system returned "
             << holder_status.load());
  }
  CAF_CHECK_EQUAL(code_of(busy), errc::storage_error);
  CAF_CHECK_NOT_EQUAL(message_of(busy).find("database busy"), std::string::npos);
  CAF_CHECK_GREATER_OR_EQUAL(busy_ms, 40.0);
  // Reads go on while the lock is held (WAL).
  auto read = value_of(impatient->get(rec.id), "get");
  CAF_REQUIRE(read);
  CAF_CHECK_EQUAL(read->state, job_state::queued);
  // A writer with budget left waits for the lock and then succeeds.
  auto start = std::chrono::steady_clock::now();
  auto second = patient->enqueue(make_job("m"), no_limit, t0);
  auto waited = std::chrono::steady_clock::now() - start;
  CAF_REQUIRE(second);
  CAF_CHECK_EQUAL(second->position, 1);
  CAF_CHECK_GREATER(waited, std::chrono::milliseconds(50));
  holder.join();
  CAF_CHECK_EQUAL(count(job_state::queued), 2);
}

CAF_TEST(two connections claim every job exactly once) {
  constexpr int job_count = 2000;
  for (int i = 0; i < job_count; ++i)
    enqueue(make_job("m", i % 4));
  store.reset();
  struct outcome {
    std::vector<int64_t> claimed;
    int64_t completed = 0;
    std::string error;
    /// Events taken after the run: "running" and "succeeded" counts, and
    /// whether their seqs only grew.
    int64_t running_events = 0;
    int64_t succeeded_events = 0;
    bool seq_ordered = true;
  };
  outcome results[2];
  std::atomic<bool> go{false};
  auto work = [&](int index) {
    auto& out = results[index];
    auto opened = job_store::open(options(index == 0));
    if (!opened) {
      out.error = message_of(opened.error());
      return;
    }
    auto& own = **opened;
    auto worker = "w" + std::to_string(index);
    while (!go.load())
      std::this_thread::yield();
    auto take = [&] {
      int64_t last = 0;
      for (auto& ev : own.take_events()) {
        out.seq_ordered = out.seq_ordered && ev.seq > last;
        last = ev.seq;
        out.running_events += ev.data_json.find("\"running\"") != std::string::npos;
        out.succeeded_events += ev.data_json.find("\"succeeded\"") != std::string::npos;
      }
    };
    // Bounded: every round claims at least one job or stops.
    for (int round = 0; round <= job_count; ++round) {
      auto batch = own.claim(worker, {"m"}, 8, lease_ms, t0 + 1);
      if (!batch) {
        out.error = message_of(batch.error());
        return;
      }
      if (batch->empty()) {
        take();
        return;
      }
      for (auto& job : *batch) {
        out.claimed.push_back(job.id);
        auto ok = own.complete(job.id, job.lease_seq, "{}", t0 + 2);
        if (!ok) {
          out.error = message_of(ok.error());
          return;
        }
        out.completed += *ok ? 1 : 0;
      }
    }
  };
  std::thread first{work, 0};
  std::thread second{work, 1};
  auto start = std::chrono::steady_clock::now();
  go = true;
  first.join();
  second.join();
  auto secs
      = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CAF_CHECK_EQUAL(results[0].error, "");
  CAF_CHECK_EQUAL(results[1].error, "");
  CAF_MESSAGE("claim+complete: " << static_cast<int64_t>(job_count / secs)
                                 << " jobs/s; shares " << results[0].claimed.size()
                                 << " / " << results[1].claimed.size());
  std::vector<int64_t> all = results[0].claimed;
  all.insert(all.end(), results[1].claimed.begin(), results[1].claimed.end());
  std::set<int64_t> unique(all.begin(), all.end());
  CAF_CHECK_EQUAL(all.size(), static_cast<std::size_t>(job_count));
  CAF_CHECK_EQUAL(unique.size(), static_cast<std::size_t>(job_count));
  CAF_CHECK_EQUAL(results[0].completed + results[1].completed, job_count);
  // Each connection took exactly the events of its own commits.
  for (auto& out : results) {
    CAF_CHECK_EQUAL(out.running_events, static_cast<int64_t>(out.claimed.size()));
    CAF_CHECK_EQUAL(out.succeeded_events, out.completed);
    CAF_CHECK(out.seq_ordered);
  }
  store = open(true);
  auto counts = value_of(store->count_by_state(), "count_by_state");
  CAF_CHECK_EQUAL(counts.size(), 1u);
  CAF_CHECK_EQUAL(counts[job_state::succeeded], job_count);
  auto last = get(job_count);
  CAF_CHECK_EQUAL(last.attempts, 1);
  CAF_CHECK_EQUAL(last.lease_seq, 1);
}

CAF_TEST(the counts follow every transition) {
  // A refused enqueue reports the stored count: "queue holds N of 0 jobs".
  auto stored = [&] {
    auto refused = store->enqueue(make_job("m"), 0, t0);
    if (refused)
      CAF_FAIL("enqueue with max_queued 0 succeeded");
    return message_of(refused.error());
  };
  // The queued count behind the capacity check, and every count against
  // the rows themselves.
  auto expect = [&](int64_t n) {
    CAF_CHECK_EQUAL(count(job_state::queued), n);
    CAF_CHECK_EQUAL(stored(), "queue holds " + std::to_string(n) + " of 0 jobs");
    CAF_CHECK_EQUAL(counts(), counted_rows());
  };
  for (int i = 0; i < 6; ++i)
    enqueue(make_job(i < 5 ? "m" : "n", 0, 2));
  expect(6);
  auto run = claim({"m"}, 3, t0, "w1"); // 1, 2, 3
  expect(3);
  CAF_CHECK(value_of(store->fail(1, 1, job_error{"oom", "x", true}, t0), "fail"));
  expect(4);
  CAF_REQUIRE(value_of(store->cancel(4, t0), "cancel"));
  expect(3);
  CAF_CHECK(value_of(store->complete(2, 1, "{}", t0), "complete"));
  expect(3);
  CAF_CHECK_EQUAL(value_of(store->rescue_expired(t0 + lease_ms + 1), "rescue"), 1); // 3
  expect(4);
  claim({"n"}, 1, t0, "w2"); // 6
  expect(3);
  CAF_CHECK_EQUAL(value_of(store->requeue_worker("w2", t0), "requeue"), 1);
  expect(4);
  auto last = claim({"m", "n"}, 10, t0 + 60'000); // 1, 3, 5, 6, each on its last try
  CAF_REQUIRE_EQUAL(ids_of(last), (std::vector<int64_t>{1, 3, 5, 6}));
  expect(0);
  CAF_CHECK_EQUAL(counts(), "running=4 succeeded=1 cancelled=1");
  // Every final state: succeeded and cancelled (a cancel requested) from one
  // batch, failed, dead.
  CAF_REQUIRE(value_of(store->cancel(3, t0), "cancel"));
  CAF_CHECK_EQUAL(counts(), "running=4 succeeded=1 cancelled=1");
  auto done = value_of(
      store->complete_batch({{1, last[0].lease_seq, "{}"}, {3, last[1].lease_seq, "{}"}},
                            t0 + 60'001),
      "complete_batch");
  CAF_CHECK_EQUAL(done, (std::vector<bool>{true, true}));
  CAF_CHECK_EQUAL(fail_to(5, last[2].lease_seq, job_error{"bad", "x", false}, t0),
                  job_state::failed);
  CAF_CHECK_EQUAL(fail_to(6, last[3].lease_seq, job_error{"oom", "x", true}, t0),
                  job_state::dead);
  expect(0);
  CAF_CHECK_EQUAL(counts(), "succeeded=2 failed=1 dead=1 cancelled=2");
  // Hand edits keep them too (a deleted job).
  if (have_sqlite3_shell()) {
    CAF_CHECK_EQUAL(sqlite3_shell(path,
                                  "delete from job_events where job_id = 2;\n"
                                  "delete from jobs where id = 2;\n",
                                  true),
                    "");
    CAF_CHECK_EQUAL(counts(), "succeeded=1 failed=1 dead=1 cancelled=2");
    CAF_CHECK_EQUAL(counts(), counted_rows());
  }
}

CAF_TEST(a claim over several models takes the best jobs of all of them) {
  auto a = enqueue(make_job("m1", 1));
  auto b = enqueue(make_job("m2", 5));
  auto c = enqueue(make_job("m1", 1));
  auto d = enqueue(make_job("m2", 0));
  auto e = enqueue(make_job("m3", 9));
  CAF_CHECK_EQUAL(ids_of(claim({"m1", "m2", "m1"}, 3)),
                  (std::vector<int64_t>{b.id, a.id, c.id}));
  CAF_CHECK_EQUAL(ids_of(claim({"m2", "m3"}, 1)), (std::vector<int64_t>{e.id}));
  CAF_CHECK_EQUAL(ids_of(claim({"m1", "m2", "m3"}, 5)), (std::vector<int64_t>{d.id}));
}

CAF_TEST(a version 1 file migrates to the current version with its rows intact) {
  if (!have_sqlite3_shell()) {
    CAF_MESSAGE("sqlite3 shell not installed: skipped");
    return;
  }
  store.reset();
  std::filesystem::remove(path);
  std::filesystem::remove(path + "-wal");
  std::filesystem::remove(path + "-shm");
  // Migration 1 exactly as shipped, plus three rows in three states.
  auto v1 = std::string{"PRAGMA journal_mode = WAL;\nBEGIN;\n"} + migration_1 + R"sql(
PRAGMA user_version = 1;
INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '1');
INSERT INTO jobs (model, state, priority, max_attempts, input, run_at, created_at)
  VALUES ('m', 'queued', 2, 3, '{"a":1}', 1700000000000, 1700000000000);
INSERT INTO jobs (model, state, attempts, max_attempts, input, worker, lease_seq,
                  lease_until, run_at, created_at, started_at)
  VALUES ('m', 'running', 1, 3, '{"b":2}', 'w1', 1, 1700000030000, 1700000000000,
          1700000000000, 1700000000001);
INSERT INTO jobs (model, state, attempts, max_attempts, input, output, worker,
                  lease_seq, run_at, created_at, started_at, finished_at)
  VALUES ('n', 'succeeded', 1, 3, '{"c":3}', '{"y":4}', 'w1', 1, 1700000000000,
          1700000000000, 1700000000001, 1700000000002);
COMMIT;
)sql";
  auto out = sqlite3_shell(path, v1, true);
  CAF_REQUIRE_EQUAL(out, "wal\n");
  CAF_REQUIRE_EQUAL(header_user_version(slurp(path)), 1);
  store = open(true);
  // The per-state counts start from the old rows.
  CAF_CHECK_EQUAL(counts(), "queued=1 running=1 succeeded=1");
  auto queued = get(1);
  CAF_CHECK_EQUAL(queued.state, job_state::queued);
  CAF_CHECK_EQUAL(queued.priority, 2);
  CAF_CHECK_EQUAL(queued.input_json, R"({"a":1})");
  CAF_CHECK_EQUAL(queued.position, 0);
  CAF_CHECK(!queued.cancel_requested);
  CAF_CHECK_EQUAL(queued.idempotency_key, "");
  CAF_CHECK_EQUAL(queued.progress, -1.0);
  CAF_CHECK_EQUAL(queued.run_at_ms, t0);
  auto running = get(2);
  CAF_CHECK_EQUAL(running.state, job_state::running);
  CAF_CHECK_EQUAL(running.worker, "w1");
  CAF_CHECK_EQUAL(running.lease_seq, 1);
  auto done = get(3);
  CAF_CHECK_EQUAL(done.state, job_state::succeeded);
  CAF_CHECK_EQUAL(done.output_json, R"({"y":4})");
  CAF_CHECK_EQUAL(done.finished_at_ms, t0 + 2);
  // Old jobs have no events; what happens to them now writes some.
  CAF_CHECK(events_of(1).empty());
  CAF_CHECK(value_of(store->complete(2, 1, "{}", t0 + 5), "complete"));
  CAF_CHECK_EQUAL(describe(events_of(2)), std::vector<std::string>{describe_one(
                                              2, "status", status_data("succeeded", 1))});
  // The queued count behind the capacity check starts from the old rows.
  auto next = value_of(store->enqueue(make_job("m"), 2, t0), "enqueue");
  CAF_CHECK_EQUAL(next.id, 4);
  CAF_CHECK_EQUAL(next.position, 1);
  CAF_CHECK_EQUAL(message_of(store->enqueue(make_job("m"), 2, t0).error()),
                  "queue holds 2 of 2 jobs");
  store.reset();
  CAF_CHECK_EQUAL(header_user_version(slurp(path)), 4);
  CAF_CHECK_EQUAL(sqlite3_shell(path, "select value from meta where key = "
                                      "'schema_version';\npragma integrity_check;\n"
                                      "select count(*) from jobs_readable "
                                      "where cancel_requested = 0;\n"),
                  "4\nok\n4\n");
  // Reopening is idempotent.
  store = open(false);
  CAF_CHECK_EQUAL(count(job_state::queued), 2);
  CAF_CHECK_EQUAL(count(job_state::succeeded), 2);
}

CAF_TEST(every state change writes one status event in the same transaction) {
  auto events = events_during([&] {
    auto rec = enqueue(make_job("m", 0, 3), t0);
    auto run = claim({"m"}, 1, t0 + 1).at(0);
    job_error err{"oom", "said \"no\"\n\\ \x01 caf\xc3\xa9 bad\xff", true};
    CAF_CHECK_EQUAL(fail_to(rec.id, run.lease_seq, err, t0 + 2), job_state::queued);
    auto again = claim({"m"}, 1, t0 + 60'000).at(0);
    CAF_CHECK(value_of(store->complete(rec.id, again.lease_seq, "{}", t0 + 60'001), "c"));
  });
  auto escaped
      = std::string{R"(said \"no\"\n\\ \u0001 caf)"} + "\xc3\xa9" + R"( bad\ufffd)";
  std::vector<std::string> expected{
      describe_one(1, "status", status_data("queued", 0)),
      describe_one(1, "status", status_data("running", 1)),
      describe_one(1, "status",
                   status_data("queued", 1, error_data("oom", escaped, true))),
      describe_one(1, "status", status_data("running", 2)),
      describe_one(1, "status", status_data("succeeded", 2)),
  };
  CAF_CHECK_EQUAL(describe(events), expected);
  CAF_REQUIRE_EQUAL(events.size(), 5u);
  std::vector<int64_t> times;
  for (std::size_t i = 0; i < events.size(); ++i) {
    if (i > 0)
      CAF_CHECK_GREATER(events[i].seq, events[i - 1].seq);
    times.push_back(events[i].time_ms);
  }
  CAF_CHECK_EQUAL(times,
                  (std::vector<int64_t>{t0, t0 + 1, t0 + 2, t0 + 60'000, t0 + 60'001}));
  // The stored log is the same, seq for seq.
  auto stored = events_of(1);
  CAF_REQUIRE_EQUAL(stored.size(), events.size());
  for (std::size_t i = 0; i < stored.size(); ++i) {
    CAF_CHECK_EQUAL(stored[i].seq, events[i].seq);
    CAF_CHECK_EQUAL(stored[i].data_json, events[i].data_json);
    CAF_CHECK_EQUAL(stored[i].time_ms, events[i].time_ms);
  }
  // The stored JSON is valid (SQLite's own parser says so).
  if (have_sqlite3_shell())
    CAF_CHECK_EQUAL(sqlite3_shell(path, "select count(*), sum(json_valid(data)) "
                                        "from job_events;\n"),
                    "5|5\n");
  CAF_CHECK(store->take_events().empty());
}

CAF_TEST(final failures and claims of several jobs write their events) {
  auto a = enqueue(make_job("m", 0, 1));
  auto b = enqueue(make_job("m", 0, 5));
  auto c = enqueue(make_job("m", 3, 5));
  auto events = events_during([&] {
    auto batch = claim({"m"}, 3, t0 + 1);
    CAF_CHECK_EQUAL(ids_of(batch), (std::vector<int64_t>{c.id, a.id, b.id}));
    job_error lost{"oom", "x", true};
    job_error bad{"invalid_input", "y", false};
    CAF_CHECK_EQUAL(fail_to(a.id, 1, lost, t0 + 2), job_state::dead);
    CAF_CHECK_EQUAL(fail_to(b.id, 1, bad, t0 + 3), job_state::failed);
    // Lost leases write nothing.
    CAF_CHECK(!value_of(store->complete(b.id, 1, "{}", t0 + 4), "c"));
    CAF_CHECK(!value_of(store->fail(a.id, 1, lost, t0 + 4), "f"));
  });
  CAF_CHECK_EQUAL(
      describe(events),
      (std::vector<std::string>{
          describe_one(c.id, "status", status_data("running", 1)),
          describe_one(a.id, "status", status_data("running", 1)),
          describe_one(b.id, "status", status_data("running", 1)),
          describe_one(a.id, "status",
                       status_data("dead", 1, error_data("oom", "x", true))),
          describe_one(b.id, "status",
                       status_data("failed", 1, error_data("invalid_input", "y", false))),
      }));
}

CAF_TEST(take_events holds exactly what was committed) {
  // Refused enqueues, lost leases and reads write no events.
  auto events = events_during([&] {
    CAF_CHECK(!store->enqueue(make_job("m"), 0, t0));
    CAF_CHECK(!store->enqueue(make_job("", 0), no_limit, t0));
    CAF_CHECK(!value_of(store->complete(99, 1, "{}", t0), "c"));
    CAF_CHECK(!value_of(store->renew(99, 1, lease_ms, t0), "r").held);
    CAF_CHECK(value_of(store->list(job_filter{}), "list").jobs.empty());
  });
  CAF_CHECK(events.empty());
  // Two connections: each sees only its own events.
  auto other = open(false);
  auto mine = enqueue(make_job("m"));
  auto theirs = value_of(other->enqueue(make_job("m"), no_limit, t0), "enqueue");
  auto own = store->take_events();
  CAF_REQUIRE_EQUAL(own.size(), 1u);
  CAF_CHECK_EQUAL(own[0].job_id, mine.id);
  auto their_events = other->take_events();
  CAF_REQUIRE_EQUAL(their_events.size(), 1u);
  CAF_CHECK_EQUAL(their_events[0].job_id, theirs.id);
  CAF_CHECK_GREATER(their_events[0].seq, own[0].seq);
  CAF_CHECK(other->take_events().empty());
}

CAF_TEST(busy commits are retried without duplicate rows or events) {
  int busy_left = 3;
  int commits = 0;
  auto opts = options();
  opts.fault_hook = [&](const std::string& op, const std::string& step) {
    if (op != "enqueue" || step != "commit")
      return 0;
    ++commits;
    return busy_left-- > 0 ? sqlite_busy : 0;
  };
  auto faulty = value_of(job_store::open(opts), "open");
  auto rec = value_of(faulty->enqueue(make_job("m"), no_limit, t0), "enqueue");
  CAF_CHECK_EQUAL(commits, 4);
  CAF_CHECK_EQUAL(rec.id, 1);
  CAF_CHECK_EQUAL(count(job_state::queued), 1);
  CAF_CHECK(!value_of(store->get(2), "get"));
  auto events = faulty->take_events();
  CAF_CHECK_EQUAL(describe(events), std::vector<std::string>{describe_one(
                                        1, "status", status_data("queued", 0))});
  auto stored = events_of(1);
  CAF_REQUIRE_EQUAL(stored.size(), 1u);
  CAF_CHECK_EQUAL(stored[0].seq, events.at(0).seq);
  // Busy that never ends: the retry budget runs out, nothing is written.
  auto stuck_opts = options();
  stuck_opts.busy_retry_budget_ms = 30;
  stuck_opts.fault_hook = [](const std::string& op, const std::string& step) {
    return op == "enqueue" && step == "begin" ? sqlite_busy : 0;
  };
  auto stuck = value_of(job_store::open(stuck_opts), "open");
  auto start = std::chrono::steady_clock::now();
  auto refused = stuck->enqueue(make_job("m"), no_limit, t0);
  CAF_REQUIRE(!refused);
  CAF_CHECK_GREATER_OR_EQUAL(std::chrono::steady_clock::now() - start,
                             std::chrono::milliseconds(30));
  CAF_CHECK_EQUAL(code_of(refused.error()), errc::storage_error);
  CAF_CHECK_NOT_EQUAL(message_of(refused.error()).find("database busy"),
                      std::string::npos);
  CAF_CHECK(stuck->take_events().empty());
  CAF_CHECK_EQUAL(count(job_state::queued), 1);
}

CAF_TEST(an io error on commit rolls back completely) {
  auto rec = enqueue(make_job("m"));
  int failing = 0; // commits of `fail_op` still to fail
  std::string fail_op;
  auto opts = options();
  opts.fault_hook = [&](const std::string& op, const std::string& step) {
    if (op == fail_op && step == "commit" && failing > 0) {
      --failing;
      return sqlite_ioerr;
    }
    return 0;
  };
  auto faulty = value_of(job_store::open(opts), "open");
  auto run = value_of(faulty->claim("w1", {"m"}, 1, lease_ms, t0 + 1), "claim").at(0);
  faulty->take_events();
  // complete: storage_error, the job still runs with the same token.
  fail_op = "complete";
  failing = 1;
  auto broken = faulty->complete(rec.id, run.lease_seq, R"({"y":1})", t0 + 2);
  CAF_REQUIRE(!broken);
  CAF_CHECK_EQUAL(code_of(broken.error()), errc::storage_error);
  CAF_CHECK_NOT_EQUAL(message_of(broken.error()).find("complete: "), std::string::npos);
  CAF_CHECK_NOT_EQUAL(message_of(broken.error()).find("injected"), std::string::npos);
  CAF_CHECK(faulty->take_events().empty());
  auto same = get(rec.id);
  CAF_CHECK_EQUAL(same.state, job_state::running);
  CAF_CHECK_EQUAL(same.lease_seq, run.lease_seq);
  CAF_CHECK_EQUAL(same.output_json, "");
  CAF_CHECK_EQUAL(events_of(rec.id).size(), 2u); // queued, running
  // The retry without the fault succeeds.
  CAF_CHECK(value_of(faulty->complete(rec.id, run.lease_seq, R"({"y":1})", t0 + 3), "c"));
  CAF_CHECK_EQUAL(get(rec.id).state, job_state::succeeded);
  CAF_CHECK_EQUAL(describe(faulty->take_events()),
                  std::vector<std::string>{
                      describe_one(rec.id, "status", status_data("succeeded", 1))});
  // claim: nothing is left running.
  for (int i = 0; i < 3; ++i)
    enqueue(make_job("m"));
  fail_op = "claim";
  failing = 1;
  auto no_claim = faulty->claim("w1", {"m"}, 10, lease_ms, t0 + 4);
  CAF_REQUIRE(!no_claim);
  CAF_CHECK_EQUAL(code_of(no_claim.error()), errc::storage_error);
  CAF_CHECK_EQUAL(count(job_state::running), 0);
  CAF_CHECK_EQUAL(count(job_state::queued), 3);
  CAF_CHECK(faulty->take_events().empty());
  // The other writes also roll back.
  fail_op = "enqueue";
  failing = 1;
  CAF_CHECK(!faulty->enqueue(make_job("m"), no_limit, t0));
  CAF_CHECK_EQUAL(count(job_state::queued), 3);
  fail_op = "cancel";
  failing = 1;
  CAF_CHECK(!faulty->cancel(2, t0));
  CAF_CHECK_EQUAL(get(2).state, job_state::queued);
  CAF_CHECK(faulty->take_events().empty());
  CAF_CHECK_EQUAL(value_of(faulty->claim("w1", {"m"}, 10, lease_ms, t0 + 5), "c").size(),
                  3u);
  CAF_CHECK_EQUAL(faulty->take_events().size(), 3u);
  if (have_sqlite3_shell())
    CAF_CHECK_EQUAL(sqlite3_shell(path, "pragma integrity_check;\n"
                                        "select count(*) from job_events;\n"),
                    "ok\n9\n");
}

CAF_TEST(an idempotency key returns the same job for the same body) {
  auto job = make_job("m");
  job.idempotency_key = "order-17";
  auto first = value_of(store->enqueue(job, no_limit, t0), "enqueue");
  CAF_CHECK(first.created);
  CAF_CHECK_EQUAL(first.idempotency_key, "order-17");
  auto events = events_during([&] {
    auto again = value_of(store->enqueue(job, no_limit, t0 + 5), "enqueue");
    CAF_CHECK(!again.created);
    CAF_CHECK_EQUAL(again.id, first.id);
    CAF_CHECK_EQUAL(again.state, job_state::queued);
    CAF_CHECK_EQUAL(again.position, 0);
    CAF_CHECK_EQUAL(again.created_at_ms, t0);
  });
  CAF_CHECK(events.empty());
  CAF_CHECK_EQUAL(count(job_state::queued), 1);
  // Another input or model under the same key is a conflict.
  auto other_input = job;
  other_input.input_json = R"({"x":2})";
  auto conflict = store->enqueue(other_input, no_limit, t0);
  CAF_REQUIRE(!conflict);
  CAF_CHECK_EQUAL(code_of(conflict.error()), errc::conflict);
  CAF_CHECK_EQUAL(message_of(conflict.error()),
                  "idempotency_key 'order-17' belongs to job j_1 with another body");
  auto other_model = job;
  other_model.model = "n";
  CAF_CHECK_EQUAL(code_of(store->enqueue(other_model, no_limit, t0).error()),
                  errc::conflict);
  // Priority and attempts are not part of the body.
  auto other_priority = job;
  other_priority.priority = 9;
  CAF_CHECK_EQUAL(value_of(store->enqueue(other_priority, no_limit, t0), "e").id, 1);
  // Keys stay after the job ends; jobs without a key never collide.
  auto run = claim({"m"}, 1).at(0);
  CAF_CHECK(value_of(store->complete(run.id, run.lease_seq, "{}", t0 + 1), "c"));
  auto finished = value_of(store->enqueue(job, no_limit, t0 + 2), "enqueue");
  CAF_CHECK(!finished.created);
  CAF_CHECK_EQUAL(finished.state, job_state::succeeded);
  CAF_CHECK_EQUAL(finished.position, -1);
  CAF_CHECK_EQUAL(enqueue(make_job("m")).id, 2);
  CAF_CHECK_EQUAL(enqueue(make_job("m")).id, 3);
  CAF_CHECK_EQUAL(get(2).idempotency_key, "");
}

CAF_TEST(the capacity check applies only to new jobs) {
  auto keyed = make_job("m");
  keyed.idempotency_key = "k";
  CAF_CHECK(store->enqueue(keyed, 2, t0));
  CAF_CHECK(store->enqueue(make_job("m"), 2, t0));
  // Full: a repeat of the keyed request still gets its job.
  auto repeat = value_of(store->enqueue(keyed, 2, t0), "enqueue");
  CAF_CHECK(!repeat.created);
  CAF_CHECK_EQUAL(repeat.id, 1);
  CAF_CHECK_EQUAL(repeat.position, 0);
  auto fresh = keyed;
  fresh.idempotency_key = "k2";
  CAF_CHECK_EQUAL(code_of(store->enqueue(fresh, 2, t0).error()), errc::queue_full);
  // The refused key was not stored.
  CAF_CHECK(value_of(store->enqueue(fresh, 3, t0), "enqueue").created);
}

CAF_TEST(delayed jobs wait in queued until run_at) {
  auto job = make_job("m");
  job.run_at_ms = t0 + 5'000;
  auto later = enqueue(job, t0);
  CAF_CHECK_EQUAL(later.run_at_ms, t0 + 5'000);
  CAF_CHECK_EQUAL(later.created_at_ms, t0);
  auto now_job = enqueue(make_job("m"), t0 + 1);
  CAF_CHECK_EQUAL(now_job.run_at_ms, t0 + 1);
  CAF_CHECK_EQUAL(ids_of(claim({"m"}, 10, t0 + 4'999)),
                  (std::vector<int64_t>{now_job.id}));
  CAF_CHECK_EQUAL(get(later.id).state, job_state::queued);
  CAF_CHECK_EQUAL(ids_of(claim({"m"}, 10, t0 + 5'000)), (std::vector<int64_t>{later.id}));
  job.run_at_ms = -1;
  CAF_CHECK_EQUAL(code_of(store->enqueue(job, no_limit, t0).error()),
                  errc::invalid_input);
}

CAF_TEST(cancel of queued running final and unknown jobs) {
  auto queued = enqueue(make_job("m"));
  auto running = enqueue(make_job("m"));
  auto done = enqueue(make_job("m"));
  auto batch = claim({"m"}, 2); // queued.id and running.id
  CAF_REQUIRE_EQUAL(batch.size(), 2u);
  CAF_CHECK(value_of(store->complete(queued.id, 1, "{}", t0), "c"));
  // (queued.id is done now; `done` is the queued one.)
  auto events = events_during([&] {
    auto c = value_of(store->cancel(done.id, t0 + 10), "cancel");
    CAF_REQUIRE(c);
    CAF_CHECK_EQUAL(c->state, job_state::cancelled);
    CAF_CHECK_EQUAL(c->finished_at_ms, t0 + 10);
    CAF_CHECK_EQUAL(c->position, -1);
    CAF_CHECK(!c->cancel_requested);
    auto r = value_of(store->cancel(running.id, t0 + 11), "cancel");
    CAF_REQUIRE(r);
    CAF_CHECK_EQUAL(r->state, job_state::running);
    CAF_CHECK(r->cancel_requested);
    CAF_CHECK_EQUAL(r->finished_at_ms, 0);
    // Asking again changes nothing and writes nothing.
    auto again = value_of(store->cancel(running.id, t0 + 12), "cancel");
    CAF_REQUIRE(again);
    CAF_CHECK(again->cancel_requested);
  });
  CAF_CHECK_EQUAL(
      describe(events),
      (std::vector<std::string>{
          describe_one(done.id, "status", status_data("cancelled", 0)),
          describe_one(running.id, "status",
                       status_data("running", 1, ",\"cancel_requested\":true")),
      }));
  CAF_CHECK(claim({"m"}, 10).empty());
  for (auto id : {queued.id, done.id}) {
    auto final_state = store->cancel(id, t0 + 20);
    CAF_REQUIRE(!final_state);
    CAF_CHECK_EQUAL(code_of(final_state.error()), errc::conflict);
  }
  CAF_CHECK_EQUAL(message_of(store->cancel(queued.id, t0).error()),
                  "job j_" + std::to_string(queued.id) + " is already succeeded");
  CAF_CHECK_EQUAL(message_of(store->cancel(done.id, t0).error()),
                  "job j_" + std::to_string(done.id) + " is already cancelled");
  CAF_CHECK(!value_of(store->cancel(999, t0), "cancel"));
  CAF_CHECK(store->take_events().empty());
}

CAF_TEST(a cancel of a job waiting out its back off clears its old error) {
  auto rec = enqueue(make_job("m"));
  claim({"m"}, 1);
  job_error err{"oom", "x", true};
  CAF_CHECK_EQUAL(fail_to(rec.id, 1, err, t0 + 1), job_state::queued);
  auto c = value_of(store->cancel(rec.id, t0 + 2), "cancel");
  CAF_REQUIRE(c);
  CAF_CHECK_EQUAL(c->state, job_state::cancelled);
  CAF_CHECK(!c->has_error);
  CAF_CHECK_EQUAL(c->attempts, 1);
  CAF_CHECK_EQUAL(last_event_data(rec.id), status_data("cancelled", 1));
}

CAF_TEST(the worker learns of a cancel through renew and ends the job) {
  auto a = enqueue(make_job("m"));
  auto b = enqueue(make_job("m"));
  auto c = enqueue(make_job("m"));
  auto d = enqueue(make_job("m"));
  claim({"m"}, 4);
  auto before = value_of(store->renew(a.id, 1, lease_ms, t0 + 1), "renew");
  CAF_CHECK(before.held);
  CAF_CHECK(!before.cancel_requested);
  for (auto id : {a.id, b.id, c.id, d.id})
    CAF_REQUIRE(value_of(store->cancel(id, t0 + 2), "cancel"));
  auto after = value_of(store->renew(a.id, 1, lease_ms, t0 + 3), "renew");
  CAF_CHECK(after.held);
  CAF_CHECK(after.cancel_requested);
  CAF_CHECK_EQUAL(get(a.id).lease_until_ms, t0 + 3 + lease_ms);
  auto stale = value_of(store->renew(a.id, 2, lease_ms, t0 + 3), "renew");
  CAF_CHECK(!stale.held);
  CAF_CHECK(!stale.cancel_requested);
  auto events = events_during([&] {
    // finish_cancelled: a stale token changes nothing.
    CAF_CHECK(!value_of(store->finish_cancelled(a.id, 2, t0 + 4), "finish"));
    CAF_CHECK_EQUAL(get(a.id).state, job_state::running);
    CAF_CHECK(value_of(store->finish_cancelled(a.id, 1, t0 + 5), "finish"));
    CAF_CHECK(!value_of(store->finish_cancelled(a.id, 1, t0 + 6), "finish"));
    // complete after the request: cancelled, output dropped.
    CAF_CHECK(value_of(store->complete(b.id, 1, R"({"y":1})", t0 + 7), "complete"));
    // fail after the request: cancelled without an error, no retry.
    job_error err{"oom", "x", true};
    CAF_CHECK_EQUAL(fail_to(c.id, 1, err, t0 + 8), job_state::cancelled);
  });
  CAF_CHECK_EQUAL(describe(events),
                  (std::vector<std::string>{
                      describe_one(a.id, "status", status_data("cancelled", 1)),
                      describe_one(b.id, "status", status_data("cancelled", 1)),
                      describe_one(c.id, "status", status_data("cancelled", 1)),
                  }));
  auto ra = get(a.id);
  CAF_CHECK_EQUAL(ra.state, job_state::cancelled);
  CAF_CHECK_EQUAL(ra.finished_at_ms, t0 + 5);
  CAF_CHECK_EQUAL(ra.lease_until_ms, 0);
  auto rb = get(b.id);
  CAF_CHECK_EQUAL(rb.state, job_state::cancelled);
  CAF_CHECK_EQUAL(rb.output_json, "");
  CAF_CHECK_EQUAL(rb.finished_at_ms, t0 + 7);
  auto rc = get(c.id);
  CAF_CHECK_EQUAL(rc.state, job_state::cancelled);
  CAF_CHECK(!rc.has_error);
  CAF_CHECK(claim({"m"}, 10, t0 + 3'600'000).empty());
  // finish_cancelled also ends a job whose worker gave up on its own.
  auto e = enqueue(make_job("m"));
  auto run = claim({"m"}, 1).at(0);
  CAF_CHECK(value_of(store->finish_cancelled(e.id, run.lease_seq, t0 + 9), "finish"));
  CAF_CHECK_EQUAL(get(e.id).state, job_state::cancelled);
  // A lost worker's cancel-requested job ends cancelled instead of running
  // again.
  CAF_CHECK_EQUAL(value_of(store->rescue_expired(t0 + 10 * lease_ms), "rescue"), 1);
  auto rd = get(d.id);
  CAF_CHECK_EQUAL(rd.state, job_state::cancelled);
  CAF_CHECK(!rd.has_error);
  CAF_CHECK_EQUAL(rd.finished_at_ms, t0 + 10 * lease_ms);
  CAF_CHECK_EQUAL(last_event_data(d.id), status_data("cancelled", 1));
  CAF_CHECK_EQUAL(count(job_state::cancelled), 5);
}

CAF_TEST(progress and data events are fenced and validated) {
  auto rec = enqueue(make_job("m"));
  auto run = claim({"m"}, 1).at(0);
  auto events = events_during([&] {
    CAF_CHECK(
        value_of(store->add_event(rec.id, 1, "progress", R"({"progress":0.25})", t0 + 1),
                 "add_event"));
    CAF_CHECK(value_of(store->add_event(rec.id, 1, "data", R"({"delta":"he"})", t0 + 2),
                       "add_event"));
    CAF_CHECK(
        value_of(store->add_event(rec.id, 1, "progress", R"({"progress":1})", t0 + 3),
                 "add_event"));
    // A stale token writes nothing.
    CAF_CHECK(!value_of(store->add_event(rec.id, 2, "data", R"({"delta":"x"})", t0 + 4),
                        "add_event"));
    CAF_CHECK(
        !value_of(store->add_event(rec.id, 0, "progress", R"({"progress":0.5})", t0 + 4),
                  "add_event"));
  });
  CAF_CHECK_EQUAL(describe(events),
                  (std::vector<std::string>{
                      describe_one(rec.id, "progress", R"({"progress":0.25})"),
                      describe_one(rec.id, "data", R"({"delta":"he"})"),
                      describe_one(rec.id, "progress", R"({"progress":1})"),
                  }));
  CAF_CHECK_EQUAL(get(rec.id).progress, 1.0);
  for (auto [kind, data] : std::vector<std::pair<std::string, std::string>>{
           {"status", R"({"state":"queued"})"},
           {"other", "{}"},
           {"data", "not json"},
           {"data", "[1,2]"},
           {"data", "\"text\""},
           {"progress", "{}"},
           {"progress", R"({"progress":"0.5"})"},
           {"progress", R"({"progress":1.5})"},
           {"progress", R"({"progress":-0.1})"},
           {"progress", R"({"progress":null})"},
           {"data", std::string(1 << 20, ' ') + "{}"},
       }) {
    auto res = store->add_event(rec.id, 1, kind, data, t0 + 5);
    CAF_REQUIRE(!res);
    CAF_CHECK_EQUAL(code_of(res.error()), errc::invalid_input);
  }
  CAF_CHECK(store->take_events().empty());
  CAF_CHECK_EQUAL(get(rec.id).progress, 1.0);
  // A new attempt starts without progress.
  CAF_CHECK(value_of(
      store->fail(rec.id, run.lease_seq, job_error{"oom", "x", true}, t0 + 6), "fail"));
  auto again = claim({"m"}, 1, t0 + 60'000).at(0);
  CAF_CHECK_EQUAL(again.progress, -1.0);
  CAF_CHECK_EQUAL(get(rec.id).progress, -1.0);
}

CAF_TEST(events_after pages through the events of one job) {
  auto a = enqueue(make_job("m"));
  auto b = enqueue(make_job("m"));
  claim({"m"}, 2);
  for (int i = 0; i < 10; ++i) {
    auto data = R"({"delta":")" + std::to_string(i) + "\"}";
    CAF_CHECK(value_of(store->add_event(a.id, 1, "data", data, t0 + i), "add"));
    CAF_CHECK(value_of(store->add_event(b.id, 1, "data", data, t0 + i), "add"));
  }
  auto all = events_of(a.id);
  CAF_REQUIRE_EQUAL(all.size(), 12u); // queued, running, 10 data
  std::vector<job_event> paged;
  int64_t after = 0;
  int pages = 0;
  for (;;) {
    auto page = value_of(store->events_after(a.id, after, 5), "events_after");
    if (page.empty())
      break;
    ++pages;
    CAF_CHECK_LESS_OR_EQUAL(page.size(), 5u);
    after = page.back().seq;
    paged.insert(paged.end(), page.begin(), page.end());
  }
  CAF_CHECK_EQUAL(pages, 3);
  CAF_REQUIRE_EQUAL(paged.size(), all.size());
  for (std::size_t i = 0; i < all.size(); ++i) {
    CAF_CHECK_EQUAL(paged[i].seq, all[i].seq);
    CAF_CHECK_EQUAL(paged[i].job_id, a.id);
    if (i > 0)
      CAF_CHECK_GREATER(all[i].seq, all[i - 1].seq);
  }
  CAF_CHECK_EQUAL(all[11].data_json, R"({"delta":"9"})");
  // Resuming after a seq skips exactly the events up to it.
  auto rest = value_of(store->events_after(a.id, all[9].seq, 100), "events_after");
  CAF_REQUIRE_EQUAL(rest.size(), 2u);
  CAF_CHECK_EQUAL(rest[0].seq, all[10].seq);
  CAF_CHECK(value_of(store->events_after(999, 0, 100), "events_after").empty());
  CAF_CHECK_EQUAL(code_of(store->events_after(a.id, 0, 0).error()), errc::invalid_input);
}

CAF_TEST(list pages newest first with filters) {
  // 250 jobs: ids 1..250, models m0/m1 alternating; some claimed and
  // finished to spread the states.
  for (int i = 0; i < 250; ++i)
    enqueue(make_job(i % 2 == 0 ? "m0" : "m1"));
  auto running = claim({"m0", "m1"}, 60); // ids 1..60
  for (int i = 0; i < 30; ++i)            // ids 1..30 succeed
    CAF_CHECK(value_of(store->complete(running[i].id, 1, "{}", t0 + 1), "c"));
  job_error bad{"invalid_input", "x", false};
  for (int i = 30; i < 40; ++i) // ids 31..40 fail
    CAF_CHECK(value_of(store->fail(running[i].id, 1, bad, t0 + 1), "f"));
  auto page_ids = [](const job_page& page) { return ids_of(page.jobs); };
  auto range = [](int64_t from, int64_t to) { // from down to `to`
    std::vector<int64_t> out;
    for (auto id = from; id >= to; --id)
      out.push_back(id);
    return out;
  };
  job_filter all;
  all.limit = 100;
  auto p1 = value_of(store->list(all), "list");
  CAF_CHECK_EQUAL(page_ids(p1), range(250, 151));
  CAF_CHECK_EQUAL(p1.next_before_id, 151);
  all.before_id = p1.next_before_id;
  auto p2 = value_of(store->list(all), "list");
  CAF_CHECK_EQUAL(page_ids(p2), range(150, 51));
  CAF_CHECK_EQUAL(p2.next_before_id, 51);
  all.before_id = p2.next_before_id;
  auto p3 = value_of(store->list(all), "list");
  CAF_CHECK_EQUAL(page_ids(p3), range(50, 1));
  CAF_CHECK_EQUAL(p3.next_before_id, 0);
  // An exact fit has no next page.
  job_filter fit;
  fit.limit = 50;
  fit.before_id = 51;
  CAF_CHECK_EQUAL(value_of(store->list(fit), "list").next_before_id, 0);
  // Records are complete; queued ones carry their position.
  auto& newest = p1.jobs.front();
  CAF_CHECK_EQUAL(newest.model, "m1");
  CAF_CHECK_EQUAL(newest.state, job_state::queued);
  CAF_CHECK_EQUAL(newest.input_json, R"({"x":1})");
  CAF_CHECK_EQUAL(newest.position, get(250).position);
  CAF_CHECK_EQUAL(newest.position, 94); // m1 has 95 queued jobs (ids 62..250 even)
  for (auto& rec : p2.jobs)
    CAF_CHECK_EQUAL(rec.position, get(rec.id).position);
  CAF_CHECK_EQUAL(p3.jobs.back().state, job_state::succeeded);
  CAF_CHECK_EQUAL(p3.jobs.back().position, -1);
  // States.
  job_filter states;
  states.states = {job_state::failed, job_state::running};
  states.limit = 15;
  auto s1 = value_of(store->list(states), "list");
  CAF_CHECK_EQUAL(page_ids(s1), range(60, 46));
  CAF_CHECK_EQUAL(s1.next_before_id, 46);
  states.before_id = 46;
  auto s2 = value_of(store->list(states), "list");
  CAF_CHECK_EQUAL(page_ids(s2), range(45, 31));
  CAF_CHECK_EQUAL(s2.next_before_id, 0);
  // Model, with and without states.
  job_filter model;
  model.model = "m0";
  model.limit = 1000;
  auto m = value_of(store->list(model), "list");
  CAF_CHECK_EQUAL(m.jobs.size(), 125u);
  CAF_CHECK_EQUAL(m.jobs.front().id, 249);
  CAF_CHECK_EQUAL(m.jobs.back().id, 1);
  CAF_CHECK_EQUAL(m.next_before_id, 0);
  model.states = {job_state::succeeded};
  model.limit = 10;
  auto ms = value_of(store->list(model), "list");
  CAF_CHECK_EQUAL(page_ids(ms),
                  (std::vector<int64_t>{29, 27, 25, 23, 21, 19, 17, 15, 13, 11}));
  CAF_CHECK_EQUAL(ms.next_before_id, 11);
  model.states = {job_state::dead};
  CAF_CHECK(value_of(store->list(model), "list").jobs.empty());
  model.model = "nope";
  model.states.clear();
  CAF_CHECK(value_of(store->list(model), "list").jobs.empty());
  // Bad filters.
  job_filter bad_limit;
  bad_limit.limit = 0;
  CAF_CHECK_EQUAL(code_of(store->list(bad_limit).error()), errc::invalid_input);
  bad_limit.limit = 1001;
  CAF_CHECK_EQUAL(code_of(store->list(bad_limit).error()), errc::invalid_input);
  job_filter bad_cursor;
  bad_cursor.before_id = -1;
  CAF_CHECK_EQUAL(code_of(store->list(bad_cursor).error()), errc::invalid_input);
}

CAF_TEST(requeue_worker puts back the jobs of a lost worker) {
  auto a = enqueue(make_job("m", 0, 3));
  auto b = enqueue(make_job("m", 0, 1));
  auto c = enqueue(make_job("m", 0, 3));
  auto d = enqueue(make_job("m", 0, 3));
  claim({"m"}, 2, t0, "w1"); // a, b
  claim({"m"}, 1, t0, "w2"); // c
  claim({"m"}, 1, t0, "w1"); // d
  CAF_REQUIRE(value_of(store->cancel(d.id, t0 + 1), "cancel"));
  store->take_events();
  CAF_CHECK_EQUAL(value_of(store->requeue_worker("w1", t0 + 100), "requeue"), 3);
  auto ra = get(a.id);
  CAF_CHECK_EQUAL(ra.state, job_state::queued);
  CAF_CHECK_EQUAL(ra.run_at_ms, t0 + 100);
  CAF_CHECK_EQUAL(ra.error.code, "worker_lost");
  CAF_CHECK(ra.error.retryable);
  CAF_CHECK_EQUAL(ra.error.message, "worker w1 is gone");
  CAF_CHECK_EQUAL(ra.lease_until_ms, 0);
  auto rb = get(b.id);
  CAF_CHECK_EQUAL(rb.state, job_state::dead);
  CAF_CHECK_EQUAL(rb.finished_at_ms, t0 + 100);
  CAF_CHECK_EQUAL(rb.error.message, "worker w1 is gone after the last attempt");
  CAF_CHECK_EQUAL(get(c.id).state, job_state::running);
  CAF_CHECK_EQUAL(get(d.id).state, job_state::cancelled);
  auto lost = ",\"error\":{\"code\":\"worker_lost\",\"message\":\"worker w1 is gone";
  CAF_CHECK_EQUAL(
      describe(store->take_events()),
      (std::vector<std::string>{
          describe_one(a.id, "status",
                       status_data("queued", 1,
                                   lost + std::string{"\","} + "\"retryable\":true}")),
          describe_one(b.id, "status",
                       status_data("dead", 1,
                                   lost + std::string{" after the last attempt\","}
                                       + "\"retryable\":true}")),
          describe_one(d.id, "status", status_data("cancelled", 1)),
      }));
  // The stale worker's token no longer counts; the job runs again.
  CAF_CHECK(!value_of(store->complete(a.id, 1, "{}", t0 + 101), "c"));
  auto again = claim({"m"}, 1, t0 + 100, "w3").at(0);
  CAF_CHECK_EQUAL(again.id, a.id);
  CAF_CHECK_EQUAL(again.lease_seq, 2);
  CAF_CHECK_EQUAL(value_of(store->requeue_worker("w1", t0 + 200), "requeue"), 0);
  CAF_CHECK_EQUAL(value_of(store->requeue_worker("nobody", t0 + 200), "requeue"), 0);
}

CAF_TEST(throughput counts successes in the window) {
  for (int i = 0; i < 10; ++i)
    enqueue(make_job(i < 8 ? "m" : "n"));
  auto batch = claim({"m", "n"}, 10, t0);
  // Successes of m at t0+1000 .. t0+7000 (7), one failure, n at t0+5000.
  for (int i = 0; i < 7; ++i)
    CAF_CHECK(value_of(store->complete(batch[i].id, 1, "{}", t0 + 1000 * (i + 1)), "c"));
  CAF_CHECK(
      value_of(store->fail(batch[7].id, 1, job_error{"x", "y", false}, t0 + 2000), "f"));
  CAF_CHECK(value_of(store->complete(batch[8].id, 1, "{}", t0 + 5000), "c"));
  auto rate = [&](const std::string& model, int64_t window, int64_t now) {
    return value_of(store->throughput(model, window, now), "throughput");
  };
  CAF_CHECK_EQUAL(rate("m", 10'000, t0 + 7000), 0.7);
  CAF_CHECK_EQUAL(rate("m", 2'000, t0 + 7000), 1.0); // (5000, 7000]: 2 jobs
  CAF_CHECK_EQUAL(rate("m", 1'000, t0 + 7500), 1.0); // (6500, 7500]: 1 job
  CAF_CHECK_EQUAL(rate("m", 1'000, t0 + 8000), 0.0); // (7000, 8000]: none
  CAF_CHECK_EQUAL(rate("m", 4'000, t0 + 4000), 1.0); // (0, 4000]: 4 jobs
  CAF_CHECK_EQUAL(rate("n", 60'000, t0 + 60'000), 1.0 / 60);
  CAF_CHECK_EQUAL(rate("none", 60'000, t0), 0.0);
  CAF_CHECK_EQUAL(code_of(store->throughput("m", 0, t0).error()), errc::invalid_input);
}

CAF_TEST(queued jobs carry an eta from the recent throughput) {
  // get() and list() use the wall clock; finish 6 jobs "just now".
  auto now = wall_ms();
  for (int i = 0; i < 6; ++i)
    enqueue(make_job("m"), now - 1000);
  auto batch = claim({"m"}, 6, now - 1000);
  for (auto& job : batch)
    CAF_CHECK(value_of(store->complete(job.id, job.lease_seq, "{}", now - 500), "c"));
  // 6 jobs in 60 s = 0.1/s = 10 s per job.
  auto first = enqueue(make_job("m"), now);
  CAF_CHECK_EQUAL(first.position, 0);
  CAF_CHECK_EQUAL(first.eta_ms, 10'000);
  auto second = enqueue(make_job("m"), now);
  CAF_CHECK_EQUAL(second.eta_ms, 20'000);
  CAF_CHECK_EQUAL(get(second.id).eta_ms, 20'000);
  // Not before run_at.
  auto delayed = make_job("m");
  delayed.run_at_ms = now + 100'000;
  auto later = enqueue(delayed, now);
  CAF_CHECK_EQUAL(later.position, 2);
  CAF_CHECK_EQUAL(later.eta_ms, 110'000);
  job_filter queued;
  queued.states = {job_state::queued};
  auto page = value_of(store->list(queued), "list");
  CAF_REQUIRE_EQUAL(page.jobs.size(), 3u);
  CAF_CHECK_EQUAL(page.jobs[2].eta_ms, 10'000);
  CAF_CHECK_EQUAL(page.jobs[1].eta_ms, 20'000);
  CAF_CHECK_GREATER_OR_EQUAL(page.jobs[0].eta_ms, 100'000);
  // Jobs that are not queued, and models without recent successes, have none.
  CAF_CHECK_EQUAL(get(batch[0].id).eta_ms, -1);
  auto other = enqueue(make_job("idle"), now);
  CAF_CHECK_EQUAL(other.position, 0);
  CAF_CHECK_EQUAL(other.eta_ms, -1);
  CAF_CHECK_EQUAL(get(other.id).eta_ms, -1);
}

CAF_TEST(a version 2 file migrates to the current version with its jobs and events) {
  if (!have_sqlite3_shell()) {
    CAF_MESSAGE("sqlite3 shell not installed: skipped");
    return;
  }
  store.reset();
  std::filesystem::remove(path);
  std::filesystem::remove(path + "-wal");
  std::filesystem::remove(path + "-shm");
  // Migrations 1 and 2 exactly as shipped, then rows the way version 2 wrote
  // them: a keyed queued job, a running one with a cancel request and
  // progress, a succeeded one, and their events.
  auto v2 = std::string{"PRAGMA journal_mode = WAL;\nBEGIN;\n"} + migration_1
            + migration_2 + R"sql(
PRAGMA user_version = 2;
INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '2');
INSERT INTO jobs (model, state, priority, max_attempts, input, run_at, created_at,
                  idempotency_key)
  VALUES ('m', 'queued', 2, 3, '{"a":1}', 1700000000000, 1700000000000, 'k1');
INSERT INTO jobs (model, state, attempts, max_attempts, input, worker, lease_seq,
                  lease_until, run_at, created_at, started_at, cancel_requested,
                  progress)
  VALUES ('m', 'running', 1, 3, '{"b":2}', 'w1', 1, 1700000030000, 1700000000000,
          1700000000000, 1700000000001, 1, 0.5);
INSERT INTO jobs (model, state, attempts, max_attempts, input, output, worker,
                  lease_seq, run_at, created_at, started_at, finished_at)
  VALUES ('n', 'succeeded', 1, 3, '{"c":3}', '{"y":4}', 'w1', 1, 1700000000000,
          1700000000000, 1700000000001, 1700000000002);
INSERT INTO job_events (job_id, kind, data, created_at) VALUES
  (1, 'status', '{"state":"queued","attempt":0}', 1700000000000),
  (2, 'status', '{"state":"queued","attempt":0}', 1700000000000),
  (3, 'status', '{"state":"queued","attempt":0}', 1700000000000),
  (2, 'status', '{"state":"running","attempt":1}', 1700000000001),
  (3, 'status', '{"state":"running","attempt":1}', 1700000000001),
  (2, 'progress', '{"progress":0.5}', 1700000000001),
  (3, 'status', '{"state":"succeeded","attempt":1}', 1700000000002);
UPDATE queue_stats SET queued = 1 WHERE id = 1;
COMMIT;
)sql";
  auto out = sqlite3_shell(path, v2, true);
  CAF_REQUIRE_EQUAL(out, "wal\n");
  CAF_REQUIRE_EQUAL(header_user_version(slurp(path)), 2);
  store = open(true);
  auto queued = get(1);
  CAF_CHECK_EQUAL(queued.state, job_state::queued);
  CAF_CHECK_EQUAL(queued.priority, 2);
  CAF_CHECK_EQUAL(queued.input_json, R"({"a":1})");
  CAF_CHECK_EQUAL(queued.idempotency_key, "k1");
  CAF_CHECK_EQUAL(queued.position, 0);
  auto running = get(2);
  CAF_CHECK_EQUAL(running.state, job_state::running);
  CAF_CHECK(running.cancel_requested);
  CAF_CHECK_EQUAL(running.progress, 0.5);
  CAF_CHECK_EQUAL(running.lease_seq, 1);
  auto done = get(3);
  CAF_CHECK_EQUAL(done.state, job_state::succeeded);
  CAF_CHECK_EQUAL(done.output_json, R"({"y":4})");
  auto log = events_of(2);
  CAF_CHECK_EQUAL(describe(log), (std::vector<std::string>{
                                     describe_one(2, "status", status_data("queued", 0)),
                                     describe_one(2, "status", status_data("running", 1)),
                                     describe_one(2, "progress", R"({"progress":0.5})"),
                                 }));
  CAF_REQUIRE_EQUAL(log.size(), 3u);
  CAF_CHECK_EQUAL(log[0].seq, 2);
  CAF_CHECK_EQUAL(log[2].seq, 6);
  CAF_CHECK_EQUAL(events_of(3).size(), 3u);
  // The stored key, the queued count and the event sequence carry on.
  auto keyed = make_job("m");
  keyed.input_json = R"({"a":1})";
  keyed.idempotency_key = "k1";
  auto again = value_of(store->enqueue(keyed, 2, t0), "enqueue");
  CAF_CHECK(!again.created);
  CAF_CHECK_EQUAL(again.id, 1);
  auto next = value_of(store->enqueue(make_job("m"), 2, t0), "enqueue");
  CAF_CHECK_EQUAL(next.id, 4);
  CAF_CHECK_EQUAL(code_of(store->enqueue(make_job("m"), 2, t0).error()),
                  errc::queue_full);
  auto new_log = events_of(4);
  CAF_REQUIRE_EQUAL(new_log.size(), 1u);
  CAF_CHECK_EQUAL(new_log[0].seq, 8);
  // The new table works and starts empty.
  CAF_CHECK(value_of(store->list_workers(), "list_workers").empty());
  CAF_CHECK(store->record_worker(worker_row{"w1", "IDLE", "m", 0, 0, 0}, t0));
  CAF_CHECK_EQUAL(counts(), "queued=2 running=1 succeeded=1");
  store.reset();
  CAF_CHECK_EQUAL(header_user_version(slurp(path)), 4);
  CAF_CHECK_EQUAL(sqlite3_shell(path, "select value from meta where key = "
                                      "'schema_version';\npragma integrity_check;\n"
                                      "select count(*), sum(cancel_requested) "
                                      "from jobs_readable;\n"
                                      "select count(*) from job_events;\n"
                                      "select id, state, models, current_job is null "
                                      "from workers_readable;\n"),
                  "4\nok\n4|1\n8\nw1|IDLE|m|1\n");
  // Reopening is idempotent.
  store = open(false);
  CAF_CHECK_EQUAL(count(job_state::queued), 2);
  CAF_CHECK_EQUAL(value_of(store->list_workers(), "list_workers").size(), 1u);
}

CAF_TEST(a version 3 file migrates to version 4 with counts from its rows) {
  if (!have_sqlite3_shell()) {
    CAF_MESSAGE("sqlite3 shell not installed: skipped");
    return;
  }
  store.reset();
  std::filesystem::remove(path);
  std::filesystem::remove(path + "-wal");
  std::filesystem::remove(path + "-shm");
  // Migrations 1 to 3 exactly as shipped, then jobs in all six states (two
  // queued, two succeeded) the way version 3 wrote them.
  auto v3 = std::string{"PRAGMA journal_mode = WAL;\nBEGIN;\n"} + migration_1
            + migration_2 + migration_3 + R"sql(
PRAGMA user_version = 3;
INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '3');
INSERT INTO jobs (model, state, attempts, max_attempts, input, run_at, created_at)
  VALUES ('m', 'queued', 0, 3, '{}', 1700000000000, 1700000000000),
         ('m', 'queued', 0, 3, '{}', 1700000000000, 1700000000000),
         ('m', 'succeeded', 1, 3, '{}', 1700000000000, 1700000000000),
         ('m', 'succeeded', 1, 3, '{}', 1700000000000, 1700000000000),
         ('m', 'failed', 1, 3, '{}', 1700000000000, 1700000000000),
         ('m', 'dead', 3, 3, '{}', 1700000000000, 1700000000000),
         ('m', 'cancelled', 0, 3, '{}', 1700000000000, 1700000000000);
INSERT INTO jobs (model, state, attempts, max_attempts, input, worker, lease_seq,
                  lease_until, run_at, created_at, started_at)
  VALUES ('m', 'running', 1, 3, '{}', 'w1', 1, 1700000030000, 1700000000000,
          1700000000000, 1700000000001);
COMMIT;
)sql";
  CAF_REQUIRE_EQUAL(sqlite3_shell(path, v3, true), "wal\n");
  CAF_REQUIRE_EQUAL(header_user_version(slurp(path)), 3);
  CAF_REQUIRE_EQUAL(sqlite3_shell(path, "select * from queue_stats;\n"), "1|2\n");
  store = open(true);
  CAF_CHECK_EQUAL(counts(), "queued=2 running=1 succeeded=2 failed=1 dead=1 cancelled=1");
  CAF_CHECK_EQUAL(counts(), counted_rows());
  // The counts go on from there; the capacity check still reads `queued`.
  CAF_CHECK(value_of(store->complete(8, 1, "{}", t0), "complete"));
  CAF_CHECK_EQUAL(code_of(store->enqueue(make_job("m"), 2, t0).error()),
                  errc::queue_full);
  CAF_CHECK_EQUAL(enqueue(make_job("m")).id, 9);
  CAF_CHECK_EQUAL(counts(), "queued=3 succeeded=3 failed=1 dead=1 cancelled=1");
  CAF_CHECK_EQUAL(counts(), counted_rows());
  store.reset();
  CAF_CHECK_EQUAL(header_user_version(slurp(path)), 4);
  CAF_CHECK_EQUAL(sqlite3_shell(path, "select value from meta where key = "
                                      "'schema_version';\npragma integrity_check;\n"
                                      "select * from queue_stats;\n"
                                      "select name from sqlite_master where type = "
                                      "'trigger' order by name;\n"),
                  "4\nok\n1|3|0|3|1|1|1\n"
                  "jobs_count_delete\njobs_count_insert\njobs_count_update\n");
  // Reopening is idempotent.
  store = open(false);
  CAF_CHECK_EQUAL(counts(), "queued=3 succeeded=3 failed=1 dead=1 cancelled=1");
}

CAF_TEST(enqueue_batch writes a whole batch with one commit) {
  std::map<std::string, int> calls;
  auto opts = options();
  opts.fault_hook = [&](const std::string& op, const std::string& step) {
    ++calls[op + " " + step];
    return 0;
  };
  auto batcher = value_of(job_store::open(opts), "open");
  calls.clear();
  // Two models, two priorities each, interleaved.
  std::vector<new_job> jobs;
  for (int i = 0; i < 100; ++i) {
    auto job = make_job(i % 2 == 0 ? "m" : "n", i % 4 < 2 ? 0 : 1);
    job.input_json = "{\"i\":" + std::to_string(i) + "}";
    jobs.push_back(job);
  }
  auto results = value_of(batcher->enqueue_batch(jobs, no_limit, t0), "enqueue_batch");
  CAF_CHECK_EQUAL(calls.size(), 2u);
  CAF_CHECK_EQUAL(calls["enqueue_batch begin"], 1);
  CAF_CHECK_EQUAL(calls["enqueue_batch commit"], 1);
  CAF_REQUIRE_EQUAL(results.size(), jobs.size());
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    CAF_REQUIRE(results[i]);
    auto& rec = *results[i];
    // Ahead: jobs of the same model with a higher priority, or the same
    // priority and an earlier place in the batch.
    int64_t ahead = 0;
    for (std::size_t j = 0; j < jobs.size(); ++j)
      if (jobs[j].model == jobs[i].model
          && (jobs[j].priority > jobs[i].priority
              || (jobs[j].priority == jobs[i].priority && j < i)))
        ++ahead;
    CAF_CHECK_EQUAL(rec.id, static_cast<int64_t>(i + 1));
    CAF_CHECK(rec.created);
    CAF_CHECK_EQUAL(rec.state, job_state::queued);
    CAF_CHECK_EQUAL(rec.model, jobs[i].model);
    CAF_CHECK_EQUAL(rec.input_json, jobs[i].input_json);
    CAF_CHECK_EQUAL(rec.created_at_ms, t0);
    CAF_CHECK_EQUAL(rec.position, ahead);
  }
  auto events = batcher->take_events();
  CAF_REQUIRE_EQUAL(events.size(), jobs.size());
  for (std::size_t i = 0; i < events.size(); ++i) {
    CAF_CHECK_EQUAL(
        describe_one(events[i].job_id, events[i].kind, events[i].data_json),
        describe_one(static_cast<int64_t>(i + 1), "status", status_data("queued", 0)));
    if (i > 0)
      CAF_CHECK_GREATER(events[i].seq, events[i - 1].seq);
  }
  CAF_CHECK_EQUAL(count(job_state::queued), 100);
  // A claim sees them in the same order the positions promised.
  auto first = claim({"m"}, 2);
  CAF_CHECK_EQUAL(ids_of(first), (std::vector<int64_t>{3, 7}));
  // enqueue() is a batch of one: one transaction of its own.
  calls.clear();
  value_of(batcher->enqueue(make_job("m"), no_limit, t0), "enqueue");
  CAF_CHECK_EQUAL(calls.size(), 2u);
  CAF_CHECK_EQUAL(calls["enqueue commit"], 1);
  CAF_CHECK(value_of(batcher->enqueue_batch({}, no_limit, t0), "empty").empty());
}

CAF_TEST(enqueue_batch judges each job like enqueue and writes only the accepted) {
  auto old = make_job("m");
  old.idempotency_key = "old";
  CAF_CHECK_EQUAL(enqueue(old).id, 1);
  store->take_events();
  auto keyed = make_job("m");
  keyed.idempotency_key = "a";
  keyed.input_json = R"({"x":"a"})";
  auto other_body = keyed;
  other_body.input_json = R"({"x":"b"})";
  auto late = make_job("m");
  late.idempotency_key = "late";
  std::vector<new_job> jobs{
      keyed,               // 0: new, j_2
      make_job("m", 0, 0), // 1: invalid
      keyed,               // 2: the key of 0 with its body: j_2 again
      other_body,          // 3: the key of 0 with another body: conflict
      make_job("m"),       // 4: new, j_3
      old,                 // 5: stored before the batch: j_1
      make_job("n", 5),    // 6: new, j_4; the queue now holds 4
      late,                // 7: queue full
      keyed,               // 8: a stored key answers even when full: j_2
      make_job(""),        // 9: invalid
  };
  auto results = value_of(store->enqueue_batch(jobs, 4, t0 + 1), "enqueue_batch");
  CAF_REQUIRE_EQUAL(results.size(), jobs.size());
  auto accepted = [&](std::size_t i, int64_t id, bool created, int64_t position) {
    CAF_REQUIRE(results[i]);
    CAF_CHECK_EQUAL(results[i]->id, id);
    CAF_CHECK_EQUAL(results[i]->created, created);
    CAF_CHECK_EQUAL(results[i]->position, position);
  };
  auto refused = [&](std::size_t i, errc code, const std::string& message) {
    CAF_REQUIRE(!results[i]);
    CAF_CHECK_EQUAL(code_of(results[i].error()), code);
    CAF_CHECK_EQUAL(message_of(results[i].error()), message);
  };
  accepted(0, 2, true, 1);
  refused(1, errc::invalid_input, "enqueue_batch: max_attempts must be at least 1");
  accepted(2, 2, false, 1);
  refused(3, errc::conflict, "idempotency_key 'a' belongs to job j_2 with another body");
  accepted(4, 3, true, 2);
  accepted(5, 1, false, 0);
  accepted(6, 4, true, 0);
  refused(7, errc::queue_full, "queue holds 4 of 4 jobs");
  accepted(8, 2, false, 1);
  refused(9, errc::invalid_input, "enqueue_batch: model is empty");
  CAF_CHECK_EQUAL(results[0]->created_at_ms, t0 + 1);
  CAF_CHECK_EQUAL(results[5]->created_at_ms, t0);
  CAF_CHECK_EQUAL(results[6]->priority, 5);
  // Rows and events only for the three new jobs, events in batch order.
  CAF_CHECK_EQUAL(describe(store->take_events()),
                  (std::vector<std::string>{
                      describe_one(2, "status", status_data("queued", 0)),
                      describe_one(3, "status", status_data("queued", 0)),
                      describe_one(4, "status", status_data("queued", 0)),
                  }));
  CAF_CHECK_EQUAL(count(job_state::queued), 4);
  CAF_CHECK(!value_of(store->get(5), "get"));
  CAF_CHECK_EQUAL(get(2).input_json, R"({"x":"a"})");
  // The refused key was not stored, and no id was used up.
  auto after = value_of(store->enqueue(late, no_limit, t0 + 2), "enqueue");
  CAF_CHECK(after.created);
  CAF_CHECK_EQUAL(after.id, 5);
  if (have_sqlite3_shell())
    CAF_CHECK_EQUAL(sqlite3_shell(path, "select count(*) from job_events;\n"
                                        "select queued from queue_stats;\n"
                                        "pragma integrity_check;\n"),
                    "5\n5\nok\n");
}

CAF_TEST(an io error on the batch commit writes nothing) {
  enqueue(make_job("m"));
  int busy = 0;
  int failing = 0;
  int commits = 0;
  auto opts = options();
  opts.fault_hook = [&](const std::string& op, const std::string& step) {
    if (op != "enqueue_batch" || step != "commit")
      return 0;
    ++commits;
    if (busy > 0) {
      --busy;
      return sqlite_busy;
    }
    if (failing > 0) {
      --failing;
      return sqlite_ioerr;
    }
    return 0;
  };
  auto faulty = value_of(job_store::open(opts), "open");
  std::vector<new_job> jobs;
  for (int i = 0; i < 10; ++i) {
    jobs.push_back(make_job("m"));
    jobs.back().idempotency_key = "k" + std::to_string(i);
  }
  failing = 1;
  auto broken = faulty->enqueue_batch(jobs, no_limit, t0);
  CAF_REQUIRE(!broken);
  CAF_CHECK_EQUAL(code_of(broken.error()), errc::storage_error);
  CAF_CHECK_NOT_EQUAL(message_of(broken.error()).find("enqueue_batch: "),
                      std::string::npos);
  CAF_CHECK_NOT_EQUAL(message_of(broken.error()).find("injected"), std::string::npos);
  CAF_CHECK_EQUAL(commits, 1);
  CAF_CHECK(faulty->take_events().empty());
  CAF_CHECK_EQUAL(count(job_state::queued), 1);
  CAF_CHECK(!value_of(store->get(2), "get"));
  // Busy commits are retried: one row and one event per job all the same,
  // and the rolled-back attempts used up no ids.
  busy = 2;
  commits = 0;
  auto results = value_of(faulty->enqueue_batch(jobs, no_limit, t0), "enqueue_batch");
  CAF_CHECK_EQUAL(commits, 3);
  CAF_REQUIRE_EQUAL(results.size(), jobs.size());
  for (std::size_t i = 0; i < results.size(); ++i) {
    CAF_REQUIRE(results[i]);
    CAF_CHECK_EQUAL(results[i]->id, static_cast<int64_t>(i + 2));
    CAF_CHECK(results[i]->created);
    CAF_CHECK_EQUAL(results[i]->position, static_cast<int64_t>(i + 1));
  }
  auto events = faulty->take_events();
  CAF_REQUIRE_EQUAL(events.size(), jobs.size());
  CAF_CHECK_EQUAL(events.front().job_id, 2);
  CAF_CHECK_EQUAL(events.back().job_id, 11);
  CAF_CHECK_EQUAL(count(job_state::queued), 11);
  // A batch that writes nothing (refusals, stored keys) never reaches its
  // COMMIT: it answers even while commits fail.
  failing = 1;
  commits = 0;
  auto nothing = value_of(faulty->enqueue_batch({jobs[3], make_job("")}, no_limit, t0),
                          "enqueue_batch");
  CAF_CHECK_EQUAL(commits, 0);
  CAF_REQUIRE_EQUAL(nothing.size(), 2u);
  CAF_REQUIRE(nothing[0]);
  CAF_CHECK_EQUAL(nothing[0]->id, 5);
  CAF_CHECK(!nothing[0]->created);
  CAF_CHECK_EQUAL(code_of(nothing[1].error()), errc::invalid_input);
  CAF_CHECK(faulty->take_events().empty());
  if (have_sqlite3_shell())
    CAF_CHECK_EQUAL(sqlite3_shell(path, "pragma integrity_check;\n"
                                        "select count(*) from job_events;\n"),
                    "ok\n11\n");
}

CAF_TEST(complete_batch completes each job as complete would in one transaction) {
  std::map<std::string, int> calls;
  auto opts = options();
  opts.fault_hook = [&](const std::string& op, const std::string& step) {
    ++calls[op + " " + step];
    return 0;
  };
  auto worker = value_of(job_store::open(opts), "open");
  // `a` loses its first lease (rescued, claimed again: lease_seq 2); `c`
  // gets a cancel request while it runs.
  auto a = enqueue(make_job("m"));
  claim({"m"}, 1, t0);
  auto b = enqueue(make_job("m"));
  auto c = enqueue(make_job("m"));
  auto d = enqueue(make_job("m"));
  CAF_REQUIRE_EQUAL(ids_of(claim({"m"}, 3, t0 + lease_ms)),
                    (std::vector<int64_t>{b.id, c.id, d.id}));
  CAF_REQUIRE_EQUAL(value_of(store->rescue_expired(t0 + lease_ms + 1), "rescue"), 1);
  auto a2 = claim({"m"}, 1, t0 + lease_ms + 2).at(0);
  CAF_REQUIRE_EQUAL(a2.id, a.id);
  CAF_REQUIRE_EQUAL(a2.lease_seq, 2);
  CAF_REQUIRE(value_of(store->cancel(c.id, t0 + lease_ms + 3), "cancel"));
  auto t1 = t0 + lease_ms + 10;
  calls.clear();
  std::vector<job_completion> batch{
      {b.id, 1, R"({"y":"b"})"},   // succeeds
      {a.id, 1, R"({"y":"old"})"}, // stale token: lease lost
      {c.id, 1, R"({"y":"c"})"},   // cancel requested: cancelled, output dropped
      {999, 1, "{}"},              // no such job
      {d.id, 1, R"({"y":"d"})"},   // succeeds
      {b.id, 1, R"({"y":"b2"})"},  // b again: no longer running
  };
  auto results = value_of(worker->complete_batch(batch, t1), "complete_batch");
  CAF_CHECK_EQUAL(results, (std::vector<bool>{true, false, true, false, true, false}));
  CAF_CHECK_EQUAL(calls.size(), 2u);
  CAF_CHECK_EQUAL(calls["complete_batch begin"], 1);
  CAF_CHECK_EQUAL(calls["complete_batch commit"], 1);
  auto done_b = get(b.id);
  CAF_CHECK_EQUAL(done_b.state, job_state::succeeded);
  CAF_CHECK_EQUAL(done_b.output_json, R"({"y":"b"})");
  CAF_CHECK_EQUAL(done_b.finished_at_ms, t1);
  CAF_CHECK_EQUAL(done_b.lease_until_ms, 0);
  auto still = get(a.id);
  CAF_CHECK_EQUAL(still.state, job_state::running);
  CAF_CHECK_EQUAL(still.lease_seq, 2);
  CAF_CHECK_EQUAL(still.output_json, "");
  CAF_CHECK_EQUAL(still.lease_until_ms, t0 + lease_ms + 2 + lease_ms);
  auto cancelled = get(c.id);
  CAF_CHECK_EQUAL(cancelled.state, job_state::cancelled);
  CAF_CHECK_EQUAL(cancelled.output_json, "");
  CAF_CHECK_EQUAL(cancelled.finished_at_ms, t1);
  CAF_CHECK_EQUAL(get(d.id).state, job_state::succeeded);
  CAF_CHECK_EQUAL(get(d.id).output_json, R"({"y":"d"})");
  // One status event per completed job, in batch order, as take_events()
  // and the stored log both say.
  auto events = worker->take_events();
  CAF_CHECK_EQUAL(describe(events),
                  (std::vector<std::string>{
                      describe_one(b.id, "status", status_data("succeeded", 1)),
                      describe_one(c.id, "status", status_data("cancelled", 1)),
                      describe_one(d.id, "status", status_data("succeeded", 1)),
                  }));
  CAF_REQUIRE_EQUAL(events.size(), 3u);
  for (std::size_t i = 0; i < events.size(); ++i) {
    if (i > 0)
      CAF_CHECK_GREATER(events[i].seq, events[i - 1].seq);
    CAF_CHECK_EQUAL(events[i].time_ms, t1);
    auto of_job = events_of(events[i].job_id); // a local: CAF_CHECK_EQUAL reads late
    CAF_CHECK_EQUAL(of_job.back().seq, events[i].seq);
  }
  CAF_CHECK(events_of(a.id).back().data_json == status_data("running", 2));
  CAF_CHECK_EQUAL(counts(), "running=1 succeeded=2 cancelled=1");
  // The current token still completes `a`; an empty batch opens no
  // transaction.
  calls.clear();
  CAF_CHECK_EQUAL(value_of(worker->complete_batch({{a.id, 2, "{}"}}, t1 + 1), "batch"),
                  std::vector<bool>{true});
  CAF_CHECK_EQUAL(get(a.id).attempts, 2);
  CAF_CHECK_EQUAL(describe(worker->take_events()),
                  std::vector<std::string>{
                      describe_one(a.id, "status", status_data("succeeded", 2))});
  calls.clear();
  CAF_CHECK(value_of(worker->complete_batch({}, t1 + 2), "empty").empty());
  CAF_CHECK(calls.empty());
  CAF_CHECK_EQUAL(counts(), "succeeded=3 cancelled=1");
}

CAF_TEST(renew_batch extends only held leases and reports cancel requests) {
  std::map<std::string, int> calls;
  auto opts = options();
  opts.fault_hook = [&](const std::string& op, const std::string& step) {
    ++calls[op + " " + step];
    return 0;
  };
  auto worker = value_of(job_store::open(opts), "open");
  auto a = enqueue(make_job("m"));
  auto b = enqueue(make_job("m"));
  auto c = enqueue(make_job("m"));
  auto d = enqueue(make_job("m"));
  claim({"m"}, 4, t0); // lease_until t0 + lease_ms each
  CAF_REQUIRE(value_of(store->cancel(b.id, t0 + 1), "cancel"));
  CAF_REQUIRE(value_of(store->complete(c.id, 1, "{}", t0 + 2), "complete"));
  worker->take_events();
  calls.clear();
  constexpr int64_t longer = 60'000;
  auto results = value_of(worker->renew_batch({{a.id, 1},
                                               {b.id, 1},
                                               {c.id, 1}, // finished
                                               {d.id, 2}, // not its token
                                               {999, 1}}, // no such job
                                              longer, t0 + 1000),
                          "renew_batch");
  CAF_REQUIRE_EQUAL(results.size(), 5u);
  std::vector<std::string> seen;
  for (auto& r : results)
    seen.push_back(std::string{r.held ? "held" : "lost"}
                   + (r.cancel_requested ? "+cancel" : ""));
  CAF_CHECK_EQUAL(
      seen, (std::vector<std::string>{"held", "held+cancel", "lost", "lost", "lost"}));
  CAF_CHECK_EQUAL(calls.size(), 2u);
  CAF_CHECK_EQUAL(calls["renew_batch begin"], 1);
  CAF_CHECK_EQUAL(calls["renew_batch commit"], 1);
  CAF_CHECK_EQUAL(get(a.id).lease_until_ms, t0 + 1000 + longer);
  CAF_CHECK_EQUAL(get(b.id).lease_until_ms, t0 + 1000 + longer);
  CAF_CHECK_EQUAL(get(c.id).lease_until_ms, 0);
  CAF_CHECK_EQUAL(get(c.id).state, job_state::succeeded);
  CAF_CHECK_EQUAL(get(d.id).lease_until_ms, t0 + lease_ms);
  CAF_CHECK(worker->take_events().empty()); // heartbeats write no events
  // Only the lease that was not renewed lapses.
  CAF_CHECK_EQUAL(value_of(store->rescue_expired(t0 + lease_ms + 1), "rescue"), 1);
  CAF_CHECK_EQUAL(get(d.id).state, job_state::queued);
  CAF_CHECK_EQUAL(get(a.id).state, job_state::running);
  CAF_CHECK_EQUAL(get(b.id).state, job_state::running);
  calls.clear();
  CAF_CHECK(value_of(worker->renew_batch({}, longer, t0), "empty").empty());
  CAF_CHECK(calls.empty());
}

CAF_TEST(a fault on a complete_batch or renew_batch commit changes nothing) {
  std::string fail_op;
  int busy = 0;
  int failing = 0;
  int commits = 0;
  auto opts = options();
  opts.fault_hook = [&](const std::string& op, const std::string& step) {
    if (op != fail_op || step != "commit")
      return 0;
    ++commits;
    if (busy > 0) {
      --busy;
      return sqlite_busy;
    }
    if (failing > 0) {
      --failing;
      return sqlite_ioerr;
    }
    return 0;
  };
  auto faulty = value_of(job_store::open(opts), "open");
  auto a = enqueue(make_job("m"));
  auto b = enqueue(make_job("m"));
  auto c = enqueue(make_job("m"));
  CAF_REQUIRE_EQUAL(value_of(faulty->claim("w1", {"m"}, 3, lease_ms, t0), "claim").size(),
                    3u);
  CAF_REQUIRE(value_of(store->cancel(c.id, t0 + 1), "cancel"));
  faulty->take_events();
  std::vector<job_completion> batch{
      {a.id, 1, R"({"y":"a"})"}, {b.id, 1, R"({"y":"b"})"}, {c.id, 1, R"({"y":"c"})"}};
  auto unchanged = [&] {
    for (auto id : {a.id, b.id, c.id}) {
      auto rec = get(id);
      CAF_CHECK_EQUAL(rec.state, job_state::running);
      CAF_CHECK_EQUAL(rec.lease_seq, 1);
      CAF_CHECK_EQUAL(rec.output_json, "");
      CAF_CHECK_EQUAL(rec.finished_at_ms, 0);
      CAF_CHECK_EQUAL(rec.lease_until_ms, t0 + lease_ms);
      CAF_CHECK_EQUAL(events_of(id).size(), id == c.id ? 3u : 2u);
    }
    CAF_CHECK(get(c.id).cancel_requested);
    CAF_CHECK_EQUAL(counts(), "running=3");
    CAF_CHECK(faulty->take_events().empty());
  };
  // An I/O error on the COMMIT: an error naming the operation, nothing
  // written, no events.
  fail_op = "complete_batch";
  failing = 1;
  auto broken = faulty->complete_batch(batch, t0 + 5);
  CAF_REQUIRE(!broken);
  CAF_CHECK_EQUAL(code_of(broken.error()), errc::storage_error);
  CAF_CHECK_NOT_EQUAL(message_of(broken.error()).find("complete_batch: "),
                      std::string::npos);
  CAF_CHECK_NOT_EQUAL(message_of(broken.error()).find("injected"), std::string::npos);
  CAF_CHECK_EQUAL(commits, 1);
  unchanged();
  fail_op = "renew_batch";
  failing = 1;
  commits = 0;
  auto no_renew = faulty->renew_batch({{a.id, 1}, {b.id, 1}}, 60'000, t0 + 5);
  CAF_REQUIRE(!no_renew);
  CAF_CHECK_EQUAL(code_of(no_renew.error()), errc::storage_error);
  CAF_CHECK_NOT_EQUAL(message_of(no_renew.error()).find("renew_batch: "),
                      std::string::npos);
  CAF_CHECK_EQUAL(commits, 1);
  unchanged();
  // Busy commits are retried: each job completed once, one event each.
  fail_op = "renew_batch";
  busy = 2;
  commits = 0;
  auto renewed = value_of(faulty->renew_batch({{a.id, 1}}, 60'000, t0 + 6), "renew");
  CAF_CHECK_EQUAL(commits, 3);
  CAF_REQUIRE_EQUAL(renewed.size(), 1u);
  CAF_CHECK(renewed[0].held);
  CAF_CHECK_EQUAL(get(a.id).lease_until_ms, t0 + 6 + 60'000);
  fail_op = "complete_batch";
  busy = 2;
  commits = 0;
  auto results = value_of(faulty->complete_batch(batch, t0 + 7), "complete_batch");
  CAF_CHECK_EQUAL(commits, 3);
  CAF_CHECK_EQUAL(results, (std::vector<bool>{true, true, true}));
  CAF_CHECK_EQUAL(describe(faulty->take_events()),
                  (std::vector<std::string>{
                      describe_one(a.id, "status", status_data("succeeded", 1)),
                      describe_one(b.id, "status", status_data("succeeded", 1)),
                      describe_one(c.id, "status", status_data("cancelled", 1)),
                  }));
  CAF_CHECK_EQUAL(get(a.id).output_json, R"({"y":"a"})");
  CAF_CHECK_EQUAL(counts(), "succeeded=2 cancelled=1");
  if (have_sqlite3_shell())
    CAF_CHECK_EQUAL(sqlite3_shell(path, "pragma integrity_check;\n"
                                        "select count(*) from job_events;\n"),
                    "ok\n10\n");
}

CAF_TEST(record_worker inserts then updates and keeps started_at) {
  worker_row row;
  row.id = "w1";
  row.state = "LOADING";
  row.models = "classifier,tinylm";
  CAF_CHECK(store->record_worker(row, t0));
  auto rows = value_of(store->list_workers(), "list_workers");
  CAF_REQUIRE_EQUAL(rows.size(), 1u);
  CAF_CHECK_EQUAL(rows[0].id, "w1");
  CAF_CHECK_EQUAL(rows[0].state, "LOADING");
  CAF_CHECK_EQUAL(rows[0].models, "classifier,tinylm");
  CAF_CHECK_EQUAL(rows[0].current_job, 0);
  CAF_CHECK_EQUAL(rows[0].started_at_ms, t0);
  CAF_CHECK_EQUAL(rows[0].last_heartbeat_ms, t0);
  // An update moves the heartbeat and everything else but started_at (also
  // when the caller passes one).
  row.state = "BUSY";
  row.models = "classifier";
  row.current_job = 7;
  row.started_at_ms = t0 + 999;
  CAF_CHECK(store->record_worker(row, t0 + 5'000));
  rows = value_of(store->list_workers(), "list_workers");
  CAF_REQUIRE_EQUAL(rows.size(), 1u);
  CAF_CHECK_EQUAL(rows[0].state, "BUSY");
  CAF_CHECK_EQUAL(rows[0].models, "classifier");
  CAF_CHECK_EQUAL(rows[0].current_job, 7);
  CAF_CHECK_EQUAL(rows[0].started_at_ms, t0);
  CAF_CHECK_EQUAL(rows[0].last_heartbeat_ms, t0 + 5'000);
  row.state = "IDLE";
  row.current_job = 0;
  CAF_CHECK(store->record_worker(row, t0 + 6'000));
  rows = value_of(store->list_workers(), "list_workers");
  CAF_REQUIRE_EQUAL(rows.size(), 1u);
  CAF_CHECK_EQUAL(rows[0].current_job, 0);
  CAF_CHECK_EQUAL(rows[0].last_heartbeat_ms, t0 + 6'000);
  // A new row takes the caller's started_at when it has one.
  worker_row other{"w2", "LOADING", "m", 0, t0 - 1'000, 0};
  CAF_CHECK(store->record_worker(other, t0));
  rows = value_of(store->list_workers(), "list_workers");
  CAF_REQUIRE_EQUAL(rows.size(), 2u);
  CAF_CHECK_EQUAL(rows[1].started_at_ms, t0 - 1'000);
  // Nothing about workers is a job event.
  CAF_CHECK(store->take_events().empty());
  auto no_id = store->record_worker(worker_row{}, t0);
  CAF_REQUIRE(!no_id);
  CAF_CHECK_EQUAL(code_of(no_id.error()), errc::invalid_input);
  row.current_job = -1;
  CAF_CHECK_EQUAL(code_of(store->record_worker(row, t0).error()), errc::invalid_input);
  if (have_sqlite3_shell())
    CAF_CHECK_EQUAL(sqlite3_shell(path, "select id, state, current_job is null, "
                                        "started, last_heartbeat from workers_readable "
                                        "order by id;\n"),
                    "w1|IDLE|1|2023-11-14 22:13:20.000|2023-11-14 22:13:26.000\n"
                    "w2|LOADING|1|2023-11-14 22:13:19.000|2023-11-14 22:13:20.000\n");
}

CAF_TEST(list_workers returns every row by id) {
  CAF_CHECK(value_of(store->list_workers(), "list_workers").empty());
  for (auto id : {"w3", "w1", "w2", "w10"})
    CAF_CHECK(store->record_worker(worker_row{id, "IDLE", "m", 0, 0, 0}, t0));
  std::vector<std::string> ids;
  for (auto& row : value_of(store->list_workers(), "list_workers"))
    ids.push_back(row.id);
  CAF_CHECK_EQUAL(ids, (std::vector<std::string>{"w1", "w10", "w2", "w3"}));
  // Another connection sees the same rows.
  auto other = open(false);
  CAF_CHECK_EQUAL(value_of(other->list_workers(), "list_workers").size(), 4u);
}

CAF_TEST(every event knows the seq of the previous event of its job) {
  // Two jobs whose events interleave, as the queue and a worker write them.
  auto events = events_during([&] {
    auto a = enqueue(make_job("m"), t0);
    auto b = enqueue(make_job("m"), t0);
    auto run = claim({"m"}, 2, t0 + 1);
    CAF_REQUIRE_EQUAL(run.size(), 2u);
    CAF_CHECK(value_of(
        store->add_event(a.id, run[0].lease_seq, "data", R"({"delta":"x"})", t0 + 2),
        "add_event"));
    CAF_CHECK(value_of(store->complete(b.id, run[1].lease_seq, "{}", t0 + 3), "c"));
    CAF_CHECK(value_of(store->complete(a.id, run[0].lease_seq, "{}", t0 + 4), "c"));
  });
  CAF_REQUIRE_EQUAL(events.size(), 7u);
  std::map<int64_t, int64_t> last; // job -> seq of its latest event so far
  for (auto& ev : events) {
    CAF_CHECK_EQUAL(ev.prev_seq, last[ev.job_id]);
    last[ev.job_id] = ev.seq;
  }
  // events_after gives the same chain, from any starting point.
  auto a_id = events.front().job_id;
  auto all = value_of(store->events_after(a_id, 0, 100), "events_after");
  CAF_REQUIRE_EQUAL(all.size(), 4u);
  CAF_CHECK_EQUAL(all[0].prev_seq, 0);
  for (std::size_t i = 1; i < all.size(); ++i)
    CAF_CHECK_EQUAL(all[i].prev_seq, all[i - 1].seq);
  auto tail = value_of(store->events_after(a_id, all[1].seq, 100), "events_after");
  CAF_REQUIRE_EQUAL(tail.size(), 2u);
  CAF_CHECK_EQUAL(tail[0].prev_seq, all[1].seq);
  // A starting point between two of the job's events (another job's seq).
  auto mid = value_of(store->events_after(a_id, all[1].seq + 1, 100), "events_after");
  CAF_REQUIRE_EQUAL(mid.size(), 2u);
  CAF_CHECK_EQUAL(mid[0].prev_seq, all[1].seq);
}

CAF_TEST_FIXTURE_SCOPE_END()
