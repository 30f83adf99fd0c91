// Gateway actor: model lookup and input validation, then delegation to the queue.
#include "actors/gateway.hpp"

#include <map>
#include <random>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "messages/errors.hpp"
#include "messages/generate_io.hpp"
#include "messages/kserve.hpp"
#include "messages/speech_io.hpp"

namespace infergrid {

namespace {

struct gateway_state {
  queue_actor queue;
  broker_actor broker;
  gateway_config cfg;
  std::map<std::string, model_info> models;
  std::mt19937_64 rng{(uint64_t{std::random_device{}()} << 32) ^ std::random_device{}()};
};

using gateway_pointer = gateway_actor::stateful_pointer<gateway_state>;

const model_info* find_model(const gateway_state& st, const std::string& name) {
  auto i = st.models.find(name);
  return i == st.models.end() ? nullptr : &i->second;
}

// A session id: "s-" and 16 hex digits, unguessable enough that one client
// cannot act on another's session by naming it.
std::string new_session_id(std::mt19937_64& rng) {
  static constexpr char hex[] = "0123456789abcdef";
  auto x = rng();
  std::string out = "s-";
  for (int i = 60; i >= 0; i -= 4)
    out += hex[(x >> i) & 0xf];
  return out;
}

caf::error unknown_model(const std::string& name) {
  return make_error(errc::not_found, "no model '" + name + "'");
}

caf::error wrong_kind(const model_info& m, model_kind want, const char* route) {
  return make_error(errc::invalid_input, "model: '" + m.name + "' is a "
                                             + to_string(m.kind) + " model; " + route
                                             + " serves " + to_string(want) + " models");
}

// Checks a durable job's input against its model's kind; "input" prefixes
// the field names so the client can find them in its request.
caf::error check_job_input(const model_info& m, const std::string& input_json) {
  switch (m.kind) {
    case model_kind::tensor: {
      auto xs = decode_kserve_request(input_json);
      if (!xs)
        return make_error(errc::invalid_input, "input." + message_of(xs.error()));
      if (auto problem = validate_inputs(m, *xs))
        return make_error(errc::invalid_input, "input." + *problem);
      return {};
    }
    case model_kind::generate: {
      auto in = decode_generate_input(input_json);
      if (!in)
        return in.error();
      return {};
    }
    case model_kind::speech: {
      auto in = decode_speech_input(input_json);
      if (!in)
        return in.error();
      return {};
    }
  }
  return make_error(errc::internal, "unknown model kind");
}

gateway_actor::behavior_type gateway_behavior(gateway_pointer self, queue_actor queue,
                                              broker_actor broker, gateway_config cfg) {
  auto& st = self->state;
  st.queue = std::move(queue);
  st.broker = std::move(broker);
  st.cfg = std::move(cfg);
  for (auto& m : st.cfg.models)
    st.models.emplace(m.name, m);
  return {
      [self](submit_atom, new_job& job) -> caf::result<job_record> {
        auto& st = self->state;
        auto m = find_model(st, job.model);
        if (m == nullptr)
          return unknown_model(job.model);
        if (job.max_attempts <= 0)
          job.max_attempts = st.cfg.default_max_attempts;
        if (auto err = check_job_input(*m, job.input_json))
          return err;
        return self->delegate(st.queue, submit_atom::value, std::move(job));
      },
      [self](job_get_atom, int64_t id) -> caf::result<job_record> {
        return self->delegate(self->state.queue, job_get_atom::value, id);
      },
      [self](infer_atom, const std::string& model, const std::string& body,
             const std::string& request_id) -> caf::result<std::vector<tensor_data>> {
        auto& st = self->state;
        auto m = find_model(st, model);
        if (m == nullptr)
          return unknown_model(model);
        if (m->kind != model_kind::tensor)
          return make_error(errc::invalid_input,
                            "model: '" + model + "' is a " + to_string(m->kind)
                                + " model; the KServe v2 infer route serves tensor "
                                  "models (use POST /v1/jobs)");
        auto xs = decode_kserve_request(body);
        if (!xs)
          return xs.error();
        if (auto problem = validate_inputs(*m, *xs))
          return make_error(errc::invalid_input, *problem);
        return self->delegate(st.queue, infer_atom::value,
                              infer_request{model, std::move(*xs), request_id});
      },
      [self](generate_atom, generate_request& req) -> caf::result<generate_reply> {
        auto& st = self->state;
        auto m = find_model(st, req.model);
        if (m == nullptr)
          return unknown_model(req.model);
        if (m->kind != model_kind::generate)
          return wrong_kind(*m, model_kind::generate, "this route");
        return self->delegate(st.queue, generate_atom::value, std::move(req));
      },
      [self](speech_atom, speech_request& req) -> caf::result<speech_reply> {
        auto& st = self->state;
        auto m = find_model(st, req.model);
        if (m == nullptr)
          return unknown_model(req.model);
        if (m->kind != model_kind::speech)
          return wrong_kind(*m, model_kind::speech, "POST /v1/audio/speech");
        if (req.text.empty())
          return make_error(errc::invalid_input, "input: expected a non-empty string");
        return self->delegate(st.queue, speech_atom::value, std::move(req));
      },
      [self](load_atom,
             const std::string& model) -> caf::result<std::vector<worker_status>> {
        auto& st = self->state;
        if (find_model(st, model) == nullptr)
          return unknown_model(model);
        return self->delegate(st.queue, load_atom::value, model);
      },
      [self](unload_atom,
             const std::string& model) -> caf::result<std::vector<worker_status>> {
        auto& st = self->state;
        if (find_model(st, model) == nullptr)
          return unknown_model(model);
        return self->delegate(st.queue, unload_atom::value, model);
      },
      [self](artifact_atom, int64_t id,
             const std::string& name) -> caf::result<artifact_ref> {
        return self->delegate(self->state.queue, artifact_atom::value, id, name);
      },
      [self](drain_atom, const std::string& worker,
             bool drain) -> caf::result<worker_status> {
        return self->delegate(self->state.queue, drain_atom::value, worker, drain);
      },
      [self](models_atom) -> std::vector<model_info> { return self->state.cfg.models; },
      [self](stats_atom) -> caf::result<cluster_stats> {
        return self->delegate(self->state.queue, stats_atom::value);
      },
      [self](list_atom, job_filter& filter) -> caf::result<job_page> {
        if (filter.limit < 1 || filter.limit > 1000)
          return make_error(errc::invalid_input, "limit: expected 1..1000");
        return self->delegate(self->state.queue, list_atom::value, std::move(filter));
      },
      [self](cancel_atom, int64_t id) -> caf::result<job_record> {
        return self->delegate(self->state.queue, cancel_atom::value, id);
      },
      [self](events_atom, int64_t id,
             int64_t after_seq) -> caf::result<std::vector<job_event>> {
        return self->delegate(self->state.queue, events_atom::value, id, after_seq);
      },
      [self](subscribe_atom, int64_t id,
             event_subscriber_actor& who) -> caf::result<bool> {
        return self->delegate(self->state.broker, subscribe_atom::value, id,
                              std::move(who));
      },
      [self](unsub_atom, int64_t id, event_subscriber_actor& who) {
        self->send(self->state.broker, unsub_atom::value, id, std::move(who));
      },
      [self](session_atom, session_open& req) -> caf::result<session_grant> {
        auto& st = self->state;
        auto m = find_model(st, req.model);
        if (m == nullptr)
          return unknown_model(req.model);
        if (m->kind == model_kind::tensor)
          return make_error(errc::invalid_input,
                            "model: '" + req.model
                                + "' is a tensor model; sessions serve generate and "
                                  "speech models");
        req.session_id = new_session_id(st.rng);
        return self->delegate(st.queue, session_atom::value, std::move(req));
      },
      [self](session_atom, const std::string& id,
             const std::string& action) -> caf::result<std::string> {
        return self->delegate(self->state.queue, session_atom::value, id, action);
      },
  };
}

} // namespace

gateway_actor spawn_gateway(caf::actor_system& sys, queue_actor queue,
                            broker_actor broker, gateway_config cfg) {
  return sys.spawn(gateway_behavior, std::move(queue), std::move(broker), std::move(cfg));
}

} // namespace infergrid
