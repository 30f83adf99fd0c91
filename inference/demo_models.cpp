// Builds the demo TorchScript models (classifier, tinylm, tinyspeech) in C++
// with weights from our own seeded PRNG, and writes their config.yaml files.
#include "inference/demo_models.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <system_error>
#include <utility>

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
torch::Tensor make_tensor(const std::vector<float>& values, std::vector<int64_t> shape) {
  return torch::from_blob(const_cast<float*>(values.data()), shape, torch::kFloat32)
      .clone();
}

/// N(0, scale^2) weights of the given shape.
torch::Tensor normal_tensor(weight_rng& rng, std::vector<int64_t> shape, double scale) {
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

// -- MLPs: the classifier and make_mlp_model's models ------------------------

constexpr int64_t mlp_inputs = 16;
constexpr int64_t mlp_classes = 4;
/// Bounds of make_mlp_model: at most ~270M weights (~1 GiB).
constexpr int64_t max_mlp_width = 4096;
constexpr int64_t max_mlp_depth = 16;

/// Layer sizes of an MLP 16 -> width (x depth) -> 4.
struct mlp_shape {
  int64_t width;
  int64_t depth;

  /// Floats in its weights and biases.
  int64_t parameters() const {
    return (mlp_inputs + 1) * width + (depth - 1) * (width + 1) * width
           + (width + 1) * mlp_classes;
  }

  /// "16 -> 32 -> 4", "16 -> 1024 x 3 -> 4".
  std::string text() const {
    auto hidden = std::to_string(width);
    if (depth > 1)
      hidden += " x " + std::to_string(depth);
    return std::to_string(mlp_inputs) + " -> " + hidden + " -> "
           + std::to_string(mlp_classes);
  }
};

/// x [B,16] -> softmax [B,4] through `depth` ReLU layers of `width`. Weights
/// w1, b1, w2, b2, ... drawn in that order from stream `stream` of `seed`:
/// N(0, 1/fan_in) for the hidden layers, N(0, 4/fan_in) for the last, biases
/// N(0, 0.01).
torch::jit::Module build_mlp(const std::string& class_name, mlp_shape shape,
                             uint64_t seed, uint64_t stream) {
  weight_rng rng{seed, stream};
  auto m = new_module(class_name);
  std::string source = "\ndef forward(self, x: Tensor) -> Tensor:\n";
  std::string input = "x";
  for (int64_t layer = 1; layer <= shape.depth + 1; ++layer) {
    bool last = layer == shape.depth + 1;
    int64_t fan_in = layer == 1 ? mlp_inputs : shape.width;
    int64_t fan_out = last ? mlp_classes : shape.width;
    auto w = "w" + std::to_string(layer);
    auto b = "b" + std::to_string(layer);
    double scale = (last ? 2.0 : 1.0) / std::sqrt(static_cast<double>(fan_in));
    m.register_parameter(w, normal_tensor(rng, {fan_out, fan_in}, scale), false);
    m.register_parameter(b, normal_tensor(rng, {fan_out}, 0.1), false);
    auto linear = "torch.linear(" + input + ", self." + w + ", self." + b + ")";
    if (last)
      source += "    return torch.softmax(" + linear + ", -1)\n";
    else
      source += "    h = torch.relu(" + linear + ")\n";
    input = "h";
  }
  m.define(source);
  return m;
}

/// The config.yaml of an MLP built by build_mlp; `comment` is its first line.
std::string mlp_config(const std::string& comment, mlp_shape shape,
                       int64_t max_batch_size, int64_t max_queue_delay_us,
                       const std::string& output) {
  constexpr int64_t mib = 1024 * 1024;
  auto bytes = shape.parameters() * static_cast<int64_t>(sizeof(float));
  std::ostringstream out;
  out << "# " << comment << "\n"
      << "kind: tensor\n"
      << "max_batch_size: " << max_batch_size << "\n"
      << "max_queue_delay_us: " << max_queue_delay_us << "\n"
      << "device: auto\n"
      << "memory_mb: " << std::max<int64_t>(1, (bytes + mib - 1) / mib) << "\n"
      << "preload: true\n"
      << "inputs:\n"
      << "  - {name: x, dtype: float32, shape: [-1, " << mlp_inputs << "]}\n"
      << "outputs:\n"
      << "  - {name: " << output << ", dtype: float32, shape: [-1, " << mlp_classes
      << "]}\n";
  return out.str();
}

// The classifier: MLP 16 -> 32 -> 4 with ReLU and softmax.
constexpr mlp_shape classifier_shape{32, 1};

torch::jit::Module build_classifier(uint64_t seed) {
  return build_mlp("DemoClassifier", classifier_shape, seed, 1);
}

std::string classifier_config() {
  return mlp_config("Demo MLP (" + classifier_shape.text()
                        + ") built by make_demo_models.",
                    classifier_shape, 32, 2000, "probabilities");
}

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
  // The GRU's four tensors are views into one buffer, in cuDNN's order
  // (w_ih, w_hh, b_ih, b_hh, the first at offset 0). The file keeps them
  // sharing one storage and the runner loads it straight onto the device, so
  // on CUDA torch.gru finds the weights already in one contiguous chunk;
  // separate tensors are copied into one on every call, that is on every
  // generated token (docs/gpu.md). On the CPU views change nothing.
  auto w_ih = normal_tensor(rng, {3 * lm_hidden, lm_embed}, gru_scale);
  auto w_hh = normal_tensor(rng, {3 * lm_hidden, lm_hidden}, gru_scale);
  auto b_ih = normal_tensor(rng, {3 * lm_hidden}, gru_scale);
  auto b_hh = normal_tensor(rng, {3 * lm_hidden}, gru_scale);
  auto gru_flat = torch::cat({w_ih.flatten(), w_hh.flatten(), b_ih, b_hh});
  int64_t offset = 0;
  for (auto [name, like] : {std::pair{"w_ih", w_ih}, std::pair{"w_hh", w_hh},
                            std::pair{"b_ih", b_ih}, std::pair{"b_hh", b_hh}}) {
    m.register_parameter(
        name, gru_flat.narrow(0, offset, like.numel()).view(like.sizes()), false);
    offset += like.numel();
  }
  m.register_parameter("head_w", normal_tensor(rng, {256, lm_hidden}, 2.0 * gru_scale),
                       false);
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

const char* tinylm_config
    = R"(# Demo byte-level GRU language model built by make_demo_models.
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
        0.5
        * (1.0
           - std::cos(2.0 * pi * static_cast<double>(n) / (tts_samples_per_token - 1))));
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

const char* tinyspeech_config
    = R"(# Demo toy text-to-speech (24 kHz, 20 ms per byte) built by make_demo_models.
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

/// Writes `root`/`name`/{model.pt,config.yaml}; LibTorch's exceptions become
/// `internal` errors naming the model.
caf::error write_model(const fs::path& root, const std::string& name,
                       const std::function<torch::jit::Module()>& build,
                       const std::string& config) {
  auto dir = root / name;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return make_error(errc::internal, "demo model '" + name + "': cannot create "
                                          + dir.string() + ": " + ec.message());
  auto model_path = (dir / "model.pt").string();
  try {
    build().save(model_path);
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
    return make_error(errc::internal,
                      "demo model '" + name + "': cannot write " + config_path.string());
  return {};
}

} // namespace

caf::expected<std::vector<std::string>> make_demo_models(const std::string& out_dir,
                                                         uint64_t seed) {
  if (out_dir.empty())
    return make_error(errc::invalid_input, "make_demo_models: out_dir is empty");
  struct demo {
    const char* name;
    torch::jit::Module (*build)(uint64_t);
    std::string config;
  };
  const demo demos[] = {
      {"classifier", build_classifier, classifier_config()},
      {"tinylm", build_tinylm, tinylm_config},
      {"tinyspeech", build_tinyspeech, tinyspeech_config},
  };
  std::vector<std::string> names;
  for (auto& d : demos) {
    if (auto err = write_model(
            out_dir, d.name, [&] { return d.build(seed); }, d.config))
      return err;
    names.emplace_back(d.name);
  }
  return names;
}

caf::expected<std::string> make_mlp_model(const std::string& out_dir,
                                          const std::string& name, int64_t width,
                                          int64_t depth, int64_t max_batch_size,
                                          int64_t max_queue_delay_us, uint64_t seed) {
  auto invalid = [&](const std::string& why) {
    return make_error(errc::invalid_input, "make_mlp_model '" + name + "': " + why);
  };
  if (out_dir.empty())
    return invalid("out_dir is empty");
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos)
    return invalid("not a directory name");
  if (width < 1 || width > max_mlp_width)
    return invalid("width must be in 1.." + std::to_string(max_mlp_width) + ", got "
                   + std::to_string(width));
  if (depth < 1 || depth > max_mlp_depth)
    return invalid("depth must be in 1.." + std::to_string(max_mlp_depth) + ", got "
                   + std::to_string(depth));
  if (max_batch_size < 1)
    return invalid("max_batch_size must be >= 1, got " + std::to_string(max_batch_size));
  if (max_queue_delay_us < 0)
    return invalid("max_queue_delay_us must be >= 0, got "
                   + std::to_string(max_queue_delay_us));
  mlp_shape shape{width, depth};
  auto config = mlp_config("MLP (" + shape.text() + ") built by make_mlp_model.", shape,
                           max_batch_size, max_queue_delay_us, "y");
  if (auto err = write_model(
          out_dir, name, [&] { return build_mlp("DemoMLP", shape, seed, 4); }, config))
    return err;
  return (fs::path{out_dir} / name).string();
}

} // namespace infergrid::inference
