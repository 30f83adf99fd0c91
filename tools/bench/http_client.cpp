// The benchmarks' HTTP/1.1 client: blocking POSIX sockets, keep-alive, no
// pipelining; just enough HTTP to read infergrid's answers.
#include "tools/bench/http_client.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

namespace infergrid::bench {

namespace {

/// Largest response the client accepts (a /metrics page is a few KB).
constexpr std::size_t max_response_bytes = 16 << 20;

bool iequals(const std::string& a, const char* b) {
  auto n = std::strlen(b);
  if (a.size() != n)
    return false;
  for (std::size_t i = 0; i < n; ++i)
    if (std::tolower(static_cast<unsigned char>(a[i]))
        != std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  return true;
}

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos)
    return {};
  auto e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

sockaddr_in loopback(uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

} // namespace

std::string http_response::header(const std::string& name) const {
  for (auto& [key, value] : headers)
    if (iequals(key, name.c_str()))
      return value;
  return {};
}

http_connection::http_connection(uint16_t port, int timeout_ms)
    : port_(port), timeout_ms_(timeout_ms) {}

http_connection::~http_connection() {
  drop();
}

void http_connection::drop() {
  if (fd_ >= 0)
    ::close(fd_);
  fd_ = -1;
  buf_.clear();
}

bool http_connection::connect(std::string& error) {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    error = std::string{"socket: "} + std::strerror(errno);
    return false;
  }
  timeval tv{};
  tv.tv_sec = timeout_ms_ / 1000;
  tv.tv_usec = (timeout_ms_ % 1000) * 1000;
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  auto addr = loopback(port_);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    error = "connect 127.0.0.1:" + std::to_string(port_) + ": " + std::strerror(errno);
    drop();
    return false;
  }
  return true;
}

bool http_connection::fill(std::string& error) {
  if (buf_.size() > max_response_bytes) {
    error = "response over " + std::to_string(max_response_bytes) + " bytes";
    return false;
  }
  char chunk[16384];
  for (;;) {
    auto n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n > 0) {
      buf_.append(chunk, static_cast<std::size_t>(n));
      return true;
    }
    if (n == 0) {
      error = "connection closed by the server";
      return false;
    }
    if (errno == EINTR)
      continue;
    error = errno == EAGAIN || errno == EWOULDBLOCK
                ? "no answer within " + std::to_string(timeout_ms_) + " ms"
                : std::string{"recv: "} + std::strerror(errno);
    return false;
  }
}

bool http_connection::read_response(http_response& out, std::string& error,
                                    const body_observer& on_body) {
  std::size_t head_end;
  while ((head_end = buf_.find("\r\n\r\n")) == std::string::npos)
    if (!fill(error))
      return false;
  // Status line and headers.
  std::size_t pos = buf_.find("\r\n");
  std::string status_line = buf_.substr(0, pos);
  if (status_line.compare(0, 5, "HTTP/") != 0 || status_line.size() < 12) {
    error = "bad status line '" + status_line + "'";
    return false;
  }
  out.status = std::atoi(status_line.c_str() + 9);
  out.close = status_line.compare(0, 8, "HTTP/1.0") == 0;
  out.headers.clear();
  bool chunked = false;
  long long length = -1;
  while (pos < head_end) {
    auto next = buf_.find("\r\n", pos + 2);
    auto line = buf_.substr(pos + 2, next - pos - 2);
    pos = next;
    auto colon = line.find(':');
    if (colon == std::string::npos)
      continue;
    auto name = line.substr(0, colon);
    auto value = trim(line.substr(colon + 1));
    out.headers.emplace_back(name, value);
    if (iequals(name, "content-length"))
      length = std::atoll(value.c_str());
    else if (iequals(name, "transfer-encoding"))
      chunked = value.find("chunked") != std::string::npos;
    else if (iequals(name, "connection"))
      out.close = iequals(value, "close")        ? true
                  : iequals(value, "keep-alive") ? false
                                                 : out.close;
  }
  std::size_t body_at = head_end + 4;
  out.body.clear();
  if (chunked) {
    std::size_t at = body_at;
    for (;;) {
      std::size_t eol;
      while ((eol = buf_.find("\r\n", at)) == std::string::npos)
        if (!fill(error))
          return false;
      auto size = std::strtoull(buf_.c_str() + at, nullptr, 16);
      at = eol + 2;
      if (size == 0) {
        // Trailers end with an empty line.
        std::size_t end;
        while ((end = buf_.find("\r\n", at)) == std::string::npos)
          if (!fill(error))
            return false;
        while (end != at) {
          auto line = buf_.substr(at, end - at);
          if (auto colon = line.find(':'); colon != std::string::npos)
            out.headers.emplace_back(line.substr(0, colon), trim(line.substr(colon + 1)));
          at = end + 2;
          while ((end = buf_.find("\r\n", at)) == std::string::npos)
            if (!fill(error))
              return false;
        }
        buf_.erase(0, end + 2);
        return true;
      }
      while (buf_.size() < at + size + 2)
        if (!fill(error))
          return false;
      out.body.append(buf_, at, size);
      if (on_body)
        on_body(std::string_view{buf_}.substr(at, size));
      at += size + 2;
    }
  }
  if (length < 0 && (out.status == 204 || out.status == 304 || out.status < 200))
    length = 0;
  if (length < 0) {
    // Close-delimited.
    if (on_body && buf_.size() > body_at)
      on_body(std::string_view{buf_}.substr(body_at));
    std::string ignored;
    for (auto seen = buf_.size(); fill(ignored); seen = buf_.size())
      if (on_body)
        on_body(std::string_view{buf_}.substr(seen));
    out.body = buf_.substr(body_at);
    out.close = true;
    buf_.clear();
    return true;
  }
  auto need = body_at + static_cast<std::size_t>(length);
  auto seen = body_at;
  for (;;) {
    auto upto = std::min(buf_.size(), need);
    if (on_body && upto > seen)
      on_body(std::string_view{buf_}.substr(seen, upto - seen));
    seen = upto;
    if (buf_.size() >= need)
      break;
    if (!fill(error))
      return false;
  }
  out.body = buf_.substr(body_at, static_cast<std::size_t>(length));
  buf_.erase(0, need);
  return true;
}

bool http_connection::exchange(const std::string& request, http_response& out,
                               std::string& error, const body_observer& on_body) {
  if (fd_ < 0 && !connect(error))
    return false;
  const char* p = request.data();
  std::size_t left = request.size();
  while (left > 0) {
    auto n = ::send(fd_, p, left, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      error = std::string{"send: "} + std::strerror(errno);
      drop();
      return false;
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  if (!read_response(out, error, on_body)) {
    drop();
    return false;
  }
  if (out.close)
    drop();
  return true;
}

std::string http_request(const std::string& method, const std::string& target,
                         const std::string& body) {
  std::string out = method + " " + target
                    + " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      "User-Agent: infergrid-bench\r\nConnection: keep-alive\r\n";
  if (!body.empty())
    out += "Content-Type: application/json\r\nContent-Length: "
           + std::to_string(body.size()) + "\r\n";
  out += "\r\n";
  out += body;
  return out;
}

load_result drive(uint16_t port, const std::string& request, int64_t total,
                  int connections) {
  connections
      = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(connections, total)));
  load_result result;
  std::mutex mtx;
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < connections; ++c) {
    int64_t share = total / connections + (c < total % connections ? 1 : 0);
    threads.emplace_back([&, share] {
      http_connection conn{port};
      load_result mine;
      http_response resp;
      std::string error;
      for (int64_t i = 0; i < share; ++i) {
        if (!conn.exchange(request, resp, error)) {
          ++mine.errors;
          if (mine.first_problem.empty())
            mine.first_problem = error;
          continue;
        }
        ++mine.statuses[resp.status];
        if (resp.status >= 200 && resp.status < 300)
          ++mine.ok;
        else if (mine.first_problem.empty())
          mine.first_problem = std::to_string(resp.status) + " " + resp.body;
      }
      std::lock_guard<std::mutex> guard{mtx};
      result.ok += mine.ok;
      result.errors += mine.errors;
      for (auto& [status, n] : mine.statuses)
        result.statuses[status] += n;
      if (result.first_problem.empty())
        result.first_problem = mine.first_problem;
    });
  }
  for (auto& t : threads)
    t.join();
  result.seconds
      = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

load_result drive_for(uint16_t port, const std::string& request, double seconds,
                      int connections) {
  using clock = std::chrono::steady_clock;
  connections = std::max(1, connections);
  load_result result;
  std::mutex mtx;
  std::atomic<int> waiting{connections};
  std::atomic<bool> go{false};
  clock::time_point start;
  clock::time_point until;
  std::vector<std::thread> threads;
  for (int c = 0; c < connections; ++c) {
    threads.emplace_back([&] {
      http_connection conn{port};
      load_result mine;
      http_response resp;
      std::string error;
      --waiting;
      while (!go.load())
        std::this_thread::yield();
      while (clock::now() < until) {
        auto sent = clock::now();
        if (!conn.exchange(request, resp, error)) {
          ++mine.errors;
          if (mine.first_problem.empty())
            mine.first_problem = error;
          continue;
        }
        mine.latencies_us.push_back(
            std::chrono::duration<double, std::micro>(clock::now() - sent).count());
        ++mine.statuses[resp.status];
        if (resp.status >= 200 && resp.status < 300)
          ++mine.ok;
        else if (mine.first_problem.empty())
          mine.first_problem = std::to_string(resp.status) + " " + resp.body;
      }
      std::lock_guard<std::mutex> guard{mtx};
      result.ok += mine.ok;
      result.errors += mine.errors;
      for (auto& [status, n] : mine.statuses)
        result.statuses[status] += n;
      result.latencies_us.insert(result.latencies_us.end(), mine.latencies_us.begin(),
                                 mine.latencies_us.end());
      if (result.first_problem.empty())
        result.first_problem = mine.first_problem;
    });
  }
  // All threads exist before the clock starts.
  while (waiting.load() > 0)
    std::this_thread::yield();
  start = clock::now();
  until = start
          + std::chrono::duration_cast<clock::duration>(
              std::chrono::duration<double>(seconds));
  go.store(true);
  for (auto& t : threads)
    t.join();
  result.seconds = std::chrono::duration<double>(clock::now() - start).count();
  return result;
}

uint16_t free_loopback_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  auto addr = loopback(0);
  socklen_t len = sizeof addr;
  uint16_t port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0
      && ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

} // namespace infergrid::bench
