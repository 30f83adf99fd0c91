// Wall-clock milliseconds, the time base of the job table.
#pragma once

#include <chrono>
#include <cstdint>

namespace infergrid {

inline int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

} // namespace infergrid
