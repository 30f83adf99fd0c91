// `infergrid worker`: one worker node. It joins a control node over CAF's
// middleman, runs a worker actor, and rejoins with back-off when the control
// node goes away.
#include <algorithm>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <set>
#include <thread>

#include <unistd.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/remote_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include <spdlog/spdlog.h>

#include "actors/cluster.hpp"
#include "actors/local_link.hpp"
#include "actors/worker.hpp"
#include "inference/model_repository.hpp"
#include "messages/errors.hpp"
#include "tools/serve.hpp"
#include "tools/stop_signals.hpp"

namespace infergrid {

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Closes a join's local link when the join ends, however it ends: its reader
// thread hands requests to the executor and must stop before the system.
struct link_holder {
  std::shared_ptr<link_client> client;
  ~link_holder() {
    if (client)
      client->close();
  }
};

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0)
    return "localhost";
  return buf;
}

bool split_host_port(const std::string& x, std::string& host, uint16_t& port) {
  auto colon = x.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == x.size())
    return false;
  host = x.substr(0, colon);
  try {
    auto p = std::stoul(x.substr(colon + 1));
    if (p == 0 || p > 65535)
      return false;
    port = static_cast<uint16_t>(p);
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

// Waits up to `d` for SIGINT/SIGTERM; true when one came.
bool stop_requested(stop_signals& stop, std::chrono::milliseconds d) {
  return stop.wait(d) > 0;
}

} // namespace

int run_worker(const settings& s, const worker_options& opts) {
  stop_signals stop;

  std::string host;
  uint16_t port = 0;
  if (!split_host_port(opts.join, host, port)) {
    spdlog::error("worker: --join: expected HOST:PORT, got '{}'", opts.join);
    return 2;
  }
  auto id = opts.id.empty() ? host_name() + "-" + std::to_string(getpid()) : opts.id;

  auto entries = inference::scan_model_repository(s.storage.models_dir);
  if (!opts.models.empty()) {
    std::set<std::string> wanted(opts.models.begin(), opts.models.end());
    entries.erase(std::remove_if(entries.begin(), entries.end(),
                                 [&](auto& e) { return wanted.count(e.info.name) == 0; }),
                  entries.end());
    for (auto& m : wanted)
      if (std::none_of(entries.begin(), entries.end(),
                       [&](auto& e) { return e.info.name == m; }))
        spdlog::error("worker {}: --models: no model '{}' in {}", id, m,
                      s.storage.models_dir);
  }
  if (!opts.device.empty())
    for (auto& e : entries)
      e.info.device = opts.device;
  if (entries.empty()) {
    spdlog::error("worker {}: no models to serve in {}", id, s.storage.models_dir);
    return 2;
  }

  caf::actor_system_config cfg;
  configure_scheduler(cfg, s.actors);
  if (auto problem = configure_cluster(cfg, s.cluster); !problem.empty()) {
    spdlog::error("worker {}: {}", id, problem);
    return 2;
  }
  caf::actor_system sys{cfg};
  auto tls = tls_enabled(s.cluster);

  // Joins and serves until a stop signal or a refusal; every path out of it
  // has awaited the worker actor, so nothing of ours runs afterwards.
  auto code = [&]() -> int {
    auto backoff = 250ms;
    const auto max_backoff = 10000ms;
    bool joined_before = false;
    for (;;) {
      auto door = tls ? caf::openssl::remote_actor<door_actor>(sys, host, port)
                      : sys.middleman().remote_actor<door_actor>(host, port);
      if (!door) {
        std::string why = sys.render(door.error());
        if (door.error() == caf::sec::incompatible_application_ids)
          why = std::string{"it runs another infergrid version (this one speaks "}
                + wire_version + ")";
        spdlog::warn(
            "worker {}: cannot reach the control node at {}: {}; retrying in {} ms", id,
            opts.join, why, backoff.count());
        if (stop_requested(stop, backoff))
          return 0;
        backoff = std::min(backoff * 2, max_backoff);
        continue;
      }
      caf::scoped_actor self{sys};
      join_request req{s.cluster.secret, id, host_name(), opts.db_path};
      caf::expected<join_reply> joined
          = make_error(errc::timeout, "no answer to the join");
      self->request(*door, 10s, join_atom::value, req)
          .receive([&](join_reply& r) { joined = std::move(r); },
                   [&](caf::error& err) { joined = std::move(err); });
      if (!joined) {
        auto code = code_of(joined.error());
        spdlog::error("worker {}: the control node at {} refused the join: {}", id,
                      opts.join, message_of(joined.error()));
        if (code == errc::unauthorized || code == errc::invalid_input)
          return 2; // a configuration problem: retrying will not help
        // Another node has this id. On a rejoin it may be our own earlier
        // connection that the control node has not yet seen go: retry.
        if (code == errc::conflict && !joined_before)
          return 2;
        if (stop_requested(stop, backoff))
          return 0;
        backoff = std::min(backoff * 2, max_backoff);
        continue;
      }
      backoff = 250ms;
      joined_before = true;
      worker_config wcfg;
      wcfg.id = id;
      wcfg.models = entries;
      wcfg.lease_ms = joined->lease_ms;
      wcfg.intra_op_threads = s.workers.intra_op_threads;
      wcfg.infer_timeout_ms = s.http.request_timeout_ms;
      wcfg.generate_timeout_ms = s.workers.generate_timeout_ms;
      wcfg.stream_interval_ms = s.workers.stream_interval_ms;
      wcfg.memory_budget_mb = s.workers.memory_budget_mb;
      wcfg.host = host_name();
      if (opts.db_path.empty()) {
        wcfg.claim_via = joined->queue;
        wcfg.claim_path = "queue";
      } else {
        wcfg.store.path = opts.db_path;
        wcfg.store.synchronous_full = s.storage.synchronous == "FULL";
        wcfg.artifacts_dir
            = (fs::path{opts.db_path}.parent_path() / "artifacts").string();
        wcfg.claim_path = "direct";
      }
      // A control node on this host offers its local link; one elsewhere
      // (or in another network namespace) cannot be reached this way.
      link_holder link;
      if (s.cluster.local_link && !joined->link_address.empty()) {
        if (auto c = link_client::connect(sys, joined->link_address, joined->link_token))
          link.client = *c;
        else
          spdlog::info("worker {}: no local link ({}); batches take the cluster "
                       "connection",
                       id, message_of(c.error()));
      }
      wcfg.link = link.client;
      auto queue = caf::actor_cast<queue_feedback_actor>(joined->queue);
      auto worker = spawn_worker(sys, queue, joined->broker, wcfg);
      self->monitor(joined->queue);
      self->monitor(worker);
      spdlog::info("worker {}: joined {} ({}{})", id, opts.join,
                   opts.db_path.empty() ? "claims through the queue"
                                        : "opens " + opts.db_path,
                   link.client ? ", batches over the local link" : "");
      bool lost = false;
      bool refused = false;
      while (!lost) {
        if (stop_requested(stop, 0ms)) {
          spdlog::info("worker {}: stopping", id);
          caf::anon_send_exit(worker, caf::exit_reason::user_shutdown);
          self->wait_for(worker);
          return 0;
        }
        self->receive(
            [&](caf::down_msg& dm) {
              if (dm.source == worker.address()) {
                if (code_of(dm.reason) == errc::conflict) {
                  // Two nodes joined with this id at once; the queue kept the other.
                  spdlog::error("worker {}: refused by the control node: {}", id,
                                message_of(dm.reason));
                  refused = true;
                } else {
                  spdlog::error("worker {}: the worker actor stopped: {}", id,
                                sys.render(dm.reason));
                }
              } else {
                spdlog::warn("worker {}: lost the control node at {}: {}; rejoining", id,
                             opts.join, sys.render(dm.reason));
              }
              lost = true;
            },
            caf::after(std::chrono::milliseconds(100)) >> [] {});
      }
      // Its jobs go back when the queue sees it go, or when it registers
      // again; a fresh worker actor joins again.
      caf::anon_send_exit(worker, caf::exit_reason::user_shutdown);
      self->wait_for(worker);
      if (refused)
        return 2;
      if (stop_requested(stop, backoff))
        return 0;
      backoff = std::min(backoff * 2, max_backoff);
    }
  }();
  arm_exit_deadline(std::chrono::seconds(2), code, "worker");
  return code;
}

} // namespace infergrid
