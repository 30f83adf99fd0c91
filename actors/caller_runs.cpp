// caller_runs (see caller_runs.hpp).
#include "actors/caller_runs.hpp"

#include <mutex>
#include <vector>

#include <caf/abstract_actor.hpp>
#include <caf/actor_control_block.hpp>
#include <caf/actor_system.hpp>
#include <caf/ref_counted.hpp>
#include <caf/resumable.hpp>
#include <caf/scheduler/abstract_coordinator.hpp>

namespace infergrid {

namespace {

thread_local caller_runs* this_thread_unit = nullptr;

/// Units not leased at the moment. Never freed (caller_runs::lease).
struct unit_pool {
  std::mutex mtx;
  std::vector<caller_runs*> idle;
};

unit_pool& pool() {
  static auto* p = new unit_pool; // outlives every thread that leases
  return *p;
}

/// One enqueue, run by a scheduler thread (deliver_elsewhere). The
/// scheduler holds the one reference and drops it when resume says done.
class deferred_enqueue final : public caf::resumable, public caf::ref_counted {
public:
  deferred_enqueue(caf::strong_actor_ptr dest, caf::mailbox_element_ptr what)
      : dest_(std::move(dest)), what_(std::move(what)) {}

  subtype_t subtype() const override {
    return function_object;
  }

  resume_result resume(caf::execution_unit* ctx, std::size_t) override {
    if (dest_)
      dest_->enqueue(std::move(what_), ctx);
    return done;
  }

  void intrusive_ptr_add_ref_impl() override {
    ref();
  }

  void intrusive_ptr_release_impl() override {
    deref();
  }

private:
  caf::strong_actor_ptr dest_;
  caf::mailbox_element_ptr what_;
};

} // namespace

// -- lease, window, scope ------------------------------------------------------

caller_runs::lease::lease(caf::actor_system& sys, limits lim) : unit_(nullptr) {
  {
    auto& p = pool();
    std::lock_guard<std::mutex> guard{p.mtx};
    if (!p.idle.empty()) {
      unit_ = p.idle.back();
      p.idle.pop_back();
    }
  }
  if (!unit_)
    unit_ = new caller_runs;
  unit_->system_ = &sys;
  unit_->lim_.resumes = lim.resumes > 0 ? lim.resumes : 1;
  unit_->lim_.throughput = lim.throughput > 0 ? lim.throughput : 1;
  unit_->resumed_ = 0;
  unit_->owner_.store(std::this_thread::get_id());
}

caller_runs::lease::~lease() {
  // Outside a window the unit holds no job (exec_later hands them off).
  unit_->owner_.store(std::thread::id{});
  auto& p = pool();
  std::lock_guard<std::mutex> guard{p.mtx};
  p.idle.push_back(unit_);
}

caller_runs::window::window(caller_runs& unit) : unit_(unit) {
  if (unit_.owner_.load() != std::this_thread::get_id())
    return; // not this thread's unit: its jobs go to the scheduler
  if (unit_.open_++ == 0)
    unit_.window_resumes_ = 0;
}

caller_runs::window::~window() {
  if (unit_.owner_.load() != std::this_thread::get_id())
    return;
  if (unit_.open_ == 1)
    unit_.run(); // still open: what the actors run here wake is taken too
  --unit_.open_;
}

caller_runs::scope::scope(caller_runs& unit) : prev_(this_thread_unit) {
  this_thread_unit = &unit;
}

caller_runs::scope::~scope() {
  this_thread_unit = prev_;
}

// -- the unit ------------------------------------------------------------------

void caller_runs::exec_later(caf::resumable* job) {
  if (owner_.load() == std::this_thread::get_id() && open_ > 0) {
    jobs_.push_back(job);
    return;
  }
  hand_off(job);
}

void caller_runs::hand_off(caf::resumable* job) {
  // Each job carries the reference CAF took for its scheduling; the
  // scheduler takes it over.
  if (auto* actor = dynamic_cast<caf::abstract_actor*>(job))
    actor->home_system().scheduler().enqueue(job);
  else
    system().scheduler().enqueue(job);
}

void caller_runs::run() {
  // Only the outermost window runs (open_ == 1): a window opened by code
  // run here adds its jobs to this loop.
  while (!jobs_.empty()) {
    auto* job = jobs_.front();
    jobs_.pop_front();
    if (window_resumes_ >= lim_.resumes) {
      hand_off(job);
      continue;
    }
    ++window_resumes_;
    ++resumed_;
    // As caf::scheduler::worker::run treats what a resume answers (the
    // work-sharing policy has no hooks around it).
    switch (job->resume(this, lim_.throughput)) {
      case caf::resumable::resume_later:
        hand_off(job); // more messages wait: the scheduler takes the rest
        break;
      case caf::resumable::done:
      case caf::resumable::awaiting_message:
        caf::intrusive_ptr_release(job);
        break;
      case caf::resumable::shutdown_execution_unit:
        // Only the scheduler's own shutdown jobs answer this; they never
        // come here. Keep the reference as a worker would.
        break;
    }
  }
}

caller_runs* caller_runs::current() {
  return this_thread_unit;
}

void caller_runs::deliver(const caf::strong_actor_ptr& dest,
                          caf::mailbox_element_ptr what) {
  auto* unit = this_thread_unit;
  if (!unit) {
    dest->enqueue(std::move(what), nullptr);
    return;
  }
  window open{*unit};
  dest->enqueue(std::move(what), unit);
}

void caller_runs::deliver_elsewhere(caf::actor_system& sys, caf::strong_actor_ptr dest,
                                    caf::mailbox_element_ptr what) {
  sys.scheduler().enqueue(new deferred_enqueue(std::move(dest), std::move(what)));
}

} // namespace infergrid
