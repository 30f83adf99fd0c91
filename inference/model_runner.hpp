// A loaded TorchScript model behind a torch-free facade (pimpl). One executor
// owns each instance; calls block the calling thread and must never run on an
// event-based actor or an I/O thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "messages/generate_io.hpp"
#include "messages/model_info.hpp"
#include "messages/tensor.hpp"

namespace infergrid::inference {

/// Process-wide LibTorch settings. The first call wins (std::call_once):
/// intra-op threads, one inter-op thread, profiling executor settings.
void configure_runtime(int intra_op_threads);

/// Applies configure_runtime's per-thread settings (the intra-op thread
/// count, which OpenMP keeps per thread) to the calling thread, once: for a
/// thread other than the one that called configure_runtime that runs models.
void adopt_runtime();

/// Whether this build can use CUDA (INFERGRID_WITH_CUDA, docs/gpu.md) and a
/// GPU is present. Always false in a CPU-only build.
bool cuda_available();

/// Resolves "auto" | "cpu" | "cuda" | "cuda:N" to the device a model will use;
/// "auto" means CUDA when available, otherwise CPU. Fails with
/// errc::unavailable when CUDA is asked for but not available.
caf::expected<std::string> resolve_device(const std::string& requested);

/// Sampling settings of a generate model: the decoded job input.
using generate_params = generate_input;

struct generate_result {
  std::string text;
  int64_t tokens = 0;
  /// "length", "stop" or "cancelled".
  std::string finish_reason;
};

/// Called with each new piece of text; returning false cancels generation.
using token_callback = std::function<bool(const std::string& delta)>;

/// What a generate model has seen of one conversation (a session's turns):
/// its state after the last call and the token it sampled last, which it has
/// not been fed yet. Opaque here (it holds LibTorch values); a context
/// belongs to the model that filled it.
struct generate_context;

std::shared_ptr<generate_context> make_generate_context();

/// Tokens the model has been fed in this context so far.
int64_t context_tokens(const generate_context& ctx);

class model_runner {
public:
  ~model_runner();
  model_runner(const model_runner&) = delete;
  model_runner& operator=(const model_runner&) = delete;

  /// Loads `dir`/model.pt onto the device resolved from info.device. Errors
  /// (missing file, corrupt archive, CUDA absent) become errc::unavailable
  /// with the model name and the cause.
  static caf::expected<std::unique_ptr<model_runner>> load(const model_info& info,
                                                           const std::string& dir);

  /// Runs three forward passes with zero inputs of representative shape
  /// (-1 dimensions become 1) so the first real request is not slow.
  /// Returns the duration of the first call in milliseconds.
  caf::expected<double> warm_up();

  /// Runs forward() under c10::InferenceMode. Inputs are passed in the order
  /// of info().inputs (matched by name). A Tensor result becomes one output,
  /// a tuple becomes several (nested tuples of tensors are flattened); they are
  /// named after info().outputs where declared, else "output_<i>". Any
  /// exception becomes errc::model_error (errc::oom when the cause says "out
  /// of memory"; on CUDA the allocator's cached blocks are then released)
  /// with the model name and the cause. LibTorch warnings go to the log once
  /// per distinct message.
  caf::expected<std::vector<tensor_data>> forward(const std::vector<tensor_data>& inputs);

  /// Byte-level autoregressive generation for kind generate: the prompt's
  /// UTF-8 bytes are the tokens; forward(tokens [1,T], state) -> (logits
  /// [1,V], state) is called once for the prompt and once per new token.
  /// Calls `on_token` after each token (may be empty).
  ///
  /// With `ctx`, the call continues the conversation in it: the model is fed
  /// the token it sampled last time and then this prompt, starting from its
  /// state after the last call, so earlier turns are not run again (and the
  /// prompt is fed even when max_tokens is 0). `ctx` then holds the state
  /// after this call. A call that fails leaves `ctx` empty (a fresh start).
  caf::expected<generate_result> generate(const generate_params& params,
                                          const token_callback& on_token = {},
                                          generate_context* ctx = nullptr);

  /// Speech synthesis for kind speech: text bytes -> float PCM samples in
  /// [-1, 1] at info().sample_rate.
  caf::expected<std::vector<float>> synthesize(const std::string& text);

  const model_info& info() const;

  /// The device the model runs on, e.g. "cpu" or "cuda:0".
  const std::string& device() const;

private:
  struct impl;
  explicit model_runner(std::unique_ptr<impl> ptr);
  std::unique_ptr<impl> impl_;
};

} // namespace infergrid::inference
