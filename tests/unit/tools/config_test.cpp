#define CAF_SUITE config
#include "tests/unit/test_support.hpp"

#include "tools/config.hpp"

#include <fstream>

#include <caf/test/unit_test.hpp>

#include "messages/errors.hpp"

using namespace infergrid;

namespace {

struct fixture {
  testing::temp_dir dir;

  config_sources sources() {
    config_sources src;
    src.flags["storage.data_dir"] = dir.str("data");
    src.flags["storage.models_dir"] = dir.str("models");
    return src;
  }

  std::string write(const std::string& text) {
    auto path = dir.str("cfg.yaml");
    std::ofstream out{path};
    out << text;
    return path;
  }

  std::string error_of(const config_sources& src) {
    auto s = load_settings(src);
    if (s)
      return "ok";
    CAF_CHECK(code_of(s.error()) == errc::invalid_input);
    return message_of(s.error());
  }
};

} // namespace

CAF_TEST_FIXTURE_SCOPE(config_tests, fixture)

// clang-format off
CAF_TEST(the shipped file holds exactly the built-in defaults) {
  // clang-format on
  settings from_file;
  std::ifstream in{std::string{INFERGRID_SOURCE_DIR} + "/configs/infergrid.yaml"};
  CAF_REQUIRE(in.good());
  std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  auto ok = apply_yaml(from_file, text, "configs/infergrid.yaml");
  CAF_REQUIRE(ok);
  settings defaults;
  CAF_CHECK_EQUAL(from_file.http.host, defaults.http.host);
  CAF_CHECK_EQUAL(from_file.http.port, defaults.http.port);
  CAF_CHECK_EQUAL(from_file.http.max_body_bytes, defaults.http.max_body_bytes);
  CAF_CHECK_EQUAL(from_file.http.threads, defaults.http.threads);
  CAF_CHECK_EQUAL(from_file.http.request_timeout_ms, defaults.http.request_timeout_ms);
  CAF_CHECK_EQUAL(from_file.http.io_timeout_ms, defaults.http.io_timeout_ms);
  CAF_CHECK_EQUAL(from_file.queue.max_queued, defaults.queue.max_queued);
  CAF_CHECK_EQUAL(from_file.queue.max_interactive, defaults.queue.max_interactive);
  CAF_CHECK_EQUAL(from_file.queue.lease_ms, defaults.queue.lease_ms);
  CAF_CHECK_EQUAL(from_file.queue.max_attempts, defaults.queue.max_attempts);
  CAF_CHECK_EQUAL(from_file.queue.tick_ms, defaults.queue.tick_ms);
  CAF_CHECK_EQUAL(from_file.queue.batches_in_flight, defaults.queue.batches_in_flight);
  CAF_CHECK_EQUAL(from_file.workers.count, defaults.workers.count);
  CAF_CHECK_EQUAL(from_file.workers.intra_op_threads, defaults.workers.intra_op_threads);
  CAF_CHECK_EQUAL(from_file.workers.stream_interval_ms,
                  defaults.workers.stream_interval_ms);
  CAF_CHECK_EQUAL(from_file.storage.data_dir, defaults.storage.data_dir);
  CAF_CHECK_EQUAL(from_file.storage.models_dir, defaults.storage.models_dir);
  CAF_CHECK_EQUAL(from_file.storage.synchronous, defaults.storage.synchronous);
  CAF_CHECK_EQUAL(from_file.log.level, defaults.log.level);
  CAF_CHECK_EQUAL(from_file.log.format, defaults.log.format);
  CAF_CHECK_EQUAL(from_file.shutdown.drain_timeout_ms,
                  defaults.shutdown.drain_timeout_ms);
  CAF_CHECK_EQUAL(from_file.cluster.heartbeat_ms, defaults.cluster.heartbeat_ms);
  CAF_CHECK_EQUAL(from_file.cluster.peer_timeout_ms, defaults.cluster.peer_timeout_ms);
  CAF_CHECK_EQUAL(from_file.cluster.local_link, defaults.cluster.local_link);
  // Every key of the table appears in the file.
  for (auto& key : config_keys()) {
    auto dot = key.find('.');
    auto name = key.substr(dot + 1) + ":";
    CAF_CHECK(text.find(name) != std::string::npos);
  }
}

CAF_TEST(layers apply in order file then environment then flags) {
  auto src = sources();
  src.yaml_path
      = write("http:\n  port: 9000\nqueue:\n  max_queued: 5\n  lease_ms: 2000\n");
  src.env["INFERGRID_QUEUE__MAX_QUEUED"] = "7";
  src.env["PORT"] = "9100";
  src.env["LOG_LEVEL"] = "debug";
  src.env["UNRELATED"] = "x";
  auto s = load_settings(src);
  CAF_REQUIRE(s);
  CAF_CHECK_EQUAL(s->http.port, 9100);
  CAF_CHECK_EQUAL(s->queue.max_queued, 7);
  CAF_CHECK_EQUAL(s->queue.lease_ms, 2000);
  CAF_CHECK_EQUAL(s->log.level, "debug");
  src.flags["http.port"] = "9200";
  s = load_settings(src);
  CAF_REQUIRE(s);
  CAF_CHECK_EQUAL(s->http.port, 9200);
}

CAF_TEST(bad values name the key the source and the range) {
  auto src = sources();
  src.env["PORT"] = "70000";
  CAF_CHECK_EQUAL(error_of(src), "http.port (from PORT): 70000 is out of range 1..65535");
  src = sources();
  src.env["INFERGRID_QUEUE__MAX_QUEUED"] = "0";
  CAF_CHECK_EQUAL(
      error_of(src),
      "queue.max_queued (from INFERGRID_QUEUE__MAX_QUEUED): 0 is out of range "
      "1..9223372036854775807");
  src = sources();
  src.env["INFERGRID_WORKERS__STREAM_INTERVAL_MS"] = "1001";
  CAF_CHECK_EQUAL(error_of(src), "workers.stream_interval_ms (from "
                                 "INFERGRID_WORKERS__STREAM_INTERVAL_MS): 1001 is out of "
                                 "range 0..1000");
  src = sources();
  src.env["INFERGRID_HTTP__IO_TIMEOUT_MS"] = "50";
  CAF_CHECK_EQUAL(error_of(src),
                  "http.io_timeout_ms (from INFERGRID_HTTP__IO_TIMEOUT_MS): "
                  "50 is out of range 100..3600000");
  src = sources();
  src.env["INFERGRID_QUEUE__MAX_QEUED"] = "10";
  CAF_CHECK_EQUAL(error_of(src),
                  "queue.max_qeued (from INFERGRID_QUEUE__MAX_QEUED): unknown key");
  src = sources();
  src.flags["http.max_body_bytes"] = "lots";
  CAF_CHECK_EQUAL(error_of(src),
                  "http.max_body_bytes (from command line): 'lots' is not an integer");
  src = sources();
  src.flags["log.format"] = "xml";
  CAF_CHECK_EQUAL(error_of(src),
                  "log.format (from command line): 'xml' is not one of text|json");
  src = sources();
  src.env["INFERGRID_CLUSTER__HEARTBEAT_MS"] = "2000";
  src.env["INFERGRID_CLUSTER__PEER_TIMEOUT_MS"] = "3000";
  CAF_CHECK_EQUAL(error_of(src), "cluster.peer_timeout_ms: 3000 needs heartbeats at most "
                                 "half as far apart (cluster.heartbeat_ms is 2000)");
  src.env["INFERGRID_CLUSTER__PEER_TIMEOUT_MS"] = "0";
  CAF_CHECK_EQUAL(error_of(src), "ok");
  src = sources();
  src.yaml_path = write("http:\n  prot: 1\n");
  CAF_CHECK(error_of(src).find("http.prot") == 0);
  src = sources();
  src.yaml_path = write("http: [1, 2\n");
  CAF_CHECK(error_of(src).find(src.yaml_path) == 0);
  src = sources();
  src.yaml_path = dir.str("missing.yaml");
  CAF_CHECK(error_of(src).find("cannot read") != std::string::npos);
}

CAF_TEST(directories are created below an existing parent only) {
  auto src = sources();
  auto s = load_settings(src);
  CAF_REQUIRE(s);
  CAF_CHECK(std::filesystem::is_directory(dir.str("data")));
  src.flags["storage.data_dir"] = dir.str("no/such/parent");
  CAF_CHECK(error_of(src).find("storage.data_dir: parent directory") == 0);
  std::ofstream{dir.str("afile")} << "x";
  src.flags["storage.data_dir"] = dir.str("afile");
  CAF_CHECK(error_of(src).find("is not a directory") != std::string::npos);
}

CAF_TEST(setting values read back through the environment to the same settings) {
  // What serve does for its worker processes: every effective value, set
  // from a file, the environment and flags, handed on as variables.
  auto src = sources();
  src.yaml_path = write("workers:\n  stream_interval_ms: 0\n  in_process: true\n"
                        "cluster:\n  heartbeat_ms: 250\n  peer_timeout_ms: 900\n"
                        "  routing: LATENCY\n  tls_cafile: /etc/ca.pem\n");
  src.env["INFERGRID_STORAGE__SYNCHRONOUS"] = "full";
  src.env["LOG_LEVEL"] = "warn";
  src.flags["queue.batches_in_flight"] = "5";
  src.flags["cluster.secret"] = "s3cret";
  auto s = load_settings(src);
  CAF_REQUIRE(s);
  auto values = setting_values(*s);
  CAF_CHECK_EQUAL(values.size(), config_keys().size());
  config_sources env_only;
  for (auto& [key, value] : values)
    env_only.env[env_name(key)] = value;
  auto back = load_settings(env_only);
  CAF_REQUIRE(back);
  CAF_CHECK(setting_values(*back) == values);
  CAF_CHECK_EQUAL(back->workers.stream_interval_ms, 0);
  CAF_CHECK_EQUAL(back->workers.in_process, true);
  CAF_CHECK_EQUAL(back->cluster.heartbeat_ms, 250);
  CAF_CHECK_EQUAL(back->cluster.peer_timeout_ms, 900);
  CAF_CHECK_EQUAL(back->cluster.routing, "latency");
  CAF_CHECK_EQUAL(back->cluster.tls_cafile, "/etc/ca.pem");
  CAF_CHECK_EQUAL(back->cluster.secret, "s3cret");
  CAF_CHECK_EQUAL(back->storage.synchronous, "FULL");
  CAF_CHECK_EQUAL(back->storage.data_dir, dir.str("data"));
  CAF_CHECK_EQUAL(back->log.level, "warn");
  CAF_CHECK_EQUAL(back->queue.batches_in_flight, 5);
  CAF_CHECK_EQUAL(env_name("workers.stream_interval_ms"),
                  "INFERGRID_WORKERS__STREAM_INTERVAL_MS");
}

CAF_TEST_FIXTURE_SCOPE_END()
