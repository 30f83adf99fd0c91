// `infergrid bench queue`: claim+complete jobs/s through job_store against
// the same SQL on a bare sqlite3 connection, measured in the same run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/expected.hpp>

namespace infergrid::bench {

/// Which code runs the claim+complete loop.
enum class queue_engine {
  /// persistence::job_store::claim() and complete().
  store,
  /// persistence::raw_claim_complete(): the same SQL, nothing around it.
  raw,
};

/// One round: a fresh database with `jobs` queued jobs, then `processes`
/// forked processes claim `batch` at a time and complete each, until
/// `seconds` have passed or the queue is empty.
struct queue_round {
  queue_engine engine = queue_engine::store;
  int processes = 1;
  int batch = 1;
  int64_t jobs = 20000;
  double seconds = 2;
  bool synchronous_full = false;
  /// Existing directory that holds the round's database (deleted after).
  std::string dir;
};

struct queue_round_result {
  /// Jobs claimed and completed by all processes together.
  int64_t jobs = 0;
  /// The longest of the processes' loop times.
  double seconds = 0;
  double jobs_per_s = 0;
  /// CPU time (user + system) of all processes in their loops, per job.
  double cpu_us_per_job = 0;
  /// CPU time of all processes in their loops.
  double cpu_seconds = 0;
  /// Raw engine only: transactions retried after SQLITE_BUSY.
  int64_t busy_retries = 0;
};

/// Runs one round. Every SQLite connection is opened in a forked child
/// (set-up, fill, the loops, the final check), none in the caller, so the
/// caller may fork again. The fill and the opening are not timed; the
/// processes start together once all have opened their connection. Fails
/// when a child fails or the database afterwards does not hold exactly the
/// reported number of succeeded jobs. Blocks the calling thread; call it
/// while the process has no other threads (it forks).
caf::expected<queue_round_result> run_queue_round(const queue_round& round);

struct queue_bench_options {
  int64_t jobs = 20000;
  double seconds = 2;
  bool synchronous_full = false;
  /// Empty: a new directory under $TMPDIR (else /tmp), removed at the end.
  std::string dir;
  int rounds = 3;
  /// The grid: every pair of processes x batch.
  std::vector<int> processes{1, 2};
  std::vector<int> batches{1, 16};
};

/// Measures every (processes, batch) pair, store and raw alternating
/// within each round, and prints a table and one JSON line on stdout.
/// Returns the process exit code (0 unless something failed).
int run_bench_queue(const queue_bench_options& opts);

/// Creates a fresh directory for benchmark files: under `parent` when not
/// empty, else under $TMPDIR or /tmp. Empty on failure.
std::string make_bench_dir(const std::string& parent, const std::string& prefix);

/// A bench's scratch directory (from make_bench_dir): removed with everything
/// in it at the end, unless `keep` was set (a failure keeps files and logs).
struct scratch_dir {
  std::string path;
  bool keep = false;
  ~scratch_dir();
};

/// The median of `xs` (0 when empty).
double median(std::vector<double> xs);

} // namespace infergrid::bench
