// Builds the three demo TorchScript models from C++ (no Python, no download).
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
caf::expected<std::vector<std::string>>
make_demo_models(const std::string& out_dir, uint64_t seed = 42);

} // namespace infergrid::inference
