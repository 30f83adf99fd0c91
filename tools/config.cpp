// Configuration: one table of keys, each with a parser that checks its range.
#include "tools/config.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "messages/errors.hpp"

extern char** environ;

namespace infergrid {

namespace {

namespace fs = std::filesystem;

// Sets one key from its text; returns an error message (without the key).
using setter = std::function<std::string(settings&, const std::string&)>;

struct key_def {
  const char* name;
  setter set;
};

std::string trim(const std::string& x) {
  auto b = x.find_first_not_of(" \t\r\n");
  auto e = x.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string{} : x.substr(b, e - b + 1);
}

bool parse_int(const std::string& text, int64_t& out) {
  auto t = trim(text);
  if (t.empty())
    return false;
  std::size_t pos = 0;
  try {
    out = std::stoll(t, &pos, 10);
  } catch (const std::exception&) {
    return false;
  }
  return pos == t.size();
}

setter int_setter(int64_t lo, int64_t hi,
                  std::function<void(settings&, int64_t)> assign) {
  return [lo, hi, assign](settings& s, const std::string& text) -> std::string {
    int64_t v = 0;
    if (!parse_int(text, v))
      return "'" + text + "' is not an integer";
    if (v < lo || v > hi)
      return text + " is out of range " + std::to_string(lo) + ".." + std::to_string(hi);
    assign(s, v);
    return {};
  };
}

setter string_setter(std::function<void(settings&, std::string)> assign) {
  return [assign](settings& s, const std::string& text) -> std::string {
    auto t = trim(text);
    if (t.empty())
      return "must not be empty";
    assign(s, t);
    return {};
  };
}

setter choice_setter(std::vector<std::string> allowed, bool upper,
                     std::function<void(settings&, std::string)> assign) {
  return [allowed, upper, assign](settings& s, const std::string& text) -> std::string {
    auto t = trim(text);
    std::transform(t.begin(), t.end(), t.begin(), [upper](unsigned char c) {
      return upper ? std::toupper(c) : std::tolower(c);
    });
    if (std::find(allowed.begin(), allowed.end(), t) == allowed.end()) {
      std::string list;
      for (auto& a : allowed)
        list += (list.empty() ? "" : "|") + a;
      return "'" + text + "' is not one of " + list;
    }
    assign(s, t);
    return {};
  };
}

constexpr int64_t int64_max = std::numeric_limits<int64_t>::max();

const std::vector<key_def>& keys() {
  static const std::vector<key_def> table{
      {"http.host", string_setter([](settings& s, std::string v) { s.http.host = v; })},
      {"http.port", int_setter(1, 65535,
                               [](settings& s, int64_t v) {
                                 s.http.port = static_cast<uint16_t>(v);
                               })},
      {"http.max_body_bytes", int_setter(1, int64_t{1} << 30,
                                         [](settings& s, int64_t v) {
                                           s.http.max_body_bytes
                                               = static_cast<uint64_t>(v);
                                         })},
      {"http.threads", int_setter(1, 64,
                                  [](settings& s, int64_t v) {
                                    s.http.threads = static_cast<int32_t>(v);
                                  })},
      {"http.request_timeout_ms",
       int_setter(1, 3600000,
                  [](settings& s, int64_t v) { s.http.request_timeout_ms = v; })},
      {"queue.max_queued",
       int_setter(1, int64_max, [](settings& s, int64_t v) { s.queue.max_queued = v; })},
      {"queue.max_interactive",
       int_setter(1, 1000000,
                  [](settings& s, int64_t v) { s.queue.max_interactive = v; })},
      {"queue.lease_ms",
       int_setter(100, 86400000, [](settings& s, int64_t v) { s.queue.lease_ms = v; })},
      {"queue.max_attempts", int_setter(1, 100,
                                        [](settings& s, int64_t v) {
                                          s.queue.max_attempts = static_cast<int32_t>(v);
                                        })},
      {"queue.tick_ms",
       int_setter(10, 60000, [](settings& s, int64_t v) { s.queue.tick_ms = v; })},
      {"queue.batches_in_flight", int_setter(1, 64,
                                             [](settings& s, int64_t v) {
                                               s.queue.batches_in_flight
                                                   = static_cast<int32_t>(v);
                                             })},
      {"workers.count", int_setter(0, 64,
                                   [](settings& s, int64_t v) {
                                     s.workers.count = static_cast<int32_t>(v);
                                   })},
      {"workers.intra_op_threads", int_setter(1, 256,
                                              [](settings& s, int64_t v) {
                                                s.workers.intra_op_threads
                                                    = static_cast<int32_t>(v);
                                              })},
      {"workers.memory_budget_mb",
       int_setter(0, 16 * 1024 * 1024,
                  [](settings& s, int64_t v) { s.workers.memory_budget_mb = v; })},
      {"workers.generate_timeout_ms",
       int_setter(1000, 24LL * 3600 * 1000,
                  [](settings& s, int64_t v) { s.workers.generate_timeout_ms = v; })},
      {"workers.stream_interval_ms", int_setter(0, 1000,
                                                [](settings& s, int64_t v) {
                                                  s.workers.stream_interval_ms
                                                      = static_cast<int32_t>(v);
                                                })},
      {"workers.in_process", choice_setter({"true", "false"}, false,
                                           [](settings& s, std::string v) {
                                             s.workers.in_process = v == "true";
                                           })},
      {"cluster.host",
       string_setter([](settings& s, std::string v) { s.cluster.host = v; })},
      {"cluster.port", int_setter(0, 65535,
                                  [](settings& s, int64_t v) {
                                    s.cluster.port = static_cast<uint16_t>(v);
                                  })},
      {"cluster.routing",
       choice_setter({"queue_depth", "round_robin", "latency"}, false,
                     [](settings& s, std::string v) { s.cluster.routing = v; })},
      {"cluster.heartbeat_ms",
       int_setter(0, 60000, [](settings& s, int64_t v) { s.cluster.heartbeat_ms = v; })},
      {"cluster.peer_timeout_ms",
       int_setter(0, 3600 * 1000,
                  [](settings& s, int64_t v) { s.cluster.peer_timeout_ms = v; })},
      {"cluster.tls_certificate",
       [](settings& s, const std::string& text) -> std::string {
         s.cluster.tls_certificate = text;
         return {};
       }},
      {"cluster.tls_key",
       [](settings& s, const std::string& text) -> std::string {
         s.cluster.tls_key = text;
         return {};
       }},
      {"cluster.tls_cafile",
       [](settings& s, const std::string& text) -> std::string {
         s.cluster.tls_cafile = text;
         return {};
       }},
      {"cluster.secret",
       [](settings& s, const std::string& text) -> std::string {
         s.cluster.secret = text;
         return {};
       }},
      {"actors.scheduler",
       choice_setter({"sharing", "stealing"}, false,
                     [](settings& s, std::string v) { s.actors.scheduler = v; })},
      {"actors.threads", int_setter(0, 256,
                                    [](settings& s, int64_t v) {
                                      s.actors.threads = static_cast<int32_t>(v);
                                    })},
      {"storage.data_dir",
       string_setter([](settings& s, std::string v) { s.storage.data_dir = v; })},
      {"storage.models_dir",
       string_setter([](settings& s, std::string v) { s.storage.models_dir = v; })},
      {"storage.synchronous",
       choice_setter({"NORMAL", "FULL"}, true,
                     [](settings& s, std::string v) { s.storage.synchronous = v; })},
      {"log.level",
       choice_setter({"trace", "debug", "info", "warn", "error", "off"}, false,
                     [](settings& s, std::string v) { s.log.level = v; })},
      {"log.format", choice_setter({"text", "json"}, false,
                                   [](settings& s, std::string v) { s.log.format = v; })},
      {"shutdown.drain_timeout_ms",
       int_setter(0, 3600000,
                  [](settings& s, int64_t v) { s.shutdown.drain_timeout_ms = v; })},
  };
  return table;
}

const key_def* find_key(const std::string& name) {
  for (auto& k : keys())
    if (name == k.name)
      return &k;
  return nullptr;
}

caf::error bad(const std::string& key, const std::string& origin,
               const std::string& what) {
  return make_error(errc::invalid_input, key + " (from " + origin + "): " + what);
}

caf::expected<void> apply(settings& s, const std::string& key, const std::string& value,
                          const std::string& origin) {
  auto def = find_key(key);
  if (def == nullptr)
    return bad(key, origin, "unknown key");
  auto problem = def->set(s, value);
  if (!problem.empty())
    return bad(key, origin, problem);
  return caf::unit;
}

// A directory the server writes to: created when missing if its parent exists.
caf::expected<void> ensure_dir(const std::string& key, const std::string& path) {
  std::error_code ec;
  fs::path p{path};
  if (fs::exists(p, ec)) {
    if (!fs::is_directory(p, ec))
      return make_error(errc::invalid_input, key + ": '" + path + "' is not a directory");
    return caf::unit;
  }
  auto parent = fs::absolute(p, ec).parent_path();
  if (!fs::is_directory(parent, ec))
    return make_error(errc::invalid_input, key + ": parent directory '" + parent.string()
                                               + "' does not exist");
  if (!fs::create_directory(p, ec) && !fs::is_directory(p))
    return make_error(errc::invalid_input,
                      key + ": cannot create '" + path + "': " + ec.message());
  return caf::unit;
}

} // namespace

std::vector<std::string> config_keys() {
  std::vector<std::string> out;
  for (auto& k : keys())
    out.emplace_back(k.name);
  return out;
}

caf::expected<void> apply_yaml(settings& s, const std::string& yaml_text,
                               const std::string& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return make_error(errc::invalid_input, origin + ": " + e.what());
  }
  if (root.IsNull())
    return caf::unit;
  if (!root.IsMap())
    return make_error(errc::invalid_input, origin + ": expected sections (a map)");
  for (auto section : root) {
    auto sname = section.first.as<std::string>();
    if (!section.second.IsMap())
      return make_error(errc::invalid_input,
                        sname + " (from " + origin + "): expected a map of keys");
    for (auto entry : section.second) {
      auto key = sname + "." + entry.first.as<std::string>();
      if (!entry.second.IsScalar())
        return bad(key, origin, "expected a single value");
      if (auto ok = apply(s, key, entry.second.Scalar(), origin); !ok)
        return ok.error();
    }
  }
  return caf::unit;
}

caf::expected<settings> load_settings(const config_sources& sources) {
  settings s;
  if (!sources.yaml_path.empty()) {
    std::ifstream in{sources.yaml_path};
    if (!in)
      return make_error(errc::invalid_input,
                        "config: cannot read '" + sources.yaml_path + "'");
    std::stringstream buf;
    buf << in.rdbuf();
    if (auto ok = apply_yaml(s, buf.str(), sources.yaml_path); !ok)
      return ok.error();
  }
  // Environment: the short forms first, then INFERGRID_SECTION__KEY.
  if (auto i = sources.env.find("PORT"); i != sources.env.end())
    if (auto ok = apply(s, "http.port", i->second, "PORT"); !ok)
      return ok.error();
  if (auto i = sources.env.find("LOG_LEVEL"); i != sources.env.end())
    if (auto ok = apply(s, "log.level", i->second, "LOG_LEVEL"); !ok)
      return ok.error();
  for (auto& [name, value] : sources.env) {
    const std::string prefix = "INFERGRID_";
    if (name.compare(0, prefix.size(), prefix) != 0)
      continue;
    auto rest = name.substr(prefix.size());
    auto sep = rest.find("__");
    if (sep == std::string::npos)
      continue; // not a SECTION__KEY variable (e.g. INFERGRID_HOME)
    auto key = rest.substr(0, sep) + "." + rest.substr(sep + 2);
    std::transform(key.begin(), key.end(), key.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    if (auto ok = apply(s, key, value, name); !ok)
      return ok.error();
  }
  for (auto& [key, value] : sources.flags)
    if (auto ok = apply(s, key, value, "command line"); !ok)
      return ok.error();
  // Keys that only make sense together.
  auto& c = s.cluster;
  if (c.peer_timeout_ms > 0
      && (c.heartbeat_ms == 0 || c.peer_timeout_ms < 2 * c.heartbeat_ms))
    return make_error(errc::invalid_input,
                      "cluster.peer_timeout_ms: " + std::to_string(c.peer_timeout_ms)
                          + " needs heartbeats at most half as far apart "
                            "(cluster.heartbeat_ms is "
                          + std::to_string(c.heartbeat_ms) + ")");
  if (auto ok = ensure_dir("storage.data_dir", s.storage.data_dir); !ok)
    return ok.error();
  if (auto ok = ensure_dir("storage.models_dir", s.storage.models_dir); !ok)
    return ok.error();
  return s;
}

std::map<std::string, std::string> process_environment() {
  std::map<std::string, std::string> out;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string kv{*e};
    auto eq = kv.find('=');
    if (eq != std::string::npos)
      out.emplace(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return out;
}

} // namespace infergrid
