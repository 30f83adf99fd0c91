// JSON input and output of speech models (API.md "Model kinds") and the body
// of POST /v1/audio/speech, decoded and bounded so the gateway refuses bad
// input before anything is stored or queued.
#pragma once

#include <cstdint>
#include <string>

#include <caf/expected.hpp>

namespace infergrid {

/// Longest text one request may synthesise.
constexpr std::size_t max_speech_text_bytes = 16 * 1024;

struct speech_input {
  std::string text;
  /// Empty: the model's default voice.
  std::string voice;
};

/// Durable job input: {"text": non-empty string <= 16 KiB, "voice"?: string}.
/// Unknown fields and wrong types fail with errc::invalid_input naming the
/// field with an "input." prefix, e.g. "input.text: expected a non-empty
/// string".
caf::expected<speech_input> decode_speech_input(const std::string& json_text);

struct speech_http_request {
  std::string model;
  speech_input input;
  /// "wav" (default) or "pcm" (raw PCM16 little-endian mono).
  std::string response_format = "wav";
  /// Send each phrase as soon as it is ready (chunked transfer).
  bool stream = false;
};

/// POST /v1/audio/speech: {"model": string, "input": non-empty string <= 16
/// KiB, "voice"?: string, "response_format"?: "wav"|"pcm", "stream"?: bool,
/// "speed"?: 1.0 only}. Unknown fields are refused; messages name the field.
caf::expected<speech_http_request> decode_speech_request(const std::string& body);

/// A durable speech job's output: {"artifact": name, "content_type":
/// "audio/wav", "sample_rate", "samples", "duration_s", "phrases",
/// "real_time_factor"}.
std::string encode_speech_output(const std::string& artifact, int64_t sample_rate,
                                 int64_t samples, int32_t phrases,
                                 double real_time_factor);

} // namespace infergrid
