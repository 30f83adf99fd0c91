// Dynamic batching of tensor requests: joining inputs along dimension 0, splitting
// outputs back, and the rule that decides when a queue forms a batch. Torch-free.
#pragma once

#include <cstdint>
#include <vector>

#include <caf/expected.hpp>

#include "messages/tensor.hpp"

namespace infergrid::inference {

/// Several requests' inputs joined into one input list, and the batch size (dim 0)
/// each request contributed, in request order.
struct batched_inputs {
  std::vector<tensor_data> inputs;
  std::vector<int64_t> sizes;
};

/// Concatenates several requests' inputs along dimension 0 into one input list for a
/// single forward call. Every request holds the same input names (any order; the
/// first request's order is kept) with the same dtype and the same dimensions after
/// the first; within one request every input has the same dim 0, which is that
/// request's batch size. Returns the batched inputs and each request's batch size.
/// errc::invalid_input naming request index and input on any mismatch, on rank-0
/// inputs, on negative dimensions, on inconsistent byte sizes, on duplicate names,
/// on a request without inputs and on an empty request list. A single request is
/// checked the same way and then passed through unchanged.
/// Pure byte copying; runs in the caller's thread and never blocks.
caf::expected<batched_inputs>
concat_batch(const std::vector<std::vector<tensor_data>>& requests);

/// Splits a batched forward's outputs back: each output whose dim 0 equals the sum
/// of `sizes` is sliced per request; errc::model_error ("output 'y' has batch N,
/// expected M") otherwise, and also for rank-0 outputs and inconsistent byte sizes.
/// result[i] holds request i's outputs in output order. With a single request the
/// outputs are passed through unchanged (no batch dimension required), exactly as an
/// unbatched forward would return them. errc::invalid_input for empty or negative
/// `sizes`. Runs in the caller's thread and never blocks.
caf::expected<std::vector<std::vector<tensor_data>>>
split_batch(const std::vector<tensor_data>& outputs, const std::vector<int64_t>& sizes);

/// A model's batching knobs (model_info::max_batch_size, max_queue_delay_us) plus
/// the batch sizes it prefers (Triton's `preferred_batch_size`).
struct batch_policy {
  int64_t max_batch_size = 1;
  int64_t max_queue_delay_us = 0;
  std::vector<int64_t> preferred_sizes;
};

/// What the queue should do now: take `take` requests, or wait `wait_us` at most
/// before asking again.
struct batch_decision {
  bool ready = false;
  int64_t take = 0;
  /// When not ready: how long until the oldest request reaches the queue delay.
  int64_t wait_us = 0;
};

/// The batch-forming rule of the queue (Triton's dynamic batcher semantics).
/// Counts requests, not rows: a request whose inputs have dim 0 = 2 is one item,
/// so a batch of `take` requests may hold more than max_batch_size rows.
/// pending: requests waiting for this model (>= 1); oldest_waited_us: how long the
/// oldest has waited. Ready with take = max_batch_size when pending >=
/// max_batch_size; else ready with the largest preferred size <= pending if any
/// (sizes < 1 are ignored); else ready with take = pending once oldest_waited_us >=
/// max_queue_delay_us; otherwise not ready and wait_us = max_queue_delay_us -
/// oldest_waited_us. max_batch_size < 1 counts as 1. pending < 1 gives not ready
/// with wait_us = 0 (nothing to wait for). Pure; never blocks.
batch_decision decide_batch(const batch_policy& p, int64_t pending,
                            int64_t oldest_waited_us);

} // namespace infergrid::inference
