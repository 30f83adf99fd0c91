// Builds the three demo TorchScript models, and MLPs of any size for
// benchmarks, from C++ (no Python, no download).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/expected.hpp>

namespace infergrid::inference {

/// Writes `out_dir`/{classifier,tinylm,tinyspeech}/{config.yaml,model.pt}.
/// Weights come from a seeded PRNG, so the same seed gives the same files'
/// behaviour on any LibTorch build. Returns the names of the models written.
///
/// - classifier (tensor): x float32 [B,16] -> probabilities float32 [B,4]
///   (MLP 16->32->4 with ReLU and softmax).
/// - tinylm (generate): forward(tokens int64 [B,T], state: Optional[Tensor]
///   = None) -> (logits float32 [B,256] of the last position, state
///   [1,B,H]); byte-level GRU.
/// - tinyspeech (speech): forward(ids int64 [B,T]) -> pcm float32
///   [B, T*samples_per_token] at 24 kHz; attributes sample_rate and
///   samples_per_token.
caf::expected<std::vector<std::string>> make_demo_models(const std::string& out_dir,
                                                         uint64_t seed = 42);

/// Writes `out_dir`/`name`/{config.yaml,model.pt}: a tensor model shaped like
/// the demo classifier, x float32 [B,16] -> y float32 [B,4] (softmax), but
/// with `depth` hidden ReLU layers of `width` (1..4096 and 1..16), and the
/// given batching in its config.yaml (device auto, preload true, memory_mb
/// the size of its weights). For benchmarks whose forward pass should cost
/// more than the serving around it. Weights from the same seeded PRNG as
/// make_demo_models. Returns the model's directory; `invalid_input` for
/// parameters out of range, `internal` when LibTorch or the file system
/// fails. Blocks the caller while it draws and saves the weights (0.1-0.2 s for
/// width 1024, depth 3).
caf::expected<std::string> make_mlp_model(const std::string& out_dir,
                                          const std::string& name, int64_t width,
                                          int64_t depth, int64_t max_batch_size,
                                          int64_t max_queue_delay_us, uint64_t seed = 42);

} // namespace infergrid::inference
