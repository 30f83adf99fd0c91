// LRU bookkeeping of model memory per device.
#include "inference/memory_budget.hpp"

#include <algorithm>
#include <utility>

namespace infergrid::inference {

memory_budget::memory_budget(int64_t budget_mb)
    : budget_mb_(budget_mb > 0 ? budget_mb : 0) {}

int64_t memory_budget::budget_mb() const {
  return budget_mb_;
}

int64_t memory_budget::used_mb() const {
  return used_mb_;
}

bool memory_budget::resident(const std::string& model) const {
  return models_.count(model) > 0;
}

std::vector<std::string> memory_budget::residents() const {
  std::vector<std::pair<std::string, const entry*>> rows;
  rows.reserve(models_.size());
  for (const auto& [name, e] : models_)
    rows.emplace_back(name, &e);
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    if (a.second->last_used_ms != b.second->last_used_ms)
      return a.second->last_used_ms < b.second->last_used_ms;
    return a.second->use_seq < b.second->use_seq;
  });
  std::vector<std::string> out;
  out.reserve(rows.size());
  for (auto& row : rows)
    out.push_back(std::move(row.first));
  return out;
}

void memory_budget::loaded(const std::string& model, int64_t mb, int64_t now_ms) {
  unloaded(model);
  entry e;
  e.mb = std::max<int64_t>(mb, 0);
  e.last_used_ms = now_ms;
  e.use_seq = next_seq_++;
  used_mb_ += e.mb;
  models_.emplace(model, e);
}

void memory_budget::unloaded(const std::string& model) {
  auto i = models_.find(model);
  if (i == models_.end())
    return;
  used_mb_ -= i->second.mb;
  models_.erase(i);
}

void memory_budget::touch(const std::string& model, int64_t now_ms) {
  auto i = models_.find(model);
  if (i != models_.end()) {
    i->second.last_used_ms = now_ms;
    i->second.use_seq = next_seq_++;
  }
}

int64_t memory_budget::last_used_ms(const std::string& model) const {
  auto i = models_.find(model);
  return i != models_.end() ? i->second.last_used_ms : 0;
}

std::optional<std::vector<std::string>>
memory_budget::plan(int64_t need_mb, const std::set<std::string>& busy) const {
  std::vector<std::string> victims;
  if (budget_mb_ == 0)
    return victims;
  need_mb = std::max<int64_t>(need_mb, 0);
  if (need_mb > budget_mb_)
    return std::nullopt;
  // Free space still missing; the residents may exceed the budget already.
  auto missing = used_mb_ + need_mb - budget_mb_;
  for (auto& name : residents()) {
    if (missing <= 0)
      break;
    auto mb = models_.at(name).mb;
    if (mb == 0 || busy.count(name) > 0)
      continue;
    missing -= mb;
    victims.push_back(std::move(name));
  }
  if (missing > 0)
    return std::nullopt;
  return victims;
}

} // namespace infergrid::inference
