// Configuration: one table of keys, each with a parser that checks its range.
#include "tools/config.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <utility>

#include <yaml-cpp/yaml.h>

#include "messages/errors.hpp"

extern char** environ;

namespace infergrid {

namespace {

namespace fs = std::filesystem;

// Sets one key from its text; returns an error message (without the key).
using setter = std::function<std::string(settings&, const std::string&)>;
// A key's value as text that its setter accepts.
using getter = std::function<std::string(const settings&)>;

struct key_def {
  const char* name;
  setter set;
  getter get;
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

// A field of the settings, e.g. `at(&settings::http, &http_settings::port)`:
// the one accessor that a key's setter and getter share.
template <class Section, class T>
struct field_ref {
  Section settings::*section;
  T Section::*member;

  T& operator()(settings& s) const {
    return s.*section.*member;
  }
  const T& operator()(const settings& s) const {
    return s.*section.*member;
  }
};

template <class Section, class T>
field_ref<Section, T> at(Section settings::*section, T Section::*member) {
  return {section, member};
}

template <class Section, class T>
key_def int_key(const char* name, int64_t lo, int64_t hi, field_ref<Section, T> field) {
  auto set = [lo, hi, field](settings& s, const std::string& text) -> std::string {
    int64_t v = 0;
    if (!parse_int(text, v))
      return "'" + text + "' is not an integer";
    if (v < lo || v > hi)
      return text + " is out of range " + std::to_string(lo) + ".." + std::to_string(hi);
    field(s) = static_cast<T>(v);
    return {};
  };
  auto get = [field](const settings& s) { return std::to_string(field(s)); };
  return {name, set, get};
}

// A string that must not be empty (surrounding blanks are trimmed).
template <class Section>
key_def string_key(const char* name, field_ref<Section, std::string> field) {
  auto set = [field](settings& s, const std::string& text) -> std::string {
    auto t = trim(text);
    if (t.empty())
      return "must not be empty";
    field(s) = t;
    return {};
  };
  auto get = [field](const settings& s) { return field(s); };
  return {name, set, get};
}

// A string taken as it is, empty meaning "not set" (paths, the secret).
template <class Section>
key_def text_key(const char* name, field_ref<Section, std::string> field) {
  auto set = [field](settings& s, const std::string& text) -> std::string {
    field(s) = text;
    return {};
  };
  auto get = [field](const settings& s) { return field(s); };
  return {name, set, get};
}

// Matches `text` against `allowed` without regard to case; `out` gets the
// match in upper or lower case. Returns the error message, empty on a match.
std::string match_choice(const std::string& text, const std::vector<std::string>& allowed,
                         bool upper, std::string& out) {
  out = trim(text);
  std::transform(out.begin(), out.end(), out.begin(), [upper](unsigned char c) {
    return upper ? std::toupper(c) : std::tolower(c);
  });
  if (std::find(allowed.begin(), allowed.end(), out) != allowed.end())
    return {};
  std::string list;
  for (auto& a : allowed)
    list += (list.empty() ? "" : "|") + a;
  return "'" + text + "' is not one of " + list;
}

// One of `allowed`, matched without regard to case and stored in upper or
// lower case.
template <class Section>
key_def choice_key(const char* name, std::vector<std::string> allowed, bool upper,
                   field_ref<Section, std::string> field) {
  auto set
      = [allowed, upper, field](settings& s, const std::string& text) -> std::string {
    std::string t;
    auto problem = match_choice(text, allowed, upper, t);
    if (problem.empty())
      field(s) = t;
    return problem;
  };
  auto get = [field](const settings& s) { return field(s); };
  return {name, set, get};
}

template <class Section>
key_def bool_key(const char* name, field_ref<Section, bool> field) {
  auto set = [field](settings& s, const std::string& text) -> std::string {
    std::string t;
    auto problem = match_choice(text, {"true", "false"}, false, t);
    if (problem.empty())
      field(s) = t == "true";
    return problem;
  };
  auto get
      = [field](const settings& s) -> std::string { return field(s) ? "true" : "false"; };
  return {name, set, get};
}

constexpr int64_t int64_max = std::numeric_limits<int64_t>::max();

const std::vector<key_def>& keys() {
  static const std::vector<key_def> table{
      string_key("http.host", at(&settings::http, &http_settings::host)),
      int_key("http.port", 1, 65535, at(&settings::http, &http_settings::port)),
      int_key("http.max_body_bytes", 1, int64_t{1} << 30,
              at(&settings::http, &http_settings::max_body_bytes)),
      int_key("http.threads", 1, 64, at(&settings::http, &http_settings::threads)),
      int_key("http.request_timeout_ms", 1, 3600000,
              at(&settings::http, &http_settings::request_timeout_ms)),
      int_key("http.io_timeout_ms", 100, 3600000,
              at(&settings::http, &http_settings::io_timeout_ms)),
      int_key("queue.max_queued", 1, int64_max,
              at(&settings::queue, &queue_settings::max_queued)),
      int_key("queue.max_interactive", 1, 1000000,
              at(&settings::queue, &queue_settings::max_interactive)),
      int_key("queue.lease_ms", 100, 86400000,
              at(&settings::queue, &queue_settings::lease_ms)),
      int_key("queue.max_attempts", 1, 100,
              at(&settings::queue, &queue_settings::max_attempts)),
      int_key("queue.tick_ms", 10, 60000, at(&settings::queue, &queue_settings::tick_ms)),
      int_key("queue.batches_in_flight", 1, 64,
              at(&settings::queue, &queue_settings::batches_in_flight)),
      int_key("workers.count", 0, 64, at(&settings::workers, &workers_settings::count)),
      int_key("workers.intra_op_threads", 1, 256,
              at(&settings::workers, &workers_settings::intra_op_threads)),
      int_key("workers.memory_budget_mb", 0, 16 * 1024 * 1024,
              at(&settings::workers, &workers_settings::memory_budget_mb)),
      int_key("workers.generate_timeout_ms", 1000, 24LL * 3600 * 1000,
              at(&settings::workers, &workers_settings::generate_timeout_ms)),
      int_key("workers.stream_interval_ms", 0, 1000,
              at(&settings::workers, &workers_settings::stream_interval_ms)),
      bool_key("workers.in_process",
               at(&settings::workers, &workers_settings::in_process)),
      int_key("sessions.pause_timeout_ms", 0, 24LL * 3600 * 1000,
              at(&settings::sessions, &sessions_settings::pause_timeout_ms)),
      int_key("sessions.idle_timeout_ms", 0, 24LL * 3600 * 1000,
              at(&settings::sessions, &sessions_settings::idle_timeout_ms)),
      string_key("cluster.host", at(&settings::cluster, &cluster_settings::host)),
      int_key("cluster.port", 0, 65535, at(&settings::cluster, &cluster_settings::port)),
      choice_key("cluster.routing", {"queue_depth", "round_robin", "latency"}, false,
                 at(&settings::cluster, &cluster_settings::routing)),
      bool_key("cluster.local_link",
               at(&settings::cluster, &cluster_settings::local_link)),
      int_key("cluster.heartbeat_ms", 0, 60000,
              at(&settings::cluster, &cluster_settings::heartbeat_ms)),
      int_key("cluster.peer_timeout_ms", 0, 3600 * 1000,
              at(&settings::cluster, &cluster_settings::peer_timeout_ms)),
      text_key("cluster.tls_certificate",
               at(&settings::cluster, &cluster_settings::tls_certificate)),
      text_key("cluster.tls_key", at(&settings::cluster, &cluster_settings::tls_key)),
      text_key("cluster.tls_cafile",
               at(&settings::cluster, &cluster_settings::tls_cafile)),
      text_key("cluster.secret", at(&settings::cluster, &cluster_settings::secret)),
      choice_key("actors.scheduler", {"sharing", "stealing"}, false,
                 at(&settings::actors, &actors_settings::scheduler)),
      int_key("actors.threads", 0, 256, at(&settings::actors, &actors_settings::threads)),
      string_key("storage.data_dir", at(&settings::storage, &storage_settings::data_dir)),
      string_key("storage.models_dir",
                 at(&settings::storage, &storage_settings::models_dir)),
      choice_key("storage.synchronous", {"NORMAL", "FULL"}, true,
                 at(&settings::storage, &storage_settings::synchronous)),
      choice_key("log.level", {"trace", "debug", "info", "warn", "error", "off"}, false,
                 at(&settings::log, &log_settings::level)),
      choice_key("log.format", {"text", "json"}, false,
                 at(&settings::log, &log_settings::format)),
      int_key("shutdown.drain_timeout_ms", 0, 3600000,
              at(&settings::shutdown, &shutdown_settings::drain_timeout_ms)),
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

std::vector<std::pair<std::string, std::string>> setting_values(const settings& s) {
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& k : keys())
    out.emplace_back(k.name, k.get(s));
  return out;
}

std::string env_name(const std::string& key) {
  auto dot = key.find('.');
  std::string out = "INFERGRID_" + key.substr(0, dot) + "__" + key.substr(dot + 1);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return std::toupper(c); });
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
