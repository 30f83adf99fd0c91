// The local link (see local_link.hpp). Frames on a stream socket: a 24-byte
// header (payload length, u32; kind, u32; sequence number, u64; reference,
// u64; host byte order, both ends are one host) and the payload. The first
// frame each way is the handshake: the client's token, then the hub's "ok"
// or the reason it refuses. After it, the hub sends requests under a fresh
// sequence number (0: a message that wants no answer) and the client sends
// each answer under its request's number. A generation or synthesis names
// its chunk sink by reference: the client sends the pieces as chunk frames
// to that reference (raw bytes, no CAF serialisation), and the hub tells it
// when the sink goes down (its HTTP client went away).
#include "actors/local_link.hpp"

#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
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
#include <exception>
#include <mutex>
#include <optional>
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
#include <caf/proxy_registry.hpp>
#include <caf/scoped_execution_unit.hpp>

#include <spdlog/spdlog.h>

#include "actors/caller_runs.hpp"
#include "actors/cluster.hpp"
#include "messages/errors.hpp"

namespace infergrid {

namespace {

using namespace std::chrono_literals;

constexpr std::size_t header_size = 24;

enum class frame : uint32_t {
  handshake = 0,   // either way, first: the token, then "ok" or the refusal
  to_executor = 1, // hub -> client: a request for the worker's executor
  to_worker = 2,   // hub -> client: a generation or synthesis for the worker
                   // actor; ref: its sink (0: none)
  answer = 3,      // client -> hub: the answer to request seq
  chunk = 4,       // client -> hub: a piece for sink ref (raw bytes)
  sink_down = 5,   // hub -> client: sink ref went down
};

/// A frame as read: its header's fields and its payload.
struct frame_in {
  frame kind = frame::handshake;
  uint64_t seq = 0;
  uint64_t ref = 0;
  std::vector<char> payload;
};

/// Which actor of the worker process a request is for.
enum class target : uint32_t { executor = 0, worker = 1 };
// Larger than any request body (http.max_body_bytes is at most 1 GiB).
constexpr uint32_t max_payload = (1u << 30) + (1u << 20);
// A peer that stops reading for this long breaks the link, so a stopped
// worker process never blocks the queue actor for longer.
constexpr auto write_timeout = 2s;
constexpr auto handshake_timeout = 5s;

/// Set on a hub's reader thread: it reads answers and chunks and must never
/// block on a write (link_proxy hands its writes to the scheduler).
thread_local bool on_hub_reader = false;

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

  /// Whether more bytes wait to be read (another frame has arrived).
  bool pending() const {
    int n = 0;
    return ::ioctl(fd_, FIONREAD, &n) == 0 && n > 0;
  }

  /// Sends one frame; false when the link is (now) broken.
  bool write(frame kind, uint64_t seq, uint64_t ref, const char* data, std::size_t size) {
    std::lock_guard<std::mutex> guard{write_mtx_};
    return write_locked(kind, seq, ref, data, size);
  }

  /// Held while a frame goes out; with it, write_locked() sends one.
  std::mutex& write_mutex() {
    return write_mtx_;
  }

  bool write_locked(frame kind, uint64_t seq, uint64_t ref, const char* data,
                    std::size_t size) {
    if (broken_.load() || size > max_payload)
      return false;
    char header[header_size];
    auto n = static_cast<uint32_t>(size);
    auto k = static_cast<uint32_t>(kind);
    std::memcpy(header, &n, 4);
    std::memcpy(header + 4, &k, 4);
    std::memcpy(header + 8, &seq, 8);
    std::memcpy(header + 16, &ref, 8);
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

  bool write(frame kind, uint64_t seq, uint64_t ref, const std::string& text) {
    return write(kind, seq, ref, text.data(), text.size());
  }

  /// Reads one frame; false at the end of the stream, on an error or on a
  /// header that cannot be ours.
  bool read(frame_in& in) {
    char header[header_size];
    if (!read_exact(header, header_size))
      return false;
    uint32_t n = 0;
    uint32_t k = 0;
    std::memcpy(&n, header, 4);
    std::memcpy(&k, header + 4, 4);
    std::memcpy(&in.seq, header + 8, 8);
    std::memcpy(&in.ref, header + 16, 8);
    if (n > max_payload || k > static_cast<uint32_t>(frame::sink_down))
      return false;
    in.kind = static_cast<frame>(k);
    in.payload.resize(n);
    return n == 0 || read_exact(in.payload.data(), n);
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

/// Decodes the frames of one reader thread. Its context knows this
/// process's actors only and makes no proxies: a sink travels by reference,
/// not as a handle. (The system's own context has no proxy registry once
/// the middleman runs, and CAF 0.17 then decodes any message holding a
/// handle, even a null one, as an empty message without an error.)
class frame_decoder {
public:
  explicit frame_decoder(caf::actor_system& sys) : registry_(sys, backend_), ctx_(&sys) {
    ctx_.proxy_registry_ptr(&registry_);
  }

  /// False when `in` is not a message; the link sends no empty ones.
  bool operator()(const std::vector<char>& in, caf::message& msg) {
    caf::binary_deserializer source{&ctx_, in};
    return !source(msg) && !msg.empty();
  }

private:
  struct no_proxies : caf::proxy_registry::backend {
    caf::strong_actor_ptr make_proxy(caf::node_id, caf::actor_id) override {
      return nullptr; // a handle of another node decodes as null
    }
    void set_last_hop(caf::node_id*) override {}
  };

  no_proxies backend_;
  caf::proxy_registry registry_;
  caf::scoped_execution_unit ctx_;
};

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
  return encode(sys, msg, out)
         && sock.write(frame::answer, seq, 0, out.data(), out.size());
}

// -- the hub's side ----------------------------------------------------------

// A generation or synthesis carries its chunk sink: the link names it by
// reference instead of sending the handle. The sink field of such a
// message; null for any other message.
chunk_sink_actor* sink_slot(caf::message& msg) {
  if (msg.match_elements<generate_atom, generate_request>())
    return &static_cast<generate_request*>(msg.get_mutable(1))->sink;
  if (msg.match_elements<speech_atom, speech_request>())
    return &static_cast<speech_request*>(msg.get_mutable(1))->sink;
  return nullptr;
}

/// Moves the sink out of `msg` (null when it has none).
caf::strong_actor_ptr take_sink(caf::message& msg) {
  auto slot = sink_slot(msg);
  if (slot == nullptr || !*slot)
    return nullptr;
  auto sink = caf::actor_cast<caf::strong_actor_ptr>(std::move(*slot));
  *slot = chunk_sink_actor{};
  return sink;
}

/// Puts `sink` (or the client's stand-in) into `msg`; false when `msg` is
/// neither a generation nor a synthesis.
bool put_sink(caf::message& msg, const caf::strong_actor_ptr& sink) {
  auto slot = sink_slot(msg);
  if (slot != nullptr)
    *slot = caf::actor_cast<chunk_sink_actor>(sink);
  return slot != nullptr;
}

/// Takes the entry of `ref` out of `table` (null: none). Callers release it
/// after unlocking the table's mutex: the last reference to an actor that
/// never ended ends it, which may run a functor that takes that mutex.
caf::strong_actor_ptr
take_entry(std::unordered_map<uint64_t, caf::strong_actor_ptr>& table, uint64_t ref) {
  auto i = table.find(ref);
  if (i == table.end())
    return nullptr;
  auto entry = std::move(i->second);
  table.erase(i);
  return entry;
}

/// One worker's connection on the hub: sends requests, matches answers,
/// hands chunks to their sinks.
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

  /// The proxy that answers come from, per target.
  void set_proxy(target to, caf::actor_addr proxy) {
    std::lock_guard<std::mutex> guard{mtx_};
    proxies_[static_cast<std::size_t>(to)] = std::move(proxy);
  }

  /// Sends `msg` from `sender` to `to`; false when it could not go (the
  /// caller sends it another way; `msg` is as it was).
  bool send(target to, const caf::strong_actor_ptr& sender, caf::message_id mid,
            caf::message& msg) {
    if (!up())
      return false;
    auto sink = to == target::worker ? take_sink(msg) : nullptr;
    if (sink && sink->node() != sys_.node()) {
      // A sink of a third node: its id alone would not name it here.
      put_sink(msg, sink);
      return false;
    }
    auto ref = sink ? static_cast<uint64_t>(sink->id()) : 0;
    auto& buf = send_buffer();
    if (!encode(sys_, msg, buf)) {
      put_sink(msg, sink);
      return false;
    }
    uint64_t seq = 0;
    bool wants_answer = mid.is_request() && sender != nullptr;
    {
      // Before the write: the answer (or a chunk) may arrive before it returns.
      std::lock_guard<std::mutex> guard{mtx_};
      if (wants_answer) {
        seq = ++next_seq_;
        pending_.emplace(seq, pending_request{sender, mid, to, ref});
      }
      if (sink)
        sinks_[ref] = sink;
    }
    auto kind = to == target::worker ? frame::to_worker : frame::to_executor;
    bool sent = sock_.write(kind, seq, ref, buf.data(), buf.size());
    release_if_large(buf);
    flush_downs(); // reported while this frame went out
    if (sent) {
      // After the write, so that a sink already down is reported after the
      // request that names it (attach runs the functor at once then).
      if (sink)
        sink->get()->attach_functor([weak = weak_from_this(), ref] {
          if (auto self = weak.lock())
            self->sink_down(ref);
        });
      return true;
    }
    bool answered_already = false;
    caf::strong_actor_ptr dropped; // released after the lock (see take_entry)
    {
      std::lock_guard<std::mutex> guard{mtx_};
      if (sink)
        dropped = take_entry(sinks_, ref);
      // The failed write broke the link, and the reader may already have
      // answered this request with the others in flight: then it is done.
      answered_already = wants_answer && pending_.erase(seq) == 0;
    }
    if (answered_already)
      return true;
    put_sink(msg, sink);
    return false;
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
    target to = target::executor;
    uint64_t sink = 0;
  };

  caf::strong_actor_ptr proxy(target to) {
    std::lock_guard<std::mutex> guard{mtx_};
    return caf::actor_cast<caf::strong_actor_ptr>(proxies_[static_cast<std::size_t>(to)]);
  }

  // The sink of a request still running went down (its HTTP client went
  // away): the client's stand-in goes down too, and the worker stops.
  // It runs in the thread that ends the sink (an HTTP thread, mostly), so
  // it never waits for a frame another thread is writing: that thread sends
  // the report after its frame (flush_downs).
  void sink_down(uint64_t ref) {
    caf::strong_actor_ptr dropped;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      dropped = take_entry(sinks_, ref);
      if (!dropped)
        return; // answered already
      downs_.push_back(ref);
    }
    flush_downs();
  }

  // Sends the sink_down frames reported so far, unless another thread is
  // writing: it calls this after its frame. Pushes happen before the
  // try_lock, so no report is left behind.
  void flush_downs() {
    for (;;) {
      std::unique_lock<std::mutex> writing{sock_.write_mutex(), std::try_to_lock};
      if (!writing.owns_lock())
        return;
      std::vector<uint64_t> refs;
      {
        std::lock_guard<std::mutex> guard{mtx_};
        refs.swap(downs_);
      }
      if (refs.empty())
        return;
      for (auto ref : refs)
        sock_.write_locked(frame::sink_down, 0, ref, nullptr, 0);
    }
  }

  void on_chunk(uint64_t ref, const std::vector<char>& bytes) {
    caf::strong_actor_ptr sink;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      auto i = sinks_.find(ref);
      if (i == sinks_.end())
        return; // its request was answered, or its sink went down
      sink = i->second;
    }
    sink->enqueue(caf::make_mailbox_element(nullptr, caf::make_message_id(), {},
                                            chunk_atom::value,
                                            std::string{bytes.begin(), bytes.end()}),
                  nullptr);
  }

  void on_answer(frame_decoder& decode, uint64_t seq, const std::vector<char>& buf) {
    caf::message msg;
    if (!decode(buf, msg)) {
      // Answered all the same: the request must not wait for its deadline.
      msg = link_error("the local link to worker " + worker_id_
                       + " returned an answer that does not decode");
    }
    pending_request p;
    caf::strong_actor_ptr dropped;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      auto i = pending_.find(seq);
      if (i == pending_.end())
        return; // an answer to nothing we asked: ignored
      p = std::move(i->second);
      pending_.erase(i);
      if (p.sink != 0)
        dropped = take_entry(sinks_, p.sink);
    }
    // The queue's step for the answer runs on this thread if it is idle.
    caller_runs::deliver(
        p.sender,
        caf::make_mailbox_element(proxy(p.to), p.mid.response_id(), {}, std::move(msg)));
  }

  void read_loop() {
    name_thread("ig.link.hub");
    on_hub_reader = true;
    caller_runs::lease unit{sys_};
    caller_runs::scope here{*unit};
    frame_decoder decode{sys_};
    frame_in in;
    std::string why = "closed";
    while (sock_.read(in)) {
      if (in.kind == frame::answer) {
        on_answer(decode, in.seq, in.payload);
      } else if (in.kind == frame::chunk) {
        on_chunk(in.ref, in.payload);
      } else {
        why = "sent a frame of a kind only the control node sends";
        break;
      }
    }
    ended_.store(true);
    sock_.break_link();
    std::unordered_map<uint64_t, pending_request> left;
    std::unordered_map<uint64_t, caf::strong_actor_ptr> sinks; // released unlocked
    {
      std::lock_guard<std::mutex> guard{mtx_};
      left.swap(pending_);
      sinks.swap(sinks_);
      downs_.clear();
    }
    if (!left.empty() || why != "closed")
      spdlog::warn("local link: worker {}'s link {}; {} request(s) in flight fail",
                   worker_id_, why, left.size());
    else
      spdlog::info("local link: worker {}'s link closed", worker_id_);
    for (auto& [_, p] : left)
      p.sender->enqueue(caf::make_mailbox_element(
                            proxy(p.to), p.mid.response_id(), {},
                            link_error("the local link to worker " + worker_id_ + " "
                                       + why + " with the request in flight")),
                        nullptr);
  }

  caf::actor_system& sys_;
  link_socket sock_;
  std::string worker_id_;
  std::atomic<bool> ended_{false};
  std::mutex mtx_; // guards pending_, next_seq_, sinks_, downs_, proxies_
  std::unordered_map<uint64_t, pending_request> pending_;
  uint64_t next_seq_ = 0;
  /// The chunk sinks of requests in flight, by reference (their actor id).
  std::unordered_map<uint64_t, caf::strong_actor_ptr> sinks_;
  /// Sinks that went down, to be reported (flush_downs).
  std::vector<uint64_t> downs_;
  caf::actor_addr proxies_[2];
  std::thread reader_;
};

/// The queue's handle for a worker with a link (its executor or the worker
/// actor): its enqueue runs in the sender's thread and writes the socket
/// there.
class link_proxy final : public caf::monitorable_actor {
public:
  link_proxy(caf::actor_config& cfg, std::shared_ptr<hub_link> link, target to,
             caf::strong_actor_ptr fallback)
      : caf::monitorable_actor(cfg), link_(std::move(link)), to_(to),
        fallback_(std::move(fallback)) {}

  void enqueue(caf::mailbox_element_ptr what, caf::execution_unit* host) override {
    if (on_hub_reader) {
      // The queue runs on a hub reader when an answer found it idle
      // (caller_runs). A reader must never wait on a socket: the worker's
      // reader may itself be blocked writing an answer to it.
      caller_runs::deliver_elsewhere(
          home_system(), caf::actor_cast<caf::strong_actor_ptr>(ctrl()), std::move(what));
      return;
    }
    if (link_->up()) {
      auto msg = what->move_content_to_message();
      if (link_->send(to_, what->sender, what->mid, msg))
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
    return to_ == target::worker ? "local_link_worker" : "local_link";
  }

private:
  std::shared_ptr<hub_link> link_;
  target to_;
  caf::strong_actor_ptr fallback_;
};

// -- the client's side -------------------------------------------------------

/// What a client's reader, its replier and its sink stand-ins share.
struct client_state {
  client_state(caf::actor_system& sys, int fd) : sys(sys), sock(fd) {}

  caf::actor_system& sys;
  link_socket sock;
  std::mutex mtx; // guards sinks and sink_of
  /// Stand-ins for the hub's chunk sinks of requests in flight, by reference.
  std::unordered_map<uint64_t, caf::strong_actor_ptr> sinks;
  /// The sink reference of each request in flight that has one, by sequence.
  std::unordered_map<uint64_t, uint64_t> sink_of;

  /// Request `seq` is answered: its sink's stand-in is no longer reachable
  /// from the hub (the executor may still hold it; it simply goes unused).
  void forget(uint64_t seq) {
    caf::strong_actor_ptr dropped; // released after the lock
    std::lock_guard<std::mutex> guard{mtx};
    auto i = sink_of.find(seq);
    if (i == sink_of.end())
      return;
    dropped = take_entry(sinks, i->second);
    sink_of.erase(i);
  }

  /// Takes the stand-in for `ref` out (null when there is none).
  caf::strong_actor_ptr take_sink(uint64_t ref) {
    std::lock_guard<std::mutex> guard{mtx};
    return take_entry(sinks, ref);
  }
};

/// Sends `msg` back as the answer to request `seq` (an error answer when it
/// cannot go over the link).
void send_answer(client_state& state, uint64_t seq, caf::message& msg) {
  auto& buf = send_buffer();
  bool sent = false;
  if (encode(state.sys, msg, buf) && buf.size() <= max_payload)
    sent = state.sock.write(frame::answer, seq, 0, buf.data(), buf.size());
  else
    sent = answer_error(state.sys, state.sock, seq,
                        make_error(errc::internal, "the answer cannot go over the local "
                                                   "link (it does not serialise or "
                                                   "exceeds 1 GiB)"));
  release_if_large(buf);
  if (!sent)
    spdlog::warn("local link: an answer could not be sent back (the link is "
                 "closed); the control node has failed that request");
}

/// Ends a sink's stand-in: those who monitor it (the worker actor) see it
/// go down, as they would see the real sink over BASP.
void end_sink(const caf::strong_actor_ptr& sink, caf::error reason) {
  if (sink)
    static_cast<caf::monitorable_actor*>(sink->get())
        ->cleanup(std::move(reason), nullptr);
}

/// A worker process's stand-in for a chunk sink of the control process: a
/// piece sent to it goes over the link as a chunk frame, written in the
/// sender's own thread (the executor's).
class link_sink final : public caf::monitorable_actor {
public:
  link_sink(caf::actor_config& cfg, std::shared_ptr<client_state> state, uint64_t ref)
      : caf::monitorable_actor(cfg), state_(std::move(state)), ref_(ref) {}

  void enqueue(caf::mailbox_element_ptr what, caf::execution_unit*) override {
    auto& msg = what->content();
    if (!msg.match_elements<chunk_atom, std::string>())
      return; // a sink takes pieces only
    auto& piece = msg.get_as<std::string>(1);
    // A failed write broke the link: the reader then ends every stand-in,
    // and the worker stops the run.
    state_->sock.write(frame::chunk, 0, ref_, piece.data(), piece.size());
  }

  const char* name() const override {
    return "local_link_sink";
  }

private:
  std::shared_ptr<client_state> state_;
  uint64_t ref_;
};

/// The sender of the requests the client hands on: the answers the target
/// sends to it go back over the socket from the target's thread.
class link_replier final : public caf::monitorable_actor {
public:
  link_replier(caf::actor_config& cfg, std::shared_ptr<client_state> state)
      : caf::monitorable_actor(cfg), state_(std::move(state)) {}

  void enqueue(caf::mailbox_element_ptr what, caf::execution_unit*) override {
    if (!what->mid.is_response())
      return; // the link carries answers only
    auto seq = what->mid.integer_value() & caf::message_id::request_id_mask;
    state_->forget(seq);
    auto msg = what->move_content_to_message();
    send_answer(*state_, seq, msg);
  }

  const char* name() const override {
    return "local_link_replier";
  }

private:
  // Shared with the client: an executor may answer after the client closed.
  std::shared_ptr<client_state> state_;
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

  /// A proxy over the link of `token` to its `to`, or `fallback` when no
  /// link presented that token.
  caf::strong_actor_ptr proxy_for(const std::string& token, target to,
                                  caf::strong_actor_ptr fallback);

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
      link->socket().write(frame::handshake, 0, 0,
                           std::string{"refused: unknown or used token"});
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
    if (!link->socket().write(frame::handshake, 0, 0, std::string{"ok"}))
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

caf::strong_actor_ptr link_hub_impl::proxy_for(const std::string& token, target to,
                                               caf::strong_actor_ptr fallback) {
  std::shared_ptr<hub_link> link;
  {
    std::lock_guard<std::mutex> guard{mtx};
    auto i = links.find(token);
    if (i != links.end() && i->second->up())
      link = i->second;
  }
  if (!link)
    return fallback;
  caf::actor_config cfg;
  auto proxy = caf::make_actor<link_proxy, caf::strong_actor_ptr>(
      sys.next_actor_id(), sys.node(), &sys, cfg, link, to, std::move(fallback));
  link->set_proxy(to, caf::actor_cast<caf::actor_addr>(proxy));
  return proxy;
}

batch_runner_actor link_hub::runner_for(const std::string& token,
                                        batch_runner_actor fallback) {
  return caf::actor_cast<batch_runner_actor>(impl_->proxy_for(
      token, target::executor, caf::actor_cast<caf::strong_actor_ptr>(fallback)));
}

worker_actor link_hub::streams_for(const std::string& token, worker_actor fallback) {
  return caf::actor_cast<worker_actor>(impl_->proxy_for(
      token, target::worker, caf::actor_cast<caf::strong_actor_ptr>(fallback)));
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
      : sys(sys), state(std::make_shared<client_state>(sys, fd)),
        token(std::move(token)) {
    caf::actor_config cfg;
    replier = caf::make_actor<link_replier, caf::strong_actor_ptr>(
        sys.next_actor_id(), sys.node(), &sys, cfg, state);
  }

  ~link_client_impl() {
    close();
  }

  link_socket& sock() {
    return state->sock;
  }

  void close() {
    sock().break_link();
    if (reader.joinable())
      reader.join();
    std::lock_guard<std::mutex> guard{mtx};
    executor = nullptr;
    worker = caf::actor_addr{};
    direct = nullptr;
  }

  // Hands a request to its target; false when the link must close.
  bool deliver(frame_decoder& decode, const frame_in& in) {
    auto seq = in.seq;
    auto ref = in.ref;
    caf::message msg;
    if (!decode(in.payload, msg)) {
      spdlog::error("local link: a request does not decode; closing the link");
      return false;
    }
    caf::strong_actor_ptr to;
    direct_batch_fn run_here;
    {
      std::lock_guard<std::mutex> guard{mtx};
      to = in.kind == frame::to_worker ? caf::actor_cast<caf::strong_actor_ptr>(worker)
                                       : executor;
      // Not while more frames wait: the reader reads nothing while it runs
      // a batch, and a sender blocks once the socket's buffer is full.
      if (in.kind == frame::to_executor && seq != 0 && !sock().pending())
        run_here = direct;
    }
    if (run_here && msg.match_elements<infer_atom, infer_batch>()) {
      // Run here, on the reader's thread: no wake-up of the executor's.
      std::optional<caf::expected<infer_batch_result>> out;
      try {
        out = run_here(msg.get_mutable_as<infer_batch>(1));
      } catch (const std::exception& e) {
        out = make_error(errc::internal, std::string{"the batch failed: "} + e.what());
      }
      if (out) {
        auto answer = *out ? caf::make_message(std::move(**out))
                           : caf::make_message(std::move(out->error()));
        send_answer(*state, seq, answer);
        return true;
      }
    }
    if (!to) {
      // Not serving yet (the hub sends only after the registration that
      // follows serve()) or the worker is gone: answer, never drop.
      if (seq != 0)
        answer_error(sys, sock(), seq,
                     make_error(errc::unavailable, "the worker's local link has no "
                                                   "target for this request"));
      return true;
    }
    if (in.kind == frame::to_worker && ref != 0) {
      caf::actor_config cfg;
      auto sink = caf::make_actor<link_sink, caf::strong_actor_ptr>(
          sys.next_actor_id(), sys.node(), &sys, cfg, state, ref);
      if (!put_sink(msg, sink)) {
        if (seq != 0)
          answer_error(sys, sock(), seq,
                       make_error(errc::internal,
                                  "a request with a sink that is "
                                  "neither a generation nor a synthesis"));
        return true;
      }
      std::lock_guard<std::mutex> guard{state->mtx};
      state->sinks[ref] = sink;
      if (seq != 0)
        state->sink_of[seq] = ref;
    }
    auto mid = seq == 0 ? caf::make_message_id() : caf::make_message_id(seq);
    // The worker actor's step runs on this thread if it is idle, unless
    // more frames wait to be read.
    auto what = caf::make_mailbox_element(replier, mid, {}, std::move(msg));
    if (sock().pending())
      to->enqueue(std::move(what), nullptr);
    else
      caller_runs::deliver(to, std::move(what));
    return true;
  }

  void read_loop() {
    name_thread("ig.link.worker");
    caller_runs::lease unit{sys};
    caller_runs::scope here{*unit};
    frame_decoder decode{sys};
    frame_in in;
    while (sock().read(in)) {
      if (in.kind == frame::sink_down) {
        end_sink(state->take_sink(in.ref), caf::exit_reason::normal);
      } else if (in.kind == frame::to_executor || in.kind == frame::to_worker) {
        if (!deliver(decode, in))
          break;
      } else {
        spdlog::error(
            "local link: a frame of a kind only workers send; closing the link");
        break;
      }
    }
    sock().break_link();
    // The hub fails the requests in flight; their runs stop as if their
    // clients went away.
    std::unordered_map<uint64_t, caf::strong_actor_ptr> left;
    {
      std::lock_guard<std::mutex> guard{state->mtx};
      left.swap(state->sinks);
      state->sink_of.clear();
    }
    for (auto& [_, sink] : left)
      end_sink(sink, make_error(errc::unavailable, "the local link closed"));
  }

  caf::actor_system& sys;
  std::shared_ptr<client_state> state;
  std::string token;
  caf::strong_actor_ptr replier;
  std::mutex mtx; // guards executor, worker and direct
  caf::strong_actor_ptr executor;
  caf::actor_addr worker;
  direct_batch_fn direct;
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
  frame_in in;
  auto& sock = impl->sock();
  if (!sock.write(frame::handshake, 0, 0, token) || !sock.read(in)
      || in.kind != frame::handshake)
    return make_error(errc::unavailable, "the control node closed the link at once");
  std::string answer{in.payload.begin(), in.payload.end()};
  if (answer != "ok")
    return make_error(errc::unauthorized, "the control node " + answer);
  set_timeout(fd, SO_RCVTIMEO, std::chrono::microseconds{0});
  return std::shared_ptr<link_client>{new link_client(std::move(impl))};
}

const std::string& link_client::token() const {
  return impl_->token;
}

void link_client::serve(caf::strong_actor_ptr executor, caf::actor_addr worker,
                        direct_batch_fn direct) {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->executor = std::move(executor);
  impl_->worker = std::move(worker);
  impl_->direct = std::move(direct);
  if (!impl_->reader.joinable())
    impl_->reader = std::thread{[impl = impl_.get()] { impl->read_loop(); }};
}

void link_client::close() {
  impl_->close();
}

} // namespace infergrid
