// A per-device memory budget: which models are resident, how much they take, and
// which to evict (least recently used first) to make room for another. Torch-free.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace infergrid::inference {

/// Bookkeeping of one device's model memory, in MB as declared by model_info::memory_mb.
/// It records and plans; loading and unloading are the caller's job. Not
/// thread-safe: the one executor that owns the device owns its budget.
class memory_budget {
public:
  /// budget_mb <= 0: unlimited.
  explicit memory_budget(int64_t budget_mb);

  /// The budget; 0 when unlimited.
  int64_t budget_mb() const;

  /// Sum of the residents' sizes.
  int64_t used_mb() const;

  bool resident(const std::string& model) const;

  /// Residents, least recently used first. Within one millisecond the order of
  /// the calls decides: the model loaded or touched last is the most recent
  /// (a use in the same millisecond as another model's load counts as later).
  std::vector<std::string> residents() const;

  /// Records that `model` now takes `mb` (negative counts as 0) and was used at
  /// `now_ms`. For a resident model this replaces its entry, as an unload
  /// followed by a load would. Records even when over budget: plan() first.
  void loaded(const std::string& model, int64_t mb, int64_t now_ms);

  /// Forgets `model`; no-op if not resident.
  void unloaded(const std::string& model);

  /// Records a use of `model` at `now_ms`; no-op if not resident.
  void touch(const std::string& model, int64_t now_ms);

  /// The last load or use of `model`; 0 if not resident.
  int64_t last_used_ms(const std::string& model) const;

  /// Which residents to evict, least recently used first, so that `need_mb` more fits;
  /// models in `busy` are never chosen, nor models taking 0 MB (evicting them frees
  /// nothing). Empty vector: it fits already. nullopt: it cannot
  /// fit even after evicting every evictable model (or need_mb > budget). Names
  /// are not considered: do not plan for a model that is already resident.
  std::optional<std::vector<std::string>>
  plan(int64_t need_mb, const std::set<std::string>& busy = {}) const;

private:
  struct entry {
    int64_t mb = 0;
    int64_t last_used_ms = 0;
    /// Order of loads and touches, for ties in last_used_ms.
    uint64_t use_seq = 0;
  };

  int64_t budget_mb_;
  int64_t used_mb_ = 0;
  uint64_t next_seq_ = 0;
  std::map<std::string, entry> models_;
};

} // namespace infergrid::inference
