// Queue actor: admission to the job table, the interactive FIFO, dispatch.
#include "actors/queue.hpp"

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include <spdlog/spdlog.h>

#include "actors/clock.hpp"
#include "inference/batching.hpp"
#include "messages/errors.hpp"
#include "persistence/artifacts.hpp"

namespace infergrid {

namespace {

using steady = std::chrono::steady_clock;
using tensor_list = std::vector<tensor_data>;

struct worker_entry {
  std::string id;
  worker_actor handle;
  /// Where its tensor batches go: its executor when it named one.
  batch_runner_actor runner;
  /// Where its generations and syntheses go: `handle`, or the local link's
  /// proxy for it.
  worker_actor streams;
  std::set<std::string> models;
  /// Running a generation, a synthesis or durable work: nothing else.
  bool busy = false;
  /// Tensor batches given and not answered yet (queue.batches_in_flight).
  int32_t batches_out = 0;
  /// The state last written to the workers table, and when.
  std::string recorded_state;
  int64_t recorded_at_ms = 0;
  int64_t recorded_job = 0;
  /// What the worker last told about itself (model states, metrics).
  worker_status status;
  /// Drained by an operator: no new work.
  bool draining = false;
  std::string host;
  std::string claim_path = "in-process";
  int64_t last_seen_ms = 0;
  /// Registration order (round_robin) and interactive work given so far.
  uint64_t order = 0;
  uint64_t dispatched = 0;
  /// Recent latency (EWMA, ms) of interactive work per model (latency).
  std::map<std::string, double> latency_ms;
  /// Interactive work out on this worker: how to fail it if the worker goes
  /// down (a remote node's requests would otherwise wait for their timeout).
  /// Interactive work out on this worker: when its answer is due, and how
  /// to fail it (worker down, or no answer by the deadline: the tick looks).
  struct inflight_entry {
    caf::actor_clock::time_point deadline;
    std::function<void(const caf::error&)> fail;
  };
  std::map<uint64_t, inflight_entry> inflight;
  /// The interactive session this worker is reserved for, if any: it takes
  /// no other work until the session ends.
  struct session_slot {
    std::string id;
    std::string model;
    session_events_actor events;
    bool paused = false;
    bool turn_running = false;
    /// Counts turns, pauses and resumes: a timeout armed for an older count
    /// is stale.
    int64_t activity = 0;
    caf::actor_clock::time_point opened;
  };
  std::optional<session_slot> session;
};

struct pending_submit {
  new_job job;
  caf::typed_response_promise<job_record> rp;
};

/// Most submits written by one flush (one transaction).
constexpr std::size_t max_submit_batch = 256;

/// How often an unchanged worker row is refreshed in the workers table.
constexpr int64_t worker_row_refresh_ms = 5000;

/// One interactive request waiting for a worker.
struct pending_work {
  enum kind_t { infer, generate, speech, session } kind = infer;
  std::string model;
  caf::actor_clock::time_point arrived;
  caf::actor_clock::time_point deadline;
  infer_request infer_req;
  caf::typed_response_promise<tensor_list> infer_rp;
  generate_request generate_req;
  caf::typed_response_promise<generate_reply> generate_rp;
  speech_request speech_req;
  caf::typed_response_promise<speech_reply> speech_rp;
  session_open open_req;
  caf::typed_response_promise<session_grant> open_rp;
  /// The position a waiting session was last told (0: none yet).
  int64_t told_position = 0;

  void fail(caf::error err) {
    switch (kind) {
      case infer:
        infer_rp.deliver(std::move(err));
        break;
      case generate:
        generate_rp.deliver(std::move(err));
        break;
      case speech:
        speech_rp.deliver(std::move(err));
        break;
      case session:
        open_rp.deliver(std::move(err));
        break;
    }
  }
};

struct queue_state {
  queue_config cfg;
  std::shared_ptr<persistence::job_store> store;
  broker_actor broker;
  std::vector<worker_entry> workers;
  /// Where the next dispatch round starts, so idle workers share the work.
  std::size_t next_worker = 0;
  std::deque<pending_work> interactive;
  std::map<std::string, model_info> models;
  /// When the armed batch timer fires; none armed when max().
  caf::actor_clock::time_point batch_timer = caf::actor_clock::time_point::max();
  uint64_t next_inflight = 0;
  /// Registration counter and the last worker round_robin chose.
  uint64_t registrations = 0;
  uint64_t last_chosen = 0;
  /// Models that may have claimable durable jobs.
  std::set<std::string> maybe_ready;
  uint64_t ticks = 0;
  /// Submits waiting for the next flush (group commit).
  std::vector<pending_submit> submits;
  bool flush_scheduled = false;
  /// Open sessions: session id -> the worker reserved for it.
  std::map<std::string, std::string> sessions;
  /// Recent session length per model (EWMA, ms): the wait estimate.
  std::map<std::string, double> session_ms;
};

using queue_pointer = queue_actor::stateful_pointer<queue_state>;

// Hands the events the queue's connection committed to the broker.
void publish_events(queue_pointer self) {
  auto& st = self->state;
  auto events = st.store->take_events();
  if (!events.empty() && st.broker)
    self->send(st.broker, publish_atom::value, std::move(events));
}

std::string join(const std::set<std::string>& xs) {
  std::string out;
  for (auto& x : xs)
    out += (out.empty() ? "" : ",") + x;
  return out;
}

// Writes a worker's row when its state changed or the row is getting old, so
// that `sqlite3 data/infergrid.db 'select * from workers'` shows the truth.
void record_worker(queue_state& st, worker_entry& w, const std::string& state,
                   bool force) {
  auto now = now_ms();
  auto age = now - w.recorded_at_ms;
  // The current job may lag up to a second: one write per worker and second
  // at most, not one per batch.
  bool job_changed = w.status.current_job != w.recorded_job && age >= 1000;
  if (!force && state == w.recorded_state && !job_changed && age < worker_row_refresh_ms)
    return;
  worker_row row;
  row.id = w.id;
  row.state = state;
  row.models = join(w.models);
  row.current_job = w.status.current_job;
  auto ok = st.store->record_worker(row, now);
  if (!ok) {
    spdlog::warn("queue: cannot record worker {}: {}", w.id, message_of(ok.error()));
    return;
  }
  w.recorded_state = state;
  w.recorded_at_ms = now;
  w.recorded_job = row.current_job;
}

worker_entry* find_worker(queue_state& st, const std::string& id) {
  for (auto& w : st.workers)
    if (w.id == id)
      return &w;
  return nullptr;
}

bool serves(const queue_state& st, const std::string& model) {
  for (auto& w : st.workers)
    if (!w.draining && w.models.count(model) > 0)
      return true;
  return false;
}

/// Busy with anything (reserved for a session included): no durable work,
/// no generation or synthesis.
bool working(const worker_entry& w) {
  return w.busy || w.batches_out > 0 || w.session.has_value();
}

// The worker's status as the queue shows it (phase from its own view).
worker_status status_of(const worker_entry& w) {
  auto ws = w.status;
  ws.worker_id = w.id;
  if (w.draining)
    ws.phase = "DRAINING";
  else if (w.session)
    ws.phase = w.session->paused ? "SESSION_PAUSED" : "SESSION_ACTIVE";
  else if (ws.phase.empty() || ws.phase == "IDLE" || ws.phase == "BUSY"
           || ws.phase == "DRAINING" || ws.phase == "SESSION_ACTIVE"
           || ws.phase == "SESSION_PAUSED")
    ws.phase = working(w) ? "BUSY" : "IDLE";
  ws.session = w.session ? w.session->id : std::string{};
  ws.host = w.host;
  ws.claim_path = w.claim_path;
  ws.last_seen_ms = w.last_seen_ms;
  return ws;
}

// Fails the waiting interactive requests that no worker can serve any more.
void fail_unservable(queue_state& st) {
  for (auto p = st.interactive.begin(); p != st.interactive.end();) {
    if (!serves(st, p->model)) {
      p->fail(make_error(errc::unavailable,
                         "no ready worker serves model '" + p->model + "'"));
      p = st.interactive.erase(p);
    } else {
      ++p;
    }
  }
}

void observe_latency(queue_state& st, const std::string& id, const std::string& model,
                     double ms);

// Remembers interactive work out on `w` so that its requests fail at once
// (unavailable, retryable) if `w` goes down; returns what the reply
// handlers call first: true when the answer is still theirs to deliver.
std::function<bool()> track_inflight(queue_pointer self, worker_entry& w,
                                     caf::actor_clock::time_point deadline,
                                     std::function<void(const caf::error&)> fail) {
  auto done = std::make_shared<bool>(false);
  auto id = ++self->state.next_inflight;
  w.inflight.emplace(
      id, worker_entry::inflight_entry{deadline, [done, fail](const caf::error& err) {
                                         if (!*done) {
                                           *done = true;
                                           fail(err);
                                         }
                                       }});
  return [self, done, id, wid = w.id] {
    if (auto w = find_worker(self->state, wid))
      w->inflight.erase(id);
    if (*done)
      return false;
    *done = true;
    return true;
  };
}

void dispatch(queue_pointer self);
void grant_session(queue_pointer self, worker_entry& w, pending_work p);

// Worker `id` in its registration `order` answered interactive work (a
// tensor batch when `batch`): it is free again (workers send no idle
// message after interactive work; the answer says it). An answer from an
// earlier registration under the same id (the worker rejoined) counts
// nothing against the new one.
void answered(queue_pointer self, const std::string& id, uint64_t order, bool batch) {
  if (auto w = find_worker(self->state, id); w != nullptr && w->order == order) {
    if (batch) {
      if (w->batches_out > 0)
        --w->batches_out;
      else
        spdlog::error("queue: worker {} answered a batch it did not hold", id);
    } else {
      w->busy = false;
    }
    w->last_seen_ms = now_ms();
  }
  dispatch(self);
}

// Fails interactive work whose worker has not answered by its deadline (the
// worker keeps running it; its late answer is dropped).
void fail_overdue(queue_pointer self) {
  auto now = self->clock().now();
  for (auto& w : self->state.workers) {
    for (auto i = w.inflight.begin(); i != w.inflight.end();) {
      if (i->second.deadline <= now) {
        auto fail = std::move(i->second.fail);
        i = w.inflight.erase(i);
        fail(make_error(errc::timeout, "worker " + w.id + " did not answer in time"));
      } else {
        ++i;
      }
    }
  }
}

// A callback that records how long interactive work of `model` took on `w`.
auto latency_probe(queue_pointer self, const worker_entry& w, const std::string& model) {
  // The actor clock: steady time in production, virtual time in tests.
  auto t0 = self->clock().now();
  return [self, id = w.id, model, t0] {
    auto ms = std::chrono::duration<double, std::milli>(self->clock().now() - t0).count();
    observe_latency(self->state, id, model, ms);
  };
}

// Hands a batch of tensor requests of one model to `w` (counted out in
// this step).
void send_infer_batch(queue_pointer self, worker_entry& w, std::vector<pending_work> ps) {
  // A batch that waits behind another on the worker would time both: only
  // one sent to an idle worker tells its latency.
  bool timed = w.batches_out == 0;
  ++w.batches_out;
  auto deadline = ps.front().deadline;
  infer_batch batch;
  batch.model = ps.front().model;
  std::vector<caf::typed_response_promise<tensor_list>> rps;
  for (auto& p : ps) {
    deadline = std::min(deadline, p.deadline);
    batch.requests.push_back(std::move(p.infer_req));
    rps.push_back(p.infer_rp);
  }
  auto probe = latency_probe(self, w, batch.model);
  auto mine = track_inflight(self, w, deadline, [rps](const caf::error& err) mutable {
    for (auto& rp : rps)
      rp.deliver(err);
  });
  // No CAF timeout: each would wake CAF's clock thread per request. The
  // deadline is kept with the inflight entry and checked by the tick.
  self->request(w.runner, caf::infinite, infer_atom::value, std::move(batch))
      .then(
          [self, wid = w.id, order = w.order, rps, probe, timed,
           mine](infer_batch_result& out) mutable {
            if (mine()) {
              if (timed)
                probe();
              for (std::size_t i = 0; i < rps.size(); ++i) {
                if (i < out.outputs.size())
                  rps[i].deliver(std::move(out.outputs[i]));
                else
                  rps[i].deliver(make_error(errc::internal, "batch result too short"));
              }
            }
            answered(self, wid, order, true);
          },
          [self, wid = w.id, order = w.order, rps, mine](caf::error& err) mutable {
            if (mine())
              for (auto& rp : rps)
                rp.deliver(err);
            answered(self, wid, order, true);
          });
}

// Sends one streaming request (generation or synthesis) to `w`, answers
// `rp` with its reply, then calls `after()` (the worker's bookkeeping).
template <class Reply, class Atom, class Request, class After>
void send_one(queue_pointer self, worker_entry& w, Atom atom, Request req,
              caf::typed_response_promise<Reply> rp, After after) {
  auto probe = latency_probe(self, w, req.model);
  // No deadline: the run is bounded by the worker (workers.generate_timeout_ms)
  // and by its connection (a node that goes silent is dropped, failing this).
  auto mine = track_inflight(self, w, caf::actor_clock::time_point::max(),
                             [rp](const caf::error& err) mutable { rp.deliver(err); });
  self->request(w.streams, caf::infinite, atom, std::move(req))
      .then(
          [rp, probe, mine, after](Reply& out) mutable {
            if (mine()) {
              probe();
              rp.deliver(std::move(out));
            }
            after();
          },
          [rp, mine, after](caf::error& err) mutable {
            if (mine())
              rp.deliver(std::move(err));
            after();
          });
}

// Hands a generation or synthesis to `w` (busy in this step). Its deadline
// covered the wait in the queue.
void send_streaming(queue_pointer self, worker_entry& w, pending_work p) {
  w.busy = true;
  auto after = [self, wid = w.id, order = w.order] { answered(self, wid, order, false); };
  if (p.kind == pending_work::generate)
    send_one(self, w, generate_atom::value, std::move(p.generate_req), p.generate_rp,
             after);
  else
    send_one(self, w, speech_atom::value, std::move(p.speech_req), p.speech_rp, after);
}

inference::batch_policy policy_of(const queue_state& st, const std::string& model) {
  inference::batch_policy p;
  if (auto i = st.models.find(model); i != st.models.end()) {
    p.max_batch_size = std::max<int64_t>(i->second.max_batch_size, 1);
    p.max_queue_delay_us = std::max<int64_t>(i->second.max_queue_delay_us, 0);
  }
  return p;
}

// Arms the batch timer for `at` unless one fires earlier already.
void arm_batch_timer(queue_pointer self, caf::actor_clock::time_point at) {
  auto& st = self->state;
  if (at >= st.batch_timer)
    return;
  st.batch_timer = at;
  auto delay = std::max(at - self->clock().now(), caf::actor_clock::duration_type{0});
  self->delayed_send(self, delay, batch_atom::value);
}

bool holds_ready(const worker_entry& w, const std::string& model) {
  for (auto& m : w.status.models)
    if (m.name == model)
      return m.state == "READY";
  return false;
}

/// Picks the worker for interactive work of `model` among the free ones
/// that serve it (a tensor batch: fewer than queue.batches_in_flight out and
/// not in `reserved`; anything else: idle): the least loaded first, then
/// those holding the model resident, then by the configured strategy.
/// nullptr when none is free.
worker_entry* choose_worker(queue_state& st, const std::string& model, bool batch,
                            const std::set<std::string>& reserved) {
  std::vector<worker_entry*> candidates;
  int32_t least = std::numeric_limits<int32_t>::max();
  for (auto& w : st.workers) {
    bool free = batch ? !w.busy && !w.session
                            && w.batches_out < st.cfg.settings.batches_in_flight
                            && reserved.count(w.id) == 0
                      : !working(w);
    if (free && !w.draining && w.models.count(model) > 0) {
      if (w.batches_out < least) {
        least = w.batches_out;
        candidates.clear();
      }
      if (w.batches_out == least)
        candidates.push_back(&w);
    }
  }
  if (candidates.empty())
    return nullptr;
  std::vector<worker_entry*> resident;
  for (auto* w : candidates)
    if (holds_ready(*w, model))
      resident.push_back(w);
  auto& pool = resident.empty() ? candidates : resident;
  switch (st.cfg.routing) {
    case routing_strategy::round_robin: {
      // The first candidate after the one chosen last, in registration order.
      auto next = pool.front();
      for (auto* w : pool) {
        if (w->order > st.last_chosen) {
          next = w;
          break;
        }
      }
      return next; // last_chosen moves when work is sent
    }
    case routing_strategy::latency: {
      // Lowest recent latency for this model; a worker never measured goes
      // first, so every worker gets measured.
      auto score = [&](const worker_entry* w) {
        auto i = w->latency_ms.find(model);
        return i == w->latency_ms.end() ? -1.0 : i->second;
      };
      return *std::min_element(pool.begin(), pool.end(), [&](auto* x, auto* y) {
        return score(x) < score(y)
               || (score(x) == score(y) && x->dispatched < y->dispatched);
      });
    }
    case routing_strategy::queue_depth:
      break;
  }
  // queue_depth: every candidate is idle (depth 0); the one given the least
  // work so far goes first, so load spreads.
  return *std::min_element(pool.begin(), pool.end(), [](auto* x, auto* y) {
    return x->dispatched < y->dispatched;
  });
}

// Remembers how long `model` took on worker `id` (EWMA, for `latency`).
void observe_latency(queue_state& st, const std::string& id, const std::string& model,
                     double ms) {
  if (auto w = find_worker(st, id)) {
    auto i = w->latency_ms.find(model);
    if (i == w->latency_ms.end())
      w->latency_ms.emplace(model, ms);
    else
      i->second = 0.8 * i->second + 0.2 * ms;
  }
}

// -- sessions ------------------------------------------------------------------

/// Session opens waiting in the FIFO.
int64_t sessions_waiting(const queue_state& st) {
  return std::count_if(
      st.interactive.begin(), st.interactive.end(),
      [](const pending_work& p) { return p.kind == pending_work::session; });
}

// Arms the timeout of `w`'s session for its current activity: the pause
// timeout while paused, the idle timeout otherwise (none while a turn runs).
void arm_session_timer(queue_pointer self, worker_entry& w) {
  auto& s = *w.session;
  if (s.turn_running)
    return;
  auto& cfg = self->state.cfg.sessions;
  auto ms = s.paused ? cfg.pause_timeout_ms : cfg.idle_timeout_ms;
  if (ms > 0)
    self->delayed_send(self, std::chrono::milliseconds(ms), session_atom::value, s.id,
                       s.activity);
}

// Reserves idle worker `w` for the session `p` asks for (in the dispatch
// step, so nothing else is given to it) and answers the open.
void grant_session(queue_pointer self, worker_entry& w, pending_work p) {
  auto& st = self->state;
  auto& req = p.open_req;
  worker_entry::session_slot slot;
  slot.id = req.session_id;
  slot.model = req.model;
  slot.events = req.events;
  slot.opened = self->clock().now();
  w.session = std::move(slot);
  st.sessions[req.session_id] = w.id;
  self->send(w.handle, session_atom::value, req.session_id, std::string{"open"});
  arm_session_timer(self, w);
  record_worker(st, w, status_of(w).phase, true);
  auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(self->clock().now()
                                                                      - p.arrived)
                    .count();
  spdlog::info("queue: session {} of model {} on worker {} (waited {} ms)",
               req.session_id, req.model, w.id, waited);
  p.open_rp.deliver(session_grant{req.session_id, w.id, waited});
}

// Takes the session off `w` and forgets it (no longer watched).
worker_entry::session_slot take_session(queue_pointer self, worker_entry& w) {
  auto s = std::move(*w.session);
  w.session.reset();
  self->state.sessions.erase(s.id);
  self->demonitor(s.events.address());
  return s;
}

// Ends the session on `w`: tells its client why (unless it asked), frees
// the worker (once a turn still running answers) and dispatches. Returns
// the worker's phase before that dispatch (IDLE, or BUSY while the turn
// still runs).
std::string end_session(queue_pointer self, worker_entry& w, const std::string& reason,
                        bool tell_client) {
  auto& st = self->state;
  auto s = take_session(self, w);
  if (tell_client)
    self->send(s.events, session_atom::value,
               session_event{"session.end", 0, -1, reason});
  self->send(w.handle, session_atom::value, s.id, std::string{"close"});
  // The turn still running keeps the worker until it answers (stopped by
  // its sink going down, or finishing).
  if (s.turn_running)
    w.busy = true;
  auto ms
      = std::chrono::duration<double, std::milli>(self->clock().now() - s.opened).count();
  auto i = st.session_ms.find(s.model);
  if (i == st.session_ms.end())
    st.session_ms.emplace(s.model, ms);
  else
    i->second = 0.7 * i->second + 0.3 * ms;
  spdlog::info("queue: session {} on worker {} ended: {}", s.id, w.id, reason);
  auto phase = status_of(w).phase;
  record_worker(st, w, phase, true);
  dispatch(self);
  return phase;
}

// Tells each waiting session its place when it changed: 1 + the requests of
// its model ahead of it, and an estimate from recent sessions' length.
void tell_positions(queue_pointer self) {
  auto& st = self->state;
  if (std::none_of(st.interactive.begin(), st.interactive.end(),
                   [](auto& p) { return p.kind == pending_work::session; }))
    return;
  std::map<std::string, int64_t> ahead;
  for (auto& p : st.interactive) {
    auto position = ++ahead[p.model];
    if (p.kind != pending_work::session || p.told_position == position)
      continue;
    p.told_position = position;
    int64_t eta = -1;
    if (auto i = st.session_ms.find(p.model); i != st.session_ms.end()) {
      int64_t servers = 0;
      for (auto& w : st.workers)
        if (!w.draining && w.models.count(p.model) > 0)
          ++servers;
      eta = static_cast<int64_t>(i->second * static_cast<double>(position)
                                 / static_cast<double>(std::max<int64_t>(servers, 1)));
    }
    self->send(p.open_req.events, session_atom::value,
               session_event{"queue.position", position, eta, {}});
  }
}

// The answer to a session's turn came (or failed): the worker serves the
// session again, or, when the session ended meanwhile, is free.
void turn_done(queue_pointer self, const std::string& wid, uint64_t order,
               const std::string& session) {
  if (auto w = find_worker(self->state, wid); w != nullptr && w->order == order) {
    if (w->session && w->session->id == session) {
      w->session->turn_running = false;
      ++w->session->activity;
      arm_session_timer(self, *w);
    } else {
      w->busy = false;
    }
    w->last_seen_ms = now_ms();
  }
  dispatch(self);
}

// Runs a turn of an open session on its worker at once: it never queues
// (the worker is the session's), and it is refused while the session is
// paused or another turn runs.
template <class Reply, class Atom, class Request>
caf::result<Reply> session_turn(queue_pointer self, Atom atom, Request req) {
  auto& st = self->state;
  auto i = st.sessions.find(req.session);
  auto w = i == st.sessions.end() ? nullptr : find_worker(st, i->second);
  if (w == nullptr || !w->session)
    return make_error(errc::not_found, "no session '" + req.session + "'");
  auto& s = *w->session;
  if (req.model != s.model)
    return make_error(errc::invalid_input,
                      "model: session " + s.id + " serves '" + s.model + "'");
  if (s.paused)
    return make_error(errc::conflict, "session " + s.id + " is paused; resume it first");
  if (s.turn_running)
    return make_error(errc::conflict, "a turn of session " + s.id + " is running");
  s.turn_running = true;
  ++s.activity;
  req.enqueued_ms = now_ms();
  auto rp = self->make_response_promise<Reply>();
  send_one(self, *w, atom, std::move(req), rp,
           [self, wid = w->id, order = w->order, sid = s.id] {
             turn_done(self, wid, order, sid);
           });
  return rp;
}

/// Hands out ready interactive work, oldest first. Tensor requests leave as
/// a batch when the batch is full or its oldest request waited
/// max_queue_delay_us (a timer is armed otherwise, and later requests of
/// other models may go meanwhile). True when something was sent.
bool dispatch_interactive(queue_pointer self) {
  auto& st = self->state;
  auto now = self->clock().now();
  std::set<std::string> skip; // models whose batch is not ready or with no idle worker
  // Workers an older generation or synthesis waits for: they get no more
  // batches, so they run empty and it gets one (batches in flight would
  // otherwise keep them from ever being idle).
  std::set<std::string> reserved;
  for (auto it = st.interactive.begin(); it != st.interactive.end(); ++it) {
    bool is_batch = it->kind == pending_work::infer;
    if (skip.count(it->model) > 0)
      continue;
    auto w = choose_worker(st, it->model, is_batch, reserved);
    if (w == nullptr) {
      skip.insert(it->model);
      if (!is_batch)
        for (auto& x : st.workers)
          if (!x.busy && !x.session && !x.draining && x.batches_out > 0
              && x.models.count(it->model) > 0)
            reserved.insert(x.id);
      continue;
    }
    if (!is_batch) {
      auto p = std::move(*it);
      st.interactive.erase(it);
      ++w->dispatched;
      st.last_chosen = w->order;
      if (p.kind == pending_work::session)
        grant_session(self, *w, std::move(p));
      else
        send_streaming(self, *w, std::move(p));
      return true;
    }
    // The oldest tensor request of its model: is a batch ready?
    auto policy = policy_of(st, it->model);
    int64_t pending = 0;
    for (auto& q : st.interactive)
      if (q.kind == pending_work::infer && q.model == it->model)
        ++pending;
    auto waited = std::chrono::duration_cast<std::chrono::microseconds>(now - it->arrived)
                      .count();
    auto d = inference::decide_batch(policy, pending, waited);
    if (!d.ready) {
      skip.insert(it->model);
      arm_batch_timer(self, now + std::chrono::microseconds(d.wait_us));
      continue;
    }
    if (w->batches_out > 0 && d.take < policy.max_batch_size) {
      // Every free worker runs a batch already: only a full batch goes out
      // now. A smaller one keeps growing until a worker answers, so
      // batching does not shrink to feed the pipeline.
      skip.insert(it->model);
      continue;
    }
    auto model = it->model;
    std::vector<pending_work> batch;
    for (auto q = it;
         q != st.interactive.end() && static_cast<int64_t>(batch.size()) < d.take;) {
      if (q->kind == pending_work::infer && q->model == model) {
        batch.push_back(std::move(*q));
        q = st.interactive.erase(q);
      } else {
        ++q;
      }
    }
    ++w->dispatched;
    st.last_chosen = w->order;
    send_infer_batch(self, *w, std::move(batch));
    return true;
  }
  return false;
}

/// The one dispatch point: gives idle workers the interactive work they can
/// serve (tensor requests batched), then hints to claim durable work.
void dispatch(queue_pointer self) {
  auto& st = self->state;
  auto now = self->clock().now();
  // Drop expired interactive requests first: their clients have given up.
  for (auto i = st.interactive.begin(); i != st.interactive.end();) {
    if (i->deadline <= now) {
      i->fail(make_error(errc::timeout, "request waited past its deadline"));
      i = st.interactive.erase(i);
    } else {
      ++i;
    }
  }
  while (dispatch_interactive(self)) {
    // each round hands out one piece of work; the FIFO changed, look again
  }
  auto n = st.workers.size();
  for (std::size_t k = 0; k < n; ++k) {
    auto& w = st.workers[(st.next_worker + k) % n];
    if (working(w) || w.draining)
      continue;
    bool has_hint = std::any_of(w.models.begin(), w.models.end(),
                                [&](auto& m) { return st.maybe_ready.count(m) > 0; });
    if (has_hint) {
      w.busy = true;
      self->send(w.handle, work_atom::value);
    }
  }
  if (n > 0)
    st.next_worker = (st.next_worker + 1) % n;
  tell_positions(self);
}

// Admits interactive work to the FIFO and dispatches; refusals (429 when
// full) go through the request's promise.
void admit(queue_pointer self, pending_work p) {
  auto& st = self->state;
  if (!serves(st, p.model)) {
    p.fail(
        make_error(errc::unavailable, "no ready worker serves model '" + p.model + "'"));
    return;
  }
  auto limit = st.cfg.settings.max_interactive;
  if (static_cast<int64_t>(st.interactive.size()) >= limit) {
    p.fail(make_error(errc::queue_full,
                      "interactive queue holds " + std::to_string(st.interactive.size())
                          + " of " + std::to_string(limit) + " requests"));
    return;
  }
  p.arrived = self->clock().now();
  p.deadline = p.arrived + std::chrono::milliseconds(st.cfg.interactive_timeout_ms);
  st.interactive.push_back(std::move(p));
  dispatch(self);
}

// The interactive handlers: stamps the request, keeps it in the slot of its
// kind with its promise, and admits it.
template <class Request, class Reply>
caf::typed_response_promise<Reply>
admit(queue_pointer self, pending_work::kind_t kind, Request req,
      Request pending_work::*slot,
      caf::typed_response_promise<Reply> pending_work::*promise) {
  pending_work p;
  p.kind = kind;
  p.model = req.model;
  req.enqueued_ms = now_ms();
  p.*slot = std::move(req);
  p.*promise = self->make_response_promise<Reply>();
  auto rp = p.*promise;
  admit(self, std::move(p));
  return rp;
}

// Sends `atom`(model) to every worker that serves `model` and answers with
// all of their statuses once each has answered (or failed).
template <class Atom>
caf::result<std::vector<worker_status>> fan_out(queue_pointer self, Atom atom,
                                                const std::string& model) {
  auto& st = self->state;
  std::vector<worker_actor> targets;
  for (auto& w : st.workers)
    if (w.models.count(model) > 0)
      targets.push_back(w.handle);
  if (targets.empty())
    return make_error(errc::unavailable, "no ready worker serves model '" + model + "'");
  auto rp = self->make_response_promise<std::vector<worker_status>>();
  struct gather {
    std::size_t left;
    std::vector<worker_status> out;
    caf::error first_error;
  };
  auto g = std::make_shared<gather>();
  g->left = targets.size();
  auto finish = [g, rp]() mutable {
    if (--g->left > 0)
      return;
    if (g->out.empty() && g->first_error)
      rp.deliver(g->first_error);
    else
      rp.deliver(std::move(g->out));
  };
  for (auto& t : targets)
    self->request(t, std::chrono::minutes(10), atom, model)
        .then(
            [self, g, finish](worker_status& ws) mutable {
              if (auto w = find_worker(self->state, ws.worker_id))
                w->status.models = ws.models;
              g->out.push_back(std::move(ws));
              finish();
            },
            [g, finish](caf::error& err) mutable {
              if (!g->first_error)
                g->first_error = err;
              finish();
            });
  return rp;
}

std::string content_type_of(const std::string& name) {
  auto ends_with = [&](const char* ext) {
    std::string e{ext};
    return name.size() >= e.size()
           && name.compare(name.size() - e.size(), e.size(), e) == 0;
  };
  if (ends_with(".wav"))
    return "audio/wav";
  if (ends_with(".json"))
    return "application/json";
  if (ends_with(".png"))
    return "image/png";
  if (ends_with(".txt"))
    return "text/plain; charset=utf-8";
  return "application/octet-stream";
}

// A session's actor went away (its client left): the session ends, or its
// open leaves the FIFO.
void session_client_down(queue_pointer self, const caf::actor_addr& who) {
  auto& st = self->state;
  for (auto& w : st.workers) {
    if (w.session && w.session->events.address() == who) {
      end_session(self, w, "client_gone", false);
      return;
    }
  }
  for (auto p = st.interactive.begin(); p != st.interactive.end(); ++p) {
    if (p->kind == pending_work::session && p->open_req.events.address() == who) {
      spdlog::info("queue: session {} left before it got a worker",
                   p->open_req.session_id);
      st.interactive.erase(p);
      tell_positions(self);
      return;
    }
  }
}

queue_actor::behavior_type queue_behavior(queue_pointer self, queue_config cfg,
                                          std::shared_ptr<persistence::job_store> store,
                                          broker_actor broker) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.store = std::move(store);
  st.broker = std::move(broker);
  for (auto& m : st.cfg.models)
    st.models.emplace(m.name, m);
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& st = self->state;
    auto i = std::find_if(st.workers.begin(), st.workers.end(),
                          [&](auto& w) { return w.handle.address() == dm.source; });
    if (i == st.workers.end()) {
      session_client_down(self, dm.source);
      return;
    }
    spdlog::warn("queue: worker {} went down: {}", i->id, caf::to_string(dm.reason));
    // Its session ends; the client hears why.
    if (i->session) {
      auto s = take_session(self, *i);
      self->send(s.events, session_atom::value,
                 session_event{"session.end", 0, -1, "worker_lost"});
      spdlog::warn("queue: session {} ended with worker {}", s.id, i->id);
    }
    // Its interactive requests fail now with a retryable error.
    auto inflight = std::move(i->inflight);
    for (auto& [id, entry] : inflight)
      entry.fail(make_error(errc::unavailable,
                            "worker " + i->id + " went down while running it"));
    // Its running jobs go back at once (attempt counted), not at lease expiry.
    auto requeued = st.store->requeue_worker(i->id, now_ms());
    if (!requeued)
      spdlog::error("queue: cannot requeue the jobs of worker {}: {}", i->id,
                    message_of(requeued.error()));
    else if (*requeued > 0)
      spdlog::info("queue: {} job(s) of worker {} put back", *requeued, i->id);
    publish_events(self);
    for (auto& m : i->models)
      st.maybe_ready.insert(m);
    record_worker(st, *i, "DOWN", true);
    st.workers.erase(i);
    st.next_worker = 0;
    // Interactive requests nobody can serve any more fail now, not at timeout.
    fail_unservable(st);
    dispatch(self);
  });
  if (st.cfg.tick)
    self->delayed_send(self, std::chrono::milliseconds(st.cfg.settings.tick_ms),
                       qtick_atom::value);
  return {
      [self](register_atom, worker_actor& handle, worker_registration& reg) {
        auto& st = self->state;
        if (find_worker(st, reg.worker_id) != nullptr) {
          // Two live workers under one id would share its leases and its
          // row in the workers table: the newcomer is stopped.
          spdlog::error("queue: refused a second worker with id {}: one is already "
                        "registered",
                        reg.worker_id);
          self->send_exit(handle,
                          make_error(errc::conflict, "worker id '" + reg.worker_id
                                                         + "' is already registered"));
          return;
        }
        // Jobs still running under this id belong to an earlier life of the
        // worker (its process or this queue restarted): the new one holds
        // none, so they go back now rather than when their leases lapse.
        if (auto requeued = st.store->requeue_worker(reg.worker_id, now_ms()); !requeued)
          spdlog::error("queue: cannot requeue the jobs of worker {}: {}", reg.worker_id,
                        message_of(requeued.error()));
        else if (*requeued > 0) {
          spdlog::info("queue: {} job(s) left running by an earlier life of worker {} "
                       "put back",
                       *requeued, reg.worker_id);
          publish_events(self);
        }
        worker_entry w;
        w.id = reg.worker_id;
        w.handle = handle;
        w.runner = reg.runner ? reg.runner : batch_runner_actor{handle};
        w.streams = handle;
        bool linked = false;
        if (st.cfg.links && !reg.link_token.empty()) {
          auto runner = st.cfg.links->runner_for(reg.link_token, w.runner);
          linked = runner != w.runner;
          w.runner = runner;
          w.streams = st.cfg.links->streams_for(reg.link_token, handle);
        }
        w.host = reg.host;
        w.claim_path = reg.claim_path;
        w.order = ++st.registrations;
        w.last_seen_ms = now_ms();
        w.models.insert(reg.models.begin(), reg.models.end());
        st.maybe_ready.insert(reg.models.begin(), reg.models.end());
        self->monitor(handle);
        spdlog::info("queue: worker {} ready with {} model(s){}", w.id, w.models.size(),
                     linked ? "; its batches and streams take the local link" : "");
        record_worker(st, w, "IDLE", true);
        st.workers.push_back(std::move(w));
        dispatch(self);
      },
      [self](join_atom, const std::string& worker_id) {
        return find_worker(self->state, worker_id) == nullptr;
      },
      [self](idle_atom, const std::string& worker_id, bool found_work) {
        auto& st = self->state;
        auto w = find_worker(st, worker_id);
        if (w == nullptr)
          return;
        w->busy = false;
        w->last_seen_ms = now_ms();
        if (!found_work)
          for (auto& m : w->models)
            st.maybe_ready.erase(m);
        dispatch(self);
      },
      [self](submit_atom, new_job& job) -> caf::result<job_record> {
        // Group commit: the flush message lands behind every submit already in
        // the mailbox, so submits that arrive together share one transaction.
        auto& st = self->state;
        auto rp = self->make_response_promise<job_record>();
        st.submits.push_back(pending_submit{std::move(job), rp});
        if (!st.flush_scheduled) {
          st.flush_scheduled = true;
          self->send(self, flush_atom::value);
        }
        return rp;
      },
      [self](flush_atom) {
        auto& st = self->state;
        st.flush_scheduled = false;
        auto n = std::min(st.submits.size(), max_submit_batch);
        std::vector<pending_submit> batch(
            std::make_move_iterator(st.submits.begin()),
            std::make_move_iterator(st.submits.begin() + n));
        st.submits.erase(st.submits.begin(), st.submits.begin() + n);
        if (!st.submits.empty()) {
          st.flush_scheduled = true;
          self->send(self, flush_atom::value);
        }
        std::vector<new_job> jobs;
        jobs.reserve(batch.size());
        for (auto& p : batch)
          jobs.push_back(p.job);
        auto results
            = st.store->enqueue_batch(jobs, st.cfg.settings.max_queued, now_ms());
        if (!results) {
          for (auto& p : batch)
            p.rp.deliver(results.error());
          return;
        }
        publish_events(self);
        for (std::size_t i = 0; i < batch.size(); ++i) {
          auto& rec = (*results)[i];
          if (!rec) {
            batch[i].rp.deliver(rec.error());
            continue;
          }
          if (rec->created)
            st.maybe_ready.insert(rec->model);
          batch[i].rp.deliver(std::move(*rec));
        }
        dispatch(self);
      },
      [self](claim_atom, const std::string& worker,
             const std::vector<std::string>& models, int32_t n,
             int64_t lease_ms) -> caf::result<std::vector<job_record>> {
        auto jobs = self->state.store->claim(worker, models, n, lease_ms, now_ms());
        if (!jobs)
          return jobs.error();
        publish_events(self);
        return std::move(*jobs);
      },
      [self](complete_atom, int64_t id, int64_t lease_seq,
             const std::string& output) -> caf::result<bool> {
        auto done = self->state.store->complete(id, lease_seq, output, now_ms());
        if (!done)
          return done.error();
        publish_events(self);
        return *done;
      },
      [self](fail_atom, int64_t id, int64_t lease_seq,
             const job_error& err) -> caf::result<std::string> {
        auto next = self->state.store->fail(id, lease_seq, err, now_ms());
        if (!next)
          return next.error();
        publish_events(self);
        // A retry waits for its back-off; the queue tick wakes workers for it.
        return *next ? to_string(**next) : std::string{};
      },
      [self](renew_atom, int64_t id, int64_t lease_seq,
             int64_t lease_ms) -> caf::result<bool, bool> {
        auto status = self->state.store->renew(id, lease_seq, lease_ms, now_ms());
        if (!status)
          return status.error();
        return {status->held, status->cancel_requested};
      },
      [self](job_get_atom, int64_t id) -> caf::result<job_record> {
        auto rec = self->state.store->get(id);
        if (!rec)
          return rec.error();
        if (!*rec)
          return make_error(errc::not_found, "no job '" + job_id_string(id) + "'");
        return std::move(**rec);
      },
      [self](infer_atom, infer_request& req) -> caf::result<tensor_list> {
        return admit(self, pending_work::infer, std::move(req), &pending_work::infer_req,
                     &pending_work::infer_rp);
      },
      [self](generate_atom, generate_request& req) -> caf::result<generate_reply> {
        if (!req.session.empty())
          return session_turn<generate_reply>(self, generate_atom::value, std::move(req));
        return admit(self, pending_work::generate, std::move(req),
                     &pending_work::generate_req, &pending_work::generate_rp);
      },
      [self](speech_atom, speech_request& req) -> caf::result<speech_reply> {
        if (!req.session.empty())
          return session_turn<speech_reply>(self, speech_atom::value, std::move(req));
        return admit(self, pending_work::speech, std::move(req),
                     &pending_work::speech_req, &pending_work::speech_rp);
      },
      [self](session_atom, session_open& req) -> caf::result<session_grant> {
        auto& st = self->state;
        if (!req.events)
          return make_error(errc::invalid_input, "a session needs its actor");
        if (req.session_id.empty() || st.sessions.count(req.session_id) > 0)
          return make_error(errc::conflict,
                            "session '" + req.session_id + "' exists already");
        // Its exit ends the session, or takes its open out of the FIFO.
        self->monitor(req.events);
        pending_work p;
        p.kind = pending_work::session;
        p.model = req.model;
        p.open_req = std::move(req);
        p.open_rp = self->make_response_promise<session_grant>();
        auto rp = p.open_rp;
        admit(self, std::move(p));
        return rp;
      },
      [self](session_atom, const std::string& id,
             const std::string& action) -> caf::result<std::string> {
        auto& st = self->state;
        auto i = st.sessions.find(id);
        auto w = i == st.sessions.end() ? nullptr : find_worker(st, i->second);
        if (w == nullptr || !w->session)
          return make_error(errc::not_found, "no session '" + id + "'");
        auto& s = *w->session;
        if (action == "stop")
          return end_session(self, *w, "stopped", false);
        if (action != "pause" && action != "resume")
          return make_error(errc::invalid_input,
                            "action: expected pause, resume or stop, not '" + action
                                + "'");
        if (s.turn_running)
          return make_error(errc::conflict, "a turn of session " + id
                                                + " is running; interrupt it first");
        bool pause = action == "pause";
        if (s.paused != pause) {
          s.paused = pause;
          ++s.activity;
          arm_session_timer(self, *w);
          self->send(w->handle, session_atom::value, id, action);
          spdlog::info("queue: session {} on worker {} {}", id, w->id,
                       pause ? "paused" : "resumed");
          record_worker(st, *w, status_of(*w).phase, true);
        }
        return status_of(*w).phase;
      },
      [self](session_atom, const std::string& id, int64_t activity) {
        auto& st = self->state;
        auto i = st.sessions.find(id);
        auto w = i == st.sessions.end() ? nullptr : find_worker(st, i->second);
        if (w == nullptr || !w->session || w->session->activity != activity
            || w->session->turn_running)
          return;
        end_session(self, *w, w->session->paused ? "pause_timeout" : "idle_timeout",
                    true);
      },
      [self](batch_atom) {
        self->state.batch_timer = caf::actor_clock::time_point::max();
        dispatch(self);
      },
      [self](status_atom, worker_status& ws) {
        auto& st = self->state;
        if (auto w = find_worker(st, ws.worker_id)) {
          // The tick writes the workers table (state, current job).
          w->status = std::move(ws);
          w->last_seen_ms = now_ms();
        }
      },
      [self](drain_atom, const std::string& id,
             bool drain) -> caf::result<worker_status> {
        auto& st = self->state;
        auto w = find_worker(st, id);
        if (w == nullptr)
          return make_error(errc::not_found, "no worker '" + id + "'");
        if (w->draining != drain) {
          w->draining = drain;
          spdlog::info("queue: worker {} {}", id,
                       drain ? "DRAINING: no new work; what runs finishes" : "resumed");
          self->send(w->handle, drain_atom::value, drain);
        }
        auto ws = status_of(*w);
        record_worker(st, *w, ws.phase, true);
        if (drain)
          fail_unservable(st);
        else
          dispatch(self);
        return ws;
      },
      [self](complete_atom,
             const std::vector<job_completion>& xs) -> caf::result<std::vector<bool>> {
        auto done = self->state.store->complete_batch(xs, now_ms());
        if (!done)
          return done.error();
        publish_events(self);
        return std::move(*done);
      },
      [self](renew_atom, const std::vector<held_lease>& xs,
             int64_t lease_ms) -> caf::result<std::vector<lease_status>> {
        auto status = self->state.store->renew_batch(xs, lease_ms, now_ms());
        if (!status)
          return status.error();
        return std::move(*status);
      },
      [self](chunk_atom, int64_t id, int64_t lease_seq,
             const std::string& data) -> caf::result<bool> {
        auto ok = self->state.store->add_event(id, lease_seq, "data", data, now_ms());
        if (!ok)
          return ok.error();
        publish_events(self);
        return *ok;
      },
      [self](artifact_atom, int64_t id, int64_t lease_seq, const std::string& name,
             const std::string& bytes) -> caf::result<bool> {
        auto& st = self->state;
        auto rec = st.store->get(id);
        if (!rec)
          return rec.error();
        if (!*rec || (*rec)->state != job_state::running
            || (*rec)->lease_seq != lease_seq)
          return false;
        persistence::artifact_store files{st.cfg.artifacts_dir};
        auto written = files.write(id, name, bytes);
        if (!written)
          return written.error();
        return true;
      },
      [self](load_atom,
             const std::string& model) -> caf::result<std::vector<worker_status>> {
        return fan_out(self, load_atom::value, model);
      },
      [self](unload_atom,
             const std::string& model) -> caf::result<std::vector<worker_status>> {
        return fan_out(self, unload_atom::value, model);
      },
      [self](artifact_atom, int64_t id,
             const std::string& name) -> caf::result<artifact_ref> {
        auto& st = self->state;
        auto rec = st.store->get(id);
        if (!rec)
          return rec.error();
        if (!*rec)
          return make_error(errc::not_found, "no job '" + job_id_string(id) + "'");
        persistence::artifact_store files{st.cfg.artifacts_dir};
        auto f = files.find(id, name);
        if (!f)
          return f.error();
        return artifact_ref{f->path, f->size, content_type_of(name)};
      },
      [self](stats_atom) -> caf::result<cluster_stats> {
        auto& st = self->state;
        cluster_stats out;
        for (auto s : {job_state::queued, job_state::running, job_state::succeeded,
                       job_state::failed, job_state::dead, job_state::cancelled})
          out.jobs_by_state[to_string(s)] = 0;
        auto counts = st.store->count_by_state();
        if (!counts)
          return counts.error();
        for (auto& [state, n] : *counts)
          out.jobs_by_state[to_string(state)] = n;
        std::set<std::string> ready;
        for (auto& w : st.workers) {
          if (!w.draining) {
            // A drained worker takes no new work: not ready, its models neither.
            ready.insert(w.models.begin(), w.models.end());
            ++out.workers_ready;
          }
          if (working(w))
            ++out.workers_busy;
          out.workers.push_back(status_of(w));
        }
        out.workers_total = static_cast<int32_t>(st.workers.size());
        out.interactive_waiting = static_cast<int64_t>(st.interactive.size());
        out.sessions_active = static_cast<int32_t>(st.sessions.size());
        out.sessions_waiting = sessions_waiting(st);
        out.ready_models.assign(ready.begin(), ready.end());
        return out;
      },
      [self](list_atom, const job_filter& filter) -> caf::result<job_page> {
        auto page = self->state.store->list(filter);
        if (!page)
          return page.error();
        return std::move(*page);
      },
      [self](cancel_atom, int64_t id) -> caf::result<job_record> {
        auto& st = self->state;
        auto rec = st.store->cancel(id, now_ms());
        if (!rec)
          return rec.error();
        if (!*rec)
          return make_error(errc::not_found, "no job '" + job_id_string(id) + "'");
        publish_events(self);
        auto& job = **rec;
        // A running job stops cooperatively: tell its worker now; the lease
        // heartbeat is the fallback.
        if (job.state == job_state::running)
          if (auto w = find_worker(st, job.worker))
            self->send(w->handle, cancel_atom::value, id);
        return std::move(job);
      },
      [self](events_atom, int64_t id,
             int64_t after_seq) -> caf::result<std::vector<job_event>> {
        auto& st = self->state;
        auto job = st.store->get(id);
        if (!job)
          return job.error();
        if (!*job)
          return make_error(errc::not_found, "no job '" + job_id_string(id) + "'");
        auto events = st.store->events_after(id, after_seq, 1000);
        if (!events)
          return events.error();
        return std::move(*events);
      },
      [self](qtick_atom) {
        auto& st = self->state;
        ++st.ticks;
        auto rescued = st.store->rescue_expired(now_ms());
        publish_events(self);
        if (!rescued)
          spdlog::warn("queue: rescue of lapsed leases failed: {}",
                       message_of(rescued.error()));
        else if (*rescued > 0)
          spdlog::info("queue: {} job(s) with lapsed leases put back", *rescued);
        fail_overdue(self);
        // Other writers (worker processes, restarts, delayed run_at) may have
        // made jobs ready: let every idle worker look again.
        for (auto& w : st.workers) {
          st.maybe_ready.insert(w.models.begin(), w.models.end());
          record_worker(st, w, status_of(w).phase, false);
        }
        dispatch(self);
        // A passive checkpoint about every 10 s (only this connection checkpoints).
        auto every
            = std::max<int64_t>(1, 10000 / std::max<int64_t>(st.cfg.settings.tick_ms, 1));
        if (st.ticks % static_cast<uint64_t>(every) == 0) {
          auto ok = st.store->checkpoint();
          if (!ok)
            spdlog::warn("queue: checkpoint failed: {}", message_of(ok.error()));
        }
        self->delayed_send(self, std::chrono::milliseconds(st.cfg.settings.tick_ms),
                           qtick_atom::value);
      },
  };
}

} // namespace

bool routing_from_string(const std::string& name, routing_strategy& out) {
  if (name == "queue_depth")
    out = routing_strategy::queue_depth;
  else if (name == "round_robin")
    out = routing_strategy::round_robin;
  else if (name == "latency")
    out = routing_strategy::latency;
  else
    return false;
  return true;
}

queue_actor spawn_queue(caf::actor_system& sys, queue_config cfg,
                        std::shared_ptr<persistence::job_store> store,
                        broker_actor broker) {
  return sys.spawn(queue_behavior, std::move(cfg), std::move(store), std::move(broker));
}

} // namespace infergrid
