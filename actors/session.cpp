// Session actor: the state machine of one WebSocket session (see session.hpp).
#include "actors/session.hpp"

#include <memory>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include <spdlog/spdlog.h>

#include "messages/errors.hpp"
#include "messages/session_io.hpp"

namespace infergrid {

namespace {

/// How long a new connection may take to send session.start.
constexpr auto start_timeout = std::chrono::seconds(30);

enum class phase : uint8_t {
  /// Waiting for the client's session.start.
  start,
  /// Asked for a worker; waiting in the queue.
  opening,
  listening,
  speaking,
  /// The client interrupted the running turn; its end is on the way.
  barged_in,
  paused,
};

struct session_state {
  gateway_actor gateway;
  session_config cfg;
  session_transport out;
  phase at = phase::start;
  bool ended = false;

  // The session, once started.
  std::string model;
  model_kind kind = model_kind::generate;
  int64_t sample_rate = 0;
  std::string mode;
  generate_input params;
  std::string voice;
  std::string id;

  /// A pause or resume is on its way to the queue: turns and barge-ins
  /// wait for its answer (the queue would see them in another order).
  bool control_pending = false;

  // The current turn.
  int64_t turn = 0;
  /// Receives the running turn's pieces; its exit stops the turn. Shared
  /// with the exit functor so that the turn stops when the actor ends.
  std::shared_ptr<chunk_sink_actor> sink = std::make_shared<chunk_sink_actor>();
  /// What the client got of the running turn (text bytes or PCM bytes).
  std::size_t sent = 0;
  /// output.text frames so far (their seq).
  int64_t seq = 0;
};

using session_pointer = session_actor::stateful_pointer<session_state>;

void send_text(session_pointer self, std::string frame) {
  self->state.out.text(std::move(frame));
}

void send_state(session_pointer self, const char* state) {
  send_text(self, encode_session_state(state));
}

void send_error(session_pointer self, errc code, const std::string& message) {
  send_text(self, encode_session_error(to_string(code), message));
}

void send_error(session_pointer self, const caf::error& err) {
  send_error(self, code_of(err), message_of(err));
}

// Stops the running turn's sink: the worker stops the turn within one step.
void drop_sink(session_pointer self) {
  auto& sink = *self->state.sink;
  if (sink) {
    self->send_exit(sink, caf::exit_reason::user_shutdown);
    sink = chunk_sink_actor{};
  }
}

// Ends the session: session.end, then the connection closes and the actor
// quits (the queue, which monitors it, frees the worker).
void end(session_pointer self, const std::string& reason) {
  auto& st = self->state;
  if (st.ended)
    return;
  st.ended = true;
  drop_sink(self);
  send_text(self, encode_session_end(reason));
  st.out.close();
  spdlog::info("{} session {} ended: {}", st.cfg.request_id,
               st.id.empty() ? "(not started)" : st.id, reason);
  self->quit();
}

// A refused or failed start: the error, then the end.
void refuse(session_pointer self, errc code, const std::string& message) {
  send_error(self, code, message);
  end(self, "error");
}

chunk_sink_actor::behavior_type turn_sink(chunk_sink_actor::pointer self,
                                          session_actor session, int64_t turn) {
  return {
      [self, session, turn](chunk_atom, std::string& piece) {
        self->send(session, chunk_atom::value, turn, std::move(piece));
      },
  };
}

// The turn's end: whatever the client missed of the reply, its turn.end,
// and the session listens again.
void finish_turn(session_pointer self, const std::string& rest, std::string turn_end) {
  auto& st = self->state;
  if (st.ended)
    return;
  *st.sink = chunk_sink_actor{}; // it stops with the turn's end anyway
  if (!rest.empty()) {
    if (st.kind == model_kind::speech)
      st.out.binary(rest);
    else
      send_text(self, encode_output_text(rest, ++st.seq));
  }
  send_text(self, std::move(turn_end));
  st.at = phase::listening;
  send_state(self, "LISTENING");
}

// A turn that failed: interrupted ones end as cancelled, others say why.
void fail_turn(session_pointer self, const caf::error& err) {
  auto& st = self->state;
  if (st.ended)
    return;
  if (st.at == phase::barged_in) {
    auto end = st.kind == model_kind::speech
                   ? encode_speech_turn_end(st.turn, "cancelled", 0, st.sample_rate, 0.0)
                   : encode_text_turn_end(st.turn, "cancelled", 0, 0);
    finish_turn(self, {}, std::move(end));
    return;
  }
  *st.sink = chunk_sink_actor{};
  send_error(self, err);
  if (code_of(err) == errc::not_found) // the session is gone
    return end(self, "error");
  st.at = phase::listening;
  send_state(self, "LISTENING");
}

void start_turn(session_pointer self, std::string text) {
  auto& st = self->state;
  ++st.turn;
  st.sent = 0;
  st.at = phase::speaking;
  auto sink = self->spawn(turn_sink, caf::actor_cast<session_actor>(self), st.turn);
  *st.sink = sink;
  send_state(self, "SPEAKING");
  auto request_id = st.cfg.request_id + "-t" + std::to_string(st.turn);
  if (st.kind == model_kind::speech) {
    speech_request req;
    req.model = st.model;
    req.text = std::move(text);
    req.voice = st.voice;
    req.request_id = std::move(request_id);
    req.sink = sink;
    req.session = st.id;
    self->request(st.gateway, caf::infinite, speech_atom::value, std::move(req))
        .then(
            [self, turn = st.turn](speech_reply& r) {
              auto& st = self->state;
              // Interrupted: the client wants none of the rest.
              auto barged = st.at == phase::barged_in;
              auto rest = !barged && st.sent < r.pcm16.size() ? r.pcm16.substr(st.sent)
                                                              : std::string{};
              auto samples
                  = static_cast<int64_t>((barged ? st.sent : r.pcm16.size()) / 2);
              finish_turn(self, rest,
                          encode_speech_turn_end(turn, barged ? "cancelled" : "stop",
                                                 samples, r.sample_rate,
                                                 r.real_time_factor));
            },
            [self](caf::error& err) { fail_turn(self, err); });
    return;
  }
  generate_request req;
  req.model = st.model;
  req.params = st.params;
  req.params.prompt = std::move(text);
  req.request_id = std::move(request_id);
  req.sink = sink;
  req.session = st.id;
  self->request(st.gateway, caf::infinite, generate_atom::value, std::move(req))
      .then(
          [self, turn = st.turn](generate_reply& r) {
            auto& st = self->state;
            // Interrupted: the client wants none of the rest.
            auto barged = st.at == phase::barged_in;
            auto rest = !barged && st.sent < r.text.size() ? r.text.substr(st.sent)
                                                           : std::string{};
            finish_turn(self, rest,
                        encode_text_turn_end(turn, barged ? "cancelled" : r.finish_reason,
                                             r.prompt_tokens, r.tokens));
          },
          [self](caf::error& err) { fail_turn(self, err); });
}

// session.start: checks what this server can do, then asks for a worker.
void open(session_pointer self, session_client_frame& f) {
  auto& st = self->state;
  if (!f.pipeline.empty())
    return refuse(self, errc::invalid_input,
                  "session.start.pipeline: this server defines no pipelines; name a "
                  "model");
  if (f.mode != "turn")
    return refuse(self, errc::invalid_input,
                  "session.start.mode: duplex sessions need a speech-recognition model, "
                  "and no model kind of this server takes audio; use turn");
  if (f.record)
    return refuse(self, errc::invalid_input,
                  "session.start.record: this server does not record sessions yet");
  st.model = f.model;
  st.mode = f.mode;
  st.params = f.params;
  st.voice = f.voice;
  st.at = phase::opening;
  self->request(st.gateway, std::chrono::seconds(30), models_atom::value)
      .then(
          [self](std::vector<model_info>& models) {
            auto& st = self->state;
            if (st.ended)
              return;
            for (auto& m : models) {
              if (m.name == st.model) {
                st.kind = m.kind;
                st.sample_rate = m.kind == model_kind::speech ? m.sample_rate : 0;
              }
            }
            session_open req;
            req.model = st.model;
            req.events = caf::actor_cast<session_events_actor>(self);
            req.request_id = st.cfg.request_id;
            // No deadline here: the queue's (the interactive timeout) says
            // what was late.
            self->request(st.gateway, caf::infinite, session_atom::value, std::move(req))
                .then(
                    [self](session_grant& g) {
                      auto& st = self->state;
                      if (st.ended)
                        return;
                      st.id = g.session_id;
                      spdlog::info("{} session {} of model {} on worker {}",
                                   st.cfg.request_id, st.id, st.model, g.worker);
                      send_text(self, encode_session_started(st.id, g.worker, st.model,
                                                             st.mode, st.sample_rate));
                      st.at = phase::listening;
                      send_state(self, "LISTENING");
                    },
                    [self](caf::error& err) {
                      auto timeout = code_of(err) == errc::timeout;
                      send_error(self, err);
                      end(self, timeout ? "timeout" : "error");
                    });
          },
          [self](caf::error& err) {
            send_error(self, err);
            end(self, "error");
          });
}

// pause | resume through the queue, which owns the worker's state.
void control(session_pointer self, const std::string& action) {
  auto& st = self->state;
  st.control_pending = true;
  self->request(st.gateway, std::chrono::seconds(30), session_atom::value, st.id, action)
      .then(
          [self, action](std::string&) {
            auto& st = self->state;
            st.control_pending = false;
            if (st.ended)
              return;
            // Said every time, so that each pause or resume gets an answer.
            auto pause = action == "pause";
            st.at = pause ? phase::paused : phase::listening;
            send_state(self, pause ? "PAUSED" : "LISTENING");
          },
          [self](caf::error& err) {
            self->state.control_pending = false;
            send_error(self, err);
            if (code_of(err) == errc::not_found)
              end(self, "error");
          });
}

void on_frame(session_pointer self, const std::string& text) {
  auto& st = self->state;
  auto f = decode_session_frame(text);
  if (!f) {
    if (st.at == phase::start)
      return refuse(self, code_of(f.error()), message_of(f.error()));
    return send_error(self, f.error());
  }
  if (f->type == "session.start") {
    if (st.at != phase::start)
      return send_error(self, errc::conflict, "session.start: the session has started");
    return open(self, *f);
  }
  if (st.at == phase::start)
    return refuse(self, errc::invalid_input, f->type + ": send session.start first");
  if (f->type == "control" && f->action == "stop") {
    if (!st.id.empty())
      caf::anon_send(st.gateway, session_atom::value, st.id, std::string{"stop"});
    return end(self, "stopped");
  }
  if (st.at == phase::opening)
    return send_error(self, errc::conflict,
                      f->type + ": the session is waiting for a worker");
  if (st.control_pending)
    return send_error(self, errc::conflict,
                      f->type + ": a pause or resume is being applied; send it again");
  if (f->type == "input.text") {
    if (st.at == phase::paused)
      return send_error(self, errc::conflict,
                        "input.text: the session is paused; resume it first");
    if (st.at != phase::listening)
      return send_error(self, errc::conflict,
                        "input.text: a turn is running; send control barge_in to "
                        "interrupt it");
    return start_turn(self, std::move(f->text));
  }
  // control: pause, resume, barge_in
  if (f->action == "barge_in") {
    if (st.at != phase::speaking)
      return send_error(self, errc::conflict, "control.action: no turn to interrupt");
    st.at = phase::barged_in;
    drop_sink(self);
    return send_state(self, "BARGED_IN");
  }
  if (st.at == phase::speaking || st.at == phase::barged_in)
    return send_error(self, errc::conflict,
                      "control.action: a turn is running; send barge_in first");
  control(self, f->action);
}

// The client's frame was handled: the connection may read another.
void acknowledge(session_pointer self) {
  auto& st = self->state;
  if (!st.ended && st.out.handled)
    st.out.handled();
}

session_actor::behavior_type session_behavior(session_pointer self, gateway_actor gateway,
                                              session_config cfg, session_transport out) {
  auto& st = self->state;
  st.gateway = std::move(gateway);
  st.cfg = std::move(cfg);
  st.out = std::move(out);
  // However the actor ends, a turn still running stops.
  self->attach_functor([sink = st.sink] {
    if (*sink)
      caf::anon_send_exit(*sink, caf::exit_reason::user_shutdown);
  });
  // A client that never says what it wants does not keep the connection.
  self->delayed_send(self, start_timeout, session_atom::value,
                     session_event{"start.timeout", 0, -1, {}});
  return {
      [self](ws_text_atom, std::string& text) {
        if (self->state.ended)
          return;
        on_frame(self, text);
        acknowledge(self);
      },
      [self](ws_binary_atom, std::string&) {
        auto& st = self->state;
        if (st.ended)
          return;
        if (st.at == phase::start)
          return refuse(self, errc::invalid_input, "audio: send session.start first");
        send_error(self, errc::invalid_input,
                   "audio: no model kind of this server takes audio input; send "
                   "input.text");
        acknowledge(self);
      },
      [self](ws_closed_atom) {
        auto& st = self->state;
        st.ended = true; // nobody to tell
        drop_sink(self);
        spdlog::info("{} session {}: the client went away", st.cfg.request_id,
                     st.id.empty() ? "(not started)" : st.id);
        self->quit();
      },
      [self](chunk_atom, int64_t turn, std::string& piece) {
        auto& st = self->state;
        if (st.ended || turn != st.turn || st.at != phase::speaking)
          return; // a late piece: the turn's reply carries everything
        st.sent += piece.size();
        if (st.kind == model_kind::speech)
          st.out.binary(std::move(piece));
        else
          send_text(self, encode_output_text(piece, ++st.seq));
      },
      [self](session_atom, session_event& ev) {
        auto& st = self->state;
        if (st.ended)
          return;
        if (ev.type == "start.timeout") {
          if (st.at == phase::start)
            refuse(self, errc::timeout, "session.start: none within 30 s");
        } else if (ev.type == "queue.position")
          send_text(self, encode_queue_position(ev.position, ev.eta_ms));
        else if (ev.type == "session.end")
          end(self, ev.reason);
      },
  };
}

} // namespace

session_actor spawn_session(caf::actor_system& sys, gateway_actor gateway,
                            session_config cfg, session_transport out) {
  return sys.spawn(session_behavior, std::move(gateway), std::move(cfg), std::move(out));
}

} // namespace infergrid
