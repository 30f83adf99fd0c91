// Tests the LibTorch facade against the demo models built by make_demo_models.
#define CAF_SUITE model_runner

#include "tests/unit/test_support.hpp"

#include "inference/model_runner.hpp"

#include <caf/test/unit_test.hpp>

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <thread>

#include "inference/demo_models.hpp"
#include "inference/model_repository.hpp"
#include "messages/errors.hpp"

using namespace infergrid;
using namespace infergrid::inference;

namespace {

/// The value of `x`, or a test failure naming the error.
template <class T>
T must(caf::expected<T> x) {
  if (!x)
    CAF_FAIL("unexpected error: " << message_of(x.error()));
  return std::move(*x);
}

/// The demo models of one seed in a temp dir, with their parsed configs.
struct demo_repo {
  testing::temp_dir tmp;
  std::vector<std::string> names;
  std::vector<model_entry> entries;

  explicit demo_repo(uint64_t seed) {
    configure_runtime(1);
    auto res = make_demo_models(tmp.str(), seed);
    if (!res)
      CAF_FAIL("make_demo_models failed: " << message_of(res.error()));
    names = *res;
    entries = scan_model_repository(tmp.str());
  }

  const model_entry& entry(const std::string& name) const {
    for (auto& e : entries)
      if (e.info.name == name)
        return e;
    CAF_FAIL("no demo model " << name);
  }

  std::unique_ptr<model_runner> load(const std::string& name) const {
    auto& e = entry(name);
    auto runner = model_runner::load(e.info, e.dir);
    if (!runner)
      CAF_FAIL("cannot load " << name << ": " << message_of(runner.error()));
    return std::move(*runner);
  }
};

/// Built once per process (seed 42): building and saving takes a few ms.
const demo_repo& demos() {
  static demo_repo repo{42};
  return repo;
}

std::vector<float> ramp(std::size_t n, float scale) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = std::sin(static_cast<float>(i) * scale);
  return v;
}

std::vector<float> classify(model_runner& r, int64_t batch) {
  auto x = make_float_tensor("x", {batch, 16},
                             ramp(static_cast<std::size_t>(batch * 16), 0.37f));
  auto out = r.forward({x});
  if (!out)
    CAF_FAIL("forward failed: " << message_of(out.error()));
  return float_values(out->at(0));
}

std::string greedy_text(model_runner& r, const std::string& prompt, int32_t n) {
  generate_params p;
  p.prompt = prompt;
  p.max_tokens = n;
  p.temperature = 0.0;
  auto res = r.generate(p);
  if (!res)
    CAF_FAIL("generate failed: " << message_of(res.error()));
  return res->text;
}

generate_params seeded(uint64_t seed, int32_t max_tokens) {
  generate_params p;
  p.prompt = "Hello, ";
  p.max_tokens = max_tokens;
  p.temperature = 1.0;
  p.has_seed = true;
  p.seed = seed;
  return p;
}

/// Median wall time of `n` calls of `fn` in ms, after `warmup` untimed calls.
/// Reported by tests, never asserted (STYLE.md).
template <class Fn>
double median_ms(Fn&& fn, int n, int warmup) {
  for (int i = 0; i < warmup; ++i)
    fn();
  std::vector<double> ms;
  for (int i = 0; i < n; ++i) {
    auto start = std::chrono::steady_clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(
                     std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

} // namespace

CAF_TEST(resolve device) {
  CAF_CHECK_EQUAL(must(resolve_device("cpu")), "cpu");
  CAF_CHECK_EQUAL(must(resolve_device("auto")), cuda_available() ? "cuda:0" : "cpu");
  auto bad = resolve_device("tpu");
  CAF_REQUIRE(!bad);
  CAF_CHECK_EQUAL(code_of(bad.error()), errc::invalid_input);
  if (!cuda_available()) {
    for (auto dev : {"cuda", "cuda:0", "cuda:3"}) {
      auto res = resolve_device(dev);
      CAF_REQUIRE(!res);
      CAF_CHECK_EQUAL(code_of(res.error()), errc::unavailable);
      CAF_CHECK(message_of(res.error()).find("CUDA") != std::string::npos);
    }
  } else {
    CAF_CHECK_EQUAL(must(resolve_device("cuda")), "cuda:0");
    CAF_CHECK_EQUAL(must(resolve_device("cuda:0")), "cuda:0");
    auto absent = resolve_device("cuda:99");
    CAF_REQUIRE(!absent);
    CAF_CHECK_EQUAL(code_of(absent.error()), errc::unavailable);
    CAF_CHECK(message_of(absent.error()).find("CUDA device(s) present")
              != std::string::npos);
  }
}

CAF_TEST(demo models are written with valid configs) {
  auto& repo = demos();
  CAF_CHECK_EQUAL(repo.names,
                  (std::vector<std::string>{"classifier", "tinylm", "tinyspeech"}));
  CAF_REQUIRE_EQUAL(repo.entries.size(), 3u);
  for (auto& e : repo.entries)
    CAF_CHECK_EQUAL(e.error, "");
  auto& clf = repo.entry("classifier").info;
  CAF_CHECK(clf.kind == model_kind::tensor);
  CAF_CHECK_EQUAL(clf.max_batch_size, 32);
  CAF_CHECK_EQUAL(clf.max_queue_delay_us, 2000);
  CAF_CHECK_EQUAL(clf.outputs.at(0).name, "probabilities");
  auto& lm = repo.entry("tinylm").info;
  CAF_CHECK(lm.kind == model_kind::generate);
  CAF_CHECK_EQUAL(lm.outputs.size(), 2u);
  auto& tts = repo.entry("tinyspeech").info;
  CAF_CHECK(tts.kind == model_kind::speech);
  CAF_CHECK_EQUAL(tts.sample_rate, 24000);
}

CAF_TEST(load failures are unavailable with the cause) {
  auto& repo = demos();
  auto info = repo.entry("classifier").info;
  testing::temp_dir tmp;
  auto missing = model_runner::load(info, tmp.str());
  CAF_REQUIRE(!missing);
  CAF_CHECK_EQUAL(code_of(missing.error()), errc::unavailable);
  CAF_CHECK(message_of(missing.error()).find("model 'classifier': cannot load")
            != std::string::npos);
  std::ofstream{tmp.path() / "model.pt"} << "this is not a zip archive";
  auto corrupt = model_runner::load(info, tmp.str());
  CAF_REQUIRE(!corrupt);
  CAF_CHECK_EQUAL(code_of(corrupt.error()), errc::unavailable);
  CAF_MESSAGE("corrupt archive: " << message_of(corrupt.error()));
  info.device = "cuda";
  if (!cuda_available()) {
    auto no_gpu = model_runner::load(info, repo.entry("classifier").dir);
    CAF_REQUIRE(!no_gpu);
    CAF_CHECK_EQUAL(code_of(no_gpu.error()), errc::unavailable);
  }
}

CAF_TEST(classifier warm up and forward) {
  auto runner = demos().load("classifier");
  CAF_CHECK_EQUAL(runner->device(), cuda_available() ? "cuda:0" : "cpu");
  auto warm = runner->warm_up();
  CAF_REQUIRE(warm);
  CAF_CHECK_GREATER(*warm, 0.0);
  CAF_MESSAGE("classifier warm-up first call: " << *warm << " ms");
  for (int64_t batch : {1, 3, 32}) {
    auto x = make_float_tensor("x", {batch, 16},
                               ramp(static_cast<std::size_t>(batch * 16), 0.37f));
    auto out = runner->forward({x});
    CAF_REQUIRE(out);
    CAF_REQUIRE_EQUAL(out->size(), 1u);
    auto& y = out->at(0);
    CAF_CHECK_EQUAL(y.name, "probabilities");
    CAF_CHECK(y.type == dtype::float32);
    CAF_CHECK_EQUAL(y.shape, (std::vector<int64_t>{batch, 4}));
    auto p = float_values(y);
    CAF_REQUIRE_EQUAL(p.size(), static_cast<std::size_t>(batch * 4));
    for (int64_t row = 0; row < batch; ++row) {
      double sum = 0.0;
      for (int64_t c = 0; c < 4; ++c) {
        auto v = p[static_cast<std::size_t>(row * 4 + c)];
        CAF_CHECK(v > 0.0f && v < 1.0f);
        sum += v;
      }
      CAF_CHECK_LESS(std::abs(sum - 1.0), 1e-5);
    }
  }
  // Rows are independent: row 0 of a batch equals the single-row result.
  auto one = classify(*runner, 1);
  auto three = classify(*runner, 3);
  for (std::size_t i = 0; i < 4; ++i)
    CAF_CHECK_LESS(std::abs(one[i] - three[i]), 1e-5f);
  // The classes are not all equally likely (the weights do something).
  CAF_CHECK_GREATER(*std::max_element(one.begin(), one.end())
                        - *std::min_element(one.begin(), one.end()),
                    0.01f);
}

CAF_TEST(the intra op thread count also limits the threads of OpenBLAS) {
  // Debian's libblas.so.3 is OpenBLAS's pthread variant (install-deps.sh),
  // whose own threads at::set_num_threads does not reach: by default one per
  // core, each spinning after its calls.
  configure_runtime(1);
  using get_fn = int (*)();
  auto get = reinterpret_cast<get_fn>(::dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  if (!get) {
    CAF_MESSAGE("no OpenBLAS in this process: nothing to limit");
    return;
  }
  if (const char* env = std::getenv("OPENBLAS_NUM_THREADS"); env && *env) {
    CAF_MESSAGE("OPENBLAS_NUM_THREADS is set and wins: " << get() << " thread(s)");
    return;
  }
  CAF_CHECK_EQUAL(get(), 1);
}

CAF_TEST(mlp model is a batchable tensor model) {
  configure_runtime(1);
  testing::temp_dir tmp;
  auto dir = must(make_mlp_model(tmp.str(), "mlp", 32, 2, 8, 500, 42));
  CAF_CHECK_EQUAL(dir, tmp.str("mlp"));
  auto entries = scan_model_repository(tmp.str());
  CAF_REQUIRE_EQUAL(entries.size(), 1u);
  auto& e = entries.at(0);
  CAF_REQUIRE_EQUAL(e.error, "");
  CAF_CHECK_EQUAL(e.info.name, "mlp");
  CAF_CHECK(e.info.kind == model_kind::tensor);
  CAF_CHECK_EQUAL(e.info.max_batch_size, 8);
  CAF_CHECK_EQUAL(e.info.max_queue_delay_us, 500);
  CAF_CHECK_EQUAL(e.info.memory_mb, 1);
  CAF_REQUIRE_EQUAL(e.info.inputs.size(), 1u);
  CAF_CHECK_EQUAL(e.info.inputs.at(0).name, "x");
  CAF_CHECK_EQUAL(e.info.inputs.at(0).shape, (std::vector<int64_t>{-1, 16}));
  CAF_REQUIRE_EQUAL(e.info.outputs.size(), 1u);
  CAF_CHECK_EQUAL(e.info.outputs.at(0).name, "y");
  CAF_CHECK_EQUAL(e.info.outputs.at(0).shape, (std::vector<int64_t>{-1, 4}));
  auto runner = must(model_runner::load(e.info, e.dir));
  CAF_REQUIRE(runner->warm_up());
  auto rows = ramp(3 * 16, 0.37f);
  auto run = [&](int64_t batch, std::vector<float> values) {
    auto out = must(runner->forward({make_float_tensor("x", {batch, 16}, values)}));
    CAF_REQUIRE_EQUAL(out.size(), 1u);
    CAF_CHECK_EQUAL(out.at(0).name, "y");
    CAF_CHECK(out.at(0).type == dtype::float32);
    CAF_CHECK_EQUAL(out.at(0).shape, (std::vector<int64_t>{batch, 4}));
    auto y = float_values(out.at(0));
    CAF_REQUIRE_EQUAL(y.size(), static_cast<std::size_t>(batch * 4));
    return y;
  };
  auto batch = run(3, rows);
  for (std::size_t i = 0; i < 3; ++i) {
    std::vector<float> row(rows.begin() + static_cast<std::ptrdiff_t>(i * 16),
                           rows.begin() + static_cast<std::ptrdiff_t>(i * 16 + 16));
    auto single = run(1, row);
    for (std::size_t c = 0; c < 4; ++c)
      CAF_CHECK_LESS(std::abs(batch[i * 4 + c] - single[c]), 1e-5f);
  }
  // Different rows give different answers (the layers do something).
  CAF_CHECK_GREATER(std::abs(batch[0] - batch[4]) + std::abs(batch[1] - batch[5]), 1e-4f);
  // The same seed gives the same model, another seed another one.
  testing::temp_dir again;
  must(make_mlp_model(again.str(), "mlp", 32, 2, 8, 500, 42));
  must(make_mlp_model(again.str(), "other", 32, 2, 8, 500, 43));
  for (auto& other : scan_model_repository(again.str())) {
    auto r = must(model_runner::load(other.info, other.dir));
    auto y
        = float_values(must(r->forward({make_float_tensor("x", {3, 16}, rows)})).at(0));
    if (other.info.name == "mlp")
      CAF_CHECK_EQUAL(y, batch);
    else
      CAF_CHECK_NOT_EQUAL(y, batch);
  }
  // Out of range parameters are refused before anything is written.
  for (auto bad : {make_mlp_model(tmp.str(), "bad", 0, 2, 8, 0),
                   make_mlp_model(tmp.str(), "bad", 32, 0, 8, 0),
                   make_mlp_model(tmp.str(), "bad", 32, 2, 0, 0),
                   make_mlp_model(tmp.str(), "bad", 32, 2, 8, -1),
                   make_mlp_model(tmp.str(), "a/b", 32, 2, 8, 0)}) {
    CAF_REQUIRE(!bad);
    CAF_CHECK_EQUAL(code_of(bad.error()), errc::invalid_input);
  }
  CAF_CHECK_EQUAL(scan_model_repository(tmp.str()).size(), 1u);
}

CAF_TEST(forward errors are values) {
  auto runner = demos().load("classifier");
  // A wrong shape reaches the model, which raises: model_error, no crash.
  auto bad
      = runner->forward({make_float_tensor("x", {2, 15}, std::vector<float>(30, 0.5f))});
  CAF_REQUIRE(!bad);
  CAF_CHECK_EQUAL(code_of(bad.error()), errc::model_error);
  auto msg = message_of(bad.error());
  CAF_CHECK_EQUAL(msg.rfind("model 'classifier': ", 0), 0u);
  CAF_CHECK(msg.find("mat1 and mat2 shapes cannot be multiplied (2x15 and 16x32)")
            != std::string::npos);
  // The client sees the cause on one line, not the interpreter's tracebacks.
  CAF_CHECK_EQUAL(msg.find('\n'), std::string::npos);
  CAF_CHECK_EQUAL(msg.find("Traceback"), std::string::npos);
  // Wrong names and inconsistent data never reach LibTorch.
  auto unnamed
      = runner->forward({make_float_tensor("y", {1, 16}, std::vector<float>(16))});
  CAF_REQUIRE(!unnamed);
  CAF_CHECK_EQUAL(code_of(unnamed.error()), errc::invalid_input);
  auto short_data
      = runner->forward({make_float_tensor("x", {4, 16}, std::vector<float>(16))});
  CAF_REQUIRE(!short_data);
  CAF_CHECK_EQUAL(code_of(short_data.error()), errc::invalid_input);
  // A wrong dtype fed directly (int64 instead of float32) is a model error.
  tensor_data ints;
  ints.name = "x";
  ints.type = dtype::int64;
  ints.shape = {1, 16};
  ints.bytes.resize(16 * sizeof(int64_t));
  auto wrong_type = runner->forward({ints});
  CAF_REQUIRE(!wrong_type);
  CAF_CHECK_EQUAL(code_of(wrong_type.error()), errc::model_error);
  // The runner still works afterwards.
  CAF_CHECK_EQUAL(classify(*runner, 2).size(), 8u);
  // Kind mismatches are refused.
  auto gen = runner->generate(generate_params{});
  CAF_REQUIRE(!gen);
  CAF_CHECK_EQUAL(code_of(gen.error()), errc::invalid_input);
}

CAF_TEST(tinylm forward returns logits and state) {
  auto runner = demos().load("tinylm");
  tensor_data tokens;
  tokens.name = "tokens";
  tokens.type = dtype::int64;
  tokens.shape = {2, 3};
  std::vector<int64_t> ids{72, 105, 33, 10, 65, 66};
  tokens.bytes.resize(ids.size() * sizeof(int64_t));
  std::memcpy(tokens.bytes.data(), ids.data(), tokens.bytes.size());
  auto out = runner->forward({tokens});
  CAF_REQUIRE(out);
  CAF_REQUIRE_EQUAL(out->size(), 2u);
  CAF_CHECK_EQUAL(out->at(0).name, "logits");
  CAF_CHECK_EQUAL(out->at(0).shape, (std::vector<int64_t>{2, 256}));
  CAF_CHECK_EQUAL(out->at(1).name, "state");
  CAF_CHECK_EQUAL(out->at(1).shape, (std::vector<int64_t>{1, 2, 64}));
}

CAF_TEST(generate is reproducible with a seed) {
  auto runner = demos().load("tinylm");
  auto warm = runner->warm_up();
  CAF_REQUIRE(warm);
  CAF_MESSAGE("tinylm warm-up first call: " << *warm << " ms");
  auto a = runner->generate(seeded(7, 40));
  auto b = runner->generate(seeded(7, 40));
  auto c = runner->generate(seeded(8, 40));
  CAF_REQUIRE(a && b && c);
  CAF_CHECK_EQUAL(a->text, b->text);
  CAF_CHECK_NOT_EQUAL(a->text, c->text);
  CAF_CHECK_EQUAL(a->text.size(), 40u);
  CAF_MESSAGE("seed 7: '" << a->text << "'");
  // Greedy decoding equals top_k = 1 and a tiny nucleus at any temperature.
  auto greedy = greedy_text(*runner, "Hello, ", 24);
  auto top1 = seeded(99, 24);
  top1.top_k = 1;
  auto nucleus = seeded(123, 24);
  nucleus.top_p = 1e-6;
  CAF_CHECK_EQUAL(must(runner->generate(top1)).text, greedy);
  CAF_CHECK_EQUAL(must(runner->generate(nucleus)).text, greedy);
  // An empty prompt is allowed.
  auto no_prompt = seeded(1, 5);
  no_prompt.prompt.clear();
  auto empty = runner->generate(no_prompt);
  CAF_REQUIRE(empty);
  CAF_CHECK_EQUAL(empty->tokens, 5);
  // Bad parameters are invalid input.
  auto bad = seeded(1, 5);
  bad.top_p = 0.0;
  CAF_CHECK_EQUAL(code_of(runner->generate(bad).error()), errc::invalid_input);
}

CAF_TEST(generate honours max_tokens stop and cancel) {
  auto runner = demos().load("tinylm");
  // max_tokens: finish "length" with exactly that many bytes, streamed whole.
  std::string streamed;
  int calls = 0;
  auto res = runner->generate(seeded(3, 17), [&](const std::string& delta) {
    streamed += delta;
    ++calls;
    return true;
  });
  CAF_REQUIRE(res);
  CAF_CHECK_EQUAL(res->finish_reason, "length");
  CAF_CHECK_EQUAL(res->tokens, 17);
  CAF_CHECK_EQUAL(res->text.size(), 17u);
  CAF_CHECK_EQUAL(streamed, res->text);
  CAF_CHECK_GREATER(calls, 1);
  auto zero = runner->generate(seeded(3, 0));
  CAF_REQUIRE(zero);
  CAF_CHECK_EQUAL(zero->text, "");
  CAF_CHECK_EQUAL(zero->finish_reason, "length");
  // Stop: the same seed replays the same bytes, so a stop string taken from
  // the middle of the long text ends the text right before it.
  auto full = runner->generate(seeded(11, 60));
  CAF_REQUIRE(full);
  auto stop = full->text.substr(20, 3);
  auto pos = full->text.find(stop);
  auto p = seeded(11, 60);
  p.stop = {"never-matches-this", stop};
  std::string stop_stream;
  auto stopped = runner->generate(p, [&](const std::string& delta) {
    stop_stream += delta;
    return true;
  });
  CAF_REQUIRE(stopped);
  CAF_CHECK_EQUAL(stopped->finish_reason, "stop");
  CAF_CHECK_EQUAL(stopped->text, full->text.substr(0, pos));
  CAF_CHECK_EQUAL(stopped->tokens, static_cast<int64_t>(pos + stop.size()));
  CAF_CHECK_EQUAL(stop_stream, stopped->text);
  // Cancel: the callback says no on its third call.
  int seen = 0;
  auto cancelled
      = runner->generate(seeded(5, 50), [&](const std::string&) { return ++seen < 3; });
  CAF_REQUIRE(cancelled);
  CAF_CHECK_EQUAL(cancelled->finish_reason, "cancelled");
  CAF_CHECK_EQUAL(seen, 3);
  CAF_CHECK_LESS(cancelled->tokens, 50);
}

CAF_TEST(generate continues a conversation from its context) {
  auto runner = demos().load("tinylm");
  // Greedy decoding, so the text depends only on what the model was fed.
  auto turn = [](const std::string& prompt, int32_t n) {
    generate_params p;
    p.prompt = prompt;
    p.max_tokens = n;
    p.temperature = 0.0;
    return p;
  };
  auto ctx = make_generate_context();
  auto first = must(runner->generate(turn("Hello, ", 10), {}, ctx.get()));
  CAF_CHECK_EQUAL(first.text, greedy_text(*runner, "Hello, ", 10));
  // The last sampled byte waits in the context; the rest was fed.
  CAF_CHECK_EQUAL(context_tokens(*ctx), 7 + 10 - 1);
  auto second = must(runner->generate(turn("Bye", 12), {}, ctx.get()));
  // The same as one call over the whole conversation.
  CAF_CHECK_EQUAL(second.text, greedy_text(*runner, "Hello, " + first.text + "Bye", 12));
  CAF_CHECK_NOT_EQUAL(second.text, greedy_text(*runner, "Bye", 12));
  CAF_CHECK_EQUAL(context_tokens(*ctx), 7 + 10 + 3 + 12 - 1);
  // max_tokens 0 still feeds the prompt into the context.
  auto quiet = must(runner->generate(turn("ok", 0), {}, ctx.get()));
  CAF_CHECK_EQUAL(quiet.text, "");
  CAF_CHECK_EQUAL(context_tokens(*ctx), 7 + 10 + 3 + 12 + 2);
  // A cancelled turn keeps what was said: the next turn continues after it.
  auto other = make_generate_context();
  int seen = 0;
  auto cut = must(runner->generate(
      turn("Hello, ", 40), [&](const std::string&) { return ++seen < 3; }, other.get()));
  CAF_CHECK_EQUAL(cut.finish_reason, "cancelled");
  auto after = must(runner->generate(turn("!", 8), {}, other.get()));
  CAF_CHECK_EQUAL(after.text, greedy_text(*runner, "Hello, " + cut.text + "!", 8));
  // Bad parameters change nothing.
  auto bad = turn("x", 5);
  bad.top_p = 0.0;
  CAF_CHECK(!runner->generate(bad, {}, other.get()));
  CAF_CHECK_EQUAL(context_tokens(*other),
                  static_cast<int64_t>(7 + cut.text.size() + 1 + 8 - 1));
}

CAF_TEST(synthesize gives samples per byte and silent spaces) {
  auto runner = demos().load("tinyspeech");
  CAF_CHECK_EQUAL(runner->info().sample_rate, 24000);
  auto warm = runner->warm_up();
  CAF_REQUIRE(warm);
  CAF_MESSAGE("tinyspeech warm-up first call: " << *warm << " ms");
  const std::size_t spt = 480;
  auto pcm = runner->synthesize("ab c.");
  CAF_REQUIRE(pcm);
  CAF_REQUIRE_EQUAL(pcm->size(), 5 * spt);
  auto peak = [&](std::size_t token) {
    float m = 0.0f;
    for (std::size_t i = token * spt; i < (token + 1) * spt; ++i)
      m = std::max(m, std::abs((*pcm)[i]));
    return m;
  };
  CAF_CHECK_GREATER(peak(0), 0.05f);
  CAF_CHECK_GREATER(peak(1), 0.05f);
  CAF_CHECK_EQUAL(peak(2), 0.0f); // ' '
  CAF_CHECK_GREATER(peak(3), 0.05f);
  CAF_CHECK_EQUAL(peak(4), 0.0f); // '.'
  CAF_CHECK_LESS(*std::max_element(pcm->begin(), pcm->end()), 0.5f);
  // Each token starts and ends at zero (raised-cosine envelope).
  CAF_CHECK_LESS(std::abs((*pcm)[0]), 1e-6f);
  CAF_CHECK_LESS(std::abs((*pcm)[spt - 1]), 1e-6f);
  // Chunked synthesis equals whole synthesis.
  auto ab = runner->synthesize("ab");
  CAF_REQUIRE(ab);
  for (std::size_t i = 0; i < ab->size(); ++i)
    if (std::abs((*ab)[i] - (*pcm)[i]) > 1e-6f) {
      CAF_FAIL("chunked synthesis differs at sample " << i);
    }
  auto empty = runner->synthesize("");
  CAF_REQUIRE(empty);
  CAF_CHECK_EQUAL(empty->size(), 0u);
}

CAF_TEST(same seed same models and different seed different models) {
  demo_repo again{42};
  demo_repo other{43};
  auto& repo = demos();
  auto clf_a = repo.load("classifier");
  auto clf_b = again.load("classifier");
  auto clf_c = other.load("classifier");
  auto ya = classify(*clf_a, 5);
  CAF_CHECK_EQUAL(ya, classify(*clf_b, 5));
  CAF_CHECK_NOT_EQUAL(ya, classify(*clf_c, 5));
  auto lm_a = repo.load("tinylm");
  auto lm_b = again.load("tinylm");
  auto lm_c = other.load("tinylm");
  auto ta = greedy_text(*lm_a, "The ", 32);
  CAF_CHECK_EQUAL(ta, greedy_text(*lm_b, "The ", 32));
  CAF_CHECK_NOT_EQUAL(ta, greedy_text(*lm_c, "The ", 32));
  auto tts_a = repo.load("tinyspeech");
  auto tts_b = again.load("tinyspeech");
  auto tts_c = other.load("tinyspeech");
  auto pa = must(tts_a->synthesize("hello"));
  CAF_CHECK_EQUAL(pa.size(), 5u * 480u);
  CAF_CHECK(pa == must(tts_b->synthesize("hello")));
  CAF_CHECK(pa != must(tts_c->synthesize("hello")));
}

CAF_TEST(separate runners run on separate threads at once) {
  // Each executor thread owns its runner; InferenceMode is per call.
  auto lm_a = demos().load("tinylm");
  auto lm_b = demos().load("tinylm");
  auto clf = demos().load("classifier");
  auto expected_text = must(lm_a->generate(seeded(21, 48))).text;
  auto expected_probs = classify(*clf, 8);
  std::vector<std::string> texts(2);
  std::vector<std::vector<float>> probs(20);
  std::thread t1{[&] { texts[0] = must(lm_a->generate(seeded(21, 48))).text; }};
  std::thread t2{[&] { texts[1] = must(lm_b->generate(seeded(21, 48))).text; }};
  std::thread t3{[&] {
    for (auto& p : probs)
      p = classify(*clf, 8);
  }};
  t1.join();
  t2.join();
  t3.join();
  CAF_CHECK_EQUAL(texts[0], expected_text);
  CAF_CHECK_EQUAL(texts[1], expected_text);
  for (auto& p : probs)
    CAF_CHECK_EQUAL(p, expected_probs);
}

CAF_TEST(steady state latency) {
  // Reported, not asserted (STYLE.md: no timing assertions in ctest).
  auto clf = demos().load("classifier");
  auto lm = demos().load("tinylm");
  auto tts = demos().load("tinyspeech");
  CAF_REQUIRE(clf->warm_up() && lm->warm_up() && tts->warm_up());
  for (int64_t batch : {1, 32}) {
    auto x = make_float_tensor("x", {batch, 16},
                               ramp(static_cast<std::size_t>(batch * 16), 0.1f));
    auto ms = median_ms([&] { CAF_CHECK(clf->forward({x})); }, 200, 0);
    CAF_MESSAGE("classifier forward B=" << batch << ": " << ms << " ms");
  }
  auto gen_ms = median_ms([&] { CAF_CHECK(lm->generate(seeded(1, 32))); }, 10, 0);
  CAF_MESSAGE("tinylm generate 32 tokens: " << gen_ms << " ms (" << gen_ms / 32.0
                                            << " ms/token)");
  std::string text = "The quick brown fox jumps over the lazy dog, twice.";
  auto tts_ms = median_ms([&] { CAF_CHECK(tts->synthesize(text)); }, 20, 0);
  CAF_MESSAGE("tinyspeech " << text.size() << " bytes: " << tts_ms << " ms");
}

namespace {

/// Largest absolute difference of two equally long float vectors.
float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size())
    CAF_FAIL("sizes differ: " << a.size() << " vs " << b.size());
  float worst = 0.0f;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

/// `name` of the seed-42 demo repository, loaded on `device`.
std::unique_ptr<model_runner> load_on(const std::string& name,
                                      const std::string& device) {
  auto info = demos().entry(name).info;
  info.device = device;
  auto runner = model_runner::load(info, demos().entry(name).dir);
  if (!runner)
    CAF_FAIL("cannot load " << name << " on " << device << ": "
                            << message_of(runner.error()));
  return std::move(*runner);
}

} // namespace

// GPU-aware: skipped (passes) on CPU-only builds and machines without a GPU.
// On a CUDA build with a GPU it checks the three demo models against the CPU
// within 1e-4 and reports warm-up and steady-state latency on both devices.
CAF_TEST(cuda results match cpu) {
  if (!cuda_available()) {
    CAF_MESSAGE("no CUDA in this build or no GPU visible: skipped");
    return;
  }
  std::map<std::string, std::unique_ptr<model_runner>> cpu, gpu;
  for (auto name : {"classifier", "tinylm", "tinyspeech"}) {
    cpu[name] = load_on(name, "cpu");
    gpu[name] = load_on(name, "cuda");
    CAF_CHECK_EQUAL(gpu[name]->device(), "cuda:0");
    auto cold = gpu[name]->warm_up();
    CAF_REQUIRE(cold);
    CAF_REQUIRE(cpu[name]->warm_up());
    CAF_MESSAGE("cuda warm-up " << name << ": first call " << *cold << " ms");
  }
  // classifier: every batch size the model accepts agrees with the CPU.
  for (int64_t batch : {1, 3, 32}) {
    auto diff = max_abs_diff(classify(*cpu["classifier"], batch),
                             classify(*gpu["classifier"], batch));
    CAF_MESSAGE("classifier B=" << batch << " max |cuda - cpu| = " << diff);
    CAF_CHECK_LESS(diff, 1e-4f);
  }
  // tinylm: logits of a prompt (cuDNN's GRU may use TF32, so only reported
  // against 1e-4 and checked against 1e-2), and the greedy text.
  tensor_data tokens;
  tokens.name = "tokens";
  tokens.type = dtype::int64;
  tokens.shape = {1, 7};
  std::vector<int64_t> ids{72, 101, 108, 108, 111, 44, 32};
  tokens.bytes.resize(ids.size() * sizeof(int64_t));
  std::memcpy(tokens.bytes.data(), ids.data(), tokens.bytes.size());
  auto lc = must(cpu["tinylm"]->forward({tokens}));
  auto lg = must(gpu["tinylm"]->forward({tokens}));
  auto logit_diff = max_abs_diff(float_values(lc.at(0)), float_values(lg.at(0)));
  CAF_MESSAGE("tinylm logits max |cuda - cpu| = "
              << logit_diff << (logit_diff < 1e-4f ? " (< 1e-4)" : " (>= 1e-4)"));
  CAF_CHECK_LESS(logit_diff, 1e-2f);
  auto text_cpu = greedy_text(*cpu["tinylm"], "The ", 32);
  auto text_gpu = greedy_text(*gpu["tinylm"], "The ", 32);
  CAF_MESSAGE("tinylm greedy text " << (text_cpu == text_gpu ? "equal" : "DIFFERS")
                                    << " on cuda and cpu");
  // tinyspeech: the PCM agrees sample by sample.
  std::string sentence = "The quick brown fox jumps over the lazy dog.";
  auto pcm_diff = max_abs_diff(must(cpu["tinyspeech"]->synthesize(sentence)),
                               must(gpu["tinyspeech"]->synthesize(sentence)));
  CAF_MESSAGE("tinyspeech max |cuda - cpu| = " << pcm_diff);
  CAF_CHECK_LESS(pcm_diff, 1e-4f);
  // Steady state through the facade (inputs copied in, outputs copied back,
  // so each CUDA call is synchronous). Reported, never asserted.
  for (int64_t batch : {1, 32}) {
    auto x = make_float_tensor("x", {batch, 16},
                               ramp(static_cast<std::size_t>(batch * 16), 0.1f));
    for (auto* side : {&cpu, &gpu}) {
      auto& r = *(*side)["classifier"];
      auto ms = median_ms([&] { CAF_CHECK(r.forward({x})); }, 500, 20);
      CAF_MESSAGE("classifier forward B=" << batch << " on " << r.device() << ": " << ms
                                          << " ms (median of 500)");
    }
  }
  for (auto* side : {&cpu, &gpu}) {
    auto& lm = *(*side)["tinylm"];
    auto ms = median_ms([&] { CAF_CHECK(lm.generate(seeded(1, 32))); }, 20, 20);
    CAF_MESSAGE("tinylm generate 32 tokens on " << lm.device() << ": " << ms << " ms");
    auto& tts = *(*side)["tinyspeech"];
    auto tts_ms = median_ms([&] { CAF_CHECK(tts.synthesize(sentence)); }, 50, 20);
    CAF_MESSAGE("tinyspeech " << sentence.size() << " bytes on " << tts.device() << ": "
                              << tts_ms << " ms");
  }
}
