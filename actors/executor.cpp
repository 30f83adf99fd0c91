// Executor: loads models in its own thread and runs forward/generate calls.
#include "actors/executor.hpp"

#include <chrono>
#include <map>
#include <memory>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include <spdlog/spdlog.h>

#include "inference/model_runner.hpp"
#include "messages/errors.hpp"
#include "messages/generate_io.hpp"
#include "messages/kserve.hpp"

namespace infergrid {

namespace {

using inference::model_runner;

struct executor_state {
  executor_config cfg;
  std::map<std::string, std::unique_ptr<model_runner>> models;
};

caf::expected<std::string> run_tensor_job(model_runner& m, const job_record& job) {
  auto inputs = decode_kserve_request(job.input_json);
  if (!inputs)
    return inputs.error();
  if (auto problem = validate_inputs(m.info(), *inputs))
    return make_error(errc::invalid_input, *problem);
  auto outputs = m.forward(*inputs);
  if (!outputs)
    return outputs.error();
  return encode_kserve_response(m.info().name, job_id_string(job.id), *outputs);
}

caf::expected<std::string>
run_generate_job(model_runner& m, const job_record& job,
                 const std::shared_ptr<cancel_flags>& cancels) {
  auto in = decode_generate_input(job.input_json);
  if (!in)
    return in.error();
  inference::token_callback keep_going;
  if (cancels)
    keep_going
        = [cancels, id = job.id](const std::string&) { return !cancels->raised(id); };
  auto out = m.generate(*in, keep_going);
  if (!out)
    return out.error();
  return encode_generate_output(out->text, out->tokens, out->finish_reason);
}

executor_actor::behavior_type
executor_behavior(executor_actor::stateful_pointer<executor_state> self,
                  executor_config cfg) {
  self->state.cfg = std::move(cfg);
  return {
      [self](load_atom) -> worker_registration {
        auto& st = self->state;
        inference::configure_runtime(st.cfg.intra_op_threads);
        worker_registration reg;
        reg.worker_id = st.cfg.worker_id;
        for (auto& entry : st.cfg.models) {
          auto& name = entry.info.name;
          if (!entry.error.empty()) {
            reg.failed.push_back(name + ": " + entry.error);
            continue;
          }
          auto runner = model_runner::load(entry.info, entry.dir);
          if (!runner) {
            reg.failed.push_back(name + ": " + message_of(runner.error()));
            spdlog::error("worker {}: model {} failed to load: {}", st.cfg.worker_id,
                          name, message_of(runner.error()));
            continue;
          }
          auto first_ms = (*runner)->warm_up();
          if (!first_ms) {
            reg.failed.push_back(name + ": warm-up: " + message_of(first_ms.error()));
            spdlog::error("worker {}: model {} failed its warm-up: {}", st.cfg.worker_id,
                          name, message_of(first_ms.error()));
            continue;
          }
          spdlog::info("worker {}: model {} loaded on {} (first call {:.1f} ms)",
                       st.cfg.worker_id, name, (*runner)->device(), *first_ms);
          reg.models.push_back(name);
          st.models.emplace(name, std::move(*runner));
        }
        return reg;
      },
      [self](run_job_atom, const job_record& job) -> caf::result<std::string> {
        auto i = self->state.models.find(job.model);
        if (i == self->state.models.end())
          return make_error(errc::unavailable, "model '" + job.model
                                                   + "' is not loaded on worker "
                                                   + self->state.cfg.worker_id);
        auto& m = *i->second;
        caf::expected<std::string> out = make_error(errc::internal);
        switch (m.info().kind) {
          case model_kind::tensor:
            out = run_tensor_job(m, job);
            break;
          case model_kind::generate:
            out = run_generate_job(m, job, self->state.cfg.cancels);
            break;
          case model_kind::speech:
            out = make_error(errc::invalid_input,
                             "model: '" + job.model
                                 + "' is a speech model; durable speech jobs are "
                                   "not served by this version");
            break;
        }
        // The run is over: a flag raised for it (cancel, timeout) is spent.
        if (self->state.cfg.cancels)
          self->state.cfg.cancels->clear(job.id);
        if (!out)
          return out.error();
        return std::move(*out);
      },
      [self](infer_atom,
             const infer_request& req) -> caf::result<std::vector<tensor_data>> {
        auto i = self->state.models.find(req.model);
        if (i == self->state.models.end())
          return make_error(errc::unavailable, "model '" + req.model
                                                   + "' is not loaded on worker "
                                                   + self->state.cfg.worker_id);
        auto out = i->second->forward(req.inputs);
        if (!out)
          return out.error();
        return std::move(*out);
      },
  };
}

} // namespace

executor_actor spawn_executor(caf::actor_system& sys, executor_config cfg) {
  return sys.spawn<caf::detached>(executor_behavior, std::move(cfg));
}

} // namespace infergrid
