// Tensors as plain data: what crosses actor boundaries and the inference facade.
// No LibTorch here; inference/ converts to and from torch::Tensor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/meta/type_name.hpp>

namespace infergrid {

/// Element types a model may take or give.
enum class dtype : uint8_t { float32 = 1, float64, int32, int64, uint8, boolean };

/// Bytes per element of `t`.
std::size_t element_size(dtype t);

/// The config/YAML name ("float32", "int64", "bool", ...).
std::string to_string(dtype t);
bool dtype_from_string(const std::string& name, dtype& out);

/// The KServe v2 datatype name ("FP32", "INT64", "BOOL", ...).
std::string kserve_name(dtype t);
bool dtype_from_kserve(const std::string& name, dtype& out);

/// Product of the dimensions; 1 for a scalar (empty shape).
int64_t element_count(const std::vector<int64_t>& shape);

/// Renders a shape as "[2, 16]".
std::string shape_string(const std::vector<int64_t>& shape);

/// A named tensor: shape plus little-endian element bytes in row-major order.
struct tensor_data {
  std::string name;
  dtype type = dtype::float32;
  std::vector<int64_t> shape;
  std::vector<char> bytes;

  /// True when bytes.size() == element_count(shape) * element_size(type).
  bool consistent() const;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, tensor_data& x) {
  return f(caf::meta::type_name("tensor_data"), x.name, x.type, x.shape,
           x.bytes);
}

/// Makes a float32 tensor from values (helper for tests and demo inputs).
tensor_data make_float_tensor(std::string name, std::vector<int64_t> shape,
                              const std::vector<float>& values);

/// Reads a float32 tensor's values; empty if the type is not float32.
std::vector<float> float_values(const tensor_data& t);

/// What a model declares about one input or output; -1 in a shape means any.
struct tensor_spec {
  std::string name;
  dtype type = dtype::float32;
  std::vector<int64_t> shape;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, tensor_spec& x) {
  return f(caf::meta::type_name("tensor_spec"), x.name, x.type, x.shape);
}

} // namespace infergrid
