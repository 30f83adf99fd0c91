// Loads the effective settings: built-in defaults (== configs/infergrid.yaml),
// then a YAML file, then the environment, then command-line flags.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <caf/expected.hpp>

#include "messages/settings.hpp"

namespace infergrid {

/// Where each layer of configuration comes from.
struct config_sources {
  /// YAML file to read; empty means none (defaults only). The caller resolves
  /// --config, then CONFIG_PATH.
  std::string yaml_path;
  /// The process environment (or a test's): INFERGRID_SECTION__KEY, PORT,
  /// LOG_LEVEL are read; other variables are ignored.
  std::map<std::string, std::string> env;
  /// Flag overrides as "section.key" -> value; they win over everything.
  std::map<std::string, std::string> flags;
};

/// Builds and validates the settings. Fails with errc::invalid_input and a
/// message naming the bad key, its source and the allowed values, e.g.
/// "http.port (from PORT): 70000 is out of range 1..65535". Creates
/// storage.data_dir and storage.models_dir when their parent exists.
caf::expected<settings> load_settings(const config_sources& sources);

/// Applies YAML text to `s` (no validation of directories). Exposed for tests.
caf::expected<void> apply_yaml(settings& s, const std::string& yaml_text,
                               const std::string& origin);

/// Every configuration key, "section.key", in file order.
std::vector<std::string> config_keys();

/// Every key's value in `s`, in file order, as text that load_settings reads
/// back to the same value: how serve hands its effective settings (file,
/// environment and flags together) to the worker processes it starts.
std::vector<std::pair<std::string, std::string>> setting_values(const settings& s);

/// The environment variable of a key: "workers.stream_interval_ms" ->
/// "INFERGRID_WORKERS__STREAM_INTERVAL_MS".
std::string env_name(const std::string& key);

/// The process environment as a map.
std::map<std::string, std::string> process_environment();

} // namespace infergrid
