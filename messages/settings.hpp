// The effective configuration as plain structs. tools/config.cpp fills it from
// configs/infergrid.yaml, the environment and flags; components take the part
// they need. Defaults here equal configs/infergrid.yaml.
#pragma once

#include <cstdint>
#include <string>

namespace infergrid {

struct http_settings {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;
  /// Largest accepted request body; larger bodies get 413.
  uint64_t max_body_bytes = 8 * 1024 * 1024;
  /// Threads running the HTTP io_context.
  int32_t threads = 1;
  /// Deadline for an interactive request from arrival to answer.
  int64_t request_timeout_ms = 30000;
  /// How long a connection may stall: sending a request (or idling between
  /// keep-alive requests), or taking a response's bytes. Then it is closed.
  int64_t io_timeout_ms = 60000;
  /// How long a streamed generation or synthesis may run once it started
  /// (not a configuration key: `serve` copies workers.generate_timeout_ms).
  int64_t run_timeout_ms = 600000;
};

struct queue_settings {
  /// Durable jobs waiting (queued) before POST /v1/jobs gets 429.
  int64_t max_queued = 10000;
  /// Interactive requests waiting for a worker before 429.
  int64_t max_interactive = 256;
  /// A claim's lease; a running job whose lease lapses is put back.
  int64_t lease_ms = 30000;
  /// Default attempts per job.
  int32_t max_attempts = 3;
  /// Period of the queue actor's tick (rescue, wake-ups for other writers).
  int64_t tick_ms = 500;
  /// Tensor batches out on one worker at a time: with 2 the next batch waits
  /// in the worker's mailbox while one runs, so the way to a worker process
  /// and back is not idle time for its executor; 1: a worker gets a batch
  /// only when it is idle.
  int32_t batches_in_flight = 2;
};

struct workers_settings {
  /// Worker actors started by `serve`; 0 accepts and queues without running.
  int32_t count = 1;
  /// LibTorch intra-op threads per worker (workers x threads <= cores).
  int32_t intra_op_threads = 1;
  /// Memory budget of each worker's device in MB (models' memory_mb count
  /// against it; the least recently used idle model is evicted); 0: none.
  int64_t memory_budget_mb = 0;
  /// Longest an interactive generation or synthesis may run.
  int64_t generate_timeout_ms = 600000;
  /// Streamed text leaves the executor at most this often: the first token
  /// at once, later ones gathered while they come faster; 0: every token
  /// alone.
  int32_t stream_interval_ms = 5;
  /// `serve` runs workers as actors inside its own process (development,
  /// tests) instead of supervised worker processes.
  bool in_process = false;
};

struct sessions_settings {
  /// A paused session ends after this long (its worker goes back to IDLE).
  int64_t pause_timeout_ms = 60000;
  /// A session with no turn for this long ends (its worker goes back to
  /// IDLE): a client that holds a worker must use it.
  int64_t idle_timeout_ms = 300000;
};

struct cluster_settings {
  /// Where the control node listens for worker nodes (loopback by default).
  std::string host = "127.0.0.1";
  /// 0: any free port (serve's own worker processes learn it from argv).
  uint16_t port = 0;
  /// Shared secret of worker nodes; empty: serve makes a random one for its
  /// own processes and `gateway` refuses to start.
  std::string secret;
  /// How interactive requests pick a worker: queue_depth, round_robin or
  /// latency (after preferring workers that hold the model resident).
  std::string routing = "queue_depth";
  /// How often nodes send each other a heartbeat (CAF middleman); 0: never.
  int64_t heartbeat_ms = 1000;
  /// A peer silent this long (a frozen or partitioned process) is dropped:
  /// its actors go down, as if it had died. 0: never (needs heartbeats).
  int64_t peer_timeout_ms = 5000;
  /// Tensor batches to worker processes on this host go over a Unix socket
  /// that the sending actor writes itself (actors/local_link.hpp) instead of
  /// CAF's middleman threads; BASP stays the control path and the fallback.
  bool local_link = true;
  /// TLS between nodes (libcaf_openssl): this node's certificate and key
  /// (PEM) and the CA file that peers' certificates must chain to. All
  /// empty: plain TCP (keep the cluster port on a private network).
  std::string tls_certificate;
  std::string tls_key;
  std::string tls_cafile;
};

struct actors_settings {
  /// CAF scheduler: "sharing" (one queue, threads woken by a condition
  /// variable) or "stealing" (work stealing with polling).
  std::string scheduler = "sharing";
  /// Scheduler threads; 0: one per core. One by default: model calls run
  /// on their own executor threads and HTTP on Beast's, so the scheduler
  /// mostly passes messages, and with more than one thread the shared queue
  /// wakes a sibling for nearly every message (docs/benchmarks.md).
  int32_t threads = 1;
};

struct storage_settings {
  std::string data_dir = "./data";
  std::string models_dir = "./models";
  /// SQLite synchronous mode: NORMAL or FULL.
  std::string synchronous = "NORMAL";
};

struct log_settings {
  /// trace, debug, info, warn, error, off
  std::string level = "info";
  /// text (human-readable) or json (one JSON object per line)
  std::string format = "text";
};

struct shutdown_settings {
  /// How long SIGTERM/SIGINT waits for in-flight work before exiting.
  int64_t drain_timeout_ms = 10000;
};

struct settings {
  http_settings http;
  queue_settings queue;
  workers_settings workers;
  sessions_settings sessions;
  actors_settings actors;
  cluster_settings cluster;
  storage_settings storage;
  log_settings log;
  shutdown_settings shutdown;
};

} // namespace infergrid
