// A small blocking HTTP/1.1 load client over POSIX sockets for the
// benchmarks: keep-alive connections to loopback, one request in flight each.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace infergrid::bench {

struct http_response {
  int status = 0;
  std::string body;
  /// The server will close the connection after this response.
  bool close = false;
  /// Header fields, then the trailer fields of a chunked body, as received.
  std::vector<std::pair<std::string, std::string>> headers;

  /// The value of the first field called `name` (any case); empty when absent.
  std::string header(const std::string& name) const;
};

/// Sees each piece of a response body as it arrives (chunked bodies already
/// decoded), in the thread that called exchange(), before exchange()
/// returns; the pieces add up to http_response::body.
using body_observer = std::function<void(std::string_view piece)>;

/// One keep-alive connection to 127.0.0.1:port. Blocking calls with a send
/// and receive timeout; belongs to one thread.
class http_connection {
public:
  explicit http_connection(uint16_t port, int timeout_ms = 10'000);
  ~http_connection();
  http_connection(const http_connection&) = delete;
  http_connection& operator=(const http_connection&) = delete;

  /// Sends `request` (complete HTTP/1.1 text) and reads one response
  /// (Content-Length, chunked or close-delimited body). Connects first when
  /// no connection is open or the last response closed it. On failure
  /// returns false with `error` set and drops the connection. `on_body`,
  /// when set, sees the body as it arrives (for time to first byte of a
  /// stream).
  bool exchange(const std::string& request, http_response& out, std::string& error,
                const body_observer& on_body = {});

private:
  bool connect(std::string& error);
  void drop();
  /// Reads more bytes into buf_; false at EOF or on error.
  bool fill(std::string& error);
  bool read_response(http_response& out, std::string& error,
                     const body_observer& on_body);

  uint16_t port_;
  int timeout_ms_;
  int fd_ = -1;
  std::string buf_;
};

/// A request text: `method target HTTP/1.1`, Host, keep-alive, and a JSON
/// body with its Content-Length when `body` is not empty.
std::string http_request(const std::string& method, const std::string& target,
                         const std::string& body = {});

/// What drive() saw.
struct load_result {
  /// Answers with a 2xx status.
  int64_t ok = 0;
  /// Answers by status code (all of them, 2xx included).
  std::map<int, int64_t> statuses;
  /// Requests that got no answer (connection or timeout errors).
  int64_t errors = 0;
  /// The first error or non-2xx answer, for the report.
  std::string first_problem;
  /// From the first send to the last answer.
  double seconds = 0;
  /// drive_for() only: the round trip of every answered request (any
  /// status), in microseconds, unsorted.
  std::vector<double> latencies_us;
};

/// Sends `total` copies of `request` over `connections` keep-alive
/// connections, one thread each with one request in flight, as fast as the
/// answers come. Blocks until all are answered or failed.
load_result drive(uint16_t port, const std::string& request, int64_t total,
                  int connections);

/// Like drive(), but for a duration: `connections` threads, one keep-alive
/// connection and one request in flight each, start together and send
/// copies of `request` until `seconds` have passed (checked before each
/// send). Fills latencies_us. Blocks for about `seconds` plus one round trip.
load_result drive_for(uint16_t port, const std::string& request, double seconds,
                      int connections);

/// A loopback TCP port that was free a moment ago (bind to port 0, read
/// it back, close); 0 on failure.
uint16_t free_loopback_port();

} // namespace infergrid::bench
