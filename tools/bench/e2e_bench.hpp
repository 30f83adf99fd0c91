// `infergrid bench e2e`: durable classifier jobs through a real `infergrid
// serve` over HTTP, against the HTTP floor (GET /healthz) and the store alone.
#pragma once

#include <cstdint>
#include <string>

namespace infergrid::bench {

struct e2e_bench_options {
  /// Jobs submitted (and requests of the /healthz floor).
  int64_t jobs = 5000;
  /// Keep-alive connections, one client thread each.
  int concurrency = 4;
  /// workers.count of the server.
  int workers = 1;
  bool synchronous_full = false;
  /// Empty: a new directory under $TMPDIR (else /tmp), removed at the end.
  std::string dir;
};

/// Starts `infergrid serve` (this executable) on a free loopback port with a
/// fresh data and models directory, waits for /readyz, measures the
/// /healthz floor, submits the jobs as fast as the connections allow and
/// polls /metrics until all have succeeded, then stops the server with
/// SIGTERM and checks that it exits 0; last, the store-only figure (one
/// process, claim batch 1, like a worker). Prints a table and one JSON line.
/// Returns the process exit code: 0 when every job succeeded and the server
/// exited 0.
int run_bench_e2e(const e2e_bench_options& opts);

} // namespace infergrid::bench
