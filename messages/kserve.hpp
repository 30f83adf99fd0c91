// KServe v2 JSON <-> tensors. Used by the gateway (to check and decode
// requests), the executor (durable job input/output) and http/ (responses).
// JSON stays inside kserve.cpp; callers see strings and tensors.
#pragma once

#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "messages/tensor.hpp"

namespace infergrid {

/// Decodes a KServe v2 inference request body, `{"inputs": [{"name",
/// "shape", "datatype", "data"}, ...]}`. `data` may be flat or nested (only
/// its leaves count, in row-major order). Fails with errc::invalid_input and a
/// message naming the field, e.g. "inputs[0].data: 15 values for shape [1, 16]".
caf::expected<std::vector<tensor_data>>
decode_kserve_request(const std::string& json_text);

/// Encodes a KServe v2 inference response body:
/// `{"model_name", "id"?, "outputs": [{"name", "shape", "datatype", "data"}]}`.
/// `id` is left out when empty.
std::string encode_kserve_response(const std::string& model_name,
                                   const std::string& request_id,
                                   const std::vector<tensor_data>& outputs);

/// Encodes a KServe v2 request body (for clients, tests and benchmarks).
std::string encode_kserve_request(const std::vector<tensor_data>& inputs);

} // namespace infergrid
