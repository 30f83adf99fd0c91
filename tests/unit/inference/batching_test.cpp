// Tests concatenating requests along dim 0, splitting outputs back, and the
// batch-forming rule of the queue.
#define CAF_SUITE batching

#include "inference/batching.hpp"

#include <caf/test/unit_test.hpp>

#include <cstring>

#include "messages/errors.hpp"

using namespace infergrid;
using namespace infergrid::inference;

namespace {

tensor_data make_int64_tensor(std::string name, std::vector<int64_t> shape,
                              const std::vector<int64_t>& values) {
  tensor_data t;
  t.name = std::move(name);
  t.type = dtype::int64;
  t.shape = std::move(shape);
  t.bytes.resize(values.size() * sizeof(int64_t));
  if (!values.empty())
    std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

std::vector<int64_t> int64_values(const tensor_data& t) {
  std::vector<int64_t> out(t.bytes.size() / sizeof(int64_t));
  if (!out.empty())
    std::memcpy(out.data(), t.bytes.data(), out.size() * sizeof(int64_t));
  return out;
}

/// Float32 values 0.5 * (base + i) for a [rows, cols] tensor.
tensor_data floats(std::string name, int64_t rows, int64_t cols, float base) {
  std::vector<float> v;
  for (int64_t i = 0; i < rows * cols; ++i)
    v.push_back(0.5f * (base + static_cast<float>(i)));
  return make_float_tensor(std::move(name), {rows, cols}, v);
}

tensor_data ints(std::string name, std::vector<int64_t> shape, int64_t base) {
  std::vector<int64_t> v;
  for (int64_t i = 0; i < element_count(shape); ++i)
    v.push_back(base + i);
  return make_int64_tensor(std::move(name), std::move(shape), v);
}

bool same(const tensor_data& a, const tensor_data& b) {
  return a.name == b.name && a.type == b.type && a.shape == b.shape && a.bytes == b.bytes;
}

const tensor_data* by_name(const std::vector<tensor_data>& xs, const std::string& name) {
  for (auto& x : xs)
    if (x.name == name)
      return &x;
  return nullptr;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

/// The message of a failed concat_batch (checking it is invalid_input), or "".
std::string concat_error(const std::vector<std::vector<tensor_data>>& requests) {
  auto res = concat_batch(requests);
  if (res)
    return {};
  CAF_CHECK_EQUAL(to_string(code_of(res.error())), "invalid_input");
  return message_of(res.error());
}

/// Runs concat -> identity "model" -> split and checks each request gets back
/// exactly its own inputs (in request 0's order).
void check_round_trip(const std::vector<std::vector<tensor_data>>& requests) {
  auto batched = concat_batch(requests);
  CAF_REQUIRE(batched);
  CAF_REQUIRE_EQUAL(batched->sizes.size(), requests.size());
  int64_t rows = 0;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    CAF_CHECK_EQUAL(batched->sizes[i], requests[i][0].shape[0]);
    rows += batched->sizes[i];
  }
  for (auto& x : batched->inputs)
    CAF_CHECK_EQUAL(x.shape[0], rows);
  auto parts = split_batch(batched->inputs, batched->sizes);
  CAF_REQUIRE(parts);
  CAF_REQUIRE_EQUAL(parts->size(), requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    CAF_REQUIRE_EQUAL((*parts)[i].size(), requests[0].size());
    for (std::size_t k = 0; k < requests[0].size(); ++k) {
      auto& got = (*parts)[i][k];
      CAF_CHECK_EQUAL(got.name, requests[0][k].name);
      auto want = by_name(requests[i], got.name);
      CAF_REQUIRE(want != nullptr);
      CAF_CHECK(same(got, *want));
    }
  }
}

} // namespace

CAF_TEST(a single request passes through unchanged) {
  std::vector<std::vector<tensor_data>> reqs{{floats("x", 2, 3, 1), ints("ids", {2}, 7)}};
  auto res = concat_batch(reqs);
  CAF_REQUIRE(res);
  CAF_CHECK_EQUAL(res->sizes, (std::vector<int64_t>{2}));
  CAF_REQUIRE_EQUAL(res->inputs.size(), 2u);
  CAF_CHECK(same(res->inputs[0], reqs[0][0]));
  CAF_CHECK(same(res->inputs[1], reqs[0][1]));
  check_round_trip(reqs);
}

CAF_TEST(two float32 requests concatenate row by row) {
  auto a = make_float_tensor("x", {1, 3}, {1, 2, 3});
  auto b = make_float_tensor("x", {2, 3}, {4, 5, 6, 7, 8, 9});
  auto res = concat_batch({{a}, {b}});
  CAF_REQUIRE(res);
  CAF_CHECK_EQUAL(res->sizes, (std::vector<int64_t>{1, 2}));
  CAF_REQUIRE_EQUAL(res->inputs.size(), 1u);
  auto& x = res->inputs[0];
  CAF_CHECK_EQUAL(x.name, "x");
  CAF_CHECK(x.type == dtype::float32);
  CAF_CHECK_EQUAL(x.shape, (std::vector<int64_t>{3, 3}));
  CAF_CHECK_EQUAL(float_values(x), (std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8, 9}));
  check_round_trip({{a}, {b}});
}

CAF_TEST(three int64 requests of different batch sizes round trip) {
  auto r0 = std::vector<tensor_data>{ints("tokens", {2, 4}, 0), ints("pos", {2}, 100)};
  auto r1 = std::vector<tensor_data>{ints("tokens", {1, 4}, 8), ints("pos", {1}, 200)};
  auto r2 = std::vector<tensor_data>{ints("tokens", {3, 4}, 12), ints("pos", {3}, 300)};
  auto res = concat_batch({r0, r1, r2});
  CAF_REQUIRE(res);
  CAF_CHECK_EQUAL(res->sizes, (std::vector<int64_t>{2, 1, 3}));
  CAF_REQUIRE_EQUAL(res->inputs.size(), 2u);
  CAF_CHECK_EQUAL(res->inputs[0].shape, (std::vector<int64_t>{6, 4}));
  std::vector<int64_t> tokens(24);
  for (int64_t i = 0; i < 24; ++i)
    tokens[i] = i;
  CAF_CHECK_EQUAL(int64_values(res->inputs[0]), tokens);
  CAF_CHECK_EQUAL(res->inputs[1].shape, (std::vector<int64_t>{6}));
  CAF_CHECK_EQUAL(int64_values(res->inputs[1]),
                  (std::vector<int64_t>{100, 101, 200, 300, 301, 302}));
  check_round_trip({r0, r1, r2});
}

CAF_TEST(mixed dtypes and a request with zero rows round trip) {
  auto req = [](int64_t n, float base) {
    return std::vector<tensor_data>{floats("x", n, 2, base), ints("mask", {n, 1, 2}, 0)};
  };
  check_round_trip({req(2, 0), req(0, 10), req(1, 20)});
  check_round_trip({req(3, 0), req(1, 10)});
}

CAF_TEST(input order follows the first request) {
  auto r0 = std::vector<tensor_data>{floats("x", 1, 2, 0), ints("ids", {1}, 5)};
  auto r1 = std::vector<tensor_data>{ints("ids", {2}, 6), floats("x", 2, 2, 10)};
  auto r2 = std::vector<tensor_data>{ints("ids", {1}, 8), floats("x", 1, 2, 20)};
  auto res = concat_batch({r0, r1, r2});
  CAF_REQUIRE(res);
  CAF_REQUIRE_EQUAL(res->inputs.size(), 2u);
  CAF_CHECK_EQUAL(res->inputs[0].name, "x");
  CAF_CHECK_EQUAL(res->inputs[1].name, "ids");
  CAF_CHECK_EQUAL(int64_values(res->inputs[1]), (std::vector<int64_t>{5, 6, 7, 8}));
  CAF_CHECK_EQUAL(float_values(res->inputs[0]),
                  (std::vector<float>{0, 0.5f, 5, 5.5f, 6, 6.5f, 10, 10.5f}));
  check_round_trip({r0, r1, r2});
}

CAF_TEST(every mismatch is invalid_input naming request and input) {
  auto x1 = floats("x", 1, 3, 0);
  auto ok = std::vector<tensor_data>{x1};
  CAF_CHECK(contains(concat_error({}), "no requests"));
  CAF_CHECK(contains(concat_error({ok, {}}), "request 1 has no inputs"));
  // Rank 0, also for a single request.
  auto scalar = make_float_tensor("x", {}, {1});
  CAF_CHECK(contains(concat_error({{scalar}}), "request 0 input 'x': is a scalar"));
  CAF_CHECK(contains(concat_error({ok, {scalar}}), "request 1 input 'x': is a scalar"));
  // Inconsistent byte size.
  auto short_x = floats("x", 2, 3, 0);
  short_x.bytes.pop_back();
  auto msg = concat_error({ok, ok, {short_x}});
  CAF_CHECK(contains(msg, "request 2 input 'x'"));
  CAF_CHECK(contains(msg, "23 bytes for shape [2, 3] of float32, expected 24"));
  // Negative dimension.
  auto neg = floats("x", 1, 3, 0);
  neg.shape = {-1, 3};
  CAF_CHECK(contains(concat_error({ok, {neg}}), "request 1 input 'x': invalid shape"));
  // dtype differs.
  auto as_int = ints("x", {1, 3}, 0);
  msg = concat_error({ok, {as_int}});
  CAF_CHECK(contains(msg, "request 1 input 'x': dtype int64, request 0 has float32"));
  // Trailing dimension differs.
  msg = concat_error({ok, {floats("x", 1, 4, 0)}});
  CAF_CHECK(contains(msg, "request 1 input 'x': shape [1, 4], request 0 has [1, 3]"));
  // Rank differs.
  auto rank3 = make_float_tensor("x", {1, 3, 1}, {1, 2, 3});
  msg = concat_error({ok, {rank3}});
  CAF_CHECK(contains(msg, "request 1 input 'x': shape [1, 3, 1], request 0 has [1, 3]"));
  // A name only the later request has.
  msg = concat_error({ok, ok, {x1, ints("extra", {1}, 0)}});
  CAF_CHECK(contains(msg, "request 2 input 'extra': unexpected"));
  // A name only the first request has.
  msg = concat_error({{x1, ints("ids", {1}, 0)}, ok});
  CAF_CHECK(contains(msg, "request 1 input 'ids': missing"));
  // The same count of inputs but a different name.
  msg = concat_error({{x1, ints("ids", {1}, 0)}, {x1, ints("idz", {1}, 0)}});
  CAF_CHECK(contains(msg, "request 1 input 'ids': missing"));
  // A name twice within one request.
  msg = concat_error({ok, {x1, x1}});
  CAF_CHECK(contains(msg, "request 1 has input 'x' twice"));
  // Inputs of one request disagree on the batch size.
  msg = concat_error({{floats("x", 2, 3, 0), ints("ids", {3}, 0)}});
  CAF_CHECK(contains(msg, "request 0 input 'ids': batch 3 differs from input 'x'"));
}

CAF_TEST(split rejects an output with the wrong batch) {
  std::vector<int64_t> sizes{1, 2};
  auto res = split_batch({floats("y", 3, 2, 0), floats("z", 4, 2, 0)}, sizes);
  CAF_REQUIRE(!res);
  CAF_CHECK_EQUAL(to_string(code_of(res.error())), "model_error");
  CAF_CHECK_EQUAL(message_of(res.error()), "output 'z' has batch 4, expected 3");
  res = split_batch({make_float_tensor("loss", {}, {1})}, sizes);
  CAF_REQUIRE(!res);
  CAF_CHECK_EQUAL(to_string(code_of(res.error())), "model_error");
  CAF_CHECK(contains(message_of(res.error()), "output 'loss' is a scalar"));
  auto bad = floats("y", 3, 2, 0);
  bad.bytes.resize(8);
  res = split_batch({bad}, sizes);
  CAF_REQUIRE(!res);
  CAF_CHECK_EQUAL(to_string(code_of(res.error())), "model_error");
  CAF_CHECK(contains(message_of(res.error()), "output 'y': 8 bytes"));
  res = split_batch({floats("y", 3, 2, 0)}, {});
  CAF_REQUIRE(!res);
  CAF_CHECK_EQUAL(to_string(code_of(res.error())), "invalid_input");
  res = split_batch({floats("y", 3, 2, 0)}, {4, -1});
  CAF_REQUIRE(!res);
  CAF_CHECK_EQUAL(to_string(code_of(res.error())), "invalid_input");
}

CAF_TEST(split slices several outputs in output order) {
  auto y = floats("y", 3, 2, 0);
  auto z = ints("z", {3}, 40);
  auto res = split_batch({y, z}, {2, 1});
  CAF_REQUIRE(res);
  CAF_REQUIRE_EQUAL(res->size(), 2u);
  CAF_REQUIRE_EQUAL((*res)[0].size(), 2u);
  CAF_REQUIRE_EQUAL((*res)[1].size(), 2u);
  CAF_CHECK_EQUAL((*res)[0][0].name, "y");
  CAF_CHECK_EQUAL((*res)[0][0].shape, (std::vector<int64_t>{2, 2}));
  CAF_CHECK_EQUAL(float_values((*res)[0][0]), (std::vector<float>{0, 0.5f, 1, 1.5f}));
  CAF_CHECK_EQUAL((*res)[1][0].shape, (std::vector<int64_t>{1, 2}));
  CAF_CHECK_EQUAL(float_values((*res)[1][0]), (std::vector<float>{2, 2.5f}));
  CAF_CHECK_EQUAL((*res)[0][1].name, "z");
  CAF_CHECK(((*res)[0][1].type == dtype::int64));
  CAF_CHECK_EQUAL(int64_values((*res)[0][1]), (std::vector<int64_t>{40, 41}));
  CAF_CHECK_EQUAL(int64_values((*res)[1][1]), (std::vector<int64_t>{42}));
}

CAF_TEST(split with a single request passes outputs through) {
  auto pooled = make_float_tensor("pooled", {4}, {1, 2, 3, 4});
  auto res = split_batch({pooled}, {1});
  CAF_REQUIRE(res);
  CAF_REQUIRE_EQUAL(res->size(), 1u);
  CAF_REQUIRE_EQUAL((*res)[0].size(), 1u);
  CAF_CHECK(same((*res)[0][0], pooled));
}

CAF_TEST(a full queue takes max_batch_size) {
  batch_policy p{4, 1000, {}};
  auto d = decide_batch(p, 4, 0);
  CAF_CHECK(d.ready);
  CAF_CHECK_EQUAL(d.take, 4);
  d = decide_batch(p, 11, 0);
  CAF_CHECK(d.ready);
  CAF_CHECK_EQUAL(d.take, 4);
  // Preferred sizes do not cap a full batch.
  p.preferred_sizes = {2};
  d = decide_batch(p, 5, 0);
  CAF_CHECK(d.ready);
  CAF_CHECK_EQUAL(d.take, 4);
}

CAF_TEST(a preferred size is taken without waiting) {
  batch_policy p{8, 1000, {4, 2, 0, -3, 16}};
  auto d = decide_batch(p, 5, 0);
  CAF_CHECK(d.ready);
  CAF_CHECK_EQUAL(d.take, 4);
  d = decide_batch(p, 3, 0);
  CAF_CHECK(d.ready);
  CAF_CHECK_EQUAL(d.take, 2);
  // Below every preferred size: waits for the delay.
  d = decide_batch(p, 1, 250);
  CAF_CHECK(!d.ready);
  CAF_CHECK_EQUAL(d.take, 0);
  CAF_CHECK_EQUAL(d.wait_us, 750);
}

CAF_TEST(the queue delay decides when no size fits) {
  batch_policy p{8, 1000, {}};
  auto d = decide_batch(p, 3, 400);
  CAF_CHECK(!d.ready);
  CAF_CHECK_EQUAL(d.take, 0);
  CAF_CHECK_EQUAL(d.wait_us, 600);
  d = decide_batch(p, 3, 1000);
  CAF_CHECK(d.ready);
  CAF_CHECK_EQUAL(d.take, 3);
  d = decide_batch(p, 3, 5000);
  CAF_CHECK(d.ready);
  CAF_CHECK_EQUAL(d.take, 3);
  // No delay configured: whatever is pending goes at once.
  p.max_queue_delay_us = 0;
  d = decide_batch(p, 2, 0);
  CAF_CHECK(d.ready);
  CAF_CHECK_EQUAL(d.take, 2);
}

CAF_TEST(max_batch_size 1 and below take one request at a time) {
  for (int64_t max : {1, 0, -3}) {
    batch_policy p{max, 1000, {}};
    auto d = decide_batch(p, 1, 0);
    CAF_CHECK(d.ready);
    CAF_CHECK_EQUAL(d.take, 1);
    d = decide_batch(p, 7, 0);
    CAF_CHECK(d.ready);
    CAF_CHECK_EQUAL(d.take, 1);
  }
}

CAF_TEST(an empty queue is never ready) {
  auto d = decide_batch(batch_policy{4, 1000, {}}, 0, 5000);
  CAF_CHECK(!d.ready);
  CAF_CHECK_EQUAL(d.take, 0);
  CAF_CHECK_EQUAL(d.wait_us, 0);
}
