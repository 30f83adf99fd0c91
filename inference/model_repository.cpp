// Reads models/{name}/config.yaml into model_info with yaml-cpp. No LibTorch
// here: the gateway learns every model's interface without loading any.
#include "inference/model_repository.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include "messages/errors.hpp"

namespace fs = std::filesystem;

namespace infergrid::inference {

namespace {

constexpr const char* config_file = "config.yaml";
constexpr const char* model_file = "model.pt";
constexpr const char* dtype_choices = "float32|float64|int32|int64|uint8|bool";

/// A parse failure: the dotted key and what is wrong with it. Thrown only
/// inside this file and turned into an error value by parse_model_config.
struct config_error {
  std::string key;
  std::string problem;
};

[[noreturn]] void fail(const std::string& key, const std::string& problem) {
  throw config_error{key, problem};
}

std::string scalar_text(const YAML::Node& node) {
  if (node.IsScalar())
    return node.Scalar();
  if (node.IsSequence())
    return "a list";
  if (node.IsMap())
    return "a mapping";
  return "nothing";
}

int64_t read_int(const YAML::Node& node, const std::string& key) {
  if (!node.IsScalar())
    fail(key, "expected an integer, got " + scalar_text(node));
  int64_t value = 0;
  if (!YAML::convert<int64_t>::decode(node, value))
    fail(key, "expected an integer, got '" + node.Scalar() + "'");
  return value;
}

bool read_bool(const YAML::Node& node, const std::string& key) {
  if (!node.IsScalar())
    fail(key, "expected true or false, got " + scalar_text(node));
  bool value = false;
  if (!YAML::convert<bool>::decode(node, value))
    fail(key, "expected true or false, got '" + node.Scalar() + "'");
  return value;
}

std::string read_string(const YAML::Node& node, const std::string& key) {
  if (!node.IsScalar())
    fail(key, "expected a string, got " + scalar_text(node));
  return node.Scalar();
}

bool valid_device(const std::string& device) {
  if (device == "auto" || device == "cpu" || device == "cuda")
    return true;
  const std::string prefix = "cuda:";
  if (device.size() <= prefix.size() || device.compare(0, prefix.size(), prefix) != 0)
    return false;
  auto digits = device.substr(prefix.size());
  return digits.size() <= 4
         && std::all_of(digits.begin(), digits.end(),
                        [](unsigned char c) { return std::isdigit(c) != 0; });
}

tensor_spec read_spec(const YAML::Node& node, const std::string& key) {
  if (!node.IsMap())
    fail(key, "expected a mapping {name, dtype, shape}, got " + scalar_text(node));
  for (auto it = node.begin(); it != node.end(); ++it) {
    auto field = it->first.as<std::string>();
    if (field != "name" && field != "dtype" && field != "shape")
      fail(key + "." + field, "unknown key (name|dtype|shape)");
  }
  tensor_spec spec;
  if (!node["name"])
    fail(key + ".name", "missing");
  spec.name = read_string(node["name"], key + ".name");
  if (spec.name.empty())
    fail(key + ".name", "must not be empty");
  if (!node["dtype"])
    fail(key + ".dtype", std::string{"missing ("} + dtype_choices + ")");
  auto dtype_name = read_string(node["dtype"], key + ".dtype");
  if (!dtype_from_string(dtype_name, spec.type))
    fail(key + ".dtype",
         "unknown dtype '" + dtype_name + "' (" + dtype_choices + ")");
  auto shape = node["shape"];
  if (!shape)
    fail(key + ".shape", "missing (a list of ints, -1 = any)");
  if (!shape.IsSequence())
    fail(key + ".shape",
         "expected a list of ints (-1 = any), got " + scalar_text(shape));
  for (std::size_t i = 0; i < shape.size(); ++i) {
    auto dim_key = key + ".shape[" + std::to_string(i) + "]";
    auto dim = read_int(shape[i], dim_key);
    if (dim < -1 || dim == 0)
      fail(dim_key, "dimension " + std::to_string(dim)
                      + " is invalid (a positive size, or -1 for any)");
    spec.shape.push_back(dim);
  }
  return spec;
}

std::vector<tensor_spec> read_specs(const YAML::Node& node,
                                    const std::string& key) {
  if (!node.IsSequence())
    fail(key, "expected a list of {name, dtype, shape}, got " + scalar_text(node));
  std::vector<tensor_spec> specs;
  for (std::size_t i = 0; i < node.size(); ++i) {
    auto item_key = key + "[" + std::to_string(i) + "]";
    auto spec = read_spec(node[i], item_key);
    for (auto& other : specs)
      if (other.name == spec.name)
        fail(item_key + ".name", "duplicate name '" + spec.name + "'");
    specs.push_back(std::move(spec));
  }
  return specs;
}

model_info parse_or_throw(const std::string& name, const YAML::Node& root) {
  if (!root.IsMap())
    fail("(top level)", "expected a mapping with at least 'kind' and 'inputs', got "
                          + scalar_text(root));
  static const char* known[] = {"kind",     "max_batch_size", "max_queue_delay_us",
                                "device",   "memory_mb",      "preload",
                                "sample_rate", "inputs",      "outputs"};
  for (auto it = root.begin(); it != root.end(); ++it) {
    auto key = it->first.IsScalar() ? it->first.Scalar() : std::string{"?"};
    if (std::find(std::begin(known), std::end(known), key) == std::end(known))
      fail(key, "unknown key (kind|max_batch_size|max_queue_delay_us|device|"
                "memory_mb|preload|sample_rate|inputs|outputs)");
  }
  model_info info;
  info.name = name;
  if (!root["kind"])
    fail("kind", "missing (tensor|generate|speech)");
  auto kind = read_string(root["kind"], "kind");
  if (!model_kind_from_string(kind, info.kind))
    fail("kind", "unknown kind '" + kind + "' (tensor|generate|speech)");
  if (auto n = root["max_batch_size"]) {
    info.max_batch_size = read_int(n, "max_batch_size");
    if (info.max_batch_size < 1)
      fail("max_batch_size", "must be >= 1, got " + std::to_string(info.max_batch_size));
  }
  if (auto n = root["max_queue_delay_us"]) {
    info.max_queue_delay_us = read_int(n, "max_queue_delay_us");
    if (info.max_queue_delay_us < 0)
      fail("max_queue_delay_us",
           "must be >= 0, got " + std::to_string(info.max_queue_delay_us));
  }
  if (auto n = root["device"]) {
    info.device = read_string(n, "device");
    if (!valid_device(info.device))
      fail("device", "unknown device '" + info.device + "' (auto|cpu|cuda|cuda:N)");
  }
  if (auto n = root["memory_mb"]) {
    info.memory_mb = read_int(n, "memory_mb");
    if (info.memory_mb < 0)
      fail("memory_mb", "must be >= 0, got " + std::to_string(info.memory_mb));
  }
  if (auto n = root["preload"])
    info.preload = read_bool(n, "preload");
  if (auto n = root["sample_rate"]) {
    info.sample_rate = read_int(n, "sample_rate");
    if (info.sample_rate < 0)
      fail("sample_rate", "must be >= 0, got " + std::to_string(info.sample_rate));
  }
  if (info.kind == model_kind::speech && info.sample_rate <= 0)
    fail("sample_rate", "required (> 0) for kind speech");
  if (!root["inputs"])
    fail("inputs", "missing (a list of {name, dtype, shape})");
  info.inputs = read_specs(root["inputs"], "inputs");
  if (info.inputs.empty())
    fail("inputs", "must declare at least one input");
  if (auto n = root["outputs"])
    info.outputs = read_specs(n, "outputs");
  return info;
}

} // namespace

caf::expected<model_info> parse_model_config(const std::string& name,
                                             const std::string& yaml_text) {
  const std::string where = config_file;
  try {
    return parse_or_throw(name, YAML::Load(yaml_text));
  } catch (const config_error& e) {
    return make_error(errc::invalid_input, where + ": " + e.key + ": " + e.problem);
  } catch (const YAML::Exception& e) {
    // The parser message carries line and column ("yaml-cpp: error at line 3...").
    return make_error(errc::invalid_input, where + ": " + e.what());
  }
}

std::vector<model_entry> scan_model_repository(const std::string& models_dir) {
  std::vector<model_entry> result;
  try {
    std::error_code ec;
    if (!fs::is_directory(models_dir, ec))
      return result;
    fs::directory_iterator it{models_dir, ec};
    if (ec)
      return result;
    for (; it != fs::directory_iterator{}; it.increment(ec)) {
      if (ec)
        break;
      std::error_code entry_ec;
      if (!it->is_directory(entry_ec))
        continue;
      auto dir = it->path();
      auto config_path = dir / config_file;
      if (!fs::is_regular_file(config_path, entry_ec))
        continue;
      model_entry entry;
      entry.dir = dir.string();
      entry.info.name = dir.filename().string();
      std::ifstream in{config_path, std::ios::binary};
      std::ostringstream text;
      text << in.rdbuf();
      if (!in.is_open()) {
        entry.error = "cannot read " + config_path.string();
      } else if (auto info = parse_model_config(entry.info.name, text.str())) {
        entry.info = std::move(*info);
        if (!fs::is_regular_file(dir / model_file, entry_ec))
          entry.error = std::string{model_file} + " missing in " + entry.dir;
      } else {
        entry.error = message_of(info.error());
      }
      result.push_back(std::move(entry));
    }
  } catch (const std::exception& e) {
    // Allocation or filesystem failures: keep what was read so far.
    spdlog::error("scan of model repository {} stopped early: {}", models_dir,
                  e.what());
  }
  std::sort(result.begin(), result.end(),
            [](const model_entry& a, const model_entry& b) {
              return a.info.name < b.info.name;
            });
  return result;
}

} // namespace infergrid::inference
