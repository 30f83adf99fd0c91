#include "tools/bench/child.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <thread>
#include <vector>

#include <sys/wait.h>

namespace infergrid::bench {

int wait_for_exit(pid_t pid, std::chrono::steady_clock::duration deadline) {
  auto until = std::chrono::steady_clock::now() + deadline;
  for (;;) {
    int status = 0;
    auto r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid)
      return status;
    if (r < 0 && errno != EINTR)
      return -1;
    if (std::chrono::steady_clock::now() >= until)
      return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string describe_status(int status) {
  if (status < 0)
    return "still running";
  if (WIFEXITED(status))
    return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return std::string{"signal "} + strsignal(WTERMSIG(status));
  return "status " + std::to_string(status);
}

std::string log_tail(const std::string& path, std::size_t lines) {
  std::ifstream in{path};
  std::vector<std::string> all;
  for (std::string line; std::getline(in, line);)
    all.push_back(line);
  std::string out;
  for (auto i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i)
    out += "  | " + all[i] + '\n';
  return out;
}

std::pair<int, std::string> log_lines(const std::string& path) {
  std::ifstream in{path};
  int n = 0;
  std::string first;
  for (std::string line; std::getline(in, line);) {
    if (line.empty())
      continue;
    if (n++ == 0)
      first = line;
  }
  return {n, first};
}

} // namespace infergrid::bench
