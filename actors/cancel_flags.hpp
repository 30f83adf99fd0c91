// Cancel flags shared by a worker and its executor: the executor is busy inside
// LibTorch and cannot read messages, so generation loops poll these instead.
#pragma once

#include <cstdint>
#include <mutex>
#include <set>

namespace infergrid {

/// Thread-safe set of job ids whose run should stop. Each call takes one
/// short lock; safe from any thread.
class cancel_flags {
public:
  void raise(int64_t job_id) {
    std::lock_guard<std::mutex> guard{mtx_};
    ids_.insert(job_id);
  }

  bool raised(int64_t job_id) const {
    std::lock_guard<std::mutex> guard{mtx_};
    return ids_.count(job_id) > 0;
  }

  void clear(int64_t job_id) {
    std::lock_guard<std::mutex> guard{mtx_};
    ids_.erase(job_id);
  }

private:
  mutable std::mutex mtx_;
  std::set<int64_t> ids_;
};

} // namespace infergrid
