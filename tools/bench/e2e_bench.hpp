// `infergrid bench e2e`: durable classifier jobs through a real `infergrid
// serve` (or `gateway` + `worker`s) over HTTP, against the HTTP floor (GET
// /healthz) and the store alone.
#pragma once

#include <cstdint>
#include <string>

namespace infergrid::bench {

/// How the measured server runs its workers.
enum class e2e_mode {
  /// `serve --workers N`: N supervised worker processes that open the SQLite
  /// file themselves (what `serve` does by default).
  processes,
  /// `serve --workers N --in-process`: worker actors inside the server.
  in_process,
  /// `gateway` plus N `worker --join` processes without --db: they claim,
  /// complete and renew through the queue actor over CAF (a remote host's
  /// path, here on loopback).
  remote,
};

/// "processes" | "in-process" | "remote".
const char* to_string(e2e_mode m);

struct e2e_bench_options {
  /// Jobs submitted (and requests of the /healthz floor).
  int64_t jobs = 5000;
  /// Keep-alive connections, one client thread each.
  int concurrency = 4;
  /// Workers of the server (workers.count, or worker processes in remote).
  int workers = 1;
  e2e_mode mode = e2e_mode::processes;
  /// "classifier" (tensor: claimed in batches of up to 32) or "tinylm" (one
  /// token per job, claimed one at a time).
  std::string model = "classifier";
  bool synchronous_full = false;
  /// Empty: a new directory under $TMPDIR (else /tmp), removed at the end.
  std::string dir;
};

/// Starts `infergrid serve` (this executable; in remote mode `infergrid
/// gateway` and then the worker processes) on a free loopback port with a
/// fresh data and models directory, waits until /readyz counts every worker
/// ready, measures the /healthz floor, submits the jobs as fast as the
/// connections allow and polls /metrics until all have succeeded; then the
/// backlog: drains every worker (POST /admin/api/workers/{id}/drain), submits
/// the same number of jobs, resumes the workers and times them until all have
/// succeeded (the workers' own rate, claiming from a full queue). Then stops
/// the server with
/// SIGTERM and checks that it exits 0 (remote: then SIGTERMs the workers,
/// whose exits are reported, not judged); last, the store-only figure (one
/// process, claim batch 1, like a worker). Prints a table and one JSON line.
/// Returns the process exit code: 0 when every job succeeded and the server
/// exited 0.
int run_bench_e2e(const e2e_bench_options& opts);

} // namespace infergrid::bench
