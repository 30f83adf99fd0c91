// The door: checks the secret of a joining worker node and hands it the
// queue and broker handles.
#include "actors/cluster.hpp"

#include <chrono>
#include <filesystem>
#include <random>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include <spdlog/spdlog.h>

#include "messages/errors.hpp"

namespace infergrid {

namespace {

std::string resolved(const std::string& path) {
  std::error_code ec;
  auto p = std::filesystem::weakly_canonical(std::filesystem::absolute(path, ec), ec);
  return ec ? path : p.string();
}

door_actor::behavior_type door_behavior(door_actor::pointer self, door_config cfg) {
  return {
      [self, cfg](join_atom, const join_request& req) -> caf::result<join_reply> {
        auto who = "'" + req.worker_id + "' from " + (req.host.empty() ? "?" : req.host);
        if (cfg.secret.empty() || !constant_time_equal(req.secret, cfg.secret)) {
          spdlog::warn("cluster: refused worker {}: wrong or missing cluster secret",
                       who);
          return make_error(errc::unauthorized, "wrong or missing cluster secret");
        }
        if (req.worker_id.empty() || req.worker_id.size() > 128)
          return make_error(errc::invalid_input, "worker_id: expected 1..128 characters");
        if (!req.db_path.empty() && resolved(req.db_path) != resolved(cfg.db_path)) {
          spdlog::warn("cluster: refused worker {}: it would open {}, not this node's {}",
                       who, req.db_path, cfg.db_path);
          return make_error(
              errc::invalid_input,
              "db_path: '" + req.db_path + "' is not this control node's " + "database '"
                  + cfg.db_path
                  + "'; give the right path or none (claim through the queue)");
        }
        // One live worker per id: its leases and its row in the workers
        // table are keyed by it. The queue knows who is live.
        auto rp = self->make_response_promise<join_reply>();
        self->request(cfg.queue, std::chrono::seconds(10), join_atom::value,
                      req.worker_id)
            .then(
                [cfg, rp, who, worker_id = req.worker_id,
                 direct = !req.db_path.empty()](bool free) mutable {
                  if (!free) {
                    spdlog::warn("cluster: refused worker {}: a live worker already has "
                                 "this id",
                                 who);
                    rp.deliver(make_error(errc::conflict,
                                          "worker id already in use by a live worker; "
                                          "give each worker its own --id"));
                    return;
                  }
                  spdlog::info("cluster: worker {} joined ({})", who,
                               direct ? "opens the database"
                                      : "claims through the queue");
                  join_reply reply{cfg.queue, cfg.broker, cfg.lease_ms, {}, {}};
                  if (cfg.links) {
                    reply.link_address = cfg.links->address();
                    reply.link_token = cfg.links->issue(worker_id);
                  }
                  rp.deliver(std::move(reply));
                },
                [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
        return rp;
      },
  };
}

} // namespace

bool constant_time_equal(const std::string& x, const std::string& y) {
  // Walk the longer string whatever the contents; differing lengths fail.
  auto n = std::max(x.size(), y.size());
  unsigned char diff = x.size() == y.size() ? 0 : 1;
  for (std::size_t i = 0; i < n; ++i) {
    auto a = i < x.size() ? static_cast<unsigned char>(x[i]) : 0;
    auto b = i < y.size() ? static_cast<unsigned char>(y[i]) : 0;
    diff |= static_cast<unsigned char>(a ^ b);
  }
  return diff == 0;
}

std::string random_hex(int chars) {
  std::random_device rd; // /dev/urandom on Linux
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < chars; ++i)
    out.push_back(hex[rd() % 16]);
  return out;
}

door_actor spawn_door(caf::actor_system& sys, door_config cfg) {
  return sys.spawn(door_behavior, std::move(cfg));
}

void add_cluster_message_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<worker_actor>("infergrid::worker_actor")
      .add_message_type<queue_actor>("infergrid::queue_actor")
      .add_message_type<broker_actor>("infergrid::broker_actor")
      .add_message_type<chunk_sink_actor>("infergrid::chunk_sink_actor")
      .add_message_type<door_actor>("infergrid::door_actor")
      .add_message_type<join_request>("infergrid::join_request")
      .add_message_type<join_reply>("infergrid::join_reply")
      .add_message_type<worker_registration>("infergrid::worker_registration")
      .add_message_type<worker_status>("infergrid::worker_status")
      .add_message_type<std::vector<worker_status>>(
          "std::vector<infergrid::worker_status>")
      .add_message_type<model_status>("infergrid::model_status")
      .add_message_type<std::vector<model_status>>("std::vector<infergrid::model_status>")
      .add_message_type<model_metrics>("infergrid::model_metrics")
      .add_message_type<std::vector<model_metrics>>(
          "std::vector<infergrid::model_metrics>")
      .add_message_type<histogram_data>("infergrid::histogram_data")
      .add_message_type<job_record>("infergrid::job_record")
      .add_message_type<std::vector<job_record>>("std::vector<infergrid::job_record>")
      .add_message_type<job_error>("infergrid::job_error")
      .add_message_type<job_event>("infergrid::job_event")
      .add_message_type<std::vector<job_event>>("std::vector<infergrid::job_event>")
      .add_message_type<job_completion>("infergrid::job_completion")
      .add_message_type<std::vector<job_completion>>(
          "std::vector<infergrid::job_completion>")
      .add_message_type<held_lease>("infergrid::held_lease")
      .add_message_type<std::vector<held_lease>>("std::vector<infergrid::held_lease>")
      .add_message_type<lease_status>("infergrid::lease_status")
      .add_message_type<std::vector<lease_status>>("std::vector<infergrid::lease_status>")
      .add_message_type<std::vector<bool>>("std::vector<bool>")
      .add_message_type<tensor_data>("infergrid::tensor_data")
      .add_message_type<std::vector<tensor_data>>("std::vector<infergrid::tensor_data>")
      .add_message_type<infer_request>("infergrid::infer_request")
      .add_message_type<infer_batch>("infergrid::infer_batch")
      .add_message_type<infer_batch_result>("infergrid::infer_batch_result")
      .add_message_type<generate_input>("infergrid::generate_input")
      .add_message_type<generate_request>("infergrid::generate_request")
      .add_message_type<generate_reply>("infergrid::generate_reply")
      .add_message_type<speech_request>("infergrid::speech_request")
      .add_message_type<speech_reply>("infergrid::speech_reply");
}

} // namespace infergrid
