// `infergrid bench infer`: interactive inference over HTTP (classifier
// latency and batching, streamed generation, speech, batching on a heavier
// MLP) against the same models called directly through
// inference::model_runner in the bench process.
#pragma once

#include <cstdint>
#include <string>

namespace infergrid::bench {

struct infer_bench_options {
  /// Classifier requests at concurrency 1 (and direct forward() calls).
  int64_t requests = 3000;
  /// Length of each throughput run (classifier and heavy model, batched and
  /// batch 1).
  double seconds = 15;
  /// Connections of the throughput runs, one thread and one request in
  /// flight each.
  int concurrency = 16;
  /// max_tokens of each streamed completion.
  int tokens = 512;
  /// Streamed completions, one after the other.
  int streams = 16;
  /// Speech requests, one after the other.
  int speech_requests = 15;
  /// Hidden layers of the heavy model (make_mlp_model): a forward call at
  /// batch 1 costs 0.4-0.7 ms of CPU with one thread on the 2-core machine.
  int64_t heavy_width = 1024;
  int64_t heavy_depth = 3;
  /// Empty: a new directory under $TMPDIR (else /tmp), removed at the end.
  std::string dir;
};

/// Builds the demo models (make_demo_models, seed 42, as `serve` would) and
/// an MLP `heavy` (make_mlp_model: `heavy_width` x `heavy_depth`,
/// max_batch_size 32, max_queue_delay_us 0) into a fresh models directory,
/// starts `infergrid serve --workers 1` (this executable) on it on a free
/// loopback port with a fresh data directory and waits for /readyz. The
/// baselines are the same models loaded here with inference::model_runner
/// (one intra-op thread, as the server's default workers.intra_op_threads;
/// the device their config names). Measures:
/// 1. classifier latency at concurrency 1 over one keep-alive connection
///    (POST /v2/models/classifier/infer), beside GET /healthz and forward()
///    on the same [1, 16] input;
/// 2. streamed completions (POST /v1/completions, "stream": true, temperature
///    0, fixed seed): tokens/s and time to first token, each stream followed
///    by the same generate() here;
/// 3. speech (POST /v1/audio/speech, WAV): real-time factor from the wall
///    time and X-Real-Time-Factor, each request followed by synthesize()
///    here;
/// 4. classifier requests/s with `concurrency` closed-loop connections for
///    `seconds`, beside forward() at batch 1 and 16;
/// 5. the same for `heavy`.
/// Then a second server on a copy of the models whose classifier and heavy
/// configs say max_batch_size: 1 repeats 1, 4 and 5. Also the server's CPU
/// time per request or token, its worker processes included
/// (/proc/<pid>/stat of the server and its descendants). A route that is missing or
/// answers badly fails its section only; the others still run. Prints a table per section
/// and one JSON line. Returns the process exit code: 0 when every section ran and both
/// servers exited 0 after SIGTERM. The aims (overhead, ratios) are printed, not enforced.
/// Blocks for about 90 s with the defaults.
int run_bench_infer(const infer_bench_options& opts);

} // namespace infergrid::bench
