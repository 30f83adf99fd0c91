// The text frames of a session over WebSocket (API.md "Sessions"): the
// client's frames decoded and bounded, the server's encoded. Binary frames
// (audio) carry no JSON and are not handled here.
#pragma once

#include <cstdint>
#include <string>

#include <caf/expected.hpp>

#include "messages/generate_io.hpp"

namespace infergrid {

/// Largest text frame a client may send.
constexpr std::size_t max_session_frame_bytes = 64 * 1024;

/// One decoded client frame.
struct session_client_frame {
  /// "session.start", "input.text" or "control".
  std::string type;

  // -- session.start --------------------------------------------------------
  /// Exactly one of model and pipeline is set.
  std::string model;
  std::string pipeline;
  /// "turn" (default) or "duplex".
  std::string mode = "turn";
  bool record = false;
  /// Sample rate of the client's audio: 8000..48000, default 16000.
  int64_t input_rate = 16000;
  /// Sampling of a generate model's turns (prompt unused); bounds as
  /// decode_generate_input. Absent fields keep generate_input's defaults.
  generate_input params;
  /// A speech model's voice; empty: its default.
  std::string voice;

  // -- input.text -----------------------------------------------------------
  /// Non-empty, at most max_prompt_bytes.
  std::string text;

  // -- control --------------------------------------------------------------
  /// "pause", "resume", "stop" or "barge_in".
  std::string action;
};

/// Decodes one text frame. A frame that is not a JSON object, has no known
/// "type", carries a field its type does not know or a value out of bounds
/// fails with errc::invalid_input naming the field, e.g. "control.action:
/// expected pause, resume, stop or barge_in".
caf::expected<session_client_frame> decode_session_frame(const std::string& text);

// -- server frames (always valid JSON; invalid UTF-8 becomes U+FFFD) ---------

/// {"type":"queue.position","position":N,"eta_ms":M}; eta_ms is left out
/// when negative (unknown).
std::string encode_queue_position(int64_t position, int64_t eta_ms);

/// {"type":"session.started","session_id","worker","model","mode"}, plus
/// "sample_rate" when positive (the rate of the binary audio that follows).
std::string encode_session_started(const std::string& session_id,
                                   const std::string& worker, const std::string& model,
                                   const std::string& mode, int64_t sample_rate);

/// {"type":"state","state":S}: LISTENING, SPEAKING, BARGED_IN or PAUSED.
std::string encode_session_state(const std::string& state);

/// {"type":"output.text","delta":D,"seq":N}.
std::string encode_output_text(const std::string& delta, int64_t seq);

/// A generate turn's end: {"type":"turn.end","turn":N,"finish_reason":R,
/// "usage":{"prompt_tokens":P,"completion_tokens":C,"total_tokens":P+C}}.
std::string encode_text_turn_end(int64_t turn, const std::string& finish_reason,
                                 int64_t prompt_tokens, int64_t completion_tokens);

/// A speech turn's end: {"type":"turn.end","turn":N,"finish_reason":R,
/// "usage":{"samples":S,"sample_rate":H,"audio_seconds":S/H,
/// "real_time_factor":F}}.
std::string encode_speech_turn_end(int64_t turn, const std::string& finish_reason,
                                   int64_t samples, int64_t sample_rate,
                                   double real_time_factor);

/// {"type":"session.end","reason":R}.
std::string encode_session_end(const std::string& reason);

/// {"type":"error","code":C,"message":M} (API.md's codes).
std::string encode_session_error(const std::string& code, const std::string& message);

} // namespace infergrid
