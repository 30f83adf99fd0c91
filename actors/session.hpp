// The session actor: one WebSocket session's state machine (API.md
// "Sessions"). http/ owns the socket and hands it the client's frames; the
// actor talks to the gateway (open, turns, pause, resume, stop) and writes
// the server's frames through the transport it was given.
//
//   start ─▶ waiting for a worker (queue.position) ─▶ LISTENING ⇄ SPEAKING
//                                                  LISTENING ⇄ PAUSED
//   SPEAKING ─ barge_in ─▶ BARGED_IN ─▶ (turn.end cancelled) LISTENING
//   any ─ stop, client gone, pause/idle timeout, worker lost ─▶ session.end
//
// The actor's exit ends the session: the queue monitors it and frees the
// worker, and a turn still running stops (its chunk sink goes down with it).
#pragma once

#include <functional>
#include <string>

#include <caf/fwd.hpp>

#include "actors/interfaces.hpp"

namespace infergrid {

using ws_text_atom = caf::atom_constant<caf::atom("ws_text")>;
using ws_binary_atom = caf::atom_constant<caf::atom("ws_binary")>;
using ws_closed_atom = caf::atom_constant<caf::atom("ws_closed")>;

/// Where a session's frames go (the WebSocket connection). Called on the
/// actor's thread: each must return at once (post to the connection, which
/// bounds what it holds).
struct session_transport {
  /// A text frame (JSON).
  std::function<void(std::string)> text;
  /// A binary frame (PCM16 little-endian mono at the model's rate).
  std::function<void(std::string)> binary;
  /// Close the connection once the frames before it are written.
  std::function<void()> close;
  /// One client frame (text or binary) was handled: the connection reads
  /// only a bounded number of frames ahead of the actor.
  std::function<void()> handled;
};

using session_actor = session_events_actor::extend<
    // A text frame from the client (JSON; decoded by the actor).
    caf::reacts_to<ws_text_atom, std::string>,
    // A binary frame from the client (audio).
    caf::reacts_to<ws_binary_atom, std::string>,
    // The client closed the connection or it broke: the session ends.
    caf::reacts_to<ws_closed_atom>,
    // A piece of turn N's output from its chunk sink.
    caf::reacts_to<chunk_atom, int64_t, std::string>>;

struct session_config {
  /// For the log: the id of the upgrade request.
  std::string request_id;
};

/// Spawns the actor for one connection; it waits for session.start.
session_actor spawn_session(caf::actor_system& sys, gateway_actor gateway,
                            session_config cfg, session_transport out);

} // namespace infergrid
