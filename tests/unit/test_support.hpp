// Shared helpers for unit tests: temp directories and the caf-test FAIL fix.
#pragma once

// caf-test 0.17.6's dsl.hpp calls an undefined FAIL() in request<T>().
#ifndef FAIL
#  define FAIL(msg) CAF_FAIL(msg)
#endif

#include <filesystem>
#include <random>
#include <string>

namespace infergrid::testing {

/// A fresh directory under the system temp dir, removed on destruction.
class temp_dir {
public:
  temp_dir() {
    std::random_device rd;
    auto base = std::filesystem::temp_directory_path();
    for (;;) {
      path_ = base / ("infergrid-test-" + std::to_string(rd()));
      if (std::filesystem::create_directory(path_))
        break;
    }
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  const std::filesystem::path& path() const {
    return path_;
  }

  std::string str(const std::string& child = {}) const {
    return child.empty() ? path_.string() : (path_ / child).string();
  }

private:
  std::filesystem::path path_;
};

} // namespace infergrid::testing
