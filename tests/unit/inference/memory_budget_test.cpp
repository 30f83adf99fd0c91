// Tests the per-device memory budget: LRU order, eviction plans, busy models.
#define CAF_SUITE memory_budget

#include "inference/memory_budget.hpp"

#include <caf/test/unit_test.hpp>

using namespace infergrid::inference;

namespace {

using names = std::vector<std::string>;

/// A plan rendered for comparison: "none" for nullopt, else the names joined by ','.
std::string plan_of(const memory_budget& b, int64_t need,
                    const std::set<std::string>& busy = {}) {
  auto p = b.plan(need, busy);
  if (!p)
    return "none";
  std::string out;
  for (auto& name : *p) {
    if (!out.empty())
      out += ',';
    out += name;
  }
  return out;
}

/// Budget 100 MB holding a (40, used at 10), b (30, at 20), c (20, at 30).
memory_budget three_models() {
  memory_budget b{100};
  b.loaded("a", 40, 10);
  b.loaded("b", 30, 20);
  b.loaded("c", 20, 30);
  return b;
}

} // namespace

CAF_TEST(loading records sizes and least recently used order) {
  auto b = three_models();
  CAF_CHECK_EQUAL(b.budget_mb(), 100);
  CAF_CHECK_EQUAL(b.used_mb(), 90);
  CAF_CHECK(b.resident("a"));
  CAF_CHECK(!b.resident("d"));
  CAF_CHECK_EQUAL(b.residents(), (names{"a", "b", "c"}));
  CAF_CHECK_EQUAL(b.last_used_ms("b"), 20);
  CAF_CHECK_EQUAL(b.last_used_ms("d"), 0);
}

CAF_TEST(touch moves a model to the back) {
  auto b = three_models();
  b.touch("a", 40);
  CAF_CHECK_EQUAL(b.residents(), (names{"b", "c", "a"}));
  CAF_CHECK_EQUAL(b.last_used_ms("a"), 40);
  CAF_CHECK_EQUAL(plan_of(b, 20), "b");
  b.touch("b", 50);
  CAF_CHECK_EQUAL(b.residents(), (names{"c", "a", "b"}));
  CAF_CHECK_EQUAL(plan_of(b, 20), "c");
  // Touching a model that is not resident changes nothing.
  b.touch("d", 60);
  CAF_CHECK(!b.resident("d"));
  CAF_CHECK_EQUAL(b.last_used_ms("d"), 0);
  CAF_CHECK_EQUAL(b.residents(), (names{"c", "a", "b"}));
}

// Millisecond clocks tie often (a use right after another model's warm-up):
// the later call is the more recent one.
CAF_TEST(ties in last use evict the model loaded or used earlier) {
  memory_budget b{100};
  b.loaded("y", 10, 5);
  b.loaded("x", 10, 5);
  b.loaded("z", 10, 5);
  CAF_CHECK_EQUAL(b.residents(), (names{"y", "x", "z"}));
  b.touch("y", 5);
  CAF_CHECK_EQUAL(b.residents(), (names{"x", "z", "y"}));
  b.touch("x", 5);
  CAF_CHECK_EQUAL(b.residents(), (names{"z", "y", "x"}));
  CAF_CHECK_EQUAL(plan_of(b, 75), "z");
  // An earlier time still counts as earlier, whatever the order of calls.
  b.touch("z", 4);
  CAF_CHECK_EQUAL(b.residents(), (names{"z", "y", "x"}));
}

CAF_TEST(plans evict least recently used first until the need fits) {
  auto b = three_models();
  CAF_CHECK_EQUAL(plan_of(b, 10), "");
  CAF_CHECK(b.plan(10).has_value());
  CAF_CHECK_EQUAL(plan_of(b, 0), "");
  CAF_CHECK_EQUAL(plan_of(b, -5), "");
  CAF_CHECK_EQUAL(plan_of(b, 11), "a");
  CAF_CHECK_EQUAL(plan_of(b, 50), "a");
  CAF_CHECK_EQUAL(plan_of(b, 51), "a,b");
  CAF_CHECK_EQUAL(plan_of(b, 80), "a,b");
  CAF_CHECK_EQUAL(plan_of(b, 81), "a,b,c");
  CAF_CHECK_EQUAL(plan_of(b, 100), "a,b,c");
  // Planning changes nothing.
  CAF_CHECK_EQUAL(b.used_mb(), 90);
  CAF_CHECK_EQUAL(b.residents(), (names{"a", "b", "c"}));
}

CAF_TEST(busy models are never evicted) {
  auto b = three_models();
  CAF_CHECK_EQUAL(plan_of(b, 20, {"a"}), "b");
  CAF_CHECK_EQUAL(plan_of(b, 60, {"a"}), "b,c");
  CAF_CHECK_EQUAL(plan_of(b, 61, {"a"}), "none");
  CAF_CHECK_EQUAL(plan_of(b, 20, {"a", "b"}), "c");
  CAF_CHECK_EQUAL(plan_of(b, 31, {"a", "b"}), "none");
  CAF_CHECK_EQUAL(plan_of(b, 11, {"a", "b", "c"}), "none");
  CAF_CHECK_EQUAL(plan_of(b, 10, {"a", "b", "c"}), "");
  // Names that are not resident in `busy` are harmless.
  CAF_CHECK_EQUAL(plan_of(b, 20, {"zzz"}), "a");
}

CAF_TEST(a need above the budget never fits) {
  auto b = three_models();
  CAF_CHECK_EQUAL(plan_of(b, 101), "none");
  memory_budget empty{100};
  CAF_CHECK_EQUAL(plan_of(empty, 100), "");
  CAF_CHECK_EQUAL(plan_of(empty, 101), "none");
}

CAF_TEST(unloading frees memory) {
  auto b = three_models();
  b.unloaded("b");
  CAF_CHECK(!b.resident("b"));
  CAF_CHECK_EQUAL(b.used_mb(), 60);
  CAF_CHECK_EQUAL(b.last_used_ms("b"), 0);
  CAF_CHECK_EQUAL(b.residents(), (names{"a", "c"}));
  CAF_CHECK_EQUAL(plan_of(b, 40), "");
  CAF_CHECK_EQUAL(plan_of(b, 41), "a");
  b.unloaded("b");
  b.unloaded("nobody");
  CAF_CHECK_EQUAL(b.used_mb(), 60);
}

CAF_TEST(loading a resident model again replaces its entry) {
  auto b = three_models();
  b.loaded("a", 10, 40);
  CAF_CHECK_EQUAL(b.used_mb(), 60);
  CAF_CHECK_EQUAL(b.residents(), (names{"b", "c", "a"}));
  CAF_CHECK_EQUAL(b.last_used_ms("a"), 40);
  b.loaded("n", -7, 50);
  CAF_CHECK_EQUAL(b.used_mb(), 60);
  CAF_CHECK(b.resident("n"));
}

CAF_TEST(models taking no memory are not evicted) {
  memory_budget b{50};
  b.loaded("free", 0, 1);
  b.loaded("big", 40, 2);
  CAF_CHECK_EQUAL(b.residents(), (names{"free", "big"}));
  CAF_CHECK_EQUAL(plan_of(b, 20), "big");
  CAF_CHECK_EQUAL(plan_of(b, 20, {"big"}), "none");
}

CAF_TEST(residents above the budget are evicted even for a zero need) {
  memory_budget b{50};
  b.loaded("a", 40, 1);
  b.loaded("b", 30, 2);
  CAF_CHECK_EQUAL(b.used_mb(), 70);
  CAF_CHECK_EQUAL(plan_of(b, 0), "a");
  CAF_CHECK_EQUAL(plan_of(b, 0, {"a"}), "b");
  CAF_CHECK_EQUAL(plan_of(b, 30), "a,b");
}

CAF_TEST(a budget of zero or less is unlimited) {
  for (int64_t budget : {0, -1, -100}) {
    memory_budget b{budget};
    CAF_CHECK_EQUAL(b.budget_mb(), 0);
    b.loaded("a", 100000, 1);
    b.loaded("b", 250000, 2);
    CAF_CHECK_EQUAL(b.used_mb(), 350000);
    CAF_CHECK_EQUAL(plan_of(b, 1000000), "");
    CAF_CHECK_EQUAL(plan_of(b, 1000000, {"a", "b"}), "");
    CAF_CHECK_EQUAL(b.residents(), (names{"a", "b"}));
  }
}
