// OpenAI completions and chat codec (nlohmann-json stays in this file).
#include "messages/openai.hpp"

#include <nlohmann/json.hpp>

#include "messages/errors.hpp"

namespace infergrid {

namespace {

using json = nlohmann::json;

/// Most messages one chat request may hold.
constexpr std::size_t max_chat_messages = 256;

caf::error invalid(std::string message) {
  return make_error(errc::invalid_input, std::move(message));
}

/// Invalid UTF-8 becomes U+FFFD, as in encode_generate_output.
std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

/// Whether `v` is an integer in lo..hi (hi >= 0).
bool is_int_in(const json& v, int64_t lo, int64_t hi) {
  if (v.is_number_unsigned()) {
    auto x = v.get<uint64_t>();
    return x <= static_cast<uint64_t>(hi) && (lo <= 0 || x >= static_cast<uint64_t>(lo));
  }
  if (!v.is_number_integer())
    return false;
  auto x = v.get<int64_t>();
  return x >= lo && x <= hi;
}

bool is_zero(const json& v) {
  return v.is_number() && v.get<double>() == 0.0;
}

std::string max_tokens_message(const std::string& field) {
  return field + ": expected an integer in 1.." + std::to_string(max_generate_tokens);
}

caf::error decode_content(const json& value, const std::string& field, std::string& out) {
  if (value.is_null()) {
    out.clear();
    return {};
  }
  if (value.is_string()) {
    out = value.get<std::string>();
    return {};
  }
  if (!value.is_array())
    return invalid(field + ": expected a string, null or an array of text parts");
  // Text parts are joined with a newline, as vLLM does.
  out.clear();
  for (std::size_t i = 0; i < value.size(); ++i) {
    auto& part = value[i];
    auto part_field = field + "[" + std::to_string(i) + "]";
    if (!part.is_object())
      return invalid(part_field + ": expected an object");
    auto type = part.find("type");
    if (type == part.end() || !type->is_string())
      return invalid(part_field + ".type: missing or not a string");
    if (type->get<std::string>() != "text")
      return invalid(part_field + ".type: only \"text\" parts are supported, not '"
                     + type->get<std::string>() + "'");
    auto text = part.find("text");
    if (text == part.end() || !text->is_string())
      return invalid(part_field + ".text: missing or not a string");
    for (auto& [key, v] : part.items())
      if (key != "type" && key != "text")
        return invalid(part_field + ": unknown field '" + key + "'");
    if (i > 0)
      out += '\n';
    out += text->get<std::string>();
  }
  return {};
}

caf::error decode_messages(const json& value, std::vector<chat_message>& out) {
  if (!value.is_array() || value.empty() || value.size() > max_chat_messages)
    return invalid("messages: expected an array of 1.."
                   + std::to_string(max_chat_messages) + " messages");
  for (std::size_t i = 0; i < value.size(); ++i) {
    auto& m = value[i];
    auto field = "messages[" + std::to_string(i) + "]";
    if (!m.is_object())
      return invalid(field + ": expected an object");
    chat_message msg;
    bool has_role = false;
    bool has_content = false;
    for (auto& [key, v] : m.items()) {
      if (key == "role") {
        if (!v.is_string())
          return invalid(field + ".role: expected a string");
        msg.role = v.get<std::string>();
        if (msg.role != "system" && msg.role != "user" && msg.role != "assistant"
            && msg.role != "developer" && msg.role != "tool")
          return invalid(field
                         + ".role: expected system, user, assistant, "
                           "developer or tool, not '"
                         + msg.role + "'");
        has_role = true;
      } else if (key == "content") {
        if (auto err = decode_content(v, field + ".content", msg.content))
          return err;
        has_content = true;
      } else if (key == "name") {
        if (!v.is_string())
          return invalid(field + ".name: expected a string");
      } else {
        return invalid(field + ": unknown field '" + key + "'");
      }
    }
    if (!has_role)
      return invalid(field + ".role: missing");
    if (!has_content)
      return invalid(field + ".content: missing");
    out.push_back(std::move(msg));
  }
  return {};
}

caf::error decode_stop(const json& value, std::vector<std::string>& out) {
  if (value.is_null())
    return {};
  if (value.is_string()) {
    out.push_back(value.get<std::string>());
  } else if (value.is_array() && value.size() <= max_stop_strings) {
    for (auto& s : value) {
      if (!s.is_string())
        return invalid("stop: expected strings");
      out.push_back(s.get<std::string>());
    }
  } else {
    return invalid("stop: expected a string or up to " + std::to_string(max_stop_strings)
                   + " strings");
  }
  for (auto& s : out)
    if (s.empty())
      return invalid("stop: stop strings must not be empty");
  return {};
}

caf::error decode_stream_options(const json& value, bool& include_usage) {
  if (value.is_null())
    return {};
  if (!value.is_object())
    return invalid("stream_options: expected an object");
  for (auto& [key, v] : value.items()) {
    if (key == "include_usage") {
      if (!v.is_boolean())
        return invalid("stream_options.include_usage: expected a boolean");
      include_usage = v.get<bool>();
    } else {
      return invalid("stream_options: unknown field '" + key + "'");
    }
  }
  return {};
}

// Decodes both bodies: `chat` selects "messages" over "prompt". Optional
// fields given as null take their default, as OpenAI does.
caf::expected<openai_request> decode_request(const std::string& body_text, bool chat) {
  json body = json::parse(body_text, nullptr, false);
  if (body.is_discarded())
    return invalid("body: malformed JSON");
  if (!body.is_object())
    return invalid("body: expected a JSON object");
  openai_request req;
  req.chat = chat;
  req.params.max_tokens = chat ? 64 : 16;
  bool has_model = false;
  bool has_prompt = false;
  const json* max_tokens = nullptr;
  const json* max_completion_tokens = nullptr;
  for (auto& [key, value] : body.items()) {
    if (key == "model") {
      if (!value.is_string() || value.get_ref<const std::string&>().empty())
        return invalid("model: expected a non-empty string");
      req.model = value.get<std::string>();
      has_model = true;
    } else if (!chat && key == "prompt") {
      if (value.is_string()) {
        req.params.prompt = value.get<std::string>();
      } else if (value.is_array() && value.size() == 1 && value[0].is_string()) {
        req.params.prompt = value[0].get<std::string>();
      } else {
        return invalid("prompt: expected a string or an array of one string");
      }
      if (req.params.prompt.size() > max_prompt_bytes)
        return invalid("prompt: longer than " + std::to_string(max_prompt_bytes)
                       + " bytes");
      has_prompt = true;
    } else if (chat && key == "messages") {
      if (auto err = decode_messages(value, req.messages))
        return err;
      has_prompt = true;
    } else if (key == "max_tokens") {
      if (!value.is_null() && !is_int_in(value, 1, max_generate_tokens))
        return invalid(max_tokens_message(key));
      max_tokens = &value;
    } else if (chat && key == "max_completion_tokens") {
      if (!value.is_null() && !is_int_in(value, 1, max_generate_tokens))
        return invalid(max_tokens_message(key));
      max_completion_tokens = &value;
    } else if (key == "temperature") {
      if (value.is_null())
        continue;
      if (!value.is_number() || value.get<double>() < 0.0 || value.get<double>() > 2.0)
        return invalid("temperature: expected a number in 0..2");
      req.params.temperature = value.get<double>();
    } else if (key == "top_p") {
      if (value.is_null())
        continue;
      if (!value.is_number() || value.get<double>() <= 0.0 || value.get<double>() > 1.0)
        return invalid("top_p: expected a number in (0, 1]");
      req.params.top_p = value.get<double>();
    } else if (key == "top_k") {
      if (value.is_null())
        continue;
      if (!is_int_in(value, 0, 1 << 20))
        return invalid("top_k: expected a non-negative integer");
      req.params.top_k = value.get<int32_t>();
    } else if (key == "seed") {
      if (value.is_null())
        continue;
      if (!value.is_number_unsigned()
          && !(value.is_number_integer() && value.get<int64_t>() >= 0))
        return invalid("seed: expected a non-negative integer");
      req.params.has_seed = true;
      req.params.seed = value.get<uint64_t>();
    } else if (key == "stop") {
      if (auto err = decode_stop(value, req.params.stop))
        return err;
    } else if (key == "stream") {
      if (value.is_null())
        continue;
      if (!value.is_boolean())
        return invalid("stream: expected a boolean");
      req.stream = value.get<bool>();
    } else if (key == "stream_options") {
      if (auto err = decode_stream_options(value, req.include_usage))
        return err;
    } else if (key == "user") {
      if (!value.is_null() && !value.is_string())
        return invalid("user: expected a string");
    } else if (key == "n" || key == "best_of") {
      if (!value.is_null() && !(value.is_number_integer() && value.get<int64_t>() == 1))
        return invalid(key + ": only 1 is supported");
    } else if (key == "echo") {
      if (!value.is_null() && !(value.is_boolean() && !value.get<bool>()))
        return invalid("echo: only false is supported");
    } else if (key == "logprobs") {
      if (!value.is_null() && !(value.is_boolean() && !value.get<bool>()))
        return invalid("logprobs: not supported (only null or false)");
    } else if (key == "presence_penalty" || key == "frequency_penalty") {
      if (!value.is_null() && !is_zero(value))
        return invalid(key + ": only 0 is supported");
    } else if (key == "logit_bias") {
      if (!value.is_null() && !(value.is_object() && value.empty()))
        return invalid("logit_bias: not supported (only null or {})");
    } else if (key == "suffix") {
      if (!value.is_null())
        return invalid("suffix: not supported (only null)");
    } else {
      return invalid("body: unknown field '" + key + "'");
    }
  }
  if (!has_model)
    return invalid("model: missing");
  if (!has_prompt)
    return invalid(chat ? "messages: missing" : "prompt: missing");
  if (max_tokens && max_completion_tokens && !max_tokens->is_null()
      && !max_completion_tokens->is_null() && *max_tokens != *max_completion_tokens)
    return invalid("max_completion_tokens: differs from max_tokens");
  for (auto* v : {max_tokens, max_completion_tokens})
    if (v && !v->is_null())
      req.params.max_tokens = v->get<int32_t>();
  if (chat) {
    req.params.prompt = chat_prompt(req.messages);
    if (req.params.prompt.size() > max_prompt_bytes)
      return invalid("messages: rendered prompt longer than "
                     + std::to_string(max_prompt_bytes) + " bytes");
  }
  return req;
}

json usage_json(const openai_result& r) {
  return json{{"prompt_tokens", r.prompt_tokens},
              {"completion_tokens", r.completion_tokens},
              {"total_tokens", r.prompt_tokens + r.completion_tokens}};
}

json finish_json(const std::string& ours) {
  auto theirs = openai_finish_reason(ours);
  return theirs.empty() ? json(nullptr) : json(theirs);
}

json envelope(const std::string& id, const char* object, int64_t created_s,
              const std::string& model) {
  json out;
  out["id"] = id;
  out["object"] = object;
  out["created"] = created_s;
  out["model"] = model;
  return out;
}

} // namespace

std::string chat_prompt(const std::vector<chat_message>& messages) {
  std::string out;
  for (auto& m : messages) {
    out += m.role;
    out += ": ";
    out += m.content;
    out += '\n';
  }
  out += "assistant:";
  return out;
}

caf::expected<openai_request> decode_completion_request(const std::string& body) {
  return decode_request(body, false);
}

caf::expected<openai_request> decode_chat_request(const std::string& body) {
  return decode_request(body, true);
}

std::string encode_completion(const std::string& id, const std::string& model,
                              int64_t created_s, const openai_result& r) {
  auto out = envelope(id, "text_completion", created_s, model);
  json choice;
  choice["index"] = 0;
  choice["text"] = r.text;
  choice["finish_reason"] = finish_json(r.finish_reason);
  choice["logprobs"] = nullptr;
  out["choices"] = json::array({std::move(choice)});
  out["usage"] = usage_json(r);
  return dump(out);
}

std::string encode_chat_completion(const std::string& id, const std::string& model,
                                   int64_t created_s, const openai_result& r) {
  auto out = envelope(id, "chat.completion", created_s, model);
  json choice;
  choice["index"] = 0;
  choice["message"] = json{{"role", "assistant"}, {"content", r.text}};
  choice["finish_reason"] = finish_json(r.finish_reason);
  out["choices"] = json::array({std::move(choice)});
  out["usage"] = usage_json(r);
  return dump(out);
}

std::string encode_completion_chunk(const std::string& id, const std::string& model,
                                    int64_t created_s, const std::string& delta,
                                    const std::string& finish_reason) {
  auto out = envelope(id, "text_completion", created_s, model);
  json choice;
  choice["index"] = 0;
  choice["text"] = delta;
  choice["finish_reason"] = finish_json(finish_reason);
  choice["logprobs"] = nullptr;
  out["choices"] = json::array({std::move(choice)});
  return dump(out);
}

std::string encode_chat_chunk(const std::string& id, const std::string& model,
                              int64_t created_s, const std::string& delta,
                              const std::string& finish_reason, bool first_chat_chunk) {
  auto out = envelope(id, "chat.completion.chunk", created_s, model);
  json choice;
  choice["index"] = 0;
  json d;
  if (first_chat_chunk)
    d["role"] = "assistant";
  d["content"] = delta;
  choice["delta"] = std::move(d);
  choice["finish_reason"] = finish_json(finish_reason);
  out["choices"] = json::array({std::move(choice)});
  return dump(out);
}

std::string encode_usage_chunk(const std::string& id, const std::string& model,
                               int64_t created_s, bool chat, const openai_result& r) {
  auto out = envelope(id, chat ? "chat.completion.chunk" : "text_completion", created_s,
                      model);
  out["choices"] = json::array();
  out["usage"] = usage_json(r);
  return dump(out);
}

std::string openai_finish_reason(const std::string& ours) {
  if (ours == "cancelled")
    return "stop";
  return ours;
}

} // namespace infergrid
