// dtype names and small tensor helpers.
#include "messages/tensor.hpp"

#include <array>
#include <cstring>
#include <tuple>

namespace infergrid {

namespace {

struct dtype_names {
  dtype type;
  const char* config;
  const char* kserve;
  std::size_t size;
};

constexpr std::array<dtype_names, 6> table{{
  {dtype::float32, "float32", "FP32", 4},
  {dtype::float64, "float64", "FP64", 8},
  {dtype::int32, "int32", "INT32", 4},
  {dtype::int64, "int64", "INT64", 8},
  {dtype::uint8, "uint8", "UINT8", 1},
  {dtype::boolean, "bool", "BOOL", 1},
}};

const dtype_names* find(dtype t) {
  for (auto& row : table)
    if (row.type == t)
      return &row;
  return nullptr;
}

} // namespace

std::size_t element_size(dtype t) {
  auto row = find(t);
  return row ? row->size : 0;
}

std::string to_string(dtype t) {
  auto row = find(t);
  return row ? row->config : "unknown";
}

bool dtype_from_string(const std::string& name, dtype& out) {
  for (auto& row : table) {
    if (name == row.config) {
      out = row.type;
      return true;
    }
  }
  return false;
}

std::string kserve_name(dtype t) {
  auto row = find(t);
  return row ? row->kserve : "UNKNOWN";
}

bool dtype_from_kserve(const std::string& name, dtype& out) {
  for (auto& row : table) {
    if (name == row.kserve) {
      out = row.type;
      return true;
    }
  }
  return false;
}

int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (auto d : shape)
    n *= d;
  return n;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0)
      out += ", ";
    out += std::to_string(shape[i]);
  }
  out += "]";
  return out;
}

bool tensor_data::consistent() const {
  for (auto d : shape)
    if (d < 0)
      return false;
  return bytes.size()
         == static_cast<std::size_t>(element_count(shape)) * element_size(type);
}

tensor_data make_float_tensor(std::string name, std::vector<int64_t> shape,
                              const std::vector<float>& values) {
  tensor_data t;
  t.name = std::move(name);
  t.type = dtype::float32;
  t.shape = std::move(shape);
  t.bytes.resize(values.size() * sizeof(float));
  if (!values.empty())
    std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

std::vector<float> float_values(const tensor_data& t) {
  if (t.type != dtype::float32)
    return {};
  std::vector<float> out(t.bytes.size() / sizeof(float));
  if (!out.empty())
    std::memcpy(out.data(), t.bytes.data(), out.size() * sizeof(float));
  return out;
}

} // namespace infergrid
