// The HTTP front door (Boost.Beast behind a pimpl): REST, KServe v2, OpenAI
// completions (streamed as SSE), speech (streamed with chunked transfer),
// artifacts, health, metrics, job event streams (SSE). It never waits on an
// actor from an I/O thread: each request that needs an actor spawns a
// one-shot requester and is called back on its strand.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <caf/actor_system.hpp>
#include <caf/expected.hpp>

#include "actors/interfaces.hpp"
#include "messages/settings.hpp"

namespace infergrid::http {

class server {
public:
  server(caf::actor_system& sys, gateway_actor gateway, http_settings opts);
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  /// Binds host:port (port 0 picks a free one) and starts the I/O threads.
  /// Returns the bound port, or errc::unavailable naming the address.
  caf::expected<uint16_t> start();

  /// Closes the listener; open connections finish the request they are on
  /// and are closed after answering it (a streamed completion or synthesis
  /// runs to its end); open job event streams (SSE) are closed at once
  /// (clients resume with Last-Event-ID). Thread-safe; idempotent.
  void stop_accepting();

  /// Requests received and not yet answered. A job event stream counts until
  /// its response header is written, not while it streams; a streamed
  /// completion or synthesis counts until it ends. Thread-safe.
  int64_t in_flight() const;

  /// Stops the I/O threads and joins them. Idempotent.
  void stop();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace infergrid::http
