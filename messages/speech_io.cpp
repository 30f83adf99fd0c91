// Speech-model input/output codec and the /v1/audio/speech body (nlohmann-json
// stays in this file).
#include "messages/speech_io.hpp"

#include <nlohmann/json.hpp>

#include "messages/errors.hpp"

namespace infergrid {

namespace {

using json = nlohmann::json;

caf::error invalid(std::string message) {
  return make_error(errc::invalid_input, std::move(message));
}

// Checks the text to synthesise; `field` names it in the message.
caf::error decode_text(const json& value, const std::string& field, std::string& out) {
  if (!value.is_string() || value.get_ref<const std::string&>().empty())
    return invalid(field + ": expected a non-empty string");
  if (value.get_ref<const std::string&>().size() > max_speech_text_bytes)
    return invalid(field + ": longer than " + std::to_string(max_speech_text_bytes)
                   + " bytes");
  out = value.get<std::string>();
  return {};
}

} // namespace

caf::expected<speech_input> decode_speech_input(const std::string& json_text) {
  json body = json::parse(json_text, nullptr, false);
  if (body.is_discarded())
    return invalid("input: malformed JSON");
  if (!body.is_object())
    return invalid("input: expected an object");
  speech_input in;
  bool has_text = false;
  for (auto& [key, value] : body.items()) {
    auto field = "input." + key;
    if (key == "text") {
      if (auto err = decode_text(value, field, in.text))
        return err;
      has_text = true;
    } else if (key == "voice") {
      if (!value.is_string())
        return invalid(field + ": expected a string");
      in.voice = value.get<std::string>();
    } else {
      return invalid(field + ": unknown field");
    }
  }
  if (!has_text)
    return invalid("input.text: missing");
  return in;
}

caf::expected<speech_http_request> decode_speech_request(const std::string& body_text) {
  json body = json::parse(body_text, nullptr, false);
  if (body.is_discarded())
    return invalid("body: malformed JSON");
  if (!body.is_object())
    return invalid("body: expected a JSON object");
  speech_http_request req;
  bool has_model = false;
  bool has_input = false;
  for (auto& [key, value] : body.items()) {
    if (key == "model") {
      if (!value.is_string() || value.get_ref<const std::string&>().empty())
        return invalid("model: expected a non-empty string");
      req.model = value.get<std::string>();
      has_model = true;
    } else if (key == "input") {
      if (auto err = decode_text(value, "input", req.input.text))
        return err;
      has_input = true;
    } else if (key == "voice") {
      if (!value.is_string())
        return invalid("voice: expected a string");
      req.input.voice = value.get<std::string>();
    } else if (key == "response_format") {
      if (!value.is_string()
          || (value.get_ref<const std::string&>() != "wav"
              && value.get_ref<const std::string&>() != "pcm"))
        return invalid("response_format: expected \"wav\" or \"pcm\"");
      req.response_format = value.get<std::string>();
    } else if (key == "stream") {
      if (!value.is_boolean())
        return invalid("stream: expected a boolean");
      req.stream = value.get<bool>();
    } else if (key == "speed") {
      if (!value.is_number() || value.get<double>() != 1.0)
        return invalid("speed: only 1.0 is supported");
    } else {
      return invalid("body: unknown field '" + key + "'");
    }
  }
  if (!has_model)
    return invalid("model: missing");
  if (!has_input)
    return invalid("input: missing");
  return req;
}

std::string encode_speech_output(const std::string& artifact, int64_t sample_rate,
                                 int64_t samples, int32_t phrases,
                                 double real_time_factor) {
  json out;
  out["artifact"] = artifact;
  out["content_type"] = "audio/wav";
  out["sample_rate"] = sample_rate;
  out["samples"] = samples;
  out["duration_s"]
      = sample_rate > 0 ? static_cast<double>(samples) / static_cast<double>(sample_rate)
                        : 0.0;
  out["phrases"] = phrases;
  // Non-finite numbers have no JSON form; nlohmann writes them as null.
  out["real_time_factor"] = real_time_factor;
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

} // namespace infergrid
