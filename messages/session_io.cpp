// Session text-frame codec (nlohmann-json stays in this file).
#include "messages/session_io.hpp"

#include <nlohmann/json.hpp>

#include "messages/errors.hpp"

namespace infergrid {

namespace {

using json = nlohmann::json;

caf::error invalid(std::string message) {
  return make_error(errc::invalid_input, std::move(message));
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Reads an integer in lo..hi (lo >= 0 or not) without wrapping large unsigned
// values into negative ones; returns false when `value` is no such integer.
bool integer_in(const json& value, int64_t lo, int64_t hi, int64_t& out) {
  if (value.is_number_unsigned()) {
    auto u = value.get<uint64_t>();
    if (hi < 0 || u > static_cast<uint64_t>(hi))
      return false;
    out = static_cast<int64_t>(u);
  } else if (value.is_number_integer()) {
    out = value.get<int64_t>();
  } else {
    return false;
  }
  return out >= lo && out <= hi;
}

bool non_empty_string(const json& value) {
  return value.is_string() && !value.get_ref<const std::string&>().empty();
}

caf::error decode_start(const json& body, session_client_frame& out) {
  bool has_model = false;
  bool has_pipeline = false;
  auto& params = out.params;
  for (auto& [key, value] : body.items()) {
    if (key == "type")
      continue;
    auto field = "session.start." + key;
    if (key == "model") {
      if (!non_empty_string(value))
        return invalid(field + ": expected a non-empty string");
      out.model = value.get<std::string>();
      has_model = true;
    } else if (key == "pipeline") {
      if (!non_empty_string(value))
        return invalid(field + ": expected a non-empty string");
      out.pipeline = value.get<std::string>();
      has_pipeline = true;
    } else if (key == "mode") {
      if (!value.is_string()
          || (value.get_ref<const std::string&>() != "turn"
              && value.get_ref<const std::string&>() != "duplex"))
        return invalid(field + ": expected turn or duplex");
      out.mode = value.get<std::string>();
    } else if (key == "record") {
      if (!value.is_boolean())
        return invalid(field + ": expected a boolean");
      out.record = value.get<bool>();
    } else if (key == "input_rate") {
      if (!integer_in(value, 8000, 48000, out.input_rate))
        return invalid(field + ": expected an integer in 8000..48000");
    } else if (key == "voice") {
      if (!value.is_string())
        return invalid(field + ": expected a string");
      out.voice = value.get<std::string>();
    } else if (key == "max_tokens") {
      int64_t n = 0;
      if (!integer_in(value, 1, max_generate_tokens, n))
        return invalid(field + ": expected an integer in 1.."
                       + std::to_string(max_generate_tokens));
      params.max_tokens = static_cast<int32_t>(n);
    } else if (key == "temperature") {
      if (!value.is_number() || value.get<double>() < 0.0 || value.get<double>() > 10.0)
        return invalid(field + ": expected a number in 0..10");
      params.temperature = value.get<double>();
    } else if (key == "top_k") {
      int64_t n = 0;
      if (!integer_in(value, 0, 1 << 20, n))
        return invalid(field + ": expected a non-negative integer");
      params.top_k = static_cast<int32_t>(n);
    } else if (key == "top_p") {
      if (!value.is_number() || value.get<double>() <= 0.0 || value.get<double>() > 1.0)
        return invalid(field + ": expected a number in (0, 1]");
      params.top_p = value.get<double>();
    } else if (key == "seed") {
      // JSON's non-negative integers parse as unsigned; negative ones do not.
      if (!value.is_number_unsigned())
        return invalid(field + ": expected a non-negative integer");
      params.has_seed = true;
      params.seed = value.get<uint64_t>();
    } else if (key == "stop") {
      params.stop.clear();
      if (value.is_string()) {
        params.stop.push_back(value.get<std::string>());
      } else if (value.is_array() && value.size() <= max_stop_strings) {
        for (auto& s : value) {
          if (!s.is_string())
            return invalid(field + ": expected strings");
          params.stop.push_back(s.get<std::string>());
        }
      } else {
        return invalid(field + ": expected a string or up to "
                       + std::to_string(max_stop_strings) + " strings");
      }
      for (auto& s : params.stop)
        if (s.empty())
          return invalid(field + ": stop strings must not be empty");
    } else {
      return invalid(field + ": unknown field");
    }
  }
  if (has_model == has_pipeline)
    return invalid("session.start: expected exactly one of model and pipeline");
  return {};
}

caf::error decode_input_text(const json& body, session_client_frame& out) {
  bool has_text = false;
  for (auto& [key, value] : body.items()) {
    if (key == "type")
      continue;
    auto field = "input.text." + key;
    if (key == "text") {
      if (!non_empty_string(value))
        return invalid(field + ": expected a non-empty string");
      if (value.get_ref<const std::string&>().size() > max_prompt_bytes)
        return invalid(field + ": longer than " + std::to_string(max_prompt_bytes)
                       + " bytes");
      out.text = value.get<std::string>();
      has_text = true;
    } else {
      return invalid(field + ": unknown field");
    }
  }
  if (!has_text)
    return invalid("input.text.text: expected a non-empty string");
  return {};
}

caf::error decode_control(const json& body, session_client_frame& out) {
  bool has_action = false;
  for (auto& [key, value] : body.items()) {
    if (key == "type")
      continue;
    auto field = "control." + key;
    if (key == "action") {
      auto ok = value.is_string();
      if (ok) {
        auto& a = value.get_ref<const std::string&>();
        ok = a == "pause" || a == "resume" || a == "stop" || a == "barge_in";
      }
      if (!ok)
        return invalid(field + ": expected pause, resume, stop or barge_in");
      out.action = value.get<std::string>();
      has_action = true;
    } else {
      return invalid(field + ": unknown field");
    }
  }
  if (!has_action)
    return invalid("control.action: expected pause, resume, stop or barge_in");
  return {};
}

} // namespace

caf::expected<session_client_frame> decode_session_frame(const std::string& text) {
  if (text.size() > max_session_frame_bytes)
    return invalid("frame: larger than " + std::to_string(max_session_frame_bytes)
                   + " bytes");
  json body = json::parse(text, nullptr, false);
  if (body.is_discarded())
    return invalid("frame: malformed JSON");
  if (!body.is_object())
    return invalid("frame: expected a JSON object");
  static const std::string type_error
      = "type: expected session.start, input.text or control";
  auto type = body.find("type");
  if (type == body.end() || !type->is_string())
    return invalid(type_error);
  session_client_frame out;
  out.type = type->get<std::string>();
  caf::error err;
  if (out.type == "session.start")
    err = decode_start(body, out);
  else if (out.type == "input.text")
    err = decode_input_text(body, out);
  else if (out.type == "control")
    err = decode_control(body, out);
  else
    return invalid(type_error);
  if (err)
    return err;
  return out;
}

std::string encode_queue_position(int64_t position, int64_t eta_ms) {
  json out;
  out["type"] = "queue.position";
  out["position"] = position;
  if (eta_ms >= 0)
    out["eta_ms"] = eta_ms;
  return dump(out);
}

std::string encode_session_started(const std::string& session_id,
                                   const std::string& worker, const std::string& model,
                                   const std::string& mode, int64_t sample_rate) {
  json out;
  out["type"] = "session.started";
  out["session_id"] = session_id;
  out["worker"] = worker;
  out["model"] = model;
  out["mode"] = mode;
  if (sample_rate > 0)
    out["sample_rate"] = sample_rate;
  return dump(out);
}

std::string encode_session_state(const std::string& state) {
  json out;
  out["type"] = "state";
  out["state"] = state;
  return dump(out);
}

std::string encode_output_text(const std::string& delta, int64_t seq) {
  json out;
  out["type"] = "output.text";
  out["delta"] = delta;
  out["seq"] = seq;
  return dump(out);
}

std::string encode_text_turn_end(int64_t turn, const std::string& finish_reason,
                                 int64_t prompt_tokens, int64_t completion_tokens) {
  json out;
  out["type"] = "turn.end";
  out["turn"] = turn;
  out["finish_reason"] = finish_reason;
  out["usage"] = {{"prompt_tokens", prompt_tokens},
                  {"completion_tokens", completion_tokens},
                  {"total_tokens", prompt_tokens + completion_tokens}};
  return dump(out);
}

std::string encode_speech_turn_end(int64_t turn, const std::string& finish_reason,
                                   int64_t samples, int64_t sample_rate,
                                   double real_time_factor) {
  json out;
  out["type"] = "turn.end";
  out["turn"] = turn;
  out["finish_reason"] = finish_reason;
  // No rate means no duration to report; 0 rather than a division by zero.
  auto seconds = sample_rate > 0
                     ? static_cast<double>(samples) / static_cast<double>(sample_rate)
                     : 0.0;
  // Non-finite numbers have no JSON form; nlohmann writes them as null.
  out["usage"] = {{"samples", samples},
                  {"sample_rate", sample_rate},
                  {"audio_seconds", seconds},
                  {"real_time_factor", real_time_factor}};
  return dump(out);
}

std::string encode_session_end(const std::string& reason) {
  json out;
  out["type"] = "session.end";
  out["reason"] = reason;
  return dump(out);
}

std::string encode_session_error(const std::string& code, const std::string& message) {
  json out;
  out["type"] = "error";
  out["code"] = code;
  out["message"] = message;
  return dump(out);
}

} // namespace infergrid
