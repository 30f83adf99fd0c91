// Generate-model input/output codec (nlohmann-json stays in this file).
#include "messages/generate_io.hpp"

#include <nlohmann/json.hpp>

#include "messages/errors.hpp"

namespace infergrid {

namespace {

using json = nlohmann::json;

caf::error invalid(std::string message) {
  return make_error(errc::invalid_input, std::move(message));
}

} // namespace

caf::expected<generate_input> decode_generate_input(const std::string& json_text) {
  json body = json::parse(json_text, nullptr, false);
  if (body.is_discarded())
    return invalid("input: malformed JSON");
  if (!body.is_object())
    return invalid("input: expected an object");
  generate_input in;
  bool has_prompt = false;
  for (auto& [key, value] : body.items()) {
    auto field = "input." + key;
    if (key == "prompt") {
      if (!value.is_string())
        return invalid(field + ": expected a string");
      in.prompt = value.get<std::string>();
      if (in.prompt.size() > max_prompt_bytes)
        return invalid(field + ": longer than " + std::to_string(max_prompt_bytes)
                       + " bytes");
      has_prompt = true;
    } else if (key == "max_tokens") {
      if (!value.is_number_integer() || value.get<int64_t>() < 1
          || value.get<int64_t>() > max_generate_tokens)
        return invalid(field + ": expected an integer in 1.."
                       + std::to_string(max_generate_tokens));
      in.max_tokens = value.get<int32_t>();
    } else if (key == "temperature") {
      if (!value.is_number() || value.get<double>() < 0.0 || value.get<double>() > 10.0)
        return invalid(field + ": expected a number in 0..10");
      in.temperature = value.get<double>();
    } else if (key == "top_k") {
      if (!value.is_number_integer() || value.get<int64_t>() < 0
          || value.get<int64_t>() > 1 << 20)
        return invalid(field + ": expected a non-negative integer");
      in.top_k = value.get<int32_t>();
    } else if (key == "top_p") {
      if (!value.is_number() || value.get<double>() <= 0.0 || value.get<double>() > 1.0)
        return invalid(field + ": expected a number in (0, 1]");
      in.top_p = value.get<double>();
    } else if (key == "seed") {
      if (!value.is_number_integer() || value.get<int64_t>() < 0)
        return invalid(field + ": expected a non-negative integer");
      in.has_seed = true;
      in.seed = value.get<uint64_t>();
    } else if (key == "stop") {
      if (value.is_string()) {
        in.stop.push_back(value.get<std::string>());
      } else if (value.is_array() && value.size() <= max_stop_strings) {
        for (auto& s : value) {
          if (!s.is_string())
            return invalid(field + ": expected strings");
          in.stop.push_back(s.get<std::string>());
        }
      } else {
        return invalid(field + ": expected a string or up to "
                       + std::to_string(max_stop_strings) + " strings");
      }
      for (auto& s : in.stop)
        if (s.empty())
          return invalid(field + ": stop strings must not be empty");
    } else {
      return invalid(field + ": unknown field");
    }
  }
  if (!has_prompt)
    return invalid("input.prompt: missing");
  return in;
}

std::string encode_generate_output(const std::string& text, int64_t tokens,
                                   const std::string& finish_reason) {
  json out;
  out["text"] = text;
  out["tokens"] = tokens;
  out["finish_reason"] = finish_reason;
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string encode_generate_delta(const std::string& delta) {
  json out;
  out["delta"] = delta;
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

} // namespace infergrid
