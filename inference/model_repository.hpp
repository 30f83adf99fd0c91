// The model repository: models/{name}/config.yaml + model.pt. Reading configs
// needs no LibTorch, so the gateway can know every model's interface at start.
#pragma once

#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "messages/model_info.hpp"

namespace infergrid::inference {

/// One directory of the repository. A broken model is reported, not fatal.
struct model_entry {
  model_info info;
  /// The model's directory (holds config.yaml and model.pt).
  std::string dir;
  /// Empty when the config is valid and model.pt exists; otherwise why not.
  std::string error;
};

/// Parses a model's config.yaml text (API.md "Model kinds"). `name` is the
/// directory name. Fails with errc::invalid_input and a message naming the
/// key, e.g. "config.yaml: kind: unknown kind 'foo' (tensor|generate|speech)".
caf::expected<model_info> parse_model_config(const std::string& name,
                                             const std::string& yaml_text);

/// Reads every subdirectory of `models_dir` that holds a config.yaml, sorted
/// by name. Never throws; a missing `models_dir` yields an empty list.
std::vector<model_entry> scan_model_repository(const std::string& models_dir);

} // namespace infergrid::inference
