// Job states and ids.
#include "messages/job.hpp"

#include <array>
#include <utility>

namespace infergrid {

namespace {

constexpr std::array<std::pair<job_state, const char*>, 6> names{{
  {job_state::queued, "queued"},
  {job_state::running, "running"},
  {job_state::succeeded, "succeeded"},
  {job_state::failed, "failed"},
  {job_state::dead, "dead"},
  {job_state::cancelled, "cancelled"},
}};

} // namespace

std::string to_string(job_state s) {
  for (auto& [state, name] : names)
    if (state == s)
      return name;
  return "unknown";
}

bool job_state_from_string(const std::string& name, job_state& out) {
  for (auto& [state, text] : names) {
    if (name == text) {
      out = state;
      return true;
    }
  }
  return false;
}

bool is_final(job_state s) {
  return s == job_state::succeeded || s == job_state::failed
         || s == job_state::dead || s == job_state::cancelled;
}

std::string job_id_string(int64_t id) {
  return "j_" + std::to_string(id);
}

bool parse_job_id(const std::string& text, int64_t& out) {
  if (text.size() < 3 || text.size() > 20 || text.compare(0, 2, "j_") != 0)
    return false;
  int64_t value = 0;
  for (std::size_t i = 2; i < text.size(); ++i) {
    char c = text[i];
    if (c < '0' || c > '9')
      return false;
    value = value * 10 + (c - '0');
  }
  if (value <= 0)
    return false;
  out = value;
  return true;
}

} // namespace infergrid
