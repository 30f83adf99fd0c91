// The local link (see local_link.hpp). Frames on a stream socket: a 12-byte
// header (payload length, u32; sequence number, u64; host byte order, both
// ends are one host) and the payload. The first frame each way is the
// handshake: the client's token, then the hub's "ok" or the reason it
// refuses. After it, the hub sends requests under a fresh sequence number
// (0: a message that wants no answer) and the client sends each answer under
// its request's number.
#include "actors/local_link.hpp"

#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <caf/actor_cast.hpp>
#include <caf/actor_config.hpp>
#include <caf/actor_system.hpp>
#include <caf/binary_deserializer.hpp>
#include <caf/binary_serializer.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/make_actor.hpp>
#include <caf/monitorable_actor.hpp>

#include <spdlog/spdlog.h>

#include "actors/cluster.hpp"
#include "messages/errors.hpp"

namespace infergrid {

namespace {

using namespace std::chrono_literals;

constexpr std::size_t header_size = 12;
// Larger than any request body (http.max_body_bytes is at most 1 GiB).
constexpr uint32_t max_payload = (1u << 30) + (1u << 20);
// A peer that stops reading for this long breaks the link, so a stopped
// worker process never blocks the queue actor for longer.
constexpr auto write_timeout = 2s;
constexpr auto handshake_timeout = 5s;

void set_timeout(int fd, int option, std::chrono::microseconds t) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(t.count() / 1000000);
  tv.tv_usec = static_cast<suseconds_t>(t.count() % 1000000);
  ::setsockopt(fd, SOL_SOCKET, option, &tv, sizeof(tv));
}

sockaddr_un abstract_address(const std::string& name, socklen_t& len) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  // sun_path[0] == 0: Linux's abstract namespace, no file to clean up.
  auto n = std::min(name.size(), sizeof(addr.sun_path) - 1);
  std::memcpy(addr.sun_path + 1, name.data(), n);
  len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
  return addr;
}

// Names the calling thread for top -H and tools/bench/thread_cpu.py (a
// std::thread otherwise keeps the name of the thread that made it).
void name_thread(const char* name) {
  ::pthread_setname_np(::pthread_self(), name);
}

/// One connected stream socket: whole frames out (any thread, serialised)
/// and in (the reader thread only).
class link_socket {
public:
  explicit link_socket(int fd) : fd_(fd) {
    set_timeout(fd_, SO_SNDTIMEO, write_timeout);
  }

  link_socket(const link_socket&) = delete;
  link_socket& operator=(const link_socket&) = delete;

  ~link_socket() {
    ::close(fd_);
  }

  bool broken() const {
    return broken_.load();
  }

  /// Sends one frame; false when the link is (now) broken.
  bool write(uint64_t seq, const char* data, std::size_t size) {
    std::lock_guard<std::mutex> guard{write_mtx_};
    if (broken_.load() || size > max_payload)
      return false;
    char header[header_size];
    auto n = static_cast<uint32_t>(size);
    std::memcpy(header, &n, sizeof(n));
    std::memcpy(header + sizeof(n), &seq, sizeof(seq));
    iovec iov[2] = {{header, header_size}, {const_cast<char*>(data), size}};
    int first = 0;
    while (first < 2) {
      msghdr msg{};
      msg.msg_iov = iov + first;
      msg.msg_iovlen = static_cast<std::size_t>(2 - first);
      auto sent = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
      if (sent < 0) {
        if (errno == EINTR)
          continue;
        // EAGAIN after SO_SNDTIMEO, EPIPE, ECONNRESET: a frame may be half
        // out, so nothing more can go on this socket.
        break_link();
        return false;
      }
      auto left = static_cast<std::size_t>(sent);
      while (first < 2 && left >= iov[first].iov_len) {
        left -= iov[first].iov_len;
        ++first;
      }
      if (first < 2) {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
        iov[first].iov_len -= left;
      }
    }
    return true;
  }

  bool write(uint64_t seq, const std::string& text) {
    return write(seq, text.data(), text.size());
  }

  /// Reads one frame; false at the end of the stream, on an error or on a
  /// header that cannot be ours.
  bool read(uint64_t& seq, std::vector<char>& payload) {
    char header[header_size];
    if (!read_exact(header, header_size))
      return false;
    uint32_t n = 0;
    std::memcpy(&n, header, sizeof(n));
    std::memcpy(&seq, header + sizeof(n), sizeof(seq));
    if (n > max_payload)
      return false;
    payload.resize(n);
    return n == 0 || read_exact(payload.data(), n);
  }

  /// Ends the stream both ways: the reader sees its end, writers fail.
  void break_link() {
    broken_.store(true);
    ::shutdown(fd_, SHUT_RDWR);
  }

private:
  bool read_exact(char* out, std::size_t n) {
    while (n > 0) {
      auto got = ::recv(fd_, out, n, 0);
      if (got < 0 && errno == EINTR)
        continue;
      if (got <= 0)
        return false;
      out += got;
      n -= static_cast<std::size_t>(got);
    }
    return true;
  }

  int fd_;
  std::mutex write_mtx_;
  std::atomic<bool> broken_{false};
};

bool encode(caf::actor_system& sys, caf::message& msg, std::vector<char>& out) {
  out.clear();
  caf::binary_serializer sink{sys, out};
  return !sink(msg);
}

bool decode(caf::actor_system& sys, const std::vector<char>& in, caf::message& msg) {
  caf::binary_deserializer source{sys, in};
  return !source(msg);
}

// Each sending thread keeps its encoding buffer, so a batch costs no
// allocation; release_if_large() gives back one that a large tensor grew.
std::vector<char>& send_buffer() {
  thread_local std::vector<char> buf;
  return buf;
}

void release_if_large(std::vector<char>& buf) {
  if (buf.capacity() > (std::size_t{1} << 20))
    std::vector<char>{}.swap(buf);
}

caf::message link_error(const std::string& what) {
  return caf::make_message(make_error(errc::unavailable, what));
}

// Answers request `seq` with `err` over `sock`: a request is never dropped.
bool answer_error(caf::actor_system& sys, link_socket& sock, uint64_t seq,
                  caf::error err) {
  auto msg = caf::make_message(std::move(err));
  std::vector<char> out;
  return encode(sys, msg, out) && sock.write(seq, out.data(), out.size());
}

// -- the hub's side ----------------------------------------------------------

/// One worker's connection on the hub: sends requests, matches answers.
class hub_link : public std::enable_shared_from_this<hub_link> {
public:
  hub_link(caf::actor_system& sys, int fd) : sys_(sys), sock_(fd) {}

  ~hub_link() {
    close();
  }

  const std::string& worker_id() const {
    return worker_id_;
  }

  /// Set once, by the handshake, before start().
  void set_worker_id(std::string id) {
    worker_id_ = std::move(id);
  }

  bool up() const {
    return !sock_.broken() && !ended_.load();
  }

  link_socket& socket() {
    return sock_;
  }

  void start() {
    // The reader owns a reference: the link cannot go while it reads, and
    // when the reader drops the last one, close() detaches it.
    reader_ = std::thread{[self = shared_from_this()] { self->read_loop(); }};
  }

  void set_proxy(caf::actor_addr proxy) {
    std::lock_guard<std::mutex> guard{mtx_};
    proxy_ = std::move(proxy);
  }

  /// Sends `msg` from `sender`; false when it could not go (the caller
  /// sends it another way).
  bool send(const caf::strong_actor_ptr& sender, caf::message_id mid, caf::message& msg) {
    auto& buf = send_buffer();
    if (!up() || !encode(sys_, msg, buf))
      return false;
    uint64_t seq = 0;
    bool wants_answer = mid.is_request() && sender != nullptr;
    if (wants_answer) {
      std::lock_guard<std::mutex> guard{mtx_};
      seq = ++next_seq_;
      // Before the write: the answer may arrive before it returns.
      pending_.emplace(seq, pending_request{sender, mid});
    }
    bool sent = sock_.write(seq, buf.data(), buf.size());
    release_if_large(buf);
    if (sent || !wants_answer)
      return sent;
    // The failed write broke the link, and the reader may already have
    // answered this request with the others in flight: then it is done.
    std::lock_guard<std::mutex> guard{mtx_};
    return pending_.erase(seq) == 0;
  }

  /// Breaks the link and waits for its reader, which fails what is pending.
  void close() {
    sock_.break_link();
    if (!reader_.joinable())
      return;
    if (reader_.get_id() == std::this_thread::get_id())
      reader_.detach(); // the reader's last reference: it is returning
    else
      reader_.join();
  }

private:
  struct pending_request {
    caf::strong_actor_ptr sender;
    caf::message_id mid;
  };

  caf::strong_actor_ptr proxy() {
    std::lock_guard<std::mutex> guard{mtx_};
    return caf::actor_cast<caf::strong_actor_ptr>(proxy_);
  }

  void read_loop() {
    name_thread("ig.link.hub");
    uint64_t seq = 0;
    std::vector<char> buf;
    std::string why = "closed";
    while (sock_.read(seq, buf)) {
      caf::message msg;
      if (!decode(sys_, buf, msg)) {
        why = "sent a frame that does not decode";
        break;
      }
      pending_request p;
      {
        std::lock_guard<std::mutex> guard{mtx_};
        auto i = pending_.find(seq);
        if (i == pending_.end())
          continue; // an answer to nothing we asked: ignored
        p = std::move(i->second);
        pending_.erase(i);
      }
      p.sender->enqueue(
          caf::make_mailbox_element(proxy(), p.mid.response_id(), {}, std::move(msg)),
          nullptr);
    }
    ended_.store(true);
    sock_.break_link();
    std::unordered_map<uint64_t, pending_request> left;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      left.swap(pending_);
    }
    if (!left.empty() || why != "closed")
      spdlog::warn("local link: worker {}'s link {}; {} request(s) in flight fail",
                   worker_id_, why, left.size());
    else
      spdlog::info("local link: worker {}'s link closed", worker_id_);
    auto me = proxy();
    for (auto& [_, p] : left)
      p.sender->enqueue(caf::make_mailbox_element(
                            me, p.mid.response_id(), {},
                            link_error("the local link to worker " + worker_id_ + " "
                                       + why + " with the request in flight")),
                        nullptr);
  }

  caf::actor_system& sys_;
  link_socket sock_;
  std::string worker_id_;
  std::atomic<bool> ended_{false};
  std::mutex mtx_; // guards pending_, next_seq_, proxy_
  std::unordered_map<uint64_t, pending_request> pending_;
  uint64_t next_seq_ = 0;
  caf::actor_addr proxy_;
  std::thread reader_;
};

/// The queue's handle for a worker with a link: its enqueue runs in the
/// sender's thread and writes the socket there.
class link_proxy final : public caf::monitorable_actor {
public:
  link_proxy(caf::actor_config& cfg, std::shared_ptr<hub_link> link,
             caf::strong_actor_ptr fallback)
      : caf::monitorable_actor(cfg), link_(std::move(link)),
        fallback_(std::move(fallback)) {}

  void enqueue(caf::mailbox_element_ptr what, caf::execution_unit* host) override {
    if (link_->up()) {
      auto msg = what->move_content_to_message();
      if (link_->send(what->sender, what->mid, msg))
        return;
      what = caf::make_mailbox_element(std::move(what->sender), what->mid,
                                       std::move(what->stages), std::move(msg));
    }
    if (fallback_) {
      fallback_->enqueue(std::move(what), host);
    } else if (what->mid.is_request() && what->sender) {
      what->sender->enqueue(
          caf::make_mailbox_element(caf::actor_cast<caf::strong_actor_ptr>(ctrl()),
                                    what->mid.response_id(), {},
                                    link_error("the local link to worker "
                                               + link_->worker_id() + " is closed")),
          host);
    }
  }

  const char* name() const override {
    return "local_link";
  }

private:
  std::shared_ptr<hub_link> link_;
  caf::strong_actor_ptr fallback_;
};

// -- the client's side -------------------------------------------------------

/// The sender of the requests the client hands on: the answers the target
/// sends to it go back over the socket from the target's thread.
class link_replier final : public caf::monitorable_actor {
public:
  link_replier(caf::actor_config& cfg, caf::actor_system& sys,
               std::shared_ptr<link_socket> sock)
      : caf::monitorable_actor(cfg), sys_(sys), sock_(std::move(sock)) {}

  void enqueue(caf::mailbox_element_ptr what, caf::execution_unit*) override {
    if (!what->mid.is_response())
      return; // the link carries answers only
    auto seq = what->mid.integer_value() & caf::message_id::request_id_mask;
    auto msg = what->move_content_to_message();
    auto& buf = send_buffer();
    bool sent = false;
    if (encode(sys_, msg, buf) && buf.size() <= max_payload)
      sent = sock_->write(seq, buf.data(), buf.size());
    else
      sent
          = answer_error(sys_, *sock_, seq,
                         make_error(errc::internal, "the answer cannot go over the local "
                                                    "link (it does not serialise or "
                                                    "exceeds 1 GiB)"));
    release_if_large(buf);
    if (!sent)
      spdlog::warn("local link: an answer could not be sent back (the link is "
                   "closed); the control node has failed that request");
  }

  const char* name() const override {
    return "local_link_replier";
  }

private:
  caf::actor_system& sys_;
  // Shared with the client: an executor may answer after the client closed.
  std::shared_ptr<link_socket> sock_;
};

} // namespace

// -- link_hub ----------------------------------------------------------------

class link_hub_impl {
public:
  link_hub_impl(caf::actor_system& sys, int fd, std::string name)
      : sys(sys), listen_fd(fd), name(std::move(name)) {}

  ~link_hub_impl() {
    close();
    ::close(listen_fd);
  }

  void start() {
    acceptor = std::thread{[this] { accept_loop(); }};
  }

  void close() {
    if (closed.exchange(true))
      return;
    ::shutdown(listen_fd, SHUT_RDWR); // accept() returns
    if (acceptor.joinable())
      acceptor.join();
    std::vector<std::shared_ptr<hub_link>> all;
    {
      std::lock_guard<std::mutex> guard{mtx};
      for (auto& [_, link] : links)
        all.push_back(link);
      links.clear();
    }
    for (auto& link : all)
      link->close();
  }

  void accept_loop() {
    name_thread("ig.link.accept");
    for (;;) {
      int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED)
          continue;
        if (!closed.load())
          spdlog::error("local link: accept failed: {}", std::strerror(errno));
        return;
      }
      handshake(fd);
    }
  }

  // Reads the client's token; a known one gets its link, anything else is
  // told why and closed. The token frame is small and must arrive within
  // handshake_timeout as a whole, so no client holds this thread longer.
  void handshake(int fd) {
    auto link = std::make_shared<hub_link>(sys, fd);
    std::string token;
    if (!read_token(fd, token)) {
      spdlog::warn("local link: refused a connection that sent no valid token in time");
      return;
    }
    std::string worker_id;
    {
      std::lock_guard<std::mutex> guard{mtx};
      for (auto i = issued.begin(); i != issued.end(); ++i) {
        if (constant_time_equal(i->first, token)) {
          worker_id = i->second;
          issued.erase(i);
          break;
        }
      }
    }
    if (worker_id.empty()) {
      spdlog::warn("local link: refused a connection with an unknown token");
      link->socket().write(0, std::string{"refused: unknown or used token"});
      return;
    }
    link->set_worker_id(worker_id);
    {
      std::lock_guard<std::mutex> guard{mtx};
      // Links of workers that are gone. Only this thread and close() drop
      // links from here, so no reader ever destroys its own link.
      for (auto i = links.begin(); i != links.end();)
        i = i->second->up() ? std::next(i) : links.erase(i);
      links.emplace(token, link);
    }
    link->start();
    if (!link->socket().write(0, std::string{"ok"}))
      return;
    spdlog::info("local link: worker {} connected", worker_id);
  }

  // The handshake frame: a header and at most max_token bytes, all within
  // handshake_timeout (one deadline for the whole frame, not per recv).
  static bool read_token(int fd, std::string& token) {
    constexpr std::size_t max_token = 128;
    char frame[header_size + max_token];
    std::size_t want = header_size;
    std::size_t got = 0;
    auto deadline = std::chrono::steady_clock::now() + handshake_timeout;
    while (got < want) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{fd, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0)
        return false;
      auto n = ::recv(fd, frame + got, want - got, 0);
      if (n <= 0)
        return false;
      got += static_cast<std::size_t>(n);
      if (got == header_size && want == header_size) {
        uint32_t size = 0;
        std::memcpy(&size, frame, sizeof(size));
        if (size == 0 || size > max_token)
          return false;
        want = header_size + size;
      }
    }
    token.assign(frame + header_size, want - header_size);
    return true;
  }

  caf::actor_system& sys;
  int listen_fd;
  std::string name;
  std::atomic<bool> closed{false};
  std::thread acceptor;
  mutable std::mutex mtx;                                 // guards issued and links
  std::deque<std::pair<std::string, std::string>> issued; // token, worker id
  std::unordered_map<std::string, std::shared_ptr<hub_link>> links; // by token
};

link_hub::link_hub(std::unique_ptr<link_hub_impl> impl) : impl_(std::move(impl)) {}

link_hub::~link_hub() = default;

caf::expected<std::shared_ptr<link_hub>> link_hub::open(caf::actor_system& sys) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return make_error(errc::internal,
                      std::string{"local link: socket: "} + std::strerror(errno));
  auto name = "infergrid-link-" + random_hex(24);
  socklen_t len = 0;
  auto addr = abstract_address(name, len);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || ::listen(fd, 64) != 0) {
    auto why = std::string{"local link: cannot listen on @"} + name + ": "
               + std::strerror(errno);
    ::close(fd);
    return make_error(errc::internal, why);
  }
  auto impl = std::make_unique<link_hub_impl>(sys, fd, name);
  impl->start();
  return std::shared_ptr<link_hub>{new link_hub(std::move(impl))};
}

const std::string& link_hub::address() const {
  return impl_->name;
}

std::string link_hub::issue(const std::string& worker_id) {
  auto token = random_hex(32);
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->issued.emplace_back(token, worker_id);
  while (impl_->issued.size() > 256)
    impl_->issued.pop_front();
  return token;
}

batch_runner_actor link_hub::runner_for(const std::string& token,
                                        batch_runner_actor fallback) {
  std::shared_ptr<hub_link> link;
  {
    std::lock_guard<std::mutex> guard{impl_->mtx};
    auto i = impl_->links.find(token);
    if (i != impl_->links.end() && i->second->up())
      link = i->second;
  }
  if (!link)
    return fallback;
  caf::actor_config cfg;
  auto& sys = impl_->sys;
  auto proxy = caf::make_actor<link_proxy, caf::strong_actor_ptr>(
      sys.next_actor_id(), sys.node(), &sys, cfg, link,
      caf::actor_cast<caf::strong_actor_ptr>(fallback));
  link->set_proxy(caf::actor_cast<caf::actor_addr>(proxy));
  return caf::actor_cast<batch_runner_actor>(proxy);
}

int link_hub::connected() const {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  int n = 0;
  for (auto& [_, link] : impl_->links)
    n += link->up() ? 1 : 0;
  return n;
}

void link_hub::close() {
  impl_->close();
}

// -- link_client -------------------------------------------------------------

class link_client_impl {
public:
  link_client_impl(caf::actor_system& sys, int fd, std::string token)
      : sys(sys), sock(std::make_shared<link_socket>(fd)), token(std::move(token)) {
    caf::actor_config cfg;
    replier = caf::make_actor<link_replier, caf::strong_actor_ptr>(
        sys.next_actor_id(), sys.node(), &sys, cfg, sys, sock);
  }

  ~link_client_impl() {
    close();
  }

  void close() {
    sock->break_link();
    if (reader.joinable())
      reader.join();
    std::lock_guard<std::mutex> guard{mtx};
    target = nullptr;
  }

  void read_loop() {
    name_thread("ig.link.worker");
    uint64_t seq = 0;
    std::vector<char> buf;
    while (sock->read(seq, buf)) {
      caf::message msg;
      if (!decode(sys, buf, msg)) {
        spdlog::error("local link: a request does not decode; closing the link");
        break;
      }
      caf::strong_actor_ptr to;
      {
        std::lock_guard<std::mutex> guard{mtx};
        to = target;
      }
      if (!to) {
        // Not yet serving (the hub sends only after the registration that
        // follows serve(), so this is a bug elsewhere): answer, never drop.
        if (seq != 0)
          answer_error(
              sys, *sock, seq,
              make_error(errc::unavailable, "the worker's local link has no target yet"));
        continue;
      }
      auto mid = seq == 0 ? caf::make_message_id() : caf::make_message_id(seq);
      to->enqueue(caf::make_mailbox_element(replier, mid, {}, std::move(msg)), nullptr);
    }
    sock->break_link();
  }

  caf::actor_system& sys;
  std::shared_ptr<link_socket> sock;
  std::string token;
  caf::strong_actor_ptr replier;
  std::mutex mtx; // guards target
  caf::strong_actor_ptr target;
  std::thread reader;
};

link_client::link_client(std::unique_ptr<link_client_impl> impl)
    : impl_(std::move(impl)) {}

link_client::~link_client() = default;

caf::expected<std::shared_ptr<link_client>>
link_client::connect(caf::actor_system& sys, const std::string& address,
                     const std::string& token) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return make_error(errc::unavailable, std::string{"socket: "} + std::strerror(errno));
  socklen_t len = 0;
  auto addr = abstract_address(address, len);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    auto why = std::string{"cannot connect to @"} + address + ": " + std::strerror(errno);
    ::close(fd);
    return make_error(errc::unavailable, why);
  }
  auto impl = std::make_unique<link_client_impl>(sys, fd, token);
  set_timeout(fd, SO_RCVTIMEO, handshake_timeout);
  uint64_t seq = 0;
  std::vector<char> buf;
  if (!impl->sock->write(0, token) || !impl->sock->read(seq, buf))
    return make_error(errc::unavailable, "the control node closed the link at once");
  std::string answer{buf.begin(), buf.end()};
  if (answer != "ok")
    return make_error(errc::unauthorized, "the control node " + answer);
  set_timeout(fd, SO_RCVTIMEO, std::chrono::microseconds{0});
  return std::shared_ptr<link_client>{new link_client(std::move(impl))};
}

const std::string& link_client::token() const {
  return impl_->token;
}

void link_client::serve(caf::strong_actor_ptr target) {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->target = std::move(target);
  if (!impl_->reader.joinable())
    impl_->reader = std::thread{[impl = impl_.get()] { impl->read_loop(); }};
}

void link_client::close() {
  impl_->close();
}

} // namespace infergrid
