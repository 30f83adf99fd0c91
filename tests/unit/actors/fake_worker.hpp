// A worker for queue tests: records what the queue gives it and answers
// interactive work at once.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "actors/interfaces.hpp"

namespace infergrid::testing {

struct fake_worker_state {
  /// When true, tensor batches are answered only one by one on renew_atom:
  /// the worker stays busy (a real one is busy while its model runs).
  bool hold = false;
  std::vector<
      std::pair<caf::typed_response_promise<infer_batch_result>, infer_batch_result>>
      held;
  int work_messages = 0;
  int infer_messages = 0;
  /// Requests per infer batch received, in order.
  std::vector<std::size_t> batch_sizes;
  std::vector<int64_t> cancels;
  std::vector<std::string> generate_prompts;
  /// The session of each generation ("" for none), in order.
  std::vector<std::string> generate_sessions;
  /// "id action" for each session message.
  std::vector<std::string> session_actions;
  /// When true, generations are answered only on renew_atom (oldest first).
  bool hold_generate = false;
  std::vector<std::pair<caf::typed_response_promise<generate_reply>, generate_reply>>
      held_generates;
  std::vector<bool> drains;
};

/// Answers each request of a batch with one tensor "echo" holding the batch's
/// size; a generation with the prompt reversed.
inline worker_actor::behavior_type
fake_worker(worker_actor::stateful_pointer<fake_worker_state> self) {
  return {
      [self](work_atom) { ++self->state.work_messages; },
      [self](infer_atom, const infer_batch& batch) -> caf::result<infer_batch_result> {
        ++self->state.infer_messages;
        self->state.batch_sizes.push_back(batch.requests.size());
        infer_batch_result out;
        for (std::size_t i = 0; i < batch.requests.size(); ++i)
          out.outputs.push_back({make_float_tensor(
              "echo", {1}, {static_cast<float>(batch.requests.size())})});
        if (!self->state.hold)
          return out;
        auto rp = self->make_response_promise<infer_batch_result>();
        self->state.held.emplace_back(rp, std::move(out));
        return rp;
      },
      [self](generate_atom, const generate_request& req) -> caf::result<generate_reply> {
        self->state.generate_prompts.push_back(req.params.prompt);
        self->state.generate_sessions.push_back(req.session);
        generate_reply out;
        out.text = std::string(req.params.prompt.rbegin(), req.params.prompt.rend());
        out.finish_reason = "length";
        if (!self->state.hold_generate)
          return out;
        auto rp = self->make_response_promise<generate_reply>();
        self->state.held_generates.emplace_back(rp, std::move(out));
        return rp;
      },
      [](speech_atom, const speech_request&) -> speech_reply { return {}; },
      // A real worker's lease timer; here: answer the oldest held batch (a
      // promise must be delivered inside its actor).
      [self](renew_atom) {
        auto& st = self->state;
        if (!st.held_generates.empty()) {
          auto [rp, out] = std::move(st.held_generates.front());
          st.held_generates.erase(st.held_generates.begin());
          rp.deliver(std::move(out));
          return;
        }
        if (st.held.empty())
          return;
        auto [rp, out] = std::move(st.held.front());
        st.held.erase(st.held.begin());
        rp.deliver(std::move(out));
      },
      [self](cancel_atom, int64_t id) { self->state.cancels.push_back(id); },
      [](chunk_atom, int64_t, int64_t, const std::string&) {},
      [](status_atom, const std::vector<model_status>&,
         const std::vector<model_metrics>&) {},
      [](load_atom, const std::string&) -> worker_status { return {}; },
      [](unload_atom, const std::string&) -> worker_status { return {}; },
      [self](drain_atom, bool drain) { self->state.drains.push_back(drain); },
      [self](session_atom, const std::string& id, const std::string& action) {
        self->state.session_actions.push_back(id + " " + action);
      },
  };
}

} // namespace infergrid::testing
