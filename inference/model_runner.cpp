// LibTorch behind the model_runner facade: loading, device choice, tensor
// conversion, forward under InferenceMode, and the generate/synthesize loops.
#include "inference/model_runner.hpp"

#include <atomic>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <utility>

#include <dlfcn.h>
#include <malloc.h>

#include <spdlog/spdlog.h>
#include <ATen/Parallel.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>

// Every CUDA-specific include of the project lives here, compiled only when
// CMake found a CUDA LibTorch (libtorch-notes.md §4.3).
#ifdef INFERGRID_WITH_CUDA
#  include <c10/cuda/CUDACachingAllocator.h>
#  include <cuda_runtime_api.h>
#endif

#include "messages/errors.hpp"

namespace infergrid::inference {

namespace {

using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point start) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
}

/// The message of an exception from LibTorch: c10::Error carries a C++
/// backtrace in what(), which is noise for a client.
std::string cause_of(const std::exception& e) {
  if (auto err = dynamic_cast<const c10::Error*>(&e))
    return err->what_without_backtrace();
  return e.what();
}

/// LibTorch prints its warnings (TORCH_WARN) to stderr, past the log format,
/// and some repeat on every call: with CUDA, cuDNN's "RNN module weights are
/// not part of single contiguous chunk of memory" came once per GRU step. This
/// handler logs each distinct message once, through spdlog. Thread-local in
/// LibTorch, so every entry point below installs it with a warning_guard.
class log_once_warning_handler : public c10::WarningHandler {
public:
#if TORCH_VERSION_MAJOR >= 2
  void process(const c10::Warning& warning) override {
    log(warning.msg());
  }
#else
  void process(const c10::SourceLocation&, const std::string& msg, bool) override {
    log(msg);
  }
#endif

private:
  void log(const std::string& msg) {
    std::lock_guard<std::mutex> guard{mtx_};
    if (seen_.size() >= 256 || !seen_.insert(msg).second)
      return;
    spdlog::warn("libtorch: {} (logged once)", msg);
  }

  std::mutex mtx_;
  std::set<std::string> seen_;
};

/// Never destroyed: LibTorch threads may still warn during static destruction.
c10::WarningHandler* warning_handler() {
  static auto* handler = new log_once_warning_handler;
  return handler;
}

// The guard moved from c10::Warning (1.x) to c10::WarningUtils (2.x).
#if TORCH_VERSION_MAJOR >= 2
using warning_guard = c10::WarningUtils::WarningHandlerGuard;
#else
using warning_guard = c10::Warning::WarningHandlerGuard;
#endif

/// TorchScript wraps the original error in an interpreter banner and two
/// tracebacks; its last non-empty line holds the cause ("RuntimeError: ...").
std::string last_line(const std::string& text) {
  auto end = text.find_last_not_of(" \t\r\n");
  if (end == std::string::npos)
    return text;
  auto begin = text.find_last_of('\n', end);
  return text.substr(begin == std::string::npos ? 0 : begin + 1,
                     end + 1 - (begin == std::string::npos ? 0 : begin + 1));
}

/// Out of memory: eager code throws c10::OutOfMemoryError, but an OOM inside
/// a TorchScript forward arrives re-wrapped as std::runtime_error, so the
/// message is checked too (libtorch-notes.md §4.4).
bool is_oom(const std::exception& e, const std::string& cause) {
  return dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr
         || cause.find("out of memory") != std::string::npos;
}

/// Hands the caching allocator's unused blocks back to the driver after a
/// CUDA OOM, so the next request (or another model on the GPU) can have them.
void release_cached_gpu_memory() {
#ifdef INFERGRID_WITH_CUDA
  try {
    c10::cuda::CUDACachingAllocator::emptyCache();
  } catch (const std::exception& e) {
    spdlog::warn("inference: emptying the CUDA cache failed: {}", cause_of(e));
  }
#endif
}

/// The client gets the cause; the log keeps the whole text with tracebacks.
caf::error model_failure(const std::string& model, const std::exception& e,
                         bool on_cuda) {
  auto cause = cause_of(e);
  auto oom = is_oom(e, cause);
  if (oom && on_cuda)
    release_cached_gpu_memory();
  auto short_cause = last_line(cause);
  if (short_cause != cause)
    spdlog::warn("model {}: {}", model, cause);
  return make_error(oom ? errc::oom : errc::model_error,
                    "model '" + model + "': " + short_cause);
}

#ifdef INFERGRID_WITH_CUDA
/// One log line per visible GPU: what "auto" and "cuda:N" will run on.
void log_cuda_devices() {
  if (!torch::cuda::is_available()) {
    spdlog::info("inference: CUDA build, but no CUDA GPU is visible; "
                 "device \"auto\" means cpu");
    return;
  }
  auto count = static_cast<int>(torch::cuda::device_count());
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      spdlog::info("inference: cuda:{} present (no properties)", i);
      continue;
    }
    spdlog::info("inference: cuda:{} is {} (sm_{}{}, {:.1f} GiB), cuDNN {}", i, prop.name,
                 prop.major, prop.minor,
                 static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0),
                 torch::cuda::cudnn_is_available() ? "available" : "absent");
  }
}
#endif

bool to_scalar_type(dtype t, c10::ScalarType& out) {
  switch (t) {
    case dtype::float32:
      out = torch::kFloat32;
      return true;
    case dtype::float64:
      out = torch::kFloat64;
      return true;
    case dtype::int32:
      out = torch::kInt32;
      return true;
    case dtype::int64:
      out = torch::kInt64;
      return true;
    case dtype::uint8:
      out = torch::kUInt8;
      return true;
    case dtype::boolean:
      out = torch::kBool;
      return true;
  }
  return false;
}

/// Copies `x` into a CPU tensor that owns its memory. The caller checked that
/// x.bytes fills x.shape.
torch::Tensor to_torch(const tensor_data& x) {
  c10::ScalarType type = torch::kFloat32;
  to_scalar_type(x.type, type);
  // Bools travel as bytes; reading them as uint8 and converting normalises
  // any non-zero byte to true instead of creating an invalid bool.
  auto read_as = x.type == dtype::boolean ? torch::kUInt8 : type;
  auto opts = torch::TensorOptions().dtype(read_as);
  torch::Tensor t;
  if (x.bytes.empty())
    t = torch::empty(x.shape, opts);
  else
    t = torch::from_blob(const_cast<char*>(x.bytes.data()), x.shape, opts).clone();
  return x.type == dtype::boolean ? t.to(torch::kBool) : t;
}

/// Converts one output tensor to plain data (a contiguous CPU copy).
tensor_data from_torch(std::string name, const torch::Tensor& tensor) {
  auto t = tensor.to(torch::kCPU);
  tensor_data out;
  out.name = std::move(name);
  switch (t.scalar_type()) {
    case torch::kFloat32:
      out.type = dtype::float32;
      break;
    case torch::kFloat64:
      out.type = dtype::float64;
      break;
    case torch::kFloat16:
    case torch::kBFloat16:
      t = t.to(torch::kFloat32);
      out.type = dtype::float32;
      break;
    case torch::kInt8:
    case torch::kInt16:
    case torch::kInt32:
      t = t.to(torch::kInt32);
      out.type = dtype::int32;
      break;
    case torch::kInt64:
      out.type = dtype::int64;
      break;
    case torch::kUInt8:
      out.type = dtype::uint8;
      break;
    case torch::kBool:
      out.type = dtype::boolean;
      break;
    default:
      throw std::runtime_error("output '" + out.name + "' has unsupported dtype "
                               + std::string{c10::toString(t.scalar_type())});
  }
  t = t.contiguous();
  out.shape.assign(t.sizes().begin(), t.sizes().end());
  out.bytes.resize(static_cast<std::size_t>(t.numel()) * t.element_size());
  if (!out.bytes.empty())
    std::memcpy(out.bytes.data(), t.data_ptr(), out.bytes.size());
  return out;
}

/// Appends every tensor of `v` (a Tensor, or tuples/lists of them) in order.
void flatten(const c10::IValue& v, std::vector<torch::Tensor>& out) {
  if (v.isTensor()) {
    out.push_back(v.toTensor());
  } else if (v.isTuple()) {
    for (auto& e : v.toTupleRef().elements())
      flatten(e, out);
  } else if (v.isTensorList()) {
    for (const auto& t : v.toTensorVector())
      out.push_back(t);
  } else if (v.isList()) {
    for (const auto& e : v.toListRef())
      flatten(e, out);
  } else {
    throw std::runtime_error("forward returned a " + v.tagKind()
                             + "; expected a Tensor or a tuple of tensors");
  }
}

/// Draws 53 random bits as a double in [0, 1); the same on every standard
/// library, unlike std::uniform_real_distribution.
double unit_draw(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
}

/// Picks the next token from `logits` (plain C++, so the result depends only
/// on the logits and the seed, not on torch's RNG).
int64_t sample_token(const std::vector<float>& logits, const generate_params& p,
                     std::mt19937_64& rng) {
  auto argmax = [&] {
    return static_cast<int64_t>(std::max_element(logits.begin(), logits.end())
                                - logits.begin());
  };
  if (p.temperature <= 0.0)
    return argmax();
  const auto n = logits.size();
  std::vector<double> probs(n);
  double max_logit = -INFINITY;
  for (auto l : logits)
    max_logit = std::max(max_logit, static_cast<double>(l));
  double total = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    probs[i] = std::exp((logits[i] - max_logit) / p.temperature);
    total += probs[i];
  }
  if (!(total > 0.0) || !std::isfinite(total))
    throw std::runtime_error("logits are not finite");
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return probs[a] > probs[b]; });
  std::size_t keep = n;
  if (p.top_k > 0)
    keep = std::min(keep, static_cast<std::size_t>(p.top_k));
  if (p.top_p < 1.0) {
    double cumulative = 0.0;
    for (std::size_t i = 0; i < keep; ++i) {
      cumulative += probs[order[i]] / total;
      if (cumulative >= p.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept_total = 0.0;
  for (std::size_t i = 0; i < keep; ++i)
    kept_total += probs[order[i]];
  auto target = unit_draw(rng) * kept_total;
  for (std::size_t i = 0; i < keep; ++i) {
    target -= probs[order[i]];
    if (target < 0.0)
      return static_cast<int64_t>(order[i]);
  }
  return static_cast<int64_t>(order[keep - 1]);
}

/// Bytes at the end of `text` that may still become `stop`, or an unfinished
/// UTF-8 sequence: they are held back from the stream until decided.
std::size_t held_back(const std::string& text, const std::vector<std::string>& stop) {
  std::size_t hold = 0;
  for (auto& s : stop) {
    for (std::size_t len = std::min(s.size() - 1, text.size()); len > hold; --len) {
      if (text.compare(text.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  // An unfinished UTF-8 sequence: a lead byte within the last 3 bytes whose
  // continuation bytes have not all arrived.
  for (std::size_t back = 1; back <= std::min<std::size_t>(3, text.size()); ++back) {
    auto c = static_cast<unsigned char>(text[text.size() - back]);
    if ((c & 0xC0) == 0x80)
      continue; // continuation byte: look further back
    std::size_t need = (c & 0xE0) == 0xC0   ? 2
                       : (c & 0xF0) == 0xE0 ? 3
                       : (c & 0xF8) == 0xF0 ? 4
                                            : 1;
    if (need > back)
      hold = std::max(hold, back);
    break;
  }
  return hold;
}

} // namespace

namespace {

/// glibc's malloc returns the top of a thread's arena to the kernel once it
/// exceeds the trim threshold, and serves blocks above the (adaptive) mmap
/// threshold with fresh mappings. The executor thread allocates and frees
/// the same large tensors on every call, so by default each call page-faulted
/// its buffers in again: speech on the executor ran at a real-time factor of
/// 0.0007-0.0036 against 0.0002-0.0005 with the thresholds raised, and the
/// profile of the slow case was over a fifth page faults (docs/inference.md).
/// Values are the largest mmap threshold glibc accepts (32 MiB) and a trim
/// threshold that keeps up to 512 MiB of freed memory per arena. A
/// GLIBC_TUNABLES that sets malloc options wins.
void tune_malloc() {
  if (const char* t = std::getenv("GLIBC_TUNABLES"); t && std::strstr(t, "malloc")) {
    spdlog::info("inference: malloc thresholds from GLIBC_TUNABLES ({})", t);
    return;
  }
  constexpr int mmap_threshold = 32 << 20;
  constexpr int trim_threshold = 512 << 20;
  bool ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
            && mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1;
  if (!ok)
    spdlog::warn("inference: mallopt refused the malloc thresholds");
}

/// Debian's LibTorch calls BLAS through libblas.so.3, which install-deps.sh
/// points at OpenBLAS's pthread variant. That library keeps its own threads
/// (one per core by default), which at::set_num_threads does not reach, and
/// after each call they spin on sched_yield for a while. So a worker set to
/// one intra-op thread ran two, and on a 2-core machine two workers ran four
/// that fought for the cores (libtorch-notes.md). The symbol is looked up at
/// run time: another BLAS (netlib, MKL in a CUDA LibTorch) has none, and
/// then nothing changes. OPENBLAS_NUM_THREADS, when set, wins.
void limit_blas_threads(int threads) {
  using set_fn = void (*)(int);
  using get_fn = int (*)();
  auto set = reinterpret_cast<set_fn>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  auto get = reinterpret_cast<get_fn>(::dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  if (!set || !get)
    return;
  if (const char* env = std::getenv("OPENBLAS_NUM_THREADS"); env && *env) {
    spdlog::info("inference: OpenBLAS {} thread(s) from OPENBLAS_NUM_THREADS", get());
    return;
  }
  set(threads);
  spdlog::info("inference: OpenBLAS {} thread(s), as workers.intra_op_threads", get());
}

/// The intra-op thread count configure_runtime set (0: LibTorch's default).
std::atomic<int> configured_intra_op{0};

} // namespace

void configure_runtime(int intra_op_threads) {
  static std::once_flag once;
  std::call_once(once, [intra_op_threads] {
    tune_malloc();
    if (intra_op_threads >= 1) {
      at::set_num_threads(intra_op_threads);
      limit_blas_threads(intra_op_threads);
      configured_intra_op.store(intra_op_threads);
    }
    try {
      // Allowed once and only before any inter-op work; C++-defined modules
      // never fork, so one thread is enough.
      at::set_num_interop_threads(1);
    } catch (const std::exception& e) {
      spdlog::warn("inference: cannot set inter-op threads: {}", cause_of(e));
    }
#ifndef INFERGRID_WITH_CUDA
    // Without CUDA no fuser is active, so the profiling executor only adds a
    // slow profiled first run; the legacy executor has the same steady state.
    torch::jit::getProfilingMode() = false;
#endif
    spdlog::info("inference: LibTorch {} intra-op thread(s), {} inter-op thread(s), "
                 "profiling executor {}",
                 at::get_num_threads(), at::get_num_interop_threads(),
                 torch::jit::getProfilingMode() ? "on" : "off");
#ifdef INFERGRID_WITH_CUDA
    log_cuda_devices();
#endif
  });
}

void adopt_runtime() {
  thread_local bool adopted = false;
  if (adopted)
    return;
  adopted = true;
  if (auto n = configured_intra_op.load(); n >= 1)
    at::set_num_threads(n);
}

bool cuda_available() {
#ifdef INFERGRID_WITH_CUDA
  return torch::cuda::is_available();
#else
  // Without the CUDA build, "auto" must agree with "cuda" (refused below),
  // whatever the linked LibTorch could do.
  return false;
#endif
}

caf::expected<std::string> resolve_device(const std::string& requested) {
  if (requested == "cpu")
    return std::string{"cpu"};
  if (requested == "auto")
    return std::string{cuda_available() ? "cuda:0" : "cpu"};
  int64_t index = 0;
  if (requested == "cuda") {
    index = 0;
  } else if (requested.rfind("cuda:", 0) == 0 && requested.size() > 5
             && requested.size() <= 9
             && std::all_of(requested.begin() + 5, requested.end(),
                            [](char c) { return c >= '0' && c <= '9'; })) {
    index = std::stoll(requested.substr(5));
  } else {
    return make_error(errc::invalid_input, "device: unknown device '" + requested
                                               + "' (auto|cpu|cuda|cuda:N)");
  }
#ifdef INFERGRID_WITH_CUDA
  if (!cuda_available())
    return make_error(errc::unavailable,
                      "device '" + requested + "': no CUDA GPU is available");
  auto count = static_cast<int64_t>(torch::cuda::device_count());
  if (index >= count)
    return make_error(errc::unavailable, "device '" + requested + "': only "
                                             + std::to_string(count)
                                             + " CUDA device(s) present");
  return "cuda:" + std::to_string(index);
#else
  (void)index;
  return make_error(errc::unavailable,
                    "device '" + requested
                        + "': this build has no CUDA support (CPU-only LibTorch)");
#endif
}

// Not behind INFERGRID_WITH_CUDA: plain ATen calls that every LibTorch
// declares, so the CPU build type-checks them; they run only on CUDA devices.
namespace {

/// cuDNN's number for nn.RNNBase's `mode` (cudnnRNNMode_t), or -1.
int64_t cudnn_rnn_mode(const std::string& mode) {
  if (mode == "RNN_RELU")
    return 0;
  if (mode == "RNN_TANH")
    return 1;
  if (mode == "LSTM")
    return 2;
  if (mode == "GRU")
    return 3;
  return -1;
}

/// A scripted torch.nn.GRU/LSTM/RNN calls cuDNN with its `_flat_weights`.
/// Unless those tensors are views into one buffer in cuDNN's layout, cuDNN
/// copies them into one on every call (and says "RNN module weights are not
/// part of single contiguous chunk of memory"): for a generate model, on every
/// token. Python's nn.RNNBase flattens them whenever the module moves
/// (flatten_parameters); a TorchScript file loaded from C++ never does, so a
/// model saved on the CPU pays the copy for ever. This does what
/// flatten_parameters does, for every such submodule: the tensors become views
/// into one new buffer (same values). Returns how many modules it flattened.
int flatten_rnn_weights(torch::jit::Module& module) {
  int flattened = 0;
  torch::NoGradGuard no_grad;
  for (auto sub : module.modules()) {
    auto name = sub.type()->name();
    if (!name || name->qualifiedName().find("torch.nn.modules.rnn.") == std::string::npos)
      continue;
    bool complete = true;
    for (auto attr : {"mode", "_flat_weights", "input_size", "hidden_size", "num_layers",
                      "bias", "batch_first", "bidirectional"})
      complete = complete && sub.hasattr(attr);
    if (!complete)
      continue;
    auto mode = cudnn_rnn_mode(sub.attr("mode").toStringRef());
    auto weights = sub.attr("_flat_weights").toListRef();
    if (mode < 0 || weights.empty())
      continue;
    std::vector<torch::Tensor> tensors;
    for (auto& w : weights)
      tensors.push_back(w.toTensor());
    int64_t proj_size = sub.hasattr("proj_size") ? sub.attr("proj_size").toInt() : 0;
    int64_t stride0 = (sub.attr("bias").toBool() ? 4 : 2) + (proj_size > 0 ? 1 : 0);
    at::_cudnn_rnn_flatten_weight(
        tensors, stride0, sub.attr("input_size").toInt(), mode,
        sub.attr("hidden_size").toInt(), proj_size, sub.attr("num_layers").toInt(),
        sub.attr("batch_first").toBool(), sub.attr("bidirectional").toBool());
    ++flattened;
  }
  return flattened;
}

} // namespace

// -- model_runner -------------------------------------------------------------

struct model_runner::impl {
  model_info info;
  std::string dir;
  std::string device_name;
  torch::Device device{torch::kCPU};
  torch::jit::Module module;

  caf::error fail(errc code, const std::string& what) const {
    return make_error(code, "model '" + info.name + "': " + what);
  }

  caf::error require_kind(model_kind kind, const char* call) const {
    if (info.kind == kind)
      return {};
    return fail(errc::invalid_input, std::string{call} + " needs a model of kind "
                                         + to_string(kind) + ", this one is "
                                         + to_string(info.kind));
  }

  /// Moves a CPU tensor to the model's device.
  torch::Tensor place(torch::Tensor t) const {
    return device.is_cpu() ? t : t.to(device);
  }

  torch::Tensor token_tensor(const std::vector<int64_t>& ids) const {
    auto t = torch::from_blob(const_cast<int64_t*>(ids.data()),
                              {1, static_cast<int64_t>(ids.size())}, torch::kInt64)
                 .clone();
    return place(t);
  }

  /// Runs forward on torch values; throws what LibTorch throws.
  std::vector<tensor_data> run(std::vector<c10::IValue> args) {
    auto result = module.forward(std::move(args));
    std::vector<torch::Tensor> tensors;
    flatten(result, tensors);
    std::vector<tensor_data> outputs;
    outputs.reserve(tensors.size());
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      auto name = i < info.outputs.size() ? info.outputs[i].name
                                          : "output_" + std::to_string(i);
      outputs.push_back(from_torch(std::move(name), tensors[i]));
    }
    return outputs;
  }

  /// Calls forward(tokens, state) of a generate model and copies the logits
  /// of its single row.
  std::vector<float> lm_step(const torch::Tensor& tokens, c10::IValue& state) {
    std::vector<c10::IValue> args{tokens};
    if (!state.isNone())
      args.emplace_back(state);
    auto result = module.forward(std::move(args));
    if (!result.isTuple() || result.toTupleRef().elements().size() != 2)
      throw std::runtime_error("forward must return (logits, state), got a "
                               + result.tagKind());
    auto& elems = result.toTupleRef().elements();
    if (!elems[0].isTensor())
      throw std::runtime_error("logits must be a Tensor, got a " + elems[0].tagKind());
    auto logits = elems[0].toTensor();
    if (logits.dim() == 0 || logits.numel() != logits.size(-1) || logits.numel() == 0)
      throw std::runtime_error("logits must have shape [1, V], got "
                               + c10::str(logits.sizes()));
    if (logits.numel() > 256)
      throw std::runtime_error("logits have " + std::to_string(logits.numel())
                               + " entries; byte-level generation needs at most 256");
    auto cpu = logits.to(torch::kCPU, torch::kFloat32).contiguous();
    state = elems[1];
    auto data = cpu.data_ptr<float>();
    return std::vector<float>(data, data + cpu.numel());
  }
};

model_runner::model_runner(std::unique_ptr<impl> ptr) : impl_(std::move(ptr)) {
  // nop
}

model_runner::~model_runner() = default;

caf::expected<std::unique_ptr<model_runner>> model_runner::load(const model_info& info,
                                                                const std::string& dir) {
  auto p = std::make_unique<impl>();
  p->info = info;
  p->dir = dir;
  auto device = resolve_device(info.device);
  if (!device)
    return p->fail(errc::unavailable, message_of(device.error()));
  p->device_name = *device;
  auto path = (std::filesystem::path{dir} / "model.pt").string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    return p->fail(errc::unavailable, "cannot load " + path + ": no such file");
  try {
    warning_guard warnings{warning_handler()};
    p->device = torch::Device{p->device_name};
    p->module = torch::jit::load(path, p->device);
    p->module.eval();
  } catch (const std::exception& e) {
    return p->fail(errc::unavailable, "cannot load " + path + ": " + cause_of(e));
  }
  if (p->device.is_cuda() && torch::cuda::cudnn_is_available()) {
    // Only a speed-up: a model whose RNN weights cannot be flattened still
    // runs (cuDNN copies them per call), so a failure is logged, not fatal.
    try {
      warning_guard warnings{warning_handler()};
      if (auto n = flatten_rnn_weights(p->module); n > 0)
        spdlog::info("model {}: weights of {} RNN module(s) flattened for cuDNN",
                     info.name, n);
    } catch (const std::exception& e) {
      spdlog::warn("model {}: cannot flatten RNN weights for cuDNN: {}", info.name,
                   cause_of(e));
    }
  }
  return std::unique_ptr<model_runner>{new model_runner(std::move(p))};
}

caf::expected<double> model_runner::warm_up() {
  auto& d = *impl_;
  try {
    warning_guard warnings{warning_handler()};
    c10::InferenceMode guard;
    double first_ms = 0.0;
    for (int i = 0; i < 3; ++i) {
      auto start = clock_type::now();
      switch (d.info.kind) {
        case model_kind::tensor: {
          std::vector<c10::IValue> args;
          for (auto& spec : d.info.inputs) {
            std::vector<int64_t> shape = spec.shape;
            for (auto& dim : shape)
              dim = dim < 0 ? 1 : dim;
            c10::ScalarType type = torch::kFloat32;
            to_scalar_type(spec.type, type);
            args.emplace_back(d.place(torch::zeros(shape, torch::dtype(type))));
          }
          d.run(std::move(args));
          break;
        }
        case model_kind::generate: {
          // Both call shapes generate() uses: a prompt without state, then
          // one step with the state (each is its own executor plan).
          c10::IValue state;
          auto tokens = d.token_tensor({10});
          d.lm_step(tokens, state);
          d.lm_step(tokens, state);
          break;
        }
        case model_kind::speech:
          d.run({d.token_tensor({0, 0, 0, 0})});
          break;
      }
      if (i == 0)
        first_ms = ms_since(start);
    }
    return first_ms;
  } catch (const std::exception& e) {
    return model_failure(d.info.name, e, d.device.is_cuda());
  }
}

caf::expected<std::vector<tensor_data>>
model_runner::forward(const std::vector<tensor_data>& inputs) {
  auto& d = *impl_;
  // Arrange the inputs in declared order; names must match exactly.
  std::vector<const tensor_data*> ordered;
  if (d.info.inputs.empty()) {
    for (auto& x : inputs)
      ordered.push_back(&x);
  } else {
    for (auto& spec : d.info.inputs) {
      auto it = std::find_if(inputs.begin(), inputs.end(),
                             [&](const tensor_data& x) { return x.name == spec.name; });
      if (it == inputs.end())
        return d.fail(errc::invalid_input, "missing input '" + spec.name + "'");
      ordered.push_back(&*it);
    }
    for (auto& x : inputs)
      if (std::none_of(d.info.inputs.begin(), d.info.inputs.end(),
                       [&](const tensor_spec& s) { return s.name == x.name; }))
        return d.fail(errc::invalid_input, "unknown input '" + x.name + "'");
  }
  for (auto x : ordered)
    if (!x->consistent())
      return d.fail(errc::invalid_input,
                    "input '" + x->name + "': " + std::to_string(x->bytes.size())
                        + " bytes do not fill shape " + shape_string(x->shape) + " of "
                        + to_string(x->type));
  try {
    warning_guard warnings{warning_handler()};
    c10::InferenceMode guard;
    std::vector<c10::IValue> args;
    args.reserve(ordered.size());
    for (auto x : ordered)
      args.emplace_back(d.place(to_torch(*x)));
    return d.run(std::move(args));
  } catch (const std::exception& e) {
    return model_failure(d.info.name, e, d.device.is_cuda());
  }
}

struct generate_context {
  c10::IValue state;
  /// The last sampled token, not fed yet; -1: none.
  int64_t pending = -1;
  int64_t fed = 0;
};

std::shared_ptr<generate_context> make_generate_context() {
  return std::make_shared<generate_context>();
}

int64_t context_tokens(const generate_context& ctx) {
  return ctx.fed;
}

caf::expected<generate_result> model_runner::generate(const generate_params& params,
                                                      const token_callback& on_token,
                                                      generate_context* ctx) {
  auto& d = *impl_;
  if (auto err = d.require_kind(model_kind::generate, "generate"))
    return err;
  if (params.max_tokens < 0)
    return d.fail(errc::invalid_input, "max_tokens must be >= 0");
  if (!(params.temperature >= 0.0) || !std::isfinite(params.temperature))
    return d.fail(errc::invalid_input, "temperature must be >= 0");
  if (params.top_k < 0)
    return d.fail(errc::invalid_input, "top_k must be >= 0");
  if (!(params.top_p > 0.0 && params.top_p <= 1.0))
    return d.fail(errc::invalid_input, "top_p must be in (0, 1]");
  std::vector<std::string> stop;
  for (auto& s : params.stop)
    if (!s.empty())
      stop.push_back(s);
  std::mt19937_64 rng{params.has_seed ? params.seed
                                      : (uint64_t{std::random_device{}()} << 32)
                                            ^ std::random_device{}()};
  generate_result result;
  std::size_t emitted = 0;
  // Streams text[emitted, upto); false when the callback asks to stop.
  auto emit = [&](std::size_t upto) {
    if (upto <= emitted)
      return true;
    auto delta = result.text.substr(emitted, upto - emitted);
    emitted = upto;
    return !on_token || on_token(delta);
  };
  try {
    warning_guard warnings{warning_handler()};
    c10::InferenceMode guard;
    std::vector<int64_t> prompt;
    if (ctx != nullptr && ctx->pending >= 0)
      prompt.push_back(ctx->pending);
    for (unsigned char c : params.prompt)
      prompt.push_back(c);
    if (prompt.empty())
      prompt.push_back('\n');
    c10::IValue state;
    if (ctx != nullptr) {
      // Cleared first: a call that throws leaves a fresh context behind.
      state = std::move(ctx->state);
      ctx->state = c10::IValue{};
      ctx->pending = -1;
    }
    int64_t fed = 0;
    std::vector<float> logits;
    if (params.max_tokens > 0 || ctx != nullptr) {
      logits = d.lm_step(d.token_tensor(prompt), state);
      fed += static_cast<int64_t>(prompt.size());
    }
    int64_t last = -1; // sampled and not fed
    while (result.finish_reason.empty()) {
      if (result.tokens >= params.max_tokens) {
        result.finish_reason = "length";
        break;
      }
      auto token = sample_token(logits, params, rng);
      last = token;
      result.text.push_back(static_cast<char>(static_cast<unsigned char>(token)));
      ++result.tokens;
      for (auto& s : stop) {
        if (result.text.size() >= s.size()
            && result.text.compare(result.text.size() - s.size(), s.size(), s) == 0) {
          result.text.resize(result.text.size() - s.size());
          result.finish_reason = "stop";
          break;
        }
      }
      if (!result.finish_reason.empty())
        break;
      if (!emit(result.text.size() - held_back(result.text, stop))) {
        result.finish_reason = "cancelled";
        break;
      }
      if (result.tokens < params.max_tokens) {
        logits = d.lm_step(d.token_tensor({token}), state);
        last = -1;
        ++fed;
      }
    }
    if (ctx != nullptr) {
      ctx->state = std::move(state);
      ctx->pending = last;
      ctx->fed += fed;
    }
  } catch (const std::exception& e) {
    if (ctx != nullptr)
      ctx->fed = 0;
    return model_failure(d.info.name, e, d.device.is_cuda());
  }
  // Flush what was held back (the stop string itself is already cut off).
  // Generation is over, so the callback's answer no longer changes anything.
  if (result.finish_reason != "cancelled")
    static_cast<void>(emit(result.text.size()));
  return result;
}

caf::expected<std::vector<float>> model_runner::synthesize(const std::string& text) {
  auto& d = *impl_;
  if (auto err = d.require_kind(model_kind::speech, "synthesize"))
    return err;
  if (text.empty())
    return std::vector<float>{};
  try {
    warning_guard warnings{warning_handler()};
    c10::InferenceMode guard;
    std::vector<int64_t> ids;
    ids.reserve(text.size());
    for (unsigned char c : text)
      ids.push_back(c);
    auto result = d.module.forward({d.token_tensor(ids)});
    if (!result.isTensor())
      throw std::runtime_error("forward must return a pcm Tensor [1, S], got a "
                               + result.tagKind());
    auto pcm = result.toTensor();
    if (pcm.dim() != 2 || pcm.size(0) != 1)
      throw std::runtime_error("pcm must have shape [1, S], got "
                               + c10::str(pcm.sizes()));
    pcm = pcm.to(torch::kCPU, torch::kFloat32).contiguous();
    auto data = pcm.data_ptr<float>();
    std::vector<float> samples(data, data + pcm.numel());
    for (auto& s : samples) {
      if (!std::isfinite(s))
        throw std::runtime_error("pcm contains non-finite samples");
      s = std::clamp(s, -1.0f, 1.0f);
    }
    return samples;
  } catch (const std::exception& e) {
    return model_failure(d.info.name, e, d.device.is_cuda());
  }
}

const model_info& model_runner::info() const {
  return impl_->info;
}

const std::string& model_runner::device() const {
  return impl_->device_name;
}

} // namespace infergrid::inference
