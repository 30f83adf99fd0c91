// JSON input and output of generate models (API.md "Model kinds"): decoded and
// bounded here so the gateway refuses bad input before anything is stored.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/expected.hpp>
#include <caf/meta/type_name.hpp>

namespace infergrid {

struct generate_input {
  std::string prompt;
  int32_t max_tokens = 64;
  double temperature = 1.0;
  int32_t top_k = 0;
  double top_p = 1.0;
  bool has_seed = false;
  uint64_t seed = 0;
  std::vector<std::string> stop;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generate_input& x) {
  return f(caf::meta::type_name("generate_input"), x.prompt, x.max_tokens, x.temperature,
           x.top_k, x.top_p, x.has_seed, x.seed, x.stop);
}

/// Limits enforced by decode_generate_input.
constexpr int32_t max_generate_tokens = 4096;
constexpr std::size_t max_prompt_bytes = 64 * 1024;
constexpr std::size_t max_stop_strings = 8;

/// Decodes `{"prompt": str, "max_tokens"?: 1..4096, "temperature"?: 0..10,
/// "top_k"?: >=0, "top_p"?: (0,1], "seed"?: >=0, "stop"?: str | [str]}`.
/// Unknown fields and wrong types fail with errc::invalid_input naming the
/// field, e.g. "input.max_tokens: expected an integer in 1..4096".
caf::expected<generate_input> decode_generate_input(const std::string& json_text);

/// Encodes `{"text", "tokens", "finish_reason"}`; bytes that are not valid
/// UTF-8 are replaced by U+FFFD so the output is always valid JSON.
std::string encode_generate_output(const std::string& text, int64_t tokens,
                                   const std::string& finish_reason);

/// Encodes a streamed piece of a durable generate job's text, the data of its
/// "data" events: `{"delta"}` (invalid UTF-8 replaced by U+FFFD).
std::string encode_generate_delta(const std::string& delta);

} // namespace infergrid
