// KServe v2 JSON codec (nlohmann-json is confined to this file).
#include "messages/kserve.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "messages/errors.hpp"

namespace infergrid {

namespace {

using json = nlohmann::json;

// Appends the leaves of `data` (flat or nested arrays) to `out` as `T`.
// Returns an error message naming `field` on a non-numeric leaf.
template <class T>
std::optional<std::string> append_leaves(const json& data, const std::string& field,
                                         dtype type, std::vector<T>& out) {
  if (data.is_array()) {
    for (auto& item : data)
      if (auto err = append_leaves(item, field, type, out))
        return err;
    return std::nullopt;
  }
  if (type == dtype::boolean) {
    if (!data.is_boolean())
      return field + ": expected booleans for BOOL";
    out.push_back(static_cast<T>(data.get<bool>()));
    return std::nullopt;
  }
  if (!data.is_number())
    return field + ": expected numbers for " + kserve_name(type);
  if constexpr (std::is_integral_v<T>) {
    if (!data.is_number_integer())
      return field + ": expected integers for " + kserve_name(type);
    auto v = data.get<int64_t>();
    if (type == dtype::uint8 && (v < 0 || v > 255))
      return field + ": " + std::to_string(v) + " out of range for UINT8";
    if (type == dtype::int32 && (v < INT32_MIN || v > INT32_MAX))
      return field + ": " + std::to_string(v) + " out of range for INT32";
    out.push_back(static_cast<T>(v));
  } else {
    out.push_back(data.get<T>());
  }
  return std::nullopt;
}

template <class T>
std::optional<std::string> fill(const json& data, const std::string& field,
                                dtype type, tensor_data& t) {
  std::vector<T> values;
  if (auto err = append_leaves(data, field, type, values))
    return err;
  auto expected_count = element_count(t.shape);
  if (static_cast<int64_t>(values.size()) != expected_count)
    return field + ": " + std::to_string(values.size()) + " values for shape "
           + shape_string(t.shape);
  t.bytes.resize(values.size() * sizeof(T));
  if (!values.empty())
    std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return std::nullopt;
}

template <class T>
json leaves(const tensor_data& t) {
  auto n = t.bytes.size() / sizeof(T);
  json arr = json::array();
  for (std::size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, t.bytes.data() + i * sizeof(T), sizeof(T));
    if constexpr (std::is_floating_point_v<T>)
      arr.push_back(std::isfinite(v) ? json(v) : json(nullptr));
    else
      arr.push_back(v);
  }
  return arr;
}

json tensor_to_json(const tensor_data& t) {
  json out;
  out["name"] = t.name;
  out["shape"] = t.shape;
  out["datatype"] = kserve_name(t.type);
  switch (t.type) {
    case dtype::float32:
      out["data"] = leaves<float>(t);
      break;
    case dtype::float64:
      out["data"] = leaves<double>(t);
      break;
    case dtype::int32:
      out["data"] = leaves<int32_t>(t);
      break;
    case dtype::int64:
      out["data"] = leaves<int64_t>(t);
      break;
    case dtype::uint8:
      out["data"] = leaves<uint8_t>(t);
      break;
    case dtype::boolean: {
      json arr = json::array();
      for (char c : t.bytes)
        arr.push_back(c != 0);
      out["data"] = std::move(arr);
      break;
    }
  }
  return out;
}

caf::error invalid(std::string message) {
  return make_error(errc::invalid_input, std::move(message));
}

} // namespace

caf::expected<std::vector<tensor_data>>
decode_kserve_request(const std::string& json_text) {
  json body = json::parse(json_text, nullptr, false);
  if (body.is_discarded())
    return invalid("body: malformed JSON");
  if (!body.is_object())
    return invalid("body: expected a JSON object");
  auto inputs = body.find("inputs");
  if (inputs == body.end())
    return invalid("inputs: missing");
  if (!inputs->is_array() || inputs->empty())
    return invalid("inputs: expected a non-empty array");
  std::vector<tensor_data> result;
  for (std::size_t i = 0; i < inputs->size(); ++i) {
    auto& in = (*inputs)[i];
    auto field = "inputs[" + std::to_string(i) + "]";
    if (!in.is_object())
      return invalid(field + ": expected an object");
    tensor_data t;
    auto name = in.find("name");
    if (name == in.end() || !name->is_string())
      return invalid(field + ".name: missing or not a string");
    t.name = name->get<std::string>();
    auto datatype = in.find("datatype");
    if (datatype == in.end() || !datatype->is_string())
      return invalid(field + ".datatype: missing or not a string");
    if (!dtype_from_kserve(datatype->get<std::string>(), t.type))
      return invalid(field + ".datatype: unsupported datatype '"
                     + datatype->get<std::string>() + "'");
    auto shape = in.find("shape");
    if (shape == in.end() || !shape->is_array())
      return invalid(field + ".shape: missing or not an array");
    for (auto& d : *shape) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        return invalid(field + ".shape: dimensions must be non-negative integers");
      t.shape.push_back(d.get<int64_t>());
    }
    if (t.shape.size() > 8)
      return invalid(field + ".shape: more than 8 dimensions");
    auto data = in.find("data");
    if (data == in.end())
      return invalid(field + ".data: missing");
    auto data_field = field + ".data";
    std::optional<std::string> err;
    switch (t.type) {
      case dtype::float32:
        err = fill<float>(*data, data_field, t.type, t);
        break;
      case dtype::float64:
        err = fill<double>(*data, data_field, t.type, t);
        break;
      case dtype::int32:
        err = fill<int32_t>(*data, data_field, t.type, t);
        break;
      case dtype::int64:
        err = fill<int64_t>(*data, data_field, t.type, t);
        break;
      case dtype::uint8:
        err = fill<uint8_t>(*data, data_field, t.type, t);
        break;
      case dtype::boolean:
        err = fill<uint8_t>(*data, data_field, t.type, t);
        break;
    }
    if (err)
      return invalid(std::move(*err));
    result.push_back(std::move(t));
  }
  return result;
}

std::string encode_kserve_response(const std::string& model_name,
                                   const std::string& request_id,
                                   const std::vector<tensor_data>& outputs) {
  json out;
  out["model_name"] = model_name;
  if (!request_id.empty())
    out["id"] = request_id;
  out["outputs"] = json::array();
  for (auto& t : outputs)
    out["outputs"].push_back(tensor_to_json(t));
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string encode_kserve_request(const std::vector<tensor_data>& inputs) {
  json out;
  out["inputs"] = json::array();
  for (auto& t : inputs)
    out["inputs"].push_back(tensor_to_json(t));
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

} // namespace infergrid
