// Dynamic batching: byte-level concatenation and slicing along dimension 0, and
// the batch-forming rule. No LibTorch here; tensors are plain row-major bytes.
#include "inference/batching.hpp"

#include <algorithm>
#include <cstddef>
#include <limits>
#include <optional>
#include <string>

#include "messages/errors.hpp"

namespace infergrid::inference {

namespace {

/// Bytes a tensor of `shape` and `type` must hold; nullopt for negative
/// dimensions, an unknown dtype or a size that overflows.
std::optional<std::size_t> expected_bytes(const std::vector<int64_t>& shape, dtype type) {
  std::size_t n = element_size(type);
  if (n == 0)
    return std::nullopt;
  for (auto d : shape) {
    if (d < 0)
      return std::nullopt;
    auto ud = static_cast<std::size_t>(d);
    if (ud != 0 && n > std::numeric_limits<std::size_t>::max() / ud)
      return std::nullopt;
    n *= ud;
  }
  return n;
}

/// "request 2 input 'x': " — the prefix of every concat_batch error.
std::string where(std::size_t request, const std::string& input) {
  return "request " + std::to_string(request) + " input '" + input + "': ";
}

caf::error invalid(std::string message) {
  return make_error(errc::invalid_input, std::move(message));
}

/// Checks one request on its own and returns its batch size (the common dim 0).
caf::expected<int64_t> check_request(std::size_t index,
                                     const std::vector<tensor_data>& inputs) {
  if (inputs.empty())
    return invalid("request " + std::to_string(index) + " has no inputs");
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    const auto& x = inputs[k];
    if (x.shape.empty())
      return invalid(where(index, x.name)
                     + "is a scalar (rank 0); batching needs a batch dimension");
    auto want = expected_bytes(x.shape, x.type);
    if (!want)
      return invalid(where(index, x.name) + "invalid shape " + shape_string(x.shape)
                     + " or dtype " + to_string(x.type));
    if (*want != x.bytes.size())
      return invalid(where(index, x.name) + std::to_string(x.bytes.size())
                     + " bytes for shape " + shape_string(x.shape) + " of "
                     + to_string(x.type) + ", expected " + std::to_string(*want));
    for (std::size_t j = 0; j < k; ++j)
      if (inputs[j].name == x.name)
        return invalid("request " + std::to_string(index) + " has input '" + x.name
                       + "' twice");
    if (x.shape[0] != inputs[0].shape[0])
      return invalid(where(index, x.name) + "batch " + std::to_string(x.shape[0])
                     + " differs from input '" + inputs[0].name + "' with batch "
                     + std::to_string(inputs[0].shape[0]));
  }
  return inputs[0].shape[0];
}

const tensor_data* find_input(const std::vector<tensor_data>& inputs,
                              const std::string& name) {
  for (const auto& x : inputs)
    if (x.name == name)
      return &x;
  return nullptr;
}

/// Checks request `index` against request 0 (same names, dtypes, trailing dims).
std::optional<caf::error> check_matches(std::size_t index,
                                        const std::vector<tensor_data>& first,
                                        const std::vector<tensor_data>& other) {
  for (const auto& x : first) {
    auto y = find_input(other, x.name);
    if (y == nullptr)
      return invalid(where(index, x.name) + "missing (request 0 has it)");
    if (y->type != x.type)
      return invalid(where(index, x.name) + "dtype " + to_string(y->type)
                     + ", request 0 has " + to_string(x.type));
    if (y->shape.size() != x.shape.size()
        || !std::equal(x.shape.begin() + 1, x.shape.end(), y->shape.begin() + 1))
      return invalid(where(index, x.name) + "shape " + shape_string(y->shape)
                     + ", request 0 has " + shape_string(x.shape)
                     + " (dimensions after the first must match)");
  }
  for (const auto& y : other)
    if (find_input(first, y.name) == nullptr)
      return invalid(where(index, y.name) + "unexpected (request 0 lacks it)");
  return std::nullopt;
}

} // namespace

caf::expected<batched_inputs>
concat_batch(const std::vector<std::vector<tensor_data>>& requests) {
  if (requests.empty())
    return invalid("concat_batch: no requests");
  batched_inputs result;
  result.sizes.reserve(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    auto size = check_request(i, requests[i]);
    if (!size)
      return std::move(size.error());
    if (i > 0)
      if (auto err = check_matches(i, requests[0], requests[i]))
        return std::move(*err);
    result.sizes.push_back(*size);
  }
  if (requests.size() == 1) {
    result.inputs = requests[0];
    return result;
  }
  int64_t rows = 0;
  for (auto n : result.sizes)
    rows += n;
  const auto& first = requests[0];
  result.inputs.reserve(first.size());
  for (const auto& x : first) {
    tensor_data out;
    out.name = x.name;
    out.type = x.type;
    out.shape = x.shape;
    out.shape[0] = rows;
    std::size_t total = 0;
    for (const auto& req : requests)
      total += find_input(req, x.name)->bytes.size();
    out.bytes.reserve(total);
    for (const auto& req : requests) {
      const auto& bytes = find_input(req, x.name)->bytes;
      out.bytes.insert(out.bytes.end(), bytes.begin(), bytes.end());
    }
    result.inputs.push_back(std::move(out));
  }
  return result;
}

caf::expected<std::vector<std::vector<tensor_data>>>
split_batch(const std::vector<tensor_data>& outputs, const std::vector<int64_t>& sizes) {
  if (sizes.empty())
    return invalid("split_batch: no requests");
  int64_t rows = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] < 0)
      return invalid("split_batch: sizes[" + std::to_string(i) + "] is negative");
    rows += sizes[i];
  }
  if (sizes.size() == 1)
    return std::vector<std::vector<tensor_data>>{outputs};
  std::vector<std::vector<tensor_data>> result(sizes.size());
  for (auto& r : result)
    r.reserve(outputs.size());
  for (const auto& y : outputs) {
    if (y.shape.empty())
      return make_error(errc::model_error, "output '" + y.name
                                               + "' is a scalar, expected batch "
                                               + std::to_string(rows));
    if (y.shape[0] != rows)
      return make_error(errc::model_error, "output '" + y.name + "' has batch "
                                               + std::to_string(y.shape[0])
                                               + ", expected " + std::to_string(rows));
    auto want = expected_bytes(y.shape, y.type);
    if (!want || *want != y.bytes.size())
      return make_error(errc::model_error,
                        "output '" + y.name + "': " + std::to_string(y.bytes.size())
                            + " bytes for shape " + shape_string(y.shape) + " of "
                            + to_string(y.type));
    std::vector<int64_t> row_shape(y.shape.begin() + 1, y.shape.end());
    auto row_bytes = *expected_bytes(row_shape, y.type); // <= *want: cannot fail
    std::size_t offset = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      tensor_data part;
      part.name = y.name;
      part.type = y.type;
      part.shape = y.shape;
      part.shape[0] = sizes[i];
      auto n = static_cast<std::size_t>(sizes[i]) * row_bytes;
      part.bytes.assign(y.bytes.begin() + static_cast<std::ptrdiff_t>(offset),
                        y.bytes.begin() + static_cast<std::ptrdiff_t>(offset + n));
      offset += n;
      result[i].push_back(std::move(part));
    }
  }
  return result;
}

batch_decision decide_batch(const batch_policy& p, int64_t pending,
                            int64_t oldest_waited_us) {
  batch_decision d;
  if (pending < 1)
    return d;
  auto max_batch = std::max<int64_t>(p.max_batch_size, 1);
  if (pending >= max_batch) {
    d.ready = true;
    d.take = max_batch;
    return d;
  }
  int64_t preferred = 0;
  for (auto s : p.preferred_sizes)
    if (s >= 1 && s <= pending)
      preferred = std::max(preferred, s);
  if (preferred > 0) {
    d.ready = true;
    d.take = preferred;
    return d;
  }
  if (oldest_waited_us >= p.max_queue_delay_us) {
    d.ready = true;
    d.take = pending;
    return d;
  }
  d.wait_us = p.max_queue_delay_us - std::max<int64_t>(oldest_waited_us, 0);
  return d;
}

} // namespace infergrid::inference
