// The local link: tensor batches, generations and syntheses between the
// control process and a worker process on the same host, over a Unix socket
// beside CAF's BASP connection.
//
// Why: with BASP a batch crosses four threads besides the two actors (the
// sender's middleman, then the receiver's, and the same back), each a wake-up
// and some 60 us of CPU per request on a 2-core VM. On the link the sending
// actor writes the socket itself (its `enqueue` runs in the sender's thread)
// and one reader thread per side hands what arrives to the actor it is for.
//
// Shape: the control process's link_hub listens on an abstract Unix socket
// and gives each joining worker a one-time token (with the join, which
// checked the cluster secret). The worker's link_client connects, presents
// the token, and names it in its registration; the queue then sends batches
// to the hub's proxy for that token instead of to the executor's BASP proxy,
// and generations and syntheses to a second proxy instead of to the worker
// actor's. Requests and answers are ordinary CAF messages (binary_serializer),
// so the queue's request().then() and the handlers do not change.
//
// A streamed result's chunk sink (an actor of the control process) does not
// travel as an actor handle: the link names it, the worker process gets a
// stand-in whose pieces go back over the link as raw bytes (written in the
// executor's thread, read by the hub's reader and handed straight to the
// sink), and when the sink goes down (the HTTP client went away) the hub says
// so and the stand-in goes down too, which stops the run as over BASP.
//
// When a link breaks (its socket closes or a write times out) the requests in
// flight on it fail with errc::unavailable and later batches go over BASP:
// the link is a fast path, never the only one. CAF core and POSIX only.
#pragma once

#include <memory>
#include <string>

#include <caf/expected.hpp>
#include <caf/fwd.hpp>

#include "actors/interfaces.hpp"

namespace infergrid {

class link_hub_impl;
class link_client_impl;

/// The control process's side: listens, checks tokens, owns the links.
class link_hub {
public:
  /// Listens on a fresh abstract socket; an error message when it cannot.
  static caf::expected<std::shared_ptr<link_hub>> open(caf::actor_system& sys);

  ~link_hub();

  /// The socket's name, for join_reply::link_address.
  const std::string& address() const;

  /// A one-time token for `worker_id`, valid for one connection. Only the
  /// latest 256 unused tokens are kept.
  std::string issue(const std::string& worker_id);

  /// The runner for a registration that names `token`: a proxy that sends
  /// over that token's link and over `fallback` once the link is gone; just
  /// `fallback` when no link presented the token.
  batch_runner_actor runner_for(const std::string& token, batch_runner_actor fallback);

  /// The same for generations and syntheses (the worker actor's): a proxy
  /// for the worker of `token`'s link, or `fallback` without one. Only the
  /// generate and speech requests go this way.
  worker_actor streams_for(const std::string& token, worker_actor fallback);

  /// Links connected so far (for tests and the log).
  int connected() const;

  /// Stops listening and closes every link; their requests in flight fail.
  /// Call before the actor system shuts down. Idempotent.
  void close();

private:
  explicit link_hub(std::unique_ptr<link_hub_impl> impl);
  std::unique_ptr<link_hub_impl> impl_;
};

/// A worker process's side: one connection, serving the worker's executor
/// (batches, some run on the reader's own thread) and its worker actor
/// (generations and syntheses).
class link_client {
public:
  /// Connects to `address` and presents `token`; an error when the hub is
  /// not reachable from here (another host or network namespace) or refuses.
  static caf::expected<std::shared_ptr<link_client>>
  connect(caf::actor_system& sys, const std::string& address, const std::string& token);

  ~link_client();

  const std::string& token() const;

  /// Hands every batch that arrives to `executor`, every generation and
  /// synthesis to `worker` (while it lives), and sends their answers back.
  /// With `direct`, the reader first offers each batch to it and answers
  /// what it runs itself: no wake-up of the executor's thread. The first
  /// call starts the reader; a later call changes the targets.
  void serve(caf::strong_actor_ptr executor, caf::actor_addr worker = {},
             direct_batch_fn direct = {});

  /// Closes the connection and joins the reader. Idempotent.
  void close();

private:
  explicit link_client(std::unique_ptr<link_client_impl> impl);
  std::unique_ptr<link_client_impl> impl_;
};

} // namespace infergrid
