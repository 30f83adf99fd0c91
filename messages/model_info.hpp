// What a model declares in models/{name}/config.yaml, as plain data, plus the
// input check every entry point runs before any work is queued.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <caf/meta/type_name.hpp>

#include "messages/tensor.hpp"

namespace infergrid {

/// The interface family of a model (API.md, "Model kinds").
enum class model_kind : uint8_t { tensor = 1, generate, speech };

std::string to_string(model_kind k);
bool model_kind_from_string(const std::string& name, model_kind& out);

/// One model of the repository: its declared interface and serving knobs.
struct model_info {
  std::string name;
  model_kind kind = model_kind::tensor;
  /// "auto", "cpu" or "cuda"/"cuda:N".
  std::string device = "auto";
  int64_t max_batch_size = 1;
  int64_t max_queue_delay_us = 0;
  int64_t memory_mb = 0;
  bool preload = true;
  /// Output sample rate of speech models; 0 for other kinds.
  int64_t sample_rate = 0;
  std::vector<tensor_spec> inputs;
  std::vector<tensor_spec> outputs;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, model_info& x) {
  return f(caf::meta::type_name("model_info"), x.name, x.kind, x.device,
           x.max_batch_size, x.max_queue_delay_us, x.memory_mb, x.preload,
           x.sample_rate, x.inputs, x.outputs);
}

/// Checks tensors against the model's declared inputs: every declared input is
/// present once, no unknown names, dtype equal, rank equal, each fixed
/// dimension equal (-1 matches any), batch dimension within max_batch_size,
/// byte size consistent. Returns nullopt when valid, otherwise a message that
/// names the offending field, e.g. "inputs[0].shape: expected [-1, 16], got
/// [1, 15]". Runs in the caller's thread; never blocks.
std::optional<std::string> validate_inputs(const model_info& model,
                                           const std::vector<tensor_data>& xs);

} // namespace infergrid
