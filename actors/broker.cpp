// Broker actor: job id -> subscribers; monitors subscribers to forget them.
#include "actors/broker.hpp"

#include <algorithm>
#include <map>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include <spdlog/spdlog.h>

#include "messages/errors.hpp"

namespace infergrid {

namespace {

struct broker_state {
  broker_config cfg;
  std::map<int64_t, std::vector<event_subscriber_actor>> subscribers;
  std::size_t count = 0;
};

using broker_pointer = broker_actor::stateful_pointer<broker_state>;

void remove(broker_state& st, int64_t job, const caf::actor_addr& who) {
  auto i = st.subscribers.find(job);
  if (i == st.subscribers.end())
    return;
  auto& subs = i->second;
  auto before = subs.size();
  subs.erase(
      std::remove_if(subs.begin(), subs.end(),
                     [&](const event_subscriber_actor& s) { return s.address() == who; }),
      subs.end());
  st.count -= before - subs.size();
  if (subs.empty())
    st.subscribers.erase(i);
}

broker_actor::behavior_type broker_behavior(broker_pointer self, broker_config cfg) {
  self->state.cfg = cfg;
  self->set_down_handler([self](caf::down_msg& dm) {
    // A subscriber that went away without unsubscribing: drop it everywhere.
    auto& st = self->state;
    std::vector<int64_t> jobs;
    for (auto& [job, subs] : st.subscribers)
      for (auto& s : subs)
        if (s.address() == dm.source)
          jobs.push_back(job);
    for (auto job : jobs)
      remove(st, job, dm.source);
  });
  return {
      [self](publish_atom, const std::vector<job_event>& events) {
        auto& st = self->state;
        for (auto& ev : events) {
          auto i = st.subscribers.find(ev.job_id);
          if (i == st.subscribers.end())
            continue;
          for (auto& s : i->second)
            self->send(s, ev);
        }
      },
      [self](subscribe_atom, int64_t job,
             event_subscriber_actor& who) -> caf::result<bool> {
        auto& st = self->state;
        if (st.count >= st.cfg.max_subscribers)
          return make_error(errc::queue_full,
                            "event streams: " + std::to_string(st.count) + " of "
                                + std::to_string(st.cfg.max_subscribers) + " open");
        st.subscribers[job].push_back(who);
        ++st.count;
        self->monitor(who);
        return true;
      },
      [self](unsub_atom, int64_t job, const event_subscriber_actor& who) {
        remove(self->state, job, who.address());
      },
  };
}

} // namespace

broker_actor spawn_broker(caf::actor_system& sys, broker_config cfg) {
  return sys.spawn(broker_behavior, cfg);
}

} // namespace infergrid
