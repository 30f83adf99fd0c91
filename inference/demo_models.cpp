// Builds the demo TorchScript models (classifier, tinylm, tinyspeech) in C++
// with weights from our own seeded PRNG, and writes their config.yaml files.
#include "inference/demo_models.hpp"

#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <system_error>

#include <torch/script.h>

#include "messages/errors.hpp"

namespace fs = std::filesystem;

namespace infergrid::inference {

namespace {

constexpr double pi = 3.14159265358979323846;

/// splitmix64: tiny, seedable, and the same everywhere (unlike torch's RNG or
/// std::normal_distribution).
class weight_rng {
public:
  weight_rng(uint64_t seed, uint64_t stream)
    : state_(seed ^ (stream * 0x9E3779B97F4A7C15ull)) {
    // nop
  }

  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  /// Uniform in [0, 1).
  double uniform() {
    return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0);
  }

  /// Standard normal (Box-Muller).
  double normal() {
    double u1 = 1.0 - uniform(); // (0, 1]
    double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * pi * u2);
  }

private:
  uint64_t state_;
};

/// A float32 tensor that owns a copy of `values`.
torch::Tensor make_tensor(const std::vector<float>& values,
                          std::vector<int64_t> shape) {
  return torch::from_blob(const_cast<float*>(values.data()), shape, torch::kFloat32)
    .clone();
}

/// N(0, scale^2) weights of the given shape.
torch::Tensor normal_tensor(weight_rng& rng, std::vector<int64_t> shape,
                            double scale) {
  int64_t n = 1;
  for (auto d : shape)
    n *= d;
  std::vector<float> values(static_cast<std::size_t>(n));
  for (auto& v : values)
    v = static_cast<float>(rng.normal() * scale);
  return make_tensor(values, std::move(shape));
}

torch::jit::Module new_module(const std::string& class_name) {
  torch::jit::Module m{class_name};
  // Without this slot eval() is a silent no-op (libtorch-notes.md §1.1).
  m.register_attribute("training", c10::BoolType::get(), false);
  return m;
}

// -- classifier: MLP 16 -> 32 -> 4 with ReLU and softmax ----------------------

torch::jit::Module build_classifier(uint64_t seed) {
  weight_rng rng{seed, 1};
  auto m = new_module("DemoClassifier");
  m.register_parameter("w1", normal_tensor(rng, {32, 16}, 1.0 / std::sqrt(16.0)), false);
  m.register_parameter("b1", normal_tensor(rng, {32}, 0.1), false);
  m.register_parameter("w2", normal_tensor(rng, {4, 32}, 2.0 / std::sqrt(32.0)), false);
  m.register_parameter("b2", normal_tensor(rng, {4}, 0.1), false);
  m.define(R"(
def forward(self, x: Tensor) -> Tensor:
    h = torch.relu(torch.linear(x, self.w1, self.b1))
    return torch.softmax(torch.linear(h, self.w2, self.b2), -1)
)");
  return m;
}

const char* classifier_config = R"(# Demo MLP (16 -> 32 -> 4) built by make_demo_models.
kind: tensor
max_batch_size: 32
max_queue_delay_us: 2000
device: auto
memory_mb: 1
preload: true
inputs:
  - {name: x, dtype: float32, shape: [-1, 16]}
outputs:
  - {name: probabilities, dtype: float32, shape: [-1, 4]}
)";

// -- tinylm: byte-level GRU language model ------------------------------------

constexpr int64_t lm_embed = 32;
constexpr int64_t lm_hidden = 64;

torch::jit::Module build_tinylm(uint64_t seed) {
  weight_rng rng{seed, 2};
  auto m = new_module("DemoByteGRU");
  m.register_attribute("hidden_size", c10::IntType::get(), lm_hidden);
  m.register_attribute("vocab_size", c10::IntType::get(), int64_t{256});
  const double gru_scale = 1.0 / std::sqrt(static_cast<double>(lm_hidden));
  m.register_parameter("embedding", normal_tensor(rng, {256, lm_embed}, 1.0), false);
  m.register_parameter("w_ih", normal_tensor(rng, {3 * lm_hidden, lm_embed}, gru_scale), false);
  m.register_parameter("w_hh", normal_tensor(rng, {3 * lm_hidden, lm_hidden}, gru_scale), false);
  m.register_parameter("b_ih", normal_tensor(rng, {3 * lm_hidden}, gru_scale), false);
  m.register_parameter("b_hh", normal_tensor(rng, {3 * lm_hidden}, gru_scale), false);
  m.register_parameter("head_w", normal_tensor(rng, {256, lm_hidden}, 2.0 * gru_scale), false);
  // Untrained, so bias the head towards printable ASCII: sampled text then
  // reads as (gibberish) text rather than random bytes.
  std::vector<float> bias(256);
  for (int c = 0; c < 256; ++c) {
    double b = rng.normal() * 0.1;
    if (c >= 32 && c < 127)
      b += 6.0;
    if ((c >= 'a' && c <= 'z') || c == ' ')
      b += 1.5;
    bias[static_cast<std::size_t>(c)] = static_cast<float>(b);
  }
  m.register_parameter("head_b", make_tensor(bias, {256}), false);
  m.define(R"(
def forward(self, tokens: Tensor, state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    x = torch.embedding(self.embedding, tokens)
    if state is None:
        h0 = x.new_zeros([1, tokens.size(0), self.hidden_size])
    else:
        h0 = state
    out, h = torch.gru(x, h0, [self.w_ih, self.w_hh, self.b_ih, self.b_hh], True, 1, 0.0, False, False, True)
    logits = torch.linear(out[:, -1], self.head_w, self.head_b)
    return logits, h
)");
  return m;
}

const char* tinylm_config = R"(# Demo byte-level GRU language model built by make_demo_models.
kind: generate
max_batch_size: 8
max_queue_delay_us: 0
device: auto
memory_mb: 1
preload: true
inputs:
  - {name: tokens, dtype: int64, shape: [-1, -1]}
outputs:
  - {name: logits, dtype: float32, shape: [-1, 256]}
  - {name: state, dtype: float32, shape: [1, -1, 64]}
)";

// -- tinyspeech: a toy text-to-speech -----------------------------------------

constexpr int64_t tts_sample_rate = 24000;
constexpr int64_t tts_samples_per_token = 480; // 20 ms per byte
constexpr int64_t tts_harmonics = 4;

bool silent_byte(int c) {
  return c < 33 || c == 127 || (c < 128 && std::ispunct(c) != 0);
}

torch::jit::Module build_tinyspeech(uint64_t seed) {
  weight_rng rng{seed, 3};
  auto m = new_module("DemoToyTTS");
  m.register_attribute("sample_rate", c10::IntType::get(), tts_sample_rate);
  m.register_attribute("samples_per_token", c10::IntType::get(), tts_samples_per_token);
  std::vector<float> pitch(256);
  std::vector<float> weights(256 * tts_harmonics);
  for (int c = 0; c < 256; ++c) {
    // Log-uniform pitch in 110..440 Hz, and harmonic weights ~ 1/k.
    pitch[static_cast<std::size_t>(c)]
      = static_cast<float>(110.0 * std::pow(4.0, rng.uniform()));
    double raw[tts_harmonics];
    double total = 0.0;
    for (int k = 0; k < tts_harmonics; ++k) {
      raw[k] = (0.3 + 0.7 * rng.uniform()) / (k + 1);
      total += raw[k];
    }
    for (int k = 0; k < tts_harmonics; ++k) {
      auto w = silent_byte(c) ? 0.0 : 0.25 * raw[k] / total;
      weights[static_cast<std::size_t>(c * tts_harmonics + k)] = static_cast<float>(w);
    }
  }
  std::vector<float> harmonics(tts_harmonics);
  for (int k = 0; k < tts_harmonics; ++k)
    harmonics[static_cast<std::size_t>(k)] = static_cast<float>(k + 1);
  std::vector<float> omega_t(tts_samples_per_token);
  std::vector<float> envelope(tts_samples_per_token);
  for (int64_t n = 0; n < tts_samples_per_token; ++n) {
    auto i = static_cast<std::size_t>(n);
    omega_t[i] = static_cast<float>(2.0 * pi * static_cast<double>(n) / tts_sample_rate);
    envelope[i] = static_cast<float>(
      0.5 * (1.0 - std::cos(2.0 * pi * static_cast<double>(n) / (tts_samples_per_token - 1))));
  }
  m.register_buffer("pitch", make_tensor(pitch, {256, 1}));
  m.register_buffer("weights", make_tensor(weights, {256, tts_harmonics}));
  m.register_buffer("harmonics", make_tensor(harmonics, {tts_harmonics}));
  m.register_buffer("omega_t", make_tensor(omega_t, {tts_samples_per_token}));
  m.register_buffer("envelope", make_tensor(envelope, {tts_samples_per_token}));
  m.define(R"(
def forward(self, ids: Tensor) -> Tensor:
    f = torch.embedding(self.pitch, ids)
    w = torch.embedding(self.weights, ids)
    phase = (f * self.harmonics).unsqueeze(-1) * self.omega_t
    wave = torch.sum(torch.sin(phase) * w.unsqueeze(-1), [2])
    pcm = wave * self.envelope
    return pcm.reshape([ids.size(0), ids.size(1) * self.samples_per_token])

def duration_seconds(self, num_tokens: int) -> float:
    return float(num_tokens * self.samples_per_token) / float(self.sample_rate)
)");
  return m;
}

const char* tinyspeech_config = R"(# Demo toy text-to-speech (24 kHz, 20 ms per byte) built by make_demo_models.
kind: speech
max_batch_size: 4
max_queue_delay_us: 0
device: auto
memory_mb: 1
preload: true
sample_rate: 24000
inputs:
  - {name: ids, dtype: int64, shape: [-1, -1]}
outputs:
  - {name: pcm, dtype: float32, shape: [-1, -1]}
)";

caf::error write_model(const fs::path& root, const std::string& name,
                       torch::jit::Module (*build)(uint64_t), const char* config,
                       uint64_t seed) {
  auto dir = root / name;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return make_error(errc::internal, "demo model '" + name + "': cannot create "
                                        + dir.string() + ": " + ec.message());
  auto model_path = (dir / "model.pt").string();
  try {
    build(seed).save(model_path);
  } catch (const c10::Error& e) {
    return make_error(errc::internal, "demo model '" + name + "': cannot write "
                                        + model_path + ": "
                                        + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return make_error(errc::internal, "demo model '" + name + "': cannot build "
                                        + model_path + ": " + e.what());
  }
  auto config_path = dir / "config.yaml";
  std::ofstream out{config_path, std::ios::binary | std::ios::trunc};
  out << config;
  out.close();
  if (!out)
    return make_error(errc::internal, "demo model '" + name + "': cannot write "
                                        + config_path.string());
  return {};
}

} // namespace

caf::expected<std::vector<std::string>>
make_demo_models(const std::string& out_dir, uint64_t seed) {
  if (out_dir.empty())
    return make_error(errc::invalid_input, "make_demo_models: out_dir is empty");
  struct demo {
    const char* name;
    torch::jit::Module (*build)(uint64_t);
    const char* config;
  };
  const demo demos[] = {
    {"classifier", build_classifier, classifier_config},
    {"tinylm", build_tinylm, tinylm_config},
    {"tinyspeech", build_tinyspeech, tinyspeech_config},
  };
  std::vector<std::string> names;
  for (auto& d : demos) {
    if (auto err = write_model(out_dir, d.name, d.build, d.config, seed))
      return err;
    names.emplace_back(d.name);
  }
  return names;
}

} // namespace infergrid::inference
