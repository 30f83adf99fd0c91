#define CAF_SUITE kserve
#include "tests/unit/test_support.hpp"

#include "messages/kserve.hpp"

#include <caf/test/unit_test.hpp>

#include "messages/errors.hpp"
#include "messages/generate_io.hpp"

using namespace infergrid;

namespace {

std::string error_text(const caf::error& err) {
  return message_of(err);
}

} // namespace

CAF_TEST(a flat request decodes into typed tensors) {
  auto xs = decode_kserve_request(
    R"({"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4.5]},)"
    R"({"name":"ids","shape":[3],"datatype":"INT64","data":[7,8,9]}]})");
  CAF_REQUIRE(xs);
  CAF_REQUIRE_EQUAL(xs->size(), 2u);
  auto& x = (*xs)[0];
  CAF_CHECK_EQUAL(x.name, "x");
  CAF_CHECK(x.type == dtype::float32);
  CAF_CHECK_EQUAL(x.shape, (std::vector<int64_t>{2, 2}));
  CAF_CHECK_EQUAL(float_values(x), (std::vector<float>{1.f, 2.f, 3.f, 4.5f}));
  auto& ids = (*xs)[1];
  CAF_CHECK(ids.type == dtype::int64);
  CAF_CHECK_EQUAL(ids.bytes.size(), 3u * 8u);
  CAF_CHECK(ids.consistent());
}

CAF_TEST(nested data counts its leaves in row-major order) {
  auto xs = decode_kserve_request(
    R"({"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}]})");
  CAF_REQUIRE(xs);
  CAF_CHECK_EQUAL(float_values((*xs)[0]), (std::vector<float>{1.f, 2.f, 3.f, 4.f}));
}

CAF_TEST(bad requests name the field) {
  struct bad_case {
    const char* body;
    const char* expected;
  };
  std::vector<bad_case> cases{
    {"{not json", "body: malformed JSON"},
    {"[1,2]", "body: expected a JSON object"},
    {"{}", "inputs: missing"},
    {R"({"inputs":[]})", "inputs: expected a non-empty array"},
    {R"({"inputs":[{"shape":[1],"datatype":"FP32","data":[1]}]})", "inputs[0].name"},
    {R"({"inputs":[{"name":"x","shape":[1],"datatype":"FP16","data":[1]}]})",
     "inputs[0].datatype: unsupported datatype 'FP16'"},
    {R"({"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]})",
     "inputs[0].shape"},
    {R"({"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]})",
     "inputs[0].data: 1 values for shape [2]"},
    {R"({"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]})",
     "inputs[0].data: expected numbers"},
    {R"({"inputs":[{"name":"x","shape":[1],"datatype":"INT64","data":[1.5]}]})",
     "inputs[0].data: expected integers"},
    {R"({"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[300]}]})",
     "out of range for UINT8"},
    {R"({"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]})", "inputs[0].data: missing"},
  };
  for (auto& c : cases) {
    auto xs = decode_kserve_request(c.body);
    CAF_REQUIRE(!xs);
    CAF_CHECK(code_of(xs.error()) == errc::invalid_input);
    auto text = error_text(xs.error());
    if (text.find(c.expected) == std::string::npos)
      CAF_MESSAGE("body " << c.body << " gave '" << text << "'");
    CAF_CHECK(text.find(c.expected) != std::string::npos);
  }
}

CAF_TEST(responses round trip through the request codec) {
  std::vector<tensor_data> outs{make_float_tensor("y", {1, 3}, {0.25f, 0.5f, 0.25f})};
  auto body = encode_kserve_response("classifier", "j_7", outs);
  CAF_CHECK(body.find(R"("model_name":"classifier")") != std::string::npos);
  CAF_CHECK(body.find(R"("id":"j_7")") != std::string::npos);
  auto req = encode_kserve_request(outs);
  auto back = decode_kserve_request(req);
  CAF_REQUIRE(back);
  CAF_CHECK_EQUAL(float_values((*back)[0]), (std::vector<float>{0.25f, 0.5f, 0.25f}));
  CAF_CHECK_EQUAL((*back)[0].shape, (std::vector<int64_t>{1, 3}));
}

CAF_TEST(generate input is bounded and named) {
  auto ok = decode_generate_input(
    R"({"prompt":"hi","max_tokens":5,"temperature":0,"seed":3,"stop":["\n"]})");
  CAF_REQUIRE(ok);
  CAF_CHECK_EQUAL(ok->prompt, "hi");
  CAF_CHECK_EQUAL(ok->max_tokens, 5);
  CAF_CHECK(ok->has_seed);
  CAF_CHECK_EQUAL(ok->seed, 3u);
  CAF_CHECK_EQUAL(ok->stop.size(), 1u);
  auto missing = decode_generate_input(R"({"max_tokens":5})");
  CAF_REQUIRE(!missing);
  CAF_CHECK_EQUAL(message_of(missing.error()), "input.prompt: missing");
  auto too_many = decode_generate_input(R"({"prompt":"x","max_tokens":100000})");
  CAF_REQUIRE(!too_many);
  CAF_CHECK(message_of(too_many.error()).find("input.max_tokens") == 0);
  auto unknown = decode_generate_input(R"({"prompt":"x","tokens":1})");
  CAF_REQUIRE(!unknown);
  CAF_CHECK_EQUAL(message_of(unknown.error()), "input.tokens: unknown field");
}

CAF_TEST(generate output stays valid JSON for arbitrary bytes) {
  std::string bytes{"ok\xff\xfe"};
  auto out = encode_generate_output(bytes, 4, "length");
  CAF_CHECK(out.find(R"("finish_reason":"length")") != std::string::npos);
  CAF_CHECK(out.find("\xff") == std::string::npos);
}
