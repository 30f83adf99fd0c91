// A workaround for CAF 0.17.6's libcaf_openssl: it never empties OpenSSL's
// per-thread error queue, so one refused TLS handshake made the next read of
// every other connection on the multiplexer thread look failed, and CAF
// dropped them. tls_guard.cpp defines SSL_read, SSL_write, SSL_accept and
// SSL_connect in this executable; libcaf_openssl's calls bind to them, and
// each empties the queue before calling OpenSSL's own (docs/cluster.md).
#pragma once

namespace infergrid {

/// True when libcaf_openssl's SSL_read resolves to this executable's.
bool tls_error_queue_guard_active();

} // namespace infergrid
