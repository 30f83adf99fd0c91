// OpenAI-compatible request and response bodies for generate models
// (POST /v1/completions and /v1/chat/completions). Decoding refuses what we
// cannot honour with errc::invalid_input naming the field; encoding always
// yields valid JSON (invalid UTF-8 becomes U+FFFD).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "messages/generate_io.hpp"

namespace infergrid {

struct chat_message {
  /// "system", "user", "assistant" (or "developer", "tool": kept as given).
  std::string role;
  std::string content;
};

struct openai_request {
  std::string model;
  /// The prompt (completions) or the chat rendered by chat_prompt (chat),
  /// with the sampling settings; bounds as decode_generate_input.
  generate_input params;
  bool stream = false;
  /// stream_options.include_usage: a last chunk with usage before [DONE].
  bool include_usage = false;
  /// True for /v1/chat/completions.
  bool chat = false;
  std::vector<chat_message> messages;
};

/// Renders chat messages as the byte-level prompt our demo models read:
/// one "<role>: <content>\n" line per message, then "assistant:".
std::string chat_prompt(const std::vector<chat_message>& messages);

/// POST /v1/completions body: "model" (required string), "prompt" (string,
/// or an array holding exactly one string), "max_tokens" (1..4096, default
/// 16), "temperature" (0..2), "top_p" ((0,1]), "top_k" (>= 0, extension),
/// "seed" (>= 0), "stop" (string or up to 8 strings), "stream" (bool),
/// "stream_options" ({"include_usage": bool}), "user" (ignored string).
/// Accepted only at their neutral value: "n" (1), "best_of" (1), "echo"
/// (false), "logprobs" (null), "presence_penalty" and "frequency_penalty"
/// (0), "logit_bias" (null or {}), "suffix" (null). Any other field is
/// refused: "unknown field 'x'". Messages name the field, e.g.
/// "max_tokens: expected an integer in 1..4096".
caf::expected<openai_request> decode_completion_request(const std::string& body);

/// POST /v1/chat/completions body: as above, but "messages" (required,
/// 1..256 objects {"role": string, "content": string or null, "name"?:
/// string}; content given as an array of {"type":"text","text"} parts is
/// joined) instead of "prompt", and "max_completion_tokens" as an alias of
/// "max_tokens" (default 64 for chat).
caf::expected<openai_request> decode_chat_request(const std::string& body);

/// What a finished generation reports.
struct openai_result {
  std::string text;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  /// "length", "stop" or "cancelled" (sent to clients as "stop").
  std::string finish_reason;
};

/// {"id","object":"text_completion","created","model","choices":[{"index":0,
///  "text","finish_reason","logprobs":null}],"usage":{...}}
std::string encode_completion(const std::string& id, const std::string& model,
                              int64_t created_s, const openai_result& r);

/// {"id","object":"chat.completion","created","model","choices":[{"index":0,
///  "message":{"role":"assistant","content"},"finish_reason"}],"usage":{...}}
std::string encode_chat_completion(const std::string& id, const std::string& model,
                                   int64_t created_s, const openai_result& r);

/// One streamed chunk (the JSON after "data: "). `finish_reason` empty ->
/// null. Completions: object "text_completion", choices[0].text = delta.
/// Chat: object "chat.completion.chunk", choices[0].delta = {"content":
/// delta} ({"role":"assistant","content":""} when `first_chat_chunk`).
std::string encode_completion_chunk(const std::string& id, const std::string& model,
                                    int64_t created_s, const std::string& delta,
                                    const std::string& finish_reason);
std::string encode_chat_chunk(const std::string& id, const std::string& model,
                              int64_t created_s, const std::string& delta,
                              const std::string& finish_reason,
                              bool first_chat_chunk = false);

/// The usage-only chunk of stream_options.include_usage: "choices": [] and
/// "usage" {prompt_tokens, completion_tokens, total_tokens}.
std::string encode_usage_chunk(const std::string& id, const std::string& model,
                               int64_t created_s, bool chat, const openai_result& r);

/// Maps our finish reasons onto OpenAI's ("cancelled" -> "stop").
std::string openai_finish_reason(const std::string& ours);

} // namespace infergrid
