// The `infergrid` command line (CLI11): serve, make-models.
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "messages/errors.hpp"
#include "tools/config.hpp"
#include "tools/logging.hpp"
#include "tools/serve.hpp"

namespace {

// Flags shared by serve: each maps onto a configuration key.
struct serve_flags {
  std::string config;
  std::map<std::string, std::string> values;
};

void add_key_flag(CLI::App* app, serve_flags& flags, const std::string& flag,
                  const std::string& key, const std::string& help) {
  app->add_option_function<std::string>(
    flag, [&flags, key](const std::string& v) { flags.values[key] = v; }, help);
}

} // namespace

int main(int argc, char** argv) {
  using namespace infergrid;
  CLI::App app{"infergrid: serves TorchScript models over HTTP from durable "
               "SQLite queues and CAF actors"};
  app.require_subcommand(1);

  serve_flags flags;
  auto serve = app.add_subcommand("serve", "Run gateway, queue and workers (embedded default)");
  serve->add_option("--config", flags.config,
                    "YAML configuration (default: CONFIG_PATH, else built-in defaults)");
  add_key_flag(serve, flags, "--workers", "workers.count", "Worker actors to start (0 allowed)");
  add_key_flag(serve, flags, "--port", "http.port", "HTTP port (default 8080)");
  add_key_flag(serve, flags, "--host", "http.host", "HTTP listen address (default 127.0.0.1)");
  add_key_flag(serve, flags, "--data-dir", "storage.data_dir", "Data directory (default ./data)");
  add_key_flag(serve, flags, "--models-dir", "storage.models_dir",
               "Model repository (default ./models)");
  add_key_flag(serve, flags, "--log-level", "log.level", "trace|debug|info|warn|error|off");
  add_key_flag(serve, flags, "--log-format", "log.format", "text|json");

  std::string models_out = "models";
  uint64_t seed = 42;
  auto make_models = app.add_subcommand("make-models", "Build the demo TorchScript models");
  make_models->add_option("--out", models_out, "Output directory (default ./models)");
  make_models->add_option("--seed", seed, "Seed of the weights (default 42)");

  CLI11_PARSE(app, argc, argv);

  if (*make_models) {
    setup_logging("info", "text");
    return run_make_models(models_out, seed);
  }

  config_sources sources;
  sources.env = process_environment();
  sources.yaml_path = flags.config;
  if (sources.yaml_path.empty()) {
    if (auto i = sources.env.find("CONFIG_PATH"); i != sources.env.end())
      sources.yaml_path = i->second;
  }
  sources.flags = flags.values;
  auto s = load_settings(sources);
  if (!s) {
    std::cerr << "infergrid: configuration error: " << message_of(s.error()) << '\n';
    return 2;
  }
  setup_logging(s->log.level, s->log.format);
  return run_serve(*s);
}
