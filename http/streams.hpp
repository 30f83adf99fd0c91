// The bodies of streamed interactive answers, as bytes and without Beast: the
// SSE of a streamed OpenAI completion and the audio of a streamed synthesis.
// The server feeds them what the chunk sink and the gateway deliver and writes
// what take() returns; everything here is pure and runs in the caller's thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "actors/interfaces.hpp"
#include "messages/errors.hpp"

namespace infergrid::http {

/// The length of the longest prefix of `text` after which a UTF-8 decoder
/// that replaces invalid sequences (as nlohmann-json's dump does) is between
/// characters. Cutting there and encoding the pieces one by one yields the
/// same characters as encoding the whole text, so a streamed text that is cut
/// at such points concatenates to the non-streamed one. At most the last 3
/// bytes are held back.
std::size_t utf8_complete_prefix(std::string_view text);

/// Live events of one job (GET /v1/jobs/{id}/events) that may be written
/// after `last_seq`, oldest first. Events reach the broker from more than one
/// writer (the queue and a worker), so one can overtake another: an event
/// whose prev_seq is above what was written means an earlier event of the
/// job is still on its way. The events before such a gap are returned and
/// `gap` is set: the caller reads the rest from the table (events_after),
/// which holds every committed event in order. Events at or below
/// `last_seq` are dropped. `live` is consumed.
std::vector<job_event> take_in_order(std::vector<job_event>& live, int64_t last_seq,
                                     bool& gap);

/// The text/event-stream body of POST /v1/completions or /v1/chat/completions
/// with "stream": true: `data: <chunk JSON>\n\n` per piece of text, a chunk
/// with the finish reason, the usage chunk when asked for, `data: [DONE]\n\n`.
/// Deltas that wait for a write are coalesced into one chunk; what the final
/// reply holds beyond the bytes taken goes out as one more chunk, so deltas
/// that were dropped (after the reply, or past `max_pending`) are not lost.
class completion_stream {
public:
  completion_stream(std::string id, std::string model, int64_t created_s, bool chat,
                    bool include_usage, std::size_t max_pending);

  /// A piece of text from the sink. False when it was dropped: the final
  /// reply or an error came first, or `max_pending` bytes already wait (from
  /// then on every delta is dropped and the final reply supplies the rest).
  bool add_delta(std::string_view delta);

  /// The final reply: the text beyond what the deltas carried, the finish
  /// chunk, the usage chunk if asked for, then [DONE]. Ignored after
  /// finish() or fail().
  void finish(const generate_reply& r);

  /// A failure: the text that is complete so far, then
  /// `data: {"error": {...}}` and [DONE]. Ignored after finish() or fail().
  void fail(errc code, const std::string& message);

  /// The bytes to write now (the chat role chunk first); empty when nothing
  /// is ready. Text that ends inside a UTF-8 character waits for the rest.
  std::string take();

  /// Whether take() would return bytes.
  bool has_output() const;

  /// finish() or fail() was called.
  bool finished() const {
    return finished_;
  }

  /// Bytes of generated text accounted for (taken or waiting).
  std::size_t text_bytes() const {
    return accounted_;
  }

  /// Deltas were dropped because `max_pending` bytes waited.
  bool overflowed() const {
    return overflowed_;
  }

private:
  std::string frame(const std::string& json) const;
  std::string text_chunk(const std::string& text) const;

  std::string id_;
  std::string model_;
  int64_t created_s_;
  bool chat_;
  bool include_usage_;
  std::size_t max_pending_;
  /// The role chunk (chat) is still to be written.
  bool opening_ = true;
  bool finished_ = false;
  bool overflowed_ = false;
  std::size_t accounted_ = 0;
  /// Text not yet framed; all of it once finished.
  std::string text_;
  /// Frames after the text: finish, usage, error, [DONE].
  std::string tail_;
};

/// The body of POST /v1/audio/speech with "stream": true: for "wav" a WAV
/// header for a stream of unknown length (wav_header(rate, -1)), then the PCM16
/// bytes as the sink delivers them, then what the final reply holds beyond
/// them. With the sample rate unknown (0) at the start, chunks are dropped and
/// the final reply supplies a complete WAV (header with the real sizes).
class speech_stream {
public:
  speech_stream(bool wav, int64_t sample_rate, std::size_t max_pending);

  /// PCM16 bytes from the sink. False when dropped: the reply came first, the
  /// sample rate is unknown, or `max_pending` bytes already wait (from then on
  /// every chunk is dropped and the final reply supplies the rest).
  bool add_chunk(std::string_view pcm16);

  /// The final reply. Returns false when its sample rate differs from the one
  /// a header already announced (the audio goes out anyway).
  bool finish(const speech_reply& r);

  /// The bytes to write now; empty when nothing is ready.
  std::string take();

  bool has_output() const {
    return !pending_.empty();
  }

  bool finished() const {
    return finished_;
  }

  /// The rate the body is at: the one given, else the reply's once it came.
  int64_t sample_rate() const {
    return rate_;
  }

  /// PCM bytes accounted for (taken or waiting).
  std::size_t pcm_bytes() const {
    return accounted_;
  }

private:
  bool wav_;
  int64_t rate_;
  std::size_t max_pending_;
  bool header_done_ = false;
  bool finished_ = false;
  bool overflowed_ = false;
  std::size_t accounted_ = 0;
  std::string pending_;
};

} // namespace infergrid::http
