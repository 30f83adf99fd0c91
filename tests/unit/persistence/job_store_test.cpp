// job_store against real SQLite files in a temp dir: schema, claim order,
// fencing, back-off, rescue and two connections claiming the same table.
#define CAF_SUITE job_store
#include "tests/unit/test_support.hpp"

#include "persistence/job_store.hpp"

#include <caf/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
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
  CAF_CHECK_EQUAL(header_user_version(bytes), 1);
  for (auto text :
       {"CREATE TABLE jobs", "CREATE INDEX jobs_ready", "WHERE state = 'queued'",
        "CREATE INDEX jobs_leased", "CREATE TABLE meta", "CREATE VIEW jobs_readable"})
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
  CAF_CHECK_EQUAL(header_user_version(slurp(path)), 1);
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
    CAF_CHECK(!value_of(store->renew(rec.id, stale, 99'000, t0 + 1), "r"));
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
  CAF_CHECK(!value_of(store->renew(rec.id, 1, lease_ms, t0), "r"));
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
  CAF_CHECK(value_of(store->renew(rec.id, 1, lease_ms, t0 + 20'000), "renew"));
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
  auto script = dir.str("hold.sql");
  {
    std::ofstream out{script};
    out << "BEGIN IMMEDIATE;\n"
           "UPDATE jobs SET priority = priority;\n"
           ".shell sleep 0.6\n"
           "ROLLBACK;\n";
  }
  auto cmd = "sqlite3 -batch -bail '" + path + "' < '" + script + "'";
  std::thread holder{[cmd] { static_cast<void>(std::system(cmd.c_str())); }};
  auto impatient_opts = options();
  impatient_opts.busy_timeout_ms = 2;
  impatient_opts.busy_retry_budget_ms = 40;
  auto impatient = value_of(job_store::open(impatient_opts), "open");
  auto patient_opts = options();
  patient_opts.busy_retry_budget_ms = 5000;
  auto patient = value_of(job_store::open(patient_opts), "open");
  // Poll until the shell holds the lock (renew of a missing job writes
  // nothing but still needs the lock).
  caf::error busy;
  double busy_ms = 0;
  for (int i = 0; i < 400 && !busy; ++i) {
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
  CAF_REQUIRE(busy);
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
    // Bounded: every round claims at least one job or stops.
    for (int round = 0; round <= job_count; ++round) {
      auto batch = own.claim(worker, {"m"}, 8, lease_ms, t0 + 1);
      if (!batch) {
        out.error = message_of(batch.error());
        return;
      }
      if (batch->empty())
        return;
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
  store = open(true);
  auto counts = value_of(store->count_by_state(), "count_by_state");
  CAF_CHECK_EQUAL(counts.size(), 1u);
  CAF_CHECK_EQUAL(counts[job_state::succeeded], job_count);
  auto last = get(job_count);
  CAF_CHECK_EQUAL(last.attempts, 1);
  CAF_CHECK_EQUAL(last.lease_seq, 1);
}

CAF_TEST_FIXTURE_SCOPE_END()
