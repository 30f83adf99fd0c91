#define CAF_SUITE model_metrics
#include "tests/unit/test_support.hpp"

#include "messages/model_metrics.hpp"

#include <caf/test/unit_test.hpp>

using namespace infergrid;

CAF_TEST(observations land in the bucket whose bound holds them) {
  histogram_data h{{1.0, 2.0, 5.0}};
  CAF_REQUIRE_EQUAL(h.counts.size(), 4u);
  h.observe(0.5);    // <= 1
  h.observe(1.0);    // boundary: the bucket whose bound is 1
  h.observe(1.5);    // (1, 2]
  h.observe(2.0);    // boundary: (1, 2]
  h.observe(5.0);    // boundary: (2, 5]
  h.observe(5.0001); // +Inf
  h.observe(100);    // +Inf
  h.observe(-3);     // below the first bound: the first bucket
  CAF_CHECK_EQUAL(h.counts, (std::vector<int64_t>{3, 2, 1, 2}));
  CAF_CHECK_EQUAL(h.count, 8);
  CAF_CHECK_EQUAL(h.sum, 0.5 + 1.0 + 1.5 + 2.0 + 5.0 + 5.0001 + 100 - 3);
}

CAF_TEST(a histogram without counts sizes them on first use) {
  histogram_data h;
  h.bounds = {10.0};
  h.observe(3);
  h.observe(30);
  CAF_CHECK_EQUAL(h.counts, (std::vector<int64_t>{1, 1}));
  CAF_CHECK_EQUAL(h.count, 2);
  CAF_CHECK_EQUAL(h.sum, 33.0);
  histogram_data none;
  none.observe(1);
  CAF_CHECK_EQUAL(none.counts, (std::vector<int64_t>{1}));
}

CAF_TEST(default model metrics have their bounds set) {
  model_metrics m;
  CAF_CHECK_EQUAL(m.queue_seconds.bounds, latency_bounds());
  CAF_CHECK_EQUAL(m.compute_seconds.bounds, latency_bounds());
  CAF_CHECK_EQUAL(m.batch_size.bounds, batch_size_bounds());
  CAF_CHECK_EQUAL(m.queue_seconds.counts.size(), latency_bounds().size() + 1);
  CAF_CHECK_EQUAL(m.batch_size.counts.size(), batch_size_bounds().size() + 1);
  CAF_CHECK_EQUAL(m.requests, 0);
  CAF_CHECK_EQUAL(m.queue_seconds.count, 0);
  // The bounds rise strictly, so every observation has exactly one bucket.
  for (auto& bounds : {latency_bounds(), batch_size_bounds()})
    for (std::size_t i = 1; i < bounds.size(); ++i)
      CAF_CHECK(bounds[i - 1] < bounds[i]);
  auto latency = latency_bounds();
  CAF_CHECK(latency.front() == 0.0001);
  CAF_CHECK(latency.back() == 60.0);
  m.batch_size.observe(4);
  m.batch_size.observe(300);
  CAF_CHECK_EQUAL(m.batch_size.counts[2], 1); // bound 4
  CAF_CHECK_EQUAL(m.batch_size.counts.back(), 1);
}
