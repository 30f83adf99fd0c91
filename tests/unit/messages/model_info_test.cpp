#define CAF_SUITE model_info
#include "tests/unit/test_support.hpp"

#include "messages/model_info.hpp"

#include <caf/test/unit_test.hpp>

#include "messages/errors.hpp"
#include "messages/job.hpp"

#include <caf/sec.hpp>

using namespace infergrid;

namespace {

model_info classifier() {
  model_info m;
  m.name = "classifier";
  m.max_batch_size = 4;
  m.inputs = {tensor_spec{"x", dtype::float32, {-1, 16}}};
  m.outputs = {tensor_spec{"probabilities", dtype::float32, {-1, 4}}};
  return m;
}

std::string check(const std::vector<tensor_data>& xs) {
  auto problem = validate_inputs(classifier(), xs);
  return problem ? *problem : std::string{"ok"};
}

} // namespace

CAF_TEST(matching inputs pass) {
  CAF_CHECK_EQUAL(check({make_float_tensor("x", {2, 16}, std::vector<float>(32, 0.f))}),
                  "ok");
}

CAF_TEST(each mismatch names its field) {
  CAF_CHECK_EQUAL(check({make_float_tensor("x", {1, 15}, std::vector<float>(15, 0.f))}),
                  "inputs[0].shape: expected [-1, 16], got [1, 15]");
  CAF_CHECK_EQUAL(check({make_float_tensor("y", {1, 16}, std::vector<float>(16, 0.f))}),
                  "inputs[0].name: model 'classifier' has no input 'y'");
  CAF_CHECK_EQUAL(check({make_float_tensor("x", {5, 16}, std::vector<float>(80, 0.f))}),
                  "inputs[0].shape: batch of 5 exceeds max_batch_size 4");
  CAF_CHECK_EQUAL(check({}), "inputs: model 'classifier' takes 1 input(s), got 0");
  auto ints = make_float_tensor("x", {1, 16}, std::vector<float>(16, 0.f));
  ints.type = dtype::int32;
  CAF_CHECK_EQUAL(check({ints}), "inputs[0].datatype: expected FP32, got INT32");
  auto short_data = make_float_tensor("x", {1, 16}, std::vector<float>(10, 0.f));
  CAF_CHECK(check({short_data}).find("inputs[0].data") == 0);
}

CAF_TEST(job ids and states round trip) {
  int64_t id = 0;
  CAF_CHECK(parse_job_id(job_id_string(42), id));
  CAF_CHECK_EQUAL(id, 42);
  CAF_CHECK(!parse_job_id("j_", id));
  CAF_CHECK(!parse_job_id("j_0", id));
  CAF_CHECK(!parse_job_id("x_1", id));
  CAF_CHECK(!parse_job_id("j_12a", id));
  CAF_CHECK(!parse_job_id("j_123456789012345678901", id));
  job_state s;
  CAF_CHECK(job_state_from_string("dead", s) && s == job_state::dead);
  CAF_CHECK(!job_state_from_string("done", s));
  CAF_CHECK(is_final(job_state::cancelled));
  CAF_CHECK(!is_final(job_state::running));
}

CAF_TEST(errors carry their code and message through caf::error) {
  caf::error err = make_error(errc::queue_full, "queue holds 2 of 2 jobs");
  CAF_CHECK(code_of(err) == errc::queue_full);
  CAF_CHECK_EQUAL(message_of(err), "queue holds 2 of 2 jobs");
  CAF_CHECK(is_retryable(errc::queue_full));
  CAF_CHECK(!is_retryable(errc::invalid_input));
  errc parsed;
  CAF_CHECK(from_string("worker_lost", parsed) && parsed == errc::worker_lost);
  CAF_CHECK(code_of(caf::make_error(caf::sec::request_timeout)) == errc::timeout);
}
