// Number formatting shared by the benchmarks' tables.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace infergrid::bench {

/// `x` with `digits` decimals, e.g. fixed(0.987, 2) == "0.99".
inline std::string fixed(double x, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, x);
  return buf;
}

/// 12345.6 -> "12,346".
inline std::string thousands(double x) {
  auto s = std::to_string(static_cast<int64_t>(x + 0.5));
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3)
    s.insert(static_cast<std::size_t>(i), ",");
  return s;
}

} // namespace infergrid::bench
