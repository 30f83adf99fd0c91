// Tests config.yaml parsing and the repository scan (no LibTorch involved).
#define CAF_SUITE model_repository

#include "tests/unit/test_support.hpp"

#include "inference/model_repository.hpp"

#include <caf/test/unit_test.hpp>

#include <fstream>

#include "messages/errors.hpp"

using namespace infergrid;
using namespace infergrid::inference;

namespace {

const std::string valid_config = R"(
kind: tensor
max_batch_size: 32
max_queue_delay_us: 2000
device: cuda:1
memory_mb: 64
preload: false
inputs:  [{name: x, dtype: float32, shape: [-1, 16]}, {name: mask, dtype: bool, shape: [-1]}]
outputs: [{name: y, dtype: float64, shape: [-1, 4]}]
)";

/// The message of a failed parse, or "" when it parsed.
std::string parse_error(const std::string& yaml) {
  auto res = parse_model_config("m", yaml);
  if (res)
    return {};
  CAF_CHECK_EQUAL(code_of(res.error()), errc::invalid_input);
  return message_of(res.error());
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out{path};
  out << text;
}

const std::string minimal_config = "kind: generate\n"
                                   "inputs: [{name: tokens, dtype: int64, shape: [-1, -1]}]\n";

} // namespace

CAF_TEST(a valid config fills every field) {
  auto res = parse_model_config("clf", valid_config);
  CAF_REQUIRE(res);
  auto& info = *res;
  CAF_CHECK_EQUAL(info.name, "clf");
  CAF_CHECK(info.kind == model_kind::tensor);
  CAF_CHECK_EQUAL(info.max_batch_size, 32);
  CAF_CHECK_EQUAL(info.max_queue_delay_us, 2000);
  CAF_CHECK_EQUAL(info.device, "cuda:1");
  CAF_CHECK_EQUAL(info.memory_mb, 64);
  CAF_CHECK_EQUAL(info.preload, false);
  CAF_CHECK_EQUAL(info.sample_rate, 0);
  CAF_REQUIRE_EQUAL(info.inputs.size(), 2u);
  CAF_CHECK_EQUAL(info.inputs[0].name, "x");
  CAF_CHECK(info.inputs[0].type == dtype::float32);
  CAF_CHECK_EQUAL(info.inputs[0].shape, (std::vector<int64_t>{-1, 16}));
  CAF_CHECK_EQUAL(info.inputs[1].name, "mask");
  CAF_CHECK(info.inputs[1].type == dtype::boolean);
  CAF_CHECK_EQUAL(info.inputs[1].shape, (std::vector<int64_t>{-1}));
  CAF_REQUIRE_EQUAL(info.outputs.size(), 1u);
  CAF_CHECK_EQUAL(info.outputs[0].name, "y");
  CAF_CHECK(info.outputs[0].type == dtype::float64);
  CAF_CHECK_EQUAL(info.outputs[0].shape, (std::vector<int64_t>{-1, 4}));
}

CAF_TEST(defaults apply to omitted keys) {
  auto res = parse_model_config("lm", minimal_config);
  CAF_REQUIRE(res);
  CAF_CHECK(res->kind == model_kind::generate);
  CAF_CHECK_EQUAL(res->max_batch_size, 1);
  CAF_CHECK_EQUAL(res->max_queue_delay_us, 0);
  CAF_CHECK_EQUAL(res->device, "auto");
  CAF_CHECK_EQUAL(res->memory_mb, 0);
  CAF_CHECK_EQUAL(res->preload, true);
  CAF_CHECK_EQUAL(res->sample_rate, 0);
  CAF_CHECK_EQUAL(res->outputs.size(), 0u);
  // Block-style lists parse the same as flow style.
  auto block = parse_model_config("lm", "kind: speech\nsample_rate: 16000\n"
                                        "inputs:\n"
                                        "  - name: ids\n"
                                        "    dtype: int64\n"
                                        "    shape:\n"
                                        "      - -1\n"
                                        "      - -1\n");
  CAF_REQUIRE(block);
  CAF_CHECK(block->kind == model_kind::speech);
  CAF_CHECK_EQUAL(block->sample_rate, 16000);
  CAF_CHECK_EQUAL(block->inputs.at(0).shape, (std::vector<int64_t>{-1, -1}));
}

CAF_TEST(kind is required and must be known) {
  auto msg = parse_error("inputs: [{name: x, dtype: float32, shape: [1]}]\n");
  CAF_CHECK(contains(msg, "config.yaml: kind: missing"));
  msg = parse_error("kind: foo\ninputs: [{name: x, dtype: float32, shape: [1]}]\n");
  CAF_CHECK_EQUAL(msg, "config.yaml: kind: unknown kind 'foo' (tensor|generate|speech)");
}

CAF_TEST(each bad key is named in the message) {
  auto with = [](const std::string& line) {
    return "kind: tensor\ninputs: [{name: x, dtype: float32, shape: [-1, 16]}]\n"
           + line + "\n";
  };
  CAF_CHECK(contains(parse_error(with("max_batch_size: 0")),
                     "config.yaml: max_batch_size: must be >= 1, got 0"));
  CAF_CHECK(contains(parse_error(with("max_batch_size: many")),
                     "config.yaml: max_batch_size: expected an integer, got 'many'"));
  CAF_CHECK(contains(parse_error(with("max_batch_size: 2.5")),
                     "config.yaml: max_batch_size:"));
  CAF_CHECK(contains(parse_error(with("max_queue_delay_us: -1")),
                     "config.yaml: max_queue_delay_us: must be >= 0"));
  CAF_CHECK(contains(parse_error(with("device: gpu")),
                     "config.yaml: device: unknown device 'gpu'"));
  CAF_CHECK(contains(parse_error(with("device: 'cuda:x'")),
                     "config.yaml: device: unknown device 'cuda:x'"));
  CAF_CHECK(contains(parse_error(with("memory_mb: -5")), "config.yaml: memory_mb:"));
  CAF_CHECK(contains(parse_error(with("preload: maybe")),
                     "config.yaml: preload: expected true or false, got 'maybe'"));
  CAF_CHECK(contains(parse_error(with("sample_rate: -1")), "config.yaml: sample_rate:"));
  CAF_CHECK(contains(parse_error(with("outputs: [{name: y, dtype: half, shape: [1]}]")),
                     "config.yaml: outputs[0].dtype: unknown dtype 'half'"));
  CAF_CHECK(contains(parse_error(with("outputs: {name: y}")),
                     "config.yaml: outputs: expected a list"));
  // Every valid device spelling passes.
  for (auto dev : {"auto", "cpu", "cuda", "cuda:0", "cuda:12"})
    CAF_CHECK_EQUAL(parse_error(with(std::string{"device: '"} + dev + "'")), "");
}

CAF_TEST(speech models need a sample rate) {
  auto msg = parse_error("kind: speech\ninputs: [{name: ids, dtype: int64, shape: [-1, -1]}]\n");
  CAF_CHECK_EQUAL(msg, "config.yaml: sample_rate: required (> 0) for kind speech");
  CAF_CHECK(contains(parse_error("kind: speech\nsample_rate: 0\n"
                                 "inputs: [{name: ids, dtype: int64, shape: [-1]}]\n"),
                     "sample_rate: required"));
}

CAF_TEST(inputs are required and checked entry by entry) {
  CAF_CHECK(contains(parse_error("kind: tensor\n"), "config.yaml: inputs: missing"));
  CAF_CHECK(contains(parse_error("kind: tensor\ninputs: []\n"),
                     "config.yaml: inputs: must declare at least one input"));
  CAF_CHECK_EQUAL(
    parse_error("kind: tensor\ninputs: [{name: x, dtype: f32, shape: [-1, 16]}]\n"),
    "config.yaml: inputs[0].dtype: unknown dtype 'f32' "
    "(float32|float64|int32|int64|uint8|bool)");
  CAF_CHECK(contains(parse_error("kind: tensor\ninputs: [{dtype: float32, shape: [1]}]\n"),
                     "config.yaml: inputs[0].name: missing"));
  CAF_CHECK(contains(parse_error("kind: tensor\ninputs: [{name: x, shape: [1]}]\n"),
                     "config.yaml: inputs[0].dtype: missing"));
  CAF_CHECK(contains(parse_error("kind: tensor\ninputs: [{name: x, dtype: float32}]\n"),
                     "config.yaml: inputs[0].shape: missing"));
  CAF_CHECK(contains(parse_error("kind: tensor\ninputs: [{name: x, dtype: float32, "
                                 "shape: [1]}, {name: x, dtype: int64, shape: [1]}]\n"),
                     "config.yaml: inputs[1].name: duplicate name 'x'"));
  CAF_CHECK(contains(parse_error("kind: tensor\ninputs: [{name: x, dtype: float32, "
                                 "shape: [1], dtyp: int64}]\n"),
                     "config.yaml: inputs[0].dtyp: unknown key"));
}

CAF_TEST(bad shapes are rejected) {
  auto with_shape = [](const std::string& shape) {
    return parse_error("kind: tensor\ninputs: [{name: x, dtype: float32, shape: "
                       + shape + "}]\n");
  };
  CAF_CHECK(contains(with_shape("[-1, -2]"), "config.yaml: inputs[0].shape[1]: dimension -2"));
  CAF_CHECK(contains(with_shape("[0]"), "config.yaml: inputs[0].shape[0]: dimension 0"));
  CAF_CHECK(contains(with_shape("[-1, abc]"),
                     "config.yaml: inputs[0].shape[1]: expected an integer, got 'abc'"));
  CAF_CHECK(contains(with_shape("16"), "config.yaml: inputs[0].shape: expected a list"));
  CAF_CHECK(contains(with_shape("[[1, 2]]"), "config.yaml: inputs[0].shape[0]: expected an integer"));
  // A scalar input (empty shape) is allowed.
  CAF_CHECK_EQUAL(with_shape("[]"), "");
}

CAF_TEST(unknown top level keys are typos) {
  auto msg = parse_error(minimal_config + "max_batch_szie: 8\n");
  CAF_CHECK(contains(msg, "config.yaml: max_batch_szie: unknown key"));
}

CAF_TEST(yaml syntax errors and non mappings are invalid input) {
  auto msg = parse_error("kind: tensor\ninputs: [{name: x\n");
  CAF_CHECK(contains(msg, "config.yaml: "));
  CAF_CHECK(contains(msg, "line"));
  CAF_CHECK(contains(parse_error(""), "config.yaml: (top level): expected a mapping"));
  CAF_CHECK(contains(parse_error("- a\n- b\n"), "expected a mapping"));
}

CAF_TEST(scan reports broken models and keeps the others) {
  testing::temp_dir tmp;
  auto root = tmp.path();
  write_file(root / "zeta" / "config.yaml", minimal_config);
  write_file(root / "zeta" / "model.pt", "not really a model");
  write_file(root / "alpha" / "config.yaml", valid_config);
  write_file(root / "alpha" / "model.pt", "x");
  write_file(root / "broken" / "config.yaml", "kind: nope\n");
  write_file(root / "broken" / "model.pt", "x");
  write_file(root / "nomodel" / "config.yaml", minimal_config);
  write_file(root / "notes" / "README.md", "no config here");
  write_file(root / "stray.yaml", "kind: tensor\n");
  auto entries = scan_model_repository(root.string());
  CAF_REQUIRE_EQUAL(entries.size(), 4u);
  CAF_CHECK_EQUAL(entries[0].info.name, "alpha");
  CAF_CHECK_EQUAL(entries[0].error, "");
  CAF_CHECK_EQUAL(entries[0].info.max_batch_size, 32);
  CAF_CHECK_EQUAL(entries[0].dir, (root / "alpha").string());
  CAF_CHECK_EQUAL(entries[1].info.name, "broken");
  CAF_CHECK(contains(entries[1].error, "kind: unknown kind 'nope'"));
  CAF_CHECK_EQUAL(entries[2].info.name, "nomodel");
  CAF_CHECK_EQUAL(entries[2].error, "model.pt missing in " + (root / "nomodel").string());
  CAF_CHECK_EQUAL(entries[3].info.name, "zeta");
  CAF_CHECK_EQUAL(entries[3].error, "");
  CAF_CHECK(entries[3].info.kind == model_kind::generate);
}

CAF_TEST(scan of a missing directory is empty) {
  testing::temp_dir tmp;
  CAF_CHECK_EQUAL(scan_model_repository(tmp.str("does-not-exist")).size(), 0u);
  CAF_CHECK_EQUAL(scan_model_repository(tmp.str()).size(), 0u);
}
