// OpenSSL's per-thread error queue, emptied before each TLS call of CAF's
// libcaf_openssl (see tls_guard.hpp and docs/cluster.md, Security).
#include "tools/tls_guard.hpp"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <spdlog/spdlog.h>

// ---------------------------------------------------------------------------
// TLS: OpenSSL's per-thread error queue (docs/cluster.md, Security).
//
// CAF 0.17.6's libcaf_openssl asks SSL_get_error() whether an SSL_read,
// SSL_write, SSL_accept or SSL_connect failed (session.cpp: handle_ssl_result
// and do_some's check_ssl_res), but never empties OpenSSL's per-thread error
// queue: its only ERR_get_error() loop (get_ssl_error) is called inside
// CAF_LOG_INFO, which Debian's build (CAF_LOG_LEVEL QUIET) compiles out. A
// refused handshake thus leaves its error on the queue of the multiplexer
// thread, which runs the I/O of every connection of the node. The next
// SSL_read of a good connection that would block (-1, SSL_ERROR_WANT_READ)
// then gets SSL_ERROR_SSL, because SSL_get_error reports a queued error first,
// and CAF closes that good connection. OpenSSL requires the queue to be empty
// before each of these calls (SSL_get_error(3)). The library cannot be
// patched, so this executable defines the four functions itself: GNU ld exports
// a definition that a linked shared library (libcaf_openssl) references, and
// the dynamic linker binds libcaf_openssl's calls to it. Each one empties the
// queue, calls OpenSSL's own function (dlsym RTLD_NEXT), and, when that failed
// for a reason, logs it, leaving the error on the queue for CAF to see.
// ---------------------------------------------------------------------------

namespace infergrid {
namespace {

struct openssl_api {
  int (*read)(SSL*, void*, int) = nullptr;
  int (*write)(SSL*, const void*, int) = nullptr;
  int (*accept)(SSL*) = nullptr;
  int (*connect)(SSL*) = nullptr;
  int (*get_fd)(const SSL*) = nullptr;
  void (*clear_error)() = nullptr;
  unsigned long (*peek_error)() = nullptr;
  unsigned long (*peek_last_error)() = nullptr;
  void (*error_string_n)(unsigned long, char*, size_t) = nullptr;
};

// OpenSSL's own functions, found after this executable in the lookup order
// (libssl and libcrypto come with libcaf_openssl; this binary does not link
// them itself).
const openssl_api& real_openssl() {
  static const openssl_api api = [] {
    openssl_api a;
    auto find = [](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(
          dlsym(RTLD_NEXT, name));
      if (fn == nullptr) {
        std::fprintf(stderr, "infergrid: cannot find OpenSSL's %s\n", name);
        std::abort();
      }
    };
    find(a.read, "SSL_read");
    find(a.write, "SSL_write");
    find(a.accept, "SSL_accept");
    find(a.connect, "SSL_connect");
    find(a.get_fd, "SSL_get_fd");
    find(a.clear_error, "ERR_clear_error");
    find(a.peek_error, "ERR_peek_error");
    find(a.peek_last_error, "ERR_peek_last_error");
    find(a.error_string_n, "ERR_error_string_n");
    return a;
  }();
  return api;
}

std::string peer_of(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (fd < 0 || getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    return "fd " + std::to_string(fd);
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (addr.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    port = ntohs(in6->sin6_port);
  }
  return std::string{host} + ":" + std::to_string(port);
}

// The queued errors of the failed call, peeked (CAF's SSL_get_error must
// still see them).
std::string queued_ssl_errors() {
  auto& api = real_openssl();
  char buf[256];
  auto first = api.peek_error();
  api.error_string_n(first, buf, sizeof buf);
  std::string out = buf;
  if (auto last = api.peek_last_error(); last != first) {
    api.error_string_n(last, buf, sizeof buf);
    out += "; ";
    out += buf;
  }
  return out;
}

template <class F, class... Ts>
int ssl_call_on_empty_queue(F fn, bool handshake, SSL* ssl, Ts... xs) {
  auto& api = real_openssl();
  api.clear_error();
  int ret = fn(ssl, xs...);
  if (ret <= 0) {
    if (auto err = api.peek_error(); err != 0) {
      if (handshake)
        spdlog::warn("cluster: TLS handshake with {} failed: {}",
                     peer_of(api.get_fd(ssl)), queued_ssl_errors());
      else if (ERR_GET_REASON(err) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
        spdlog::debug("cluster: TLS connection with {} ended: {}",
                      peer_of(api.get_fd(ssl)), queued_ssl_errors());
      else
        spdlog::info("cluster: TLS connection with {} failed: {}",
                     peer_of(api.get_fd(ssl)), queued_ssl_errors());
    }
  }
  return ret;
}

// True when libcaf_openssl's calls reach the functions below: it binds
// SSL_read to the first definition in the global lookup order, which
// RTLD_DEFAULT follows as well.
} // namespace

bool tls_error_queue_guard_active() {
  return dlsym(RTLD_DEFAULT, "SSL_read") == reinterpret_cast<void*>(&::SSL_read);
}

} // namespace infergrid

extern "C" {

__attribute__((visibility("default"))) int SSL_read(SSL* ssl, void* buf, int num) {
  return infergrid::ssl_call_on_empty_queue(infergrid::real_openssl().read, false, ssl,
                                            buf, num);
}

__attribute__((visibility("default"))) int SSL_write(SSL* ssl, const void* buf, int num) {
  return infergrid::ssl_call_on_empty_queue(infergrid::real_openssl().write, false, ssl,
                                            buf, num);
}

__attribute__((visibility("default"))) int SSL_accept(SSL* ssl) {
  return infergrid::ssl_call_on_empty_queue(infergrid::real_openssl().accept, true, ssl);
}

__attribute__((visibility("default"))) int SSL_connect(SSL* ssl) {
  return infergrid::ssl_call_on_empty_queue(infergrid::real_openssl().connect, true, ssl);
}

} // extern "C"
