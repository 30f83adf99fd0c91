// The Beast HTTP/1.1 server: a listener, one session per connection on its
// own strand, and the bridge to the gateway through one-shot requester actors
// (caf-0.17-notes.md §6.1). No I/O thread ever waits on an actor. Event
// streams (SSE) get a per-connection subscriber actor that posts each live
// event to the connection's strand (§6.2); streamed completions and speech
// get a chunk sink actor that does the same with each piece of the result.
// Non-streamed completions and speech get a sink too, only so that the
// worker notices when the client goes away; for both kinds a watch read on
// the socket tells (and keeps pipelined requests).
#include "http/server.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/http/file_body.hpp>
#include <boost/beast/websocket.hpp>

#include <caf/actor_companion.hpp>
#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/mixin/requester.hpp>
#include <caf/scoped_execution_unit.hpp>
#include <caf/exit_reason.hpp>
#include <caf/send.hpp>
#include <caf/typed_event_based_actor.hpp>

#include <spdlog/spdlog.h>

#include "actors/caller_runs.hpp"
#include "actors/session.hpp"
#include "http/metrics.hpp"
#include "http/routes.hpp"
#include "http/streams.hpp"
#include "messages/errors.hpp"

namespace infergrid::http {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

/// How long a connection that is closed with an unread body is drained, so
/// that the client reads the error instead of a reset.
constexpr auto linger_deadline = std::chrono::seconds(2);

/// Added to request_timeout_ms for the HTTP layer's own actor deadline.
constexpr auto timeout_grace = std::chrono::milliseconds(250);

/// An event stream with nothing to send writes a comment this often, so
/// that proxies keep it open and a gone client is noticed.
constexpr auto sse_keepalive_interval = std::chrono::seconds(15);

/// Live events a stream holds for a client that does not keep up (or while
/// its backlog is written); one more closes the stream, and the client
/// resumes with Last-Event-ID.
constexpr std::size_t sse_max_pending = 1024;

/// Generated text a streamed completion holds for a client that does not keep
/// up; past it deltas are dropped and the final reply supplies the rest.
constexpr std::size_t completion_max_pending = 256 * 1024;

/// The same for the PCM of a streamed synthesis (about 87 s at 24 kHz).
constexpr std::size_t speech_max_pending = 4 * 1024 * 1024;

/// Bytes of the next request (HTTP pipelining) that the watch of a
/// non-streamed answer reads ahead and keeps; past it the watch stops.
constexpr std::size_t watch_readahead_max = 64 * 1024;

/// How long a model load may take; a generation or synthesis may take
/// http_settings::run_timeout_ms (workers.generate_timeout_ms). The workers
/// enforce the real limits; these backstops only cover lost answers.
constexpr auto load_backstop = std::chrono::minutes(10);

constexpr const char* metrics_content_type = "text/plain; version=0.0.4; charset=utf-8";

/// Largest frame a session's client may send (larger: the connection closes
/// with 1009 "message too big"). No model kind takes audio input yet, so
/// binary frames need no more than text ones.
constexpr std::size_t ws_max_frame = 64 * 1024;

/// Frames a session holds for a client that does not take them (about 170 s
/// of 24 kHz audio); past it the connection closes and the session ends.
constexpr std::size_t ws_max_pending = 8 * 1024 * 1024;

/// Frames from the client waiting for the session actor; past it the
/// connection stops reading until the actor catches up.
constexpr int64_t ws_max_unhandled = 64;

class session;
class ws_connection;

/// An actor_companion (messages go to a callback: here, onto a session's
/// strand) that can also send requests; CAF 0.17's companion only sends.
class asker_actor
    : public caf::extend<caf::actor_companion, asker_actor>::with<caf::mixin::requester> {
public:
  using super
      = caf::extend<caf::actor_companion, asker_actor>::with<caf::mixin::requester>;
  explicit asker_actor(caf::actor_config& cfg) : super(cfg) {}
};

/// Lets actor callbacks post into the io_contexts only while they run:
/// stop() closes it before the io_contexts and the sessions go away.
struct gate {
  std::mutex mtx;
  bool open = true;

  /// Runs `f(conn&)` on the connection's strand if both are still there
  /// (an HTTP session or a WebSocket connection). Called from CAF threads.
  /// Everything that touches Asio objects here happens under the lock,
  /// while the connection's io_context is alive.
  template <class Conn, class F>
  void post(const std::weak_ptr<Conn>& weak, F&& f);
};

/// What the server shares with its sessions. Outlives the server when a
/// handler still holds a session during the io_contexts' teardown.
struct shared_state {
  shared_state(caf::actor_system& sys, gateway_actor gateway, http_settings opts)
      : sys(sys), gateway(std::move(gateway)), opts(std::move(opts)) {
    auto ms = this->opts.request_timeout_ms > 0 ? this->opts.request_timeout_ms
                                                : int64_t{30000};
    request_timeout = std::chrono::milliseconds(ms);
    // How long a connection may take to send a request (and stay idle
    // between keep-alive requests), and a client to take a response.
    io_timeout = std::chrono::milliseconds(
        this->opts.io_timeout_ms > 0 ? this->opts.io_timeout_ms : int64_t{60000});
    // A backstop: the gateway and queue enforce request_timeout_ms with a
    // message that says what was late; ours only covers lost answers.
    actor_timeout = request_timeout + timeout_grace;
    auto run_ms
        = this->opts.run_timeout_ms > 0 ? this->opts.run_timeout_ms : int64_t{600000};
    run_timeout
        = request_timeout
          + std::max(std::chrono::milliseconds(run_ms),
                     std::chrono::duration_cast<std::chrono::milliseconds>(load_backstop))
          + timeout_grace;
  }

  /// The sample rate of a speech model as GET /v1/models last listed it.
  bool sample_rate_of(const std::string& model, int64_t& rate) {
    std::lock_guard<std::mutex> guard{rates_mtx};
    auto i = sample_rates.find(model);
    if (i == sample_rates.end())
      return false;
    rate = i->second;
    return true;
  }

  void remember_models(const std::vector<model_info>& models) {
    std::lock_guard<std::mutex> guard{rates_mtx};
    for (auto& m : models)
      sample_rates[m.name] = m.sample_rate;
  }

  caf::actor_system& sys;
  gateway_actor gateway;
  http_settings opts;
  std::chrono::milliseconds request_timeout{30000};
  std::chrono::milliseconds io_timeout{60000};
  std::chrono::milliseconds actor_timeout{30250};
  /// For requests that wait for a model to run: generate, speech, load.
  std::chrono::milliseconds run_timeout{630250};
  std::atomic<int64_t> in_flight{0};
  std::atomic<bool> accepting{true};
  metrics_registry metrics;
  std::shared_ptr<gate> gate_ptr = std::make_shared<gate>();

  /// Model name -> sample rate (0 for other kinds), from models_atom answers;
  /// the repository does not change while the server runs.
  std::mutex rates_mtx;
  std::unordered_map<std::string, int64_t> sample_rates;

  /// Open connections. Strong references: a session waiting for an actor has
  /// no pending I/O operation, so this map keeps it alive. Guarded by
  /// sessions_mtx, which also orders `accepting` against registration.
  std::mutex sessions_mtx;
  std::unordered_map<uint64_t, std::shared_ptr<session>> sessions;
  uint64_t next_session_id = 0;
  /// Open WebSocket connections (GET /v1/sessions), by the id of the HTTP
  /// connection they were upgraded from. Guarded by sessions_mtx.
  std::unordered_map<uint64_t, std::shared_ptr<ws_connection>> sockets;

  void remove(uint64_t id) {
    remove_from(sessions, id);
  }

  void remove_socket(uint64_t id) {
    remove_from(sockets, id);
  }

  template <class Conn>
  void remove_from(std::unordered_map<uint64_t, std::shared_ptr<Conn>>& open,
                   uint64_t id) {
    std::shared_ptr<Conn> victim; // destroyed outside the lock
    std::lock_guard<std::mutex> guard{sessions_mtx};
    auto i = open.find(id);
    if (i != open.end()) {
      victim = std::move(i->second);
      open.erase(i);
    }
  }
};

/// Client text made safe for a log line: at most `n` bytes, control and
/// non-ASCII bytes as \xNN (a target may carry any byte Beast accepts).
std::string clip(beast::string_view x, std::size_t n = 256) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(std::min(x.size(), n) + 8);
  for (std::size_t i = 0; i < x.size() && i < n; ++i) {
    auto c = static_cast<unsigned char>(x[i]);
    if (c < 0x20 || c >= 0x7f || c == '\\') {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (x.size() > n)
    out += "...";
  return out;
}

bool is_http_error(const beast::error_code& ec) {
  return ec.category() == bhttp::make_error_code(bhttp::error::bad_target).category();
}

/// One connection: reads a request, answers it, reads the next (keep-alive).
/// All member functions run on the connection's strand; at most one request
/// is outstanding per connection.
class session : public std::enable_shared_from_this<session> {
public:
  using executor_type = beast::tcp_stream::executor_type;

  session(tcp::socket&& socket, std::shared_ptr<shared_state> state, uint64_t id)
      : asker_context_(&state->sys), stream_(std::move(socket)),
        keepalive_timer_(stream_.get_executor()), state_(std::move(state)), id_(id) {}

  ~session() {
    if (busy_)
      state_->in_flight.fetch_sub(1);
    stream_cleanup();
    result_cleanup();
    watch_cleanup();
    // Answers still on their way find no handler and are dropped.
    if (auto self = asker_ptr()) {
      self->on_enqueue({});
      self->cleanup(caf::error{}, &asker_context_);
    }
  }

  executor_type executor() {
    return stream_.get_executor();
  }

  void start() {
    asio::dispatch(stream_.get_executor(),
                   beast::bind_front_handler(&session::do_read, shared_from_this()));
  }

  /// The server stopped accepting: close now if between requests or on an
  /// event stream, otherwise after the current answer.
  void on_stop_accepting() {
    if (sse_ && sse_->streaming && !sse_->ended && !closed_)
      return end_stream("server stopping");
    if (!busy_ && !closed_ && buffer_.size() == 0 && (!parser_ || !parser_->got_some()))
      finish();
  }

  /// A live event from the subscriber of stream `sid` (on the strand).
  void on_live_event(uint64_t sid, job_event ev);

  /// A piece of the streamed result `sid` from its chunk sink (on the strand).
  void on_result_chunk(uint64_t sid, std::string data);

  /// Sends `r` as the answer to the current request. Only call while busy.
  void respond(reply r);

  /// Requests `xs...` from the gateway through a one-shot actor and calls
  /// `on_ok(session&, T&)` or `on_err(session&, caf::error&)` on the strand
  /// while the current request is unanswered.
  template <class T, class OnOk, class OnErr, class... Ts>
  void ask_or(OnOk on_ok, OnErr on_err, Ts... xs) {
    ask_or_within<T>(state_->actor_timeout, std::move(on_ok), std::move(on_err),
                     std::move(xs)...);
  }

  /// ask_or with its own deadline.
  template <class T, class OnOk, class OnErr, class... Ts>
  void ask_or_within(std::chrono::milliseconds timeout, OnOk on_ok, OnErr on_err,
                     Ts... xs);

  /// ask_or with the default error path: gateway_error_reply.
  template <class T, class OnOk, class... Ts>
  void ask(OnOk on_ok, Ts... xs) {
    ask_or<T>(
        std::move(on_ok),
        [](session& s, caf::error& err) {
          s.respond(gateway_error_reply(err, s.state_->actor_timeout.count()));
        },
        std::move(xs)...);
  }

  /// ask for a request that waits for a model to run (run_timeout).
  template <class T, class OnOk, class... Ts>
  void ask_run(OnOk on_ok, Ts... xs) {
    ask_or_within<T>(
        state_->run_timeout, std::move(on_ok),
        [](session& s, caf::error& err) {
          s.respond(gateway_error_reply(err, s.state_->run_timeout.count()));
        },
        std::move(xs)...);
  }

  /// Runs `f` for the request generation `gen`; an answer that arrives for
  /// a request already answered is dropped. Exceptions become a 500.
  template <class F>
  void resume(uint64_t gen, F&& f) {
    if (closed_ || !busy_ || gen != generation_)
      return;
    guarded(std::forward<F>(f));
  }

private:
  /// ask_or without the guard: the callbacks run on the strand whenever the
  /// answer comes, as long as the session exists.
  template <class T, class OnOk, class OnErr, class... Ts>
  void ask_raw(std::chrono::milliseconds timeout, OnOk on_ok, OnErr on_err, Ts... xs);

  // -- the session's actor --------------------------------------------------
  //
  // Requests to the gateway leave from an actor_companion owned by the
  // session: the answer is posted straight onto the session's strand and
  // handled there (CAF's pattern for foreign event loops, as in its Qt
  // mixin). No actor is spawned and no CAF thread is woken per request, and
  // the deadline is an Asio timer on this strand rather than an entry in
  // CAF's clock thread: on a small machine each such wake-up costs more
  // than the model call (docs/benchmarks.md).

  /// The companion, made on first use.
  asker_actor* asker();
  asker_actor* asker_ptr() {
    return asker_
               ? static_cast<asker_actor*>(caf::actor_cast<caf::abstract_actor*>(asker_))
               : nullptr;
  }
  /// Runs one message of the companion (an answer) on the strand.
  void on_asker_message(caf::mailbox_element& x) {
    if (auto self = asker_ptr())
      self->activate(&asker_context_, x);
  }
  /// Ends ask `id`: false when it already ended (answered or timed out).
  bool end_ask(uint64_t id) {
    auto i = asks_.find(id);
    if (i == asks_.end())
      return false;
    i->second->cancel();
    asks_.erase(i);
    return true;
  }

  /// ask_or for an event stream whose header is out: the callbacks run while
  /// the stream is open.
  template <class T, class OnOk, class OnErr, class... Ts>
  void ask_stream(OnOk on_ok, OnErr on_err, Ts... xs);

  template <class F>
  void guarded(F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      fail_internal(e.what());
    }
  }

  void fail_internal(const char* what) {
    spdlog::error("{} {} {}: internal error: {}", request_id_, method_, clip(target_),
                  what);
    if (busy_ && !responding_) {
      try {
        respond(
            error_reply(errc::internal, "internal error (request " + request_id_ + ")"));
        return;
      } catch (const std::exception& e) {
        spdlog::error("{} cannot answer: {}", request_id_, e.what());
      }
    }
    finish();
  }

  void do_read() {
    if (closed_)
      return;
    if (!state_->accepting.load()) {
      finish();
      return;
    }
    parser_.emplace();
    parser_->body_limit(state_->opts.max_body_bytes);
    stream_.expires_after(state_->io_timeout);
    bhttp::async_read_header(
        stream_, buffer_, *parser_,
        beast::bind_front_handler(&session::on_header, shared_from_this()));
  }

  void on_header(beast::error_code ec, std::size_t) {
    guarded([&] {
      if (ec)
        return on_read_error(ec);
      auto& req = parser_->get();
      if (beast::iequals(req[bhttp::field::expect], "100-continue")) {
        // The client waits for a go-ahead before it sends the body.
        continue_ = {};
        continue_.version(11);
        continue_.result(bhttp::status::continue_);
        bhttp::async_write(
            stream_, continue_,
            beast::bind_front_handler(&session::on_continue, shared_from_this()));
        return;
      }
      read_body();
    });
  }

  void on_continue(beast::error_code ec, std::size_t) {
    if (ec)
      return finish();
    read_body();
  }

  void read_body() {
    if (parser_->is_done())
      return on_read({}, 0);
    stream_.expires_after(state_->io_timeout);
    bhttp::async_read(stream_, buffer_, *parser_,
                      beast::bind_front_handler(&session::on_read, shared_from_this()));
  }

  void on_read(beast::error_code ec, std::size_t) {
    guarded([&] {
      if (ec)
        return on_read_error(ec);
      stream_.expires_never(); // the actor request has its own deadline
      begin_request();
      dispatch_request();
    });
  }

  void on_read_error(const beast::error_code& ec) {
    if (ec == bhttp::error::body_limit) {
      begin_request();
      keep_alive_ = false;
      respond(error_reply(errc::payload_too_large,
                          "body: larger than "
                              + std::to_string(state_->opts.max_body_bytes) + " bytes"));
      return;
    }
    if (is_http_error(ec) && ec != bhttp::error::end_of_stream
        && ec != bhttp::error::partial_message) {
      begin_request();
      keep_alive_ = false;
      respond(
          error_reply(errc::invalid_input, "malformed HTTP request: " + ec.message()));
      return;
    }
    // End of stream, timeout, reset, or closed by stop_accepting.
    finish();
  }

  void begin_request() {
    busy_ = true;
    responding_ = false;
    ++generation_;
    state_->in_flight.fetch_add(1);
    started_ = clock_type::now();
    auto& req = parser_->get();
    method_ = std::string{req.method_string()};
    if (method_.empty())
      method_ = "-";
    target_ = std::string{req.target()};
    version_ = req.version() == 10 ? 10 : 11;
    keep_alive_ = req.keep_alive();
    auto rid = req["X-Request-Id"];
    request_id_ = valid_request_id(rid) ? std::string{rid} : make_request_id();
    // Known even for a 413, so that its metrics carry the route template.
    route_ = match_route(method_, target_);
  }

  void dispatch_request();

  /// GET /v1/sessions: hands the socket to a WebSocket connection.
  void upgrade_to_session();

  void on_write(bool keep_alive, beast::error_code ec, std::size_t) {
    if (busy_) {
      busy_ = false;
      state_->in_flight.fetch_sub(1);
    }
    if (ec)
      return finish();
    if (watch_ && watch_->reading) {
      // The watch read was cancelled and is not back yet: it reads into
      // buffer_, so the next read (or the linger) waits for it.
      watch_->then_keep_alive = keep_alive;
      watch_->then_continue = true;
      return;
    }
    after_answer(keep_alive);
  }

  /// What follows an answer that was written: the next request, or the end.
  void after_answer(bool keep_alive) {
    watch_.reset();
    if (closed_)
      return;
    if (!keep_alive || !state_->accepting.load()) {
      if (parser_ && !parser_->is_done())
        return linger();
      return finish();
    }
    do_read();
  }

  /// Closes our side, then reads and drops what the client still sends
  /// (bounded by linger_deadline), so it sees our answer, not a reset.
  void linger() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    buffer_.clear();
    stream_.expires_after(linger_deadline);
    drain();
  }

  void drain() {
    stream_.async_read_some(
        buffer_.prepare(64 * 1024),
        [self = shared_from_this()](beast::error_code ec, std::size_t n) {
          self->buffer_.commit(n);
          self->buffer_.clear();
          if (ec)
            return self->finish();
          self->drain();
        });
  }

  void finish() {
    stream_cleanup();
    result_cleanup();
    watch_cleanup();
    if (closed_)
      return;
    closed_ = true;
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
    state_->remove(id_);
  }

  // -- event streams (GET /v1/jobs/{id}/events) -----------------------------

  /// One job's event stream. A stream whose header went out ends the
  /// connection; one refused before that leaves it open for the next request.
  struct event_stream {
    /// Tells this stream's posts from those of an earlier one.
    uint64_t id = 0;
    int64_t job = 0;
    /// Highest seq written or queued; anything at or below it is dropped.
    int64_t last_seq = 0;
    event_subscriber_actor sub;
    /// The job was final when the stream opened: end after the backlog.
    bool final_at_open = false;
    /// The header is being written or was written.
    bool streaming = false;
    /// Every stored event is queued; live ones may follow.
    bool backlog_done = false;
    /// A backlog page is being fetched.
    bool fetching = false;
    /// A final status event is queued: close after writing it.
    bool ending = false;
    /// Unsubscribed, the subscriber gone: everything else is dropped.
    bool ended = false;
    /// An async_write (header or frames) is out.
    bool writing = false;
    /// Live events that arrived while they could not be written yet.
    std::vector<job_event> live;
    /// Frames for the next write, and those of the write that is out.
    std::string pending;
    std::string out;
    uint64_t keepalive_gen = 0;
    std::array<char, 1024> discard{};
    bhttp::response<bhttp::empty_body> head;
    std::optional<bhttp::response_serializer<bhttp::empty_body>> serializer;
  };

  bool stream_current(uint64_t sid) const {
    return !closed_ && sse_ && sse_->id == sid && !sse_->ended;
  }

  void open_events(int64_t job, int64_t after);
  void events_subscribed();
  void events_job_known(const job_record& rec);
  void events_first_page(std::vector<job_event>& events);
  void events_next_page(std::vector<job_event>& events);
  void events_answer(reply r);
  void start_stream();
  void on_stream_head(beast::error_code ec, std::size_t);
  void on_stream_write(beast::error_code ec, std::size_t);
  void watch_disconnect();
  void append_events(std::vector<job_event>& events);
  void pump();
  void arm_keepalive();
  void end_stream(const char* why);
  void stream_cleanup();

  // -- streamed results (completions and speech with "stream": true) ---------

  /// One streamed answer. Until its header goes out, the request is answered
  /// the ordinary way (an error before the first piece is a JSON error); from
  /// then on the body is written as pieces come, in chunks, and the next
  /// request on the connection is read after its last chunk (HTTP/1.0: the
  /// connection closes after it). It counts as in flight until it ends.
  struct result_stream {
    /// Tells this stream's posts from those of an earlier one.
    uint64_t id = 0;
    /// "completion" or "speech", for log lines.
    const char* what = "completion";
    /// Receives the pieces (spawn_chunk_sink); goes down when the stream
    /// ends, which stops the worker (it monitors the sink).
    chunk_sink_actor sink;
    /// Exactly one of these is set.
    std::optional<completion_stream> text;
    std::optional<speech_stream> audio;
    /// Speech: "audio/wav" or "audio/pcm".
    std::string content_type;
    /// The body uses HTTP/1.1 chunked transfer (every HTTP/1.1 client): it
    /// ends with its last chunk and the connection stays open for the next
    /// request. HTTP/1.0: the body ends with the connection.
    bool chunked = false;
    /// The header is being written or was written.
    bool streaming = false;
    /// An async_write (header or body) is out.
    bool writing = false;
    /// The last chunk (with its trailer) is queued or written.
    bool last_chunk = false;
    /// The sink is gone and everything else is dropped.
    bool ended = false;
    /// The bytes of the write that is out.
    std::string out;
    uint64_t keepalive_gen = 0;
    bhttp::response<bhttp::empty_body> head;
    std::optional<bhttp::response_serializer<bhttp::empty_body>> serializer;
    /// Chunked speech: X-Worker and X-Real-Time-Factor, known at the end.
    bhttp::fields trailer;
  };

  bool result_current(uint64_t sid) const {
    return !closed_ && result_ && result_->id == sid && !result_->ended;
  }

  /// ask_raw for the current result stream: the callbacks run while it is
  /// open, before and after its header.
  template <class T, class OnOk, class OnErr, class... Ts>
  void ask_result(OnOk on_ok, OnErr on_err, Ts... xs);

  void open_completion(openai_request req);
  void open_speech(speech_http_request req);
  void start_speech(speech_http_request req, int64_t rate);
  /// Makes the result stream and its sink, and watches for the client
  /// going away (client_watch: bytes it sends are the next request).
  chunk_sink_actor open_result(const char* what);
  void on_generate_done(generate_reply& r);
  void on_speech_done(speech_reply& r);
  void on_result_error(caf::error& err);
  bool result_has_output() const;
  bool result_finished() const;
  void start_result();
  void on_result_head(beast::error_code ec, std::size_t);
  void on_result_write(beast::error_code ec, std::size_t);
  void pump_result();
  void write_result();
  void arm_result_keepalive();
  void release_sink();
  /// The log line of a result that ends (streamed or not yet).
  void log_result_end(const char* why) const;
  void end_result(const char* why);
  /// The body is complete: the next request, or the end of the connection.
  void complete_result();
  void result_cleanup();

  // -- completions and speech: is the client still there? -------------------

  /// While a generation or synthesis runs (streamed or not), a read on the
  /// socket watches for the client going away: EOF or an error ends the
  /// request and its sink, and the worker (which monitors the sink) stops
  /// within a step. Bytes that arrive are the next request (pipelining): they go to
  /// buffer_ for the next read and are no disconnect. An EOF after such
  /// bytes is taken as a half-close: the client still waits for answers.
  struct client_watch {
    uint64_t id = 0;
    /// "completion" or "speech", for log lines.
    const char* what = "completion";
    /// Drops every chunk; exists so that its exit stops the worker.
    chunk_sink_actor sink;
    /// A read on the socket is out (it reads into buffer_).
    bool reading = false;
    /// The answer is ready: no new read; what the read brings back is kept.
    bool stopped = false;
    /// on_write ran while the read was out: call after_answer when it is back.
    bool then_continue = false;
    bool then_keep_alive = false;
  };

  /// Spawns the sink of a non-streamed request and starts the watch.
  chunk_sink_actor open_watch(const char* what);
  /// Starts the watch alone (a result stream has its own sink).
  void start_watch(const char* what);
  void arm_watch();
  void on_watch_read(uint64_t wid, beast::error_code ec, std::size_t n);
  /// The answer is ready: releases the sink and cancels the read. Called
  /// by respond() and respond_file() before they write.
  void stop_watch();
  /// Releases the sink (the worker stops what it still runs for it).
  void watch_cleanup();

  // -- artifacts -------------------------------------------------------------

  void respond_file(const artifact_ref& ref);
  /// Metrics and the log line of an answer with `status`.
  void note_answer(unsigned status, const std::string& error_code,
                   const std::string& error_message);

  caf::strong_actor_ptr asker_;
  caf::scoped_execution_unit asker_context_;
  /// The deadline of each ask in flight.
  std::unordered_map<uint64_t, std::unique_ptr<asio::steady_timer>> asks_;
  uint64_t next_ask_ = 0;
  beast::tcp_stream stream_;
  asio::steady_timer keepalive_timer_;
  std::unique_ptr<event_stream> sse_;
  std::unique_ptr<result_stream> result_;
  std::optional<client_watch> watch_;
  uint64_t next_stream_id_ = 0;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  bhttp::response<bhttp::empty_body> continue_;
  bhttp::response<bhttp::string_body> res_;
  std::optional<bhttp::response<bhttp::file_body>> file_res_;
  std::shared_ptr<shared_state> state_;
  uint64_t id_;

  /// A request is received and not yet answered (counted in in_flight).
  bool busy_ = false;
  /// The answer to the current request is being written.
  bool responding_ = false;
  bool closed_ = false;
  bool keep_alive_ = true;
  uint64_t generation_ = 0;
  unsigned version_ = 11;
  std::string method_;
  std::string target_;
  std::string request_id_;
  route_match route_;
  clock_type::time_point started_;
};

template <class Conn, class F>
void gate::post(const std::weak_ptr<Conn>& weak, F&& f) {
  std::lock_guard<std::mutex> guard{mtx};
  if (!open)
    return;
  auto s = weak.lock();
  if (!s)
    return;
  auto ex = s->executor();
  asio::post(ex, [s = std::move(s), f = std::forward<F>(f)]() mutable { f(*s); });
}

asker_actor* session::asker() {
  if (!asker_) {
    asker_ = caf::actor_cast<caf::strong_actor_ptr>(state_->sys.spawn<asker_actor>());
    // Without a behavior a companion ends after its first answer (nothing
    // left to wait for); this one lives as long as the session.
    asker_ptr()->become([](caf::atom_constant<caf::atom("asker")>) {});
    asker_ptr()->set_default_handler(caf::drop);
    std::weak_ptr<session> weak = weak_from_this();
    auto g = state_->gate_ptr;
    asker_ptr()->on_enqueue([weak, g](caf::mailbox_element_ptr ptr) {
      g->post(weak,
              [ptr = std::move(ptr)](session& s) mutable { s.on_asker_message(*ptr); });
    });
  }
  return asker_ptr();
}

/// Whether an ask of this message type may run the gateway and queue on
/// the I/O thread: interactive inference only.
template <class Atom, class... Rest>
constexpr bool runs_here() {
  return std::is_same<Atom, infer_atom>::value || std::is_same<Atom, generate_atom>::value
         || std::is_same<Atom, speech_atom>::value;
}

template <class T, class OnOk, class OnErr, class... Ts>
void session::ask_raw(std::chrono::milliseconds timeout, OnOk on_ok, OnErr on_err,
                      Ts... xs) {
  auto id = ++next_ask_;
  auto& timer = asks_[id];
  timer = std::make_unique<asio::steady_timer>(executor(), timeout);
  std::weak_ptr<session> weak = weak_from_this();
  timer->async_wait([weak, id, on_err](beast::error_code ec) mutable {
    auto s = weak.lock();
    if (ec || !s || !s->end_ask(id))
      return;
    caf::error err = caf::make_error(caf::sec::request_timeout);
    on_err(*s, err);
  });
  // The handlers run inside on_asker_message, on this session's strand,
  // while the session exists: `this` is valid there. For interactive
  // inference the gateway (and the queue it delegates to) runs on this
  // thread if idle (caller_runs): no scheduler thread to wake. Other asks
  // (job submits and their group commit, listings, admin) stay off the I/O
  // thread.
  auto* self = asker();
  auto* unit = runs_here<Ts...>() ? caller_runs::current() : nullptr;
  std::optional<caller_runs::window> open; // runs them when this returns
  if (unit)
    open.emplace(*unit);
  self->context(unit ? static_cast<caf::execution_unit*>(unit) : &asker_context_);
  self->request(state_->gateway, caf::infinite, std::move(xs)...)
      .then(
          [this, id, on_ok](T& result) mutable {
            if (end_ask(id))
              on_ok(*this, result);
          },
          [this, id, on_err](caf::error& err) mutable {
            if (end_ask(id))
              on_err(*this, err);
          });
}

template <class T, class OnOk, class OnErr, class... Ts>
void session::ask_or_within(std::chrono::milliseconds timeout, OnOk on_ok, OnErr on_err,
                            Ts... xs) {
  auto gen = generation_;
  ask_raw<T>(
      timeout, [on_ok, gen](session& s, T& r) { s.resume(gen, [&] { on_ok(s, r); }); },
      [on_err, gen](session& s, caf::error& err) {
        s.resume(gen, [&] { on_err(s, err); });
      },
      std::move(xs)...);
}

template <class T, class OnOk, class OnErr, class... Ts>
void session::ask_stream(OnOk on_ok, OnErr on_err, Ts... xs) {
  auto sid = sse_->id;
  ask_raw<T>(
      state_->actor_timeout,
      [on_ok, sid](session& s, T& r) {
        if (s.stream_current(sid))
          s.guarded([&] { on_ok(s, r); });
      },
      [on_err, sid](session& s, caf::error& err) {
        if (s.stream_current(sid))
          s.guarded([&] { on_err(s, err); });
      },
      std::move(xs)...);
}

template <class T, class OnOk, class OnErr, class... Ts>
void session::ask_result(OnOk on_ok, OnErr on_err, Ts... xs) {
  auto sid = result_->id;
  ask_raw<T>(
      state_->run_timeout,
      [on_ok, sid](session& s, T& r) {
        if (s.result_current(sid))
          s.guarded([&] { on_ok(s, r); });
      },
      [on_err, sid](session& s, caf::error& err) {
        if (s.result_current(sid))
          s.guarded([&] { on_err(s, err); });
      },
      std::move(xs)...);
}

void session::note_answer(unsigned status, const std::string& error_code,
                          const std::string& error_message) {
  auto seconds = std::chrono::duration<double>(clock_type::now() - started_).count();
  state_->metrics.observe(route_.pattern, method_label(method_), status, seconds);
  auto ms = seconds * 1000.0;
  if (status >= 500 && status != 503 && status != 504)
    spdlog::error("{} {} {} -> {} {:.2f}ms {}: {}", request_id_, method_, clip(target_),
                  status, ms, error_code, clip(error_message, 1024));
  else if (status >= 400)
    spdlog::info("{} {} {} -> {} {:.2f}ms {}: {}", request_id_, method_, clip(target_),
                 status, ms, error_code, clip(error_message, 1024));
  else
    spdlog::info("{} {} {} -> {} {:.2f}ms", request_id_, method_, clip(target_), status,
                 ms);
}

void session::respond(reply r) {
  if (!busy_ || responding_)
    return;
  stop_watch();
  responding_ = true;
  bool keep = keep_alive_ && state_->accepting.load();
  res_ = {};
  res_.version(version_);
  res_.result(r.status);
  res_.set(bhttp::field::server, "infergrid");
  if (!r.content_type.empty())
    res_.set(bhttp::field::content_type, r.content_type);
  res_.set("X-Request-Id", request_id_);
  for (auto& [name, value] : r.headers)
    res_.set(name, value);
  res_.keep_alive(keep);
  res_.body() = std::move(r.body);
  // A 204 carries neither a body nor a Content-Length.
  if (r.status != 204)
    res_.prepare_payload();
  note_answer(r.status, r.error_code, r.error_message);
  stream_.expires_after(state_->io_timeout);
  bhttp::async_write(
      stream_, res_,
      beast::bind_front_handler(&session::on_write, shared_from_this(), keep));
}

void session::respond_file(const artifact_ref& ref) {
  if (!busy_ || responding_)
    return;
  beast::error_code ec;
  bhttp::file_body::value_type body;
  body.open(ref.path.c_str(), beast::file_mode::scan, ec);
  if (ec) {
    // Listed but gone (cleanup removed it meanwhile, or the disk failed).
    spdlog::warn("{} artifact {}: {}", request_id_, ref.path, ec.message());
    return respond(error_reply(errc::not_found, "the artifact's file is gone"));
  }
  stop_watch();
  responding_ = true;
  bool keep = keep_alive_ && state_->accepting.load();
  file_res_.emplace(std::piecewise_construct, std::make_tuple(std::move(body)),
                    std::make_tuple(bhttp::status::ok, version_));
  auto& res = *file_res_;
  res.set(bhttp::field::server, "infergrid");
  res.set(bhttp::field::content_type, artifact_content_type(ref));
  res.set("X-Request-Id", request_id_);
  res.keep_alive(keep);
  res.prepare_payload();
  note_answer(200, {}, {});
  stream_.expires_after(state_->io_timeout);
  bhttp::async_write(
      stream_, res,
      [self = shared_from_this(), keep](beast::error_code wec, std::size_t n) {
        self->file_res_.reset(); // closes the file
        self->on_write(keep, wec, n);
      });
}

void session::dispatch_request() {
  auto& req = parser_->get();
  switch (route_.id) {
    case route_id::none:
      if (!route_.allow.empty())
        return respond(method_not_allowed(method_, route_.path, route_.allow));
      return respond(error_reply(errc::not_found,
                                 "no route for " + method_ + " " + clip(route_.path)));
    case route_id::healthz:
      return respond(health_reply());
    case route_id::health_live:
      return respond(live_reply());
    case route_id::readyz:
    case route_id::health_ready:
      return ask<cluster_stats>(
          [](session& s, cluster_stats& stats) { s.respond(ready_reply(stats)); },
          stats_atom::value);
    case route_id::metrics: {
      auto render = [](session& s, const cluster_stats* stats) {
        reply r;
        r.content_type = metrics_content_type;
        r.body = s.state_->metrics.render(stats, s.state_->in_flight.load());
        s.respond(std::move(r));
      };
      return ask_or<cluster_stats>(
          [render](session& s, cluster_stats& stats) { render(s, &stats); },
          [render](session& s, caf::error& err) {
            // The HTTP series are ours to serve even when the gateway is not.
            spdlog::warn("{} /metrics without cluster stats: {}", s.request_id_,
                         message_of(err));
            render(s, nullptr);
          },
          stats_atom::value);
    }
    case route_id::jobs_submit: {
      auto job = parse_job_request(req.body());
      if (!job)
        return respond(error_reply(job.error()));
      return ask<job_record>(
          [](session& s, job_record& rec) { s.respond(job_created_reply(rec)); },
          submit_atom::value, std::move(*job));
    }
    case route_id::jobs_list: {
      auto filter = parse_job_filter(target_);
      if (!filter)
        return respond(error_reply(filter.error()));
      return ask<job_page>(
          [](session& s, job_page& page) { s.respond(jobs_page_reply(page)); },
          list_atom::value, std::move(*filter));
    }
    case route_id::job_get:
    case route_id::job_cancel:
    case route_id::job_events: {
      int64_t id = 0;
      if (!parse_job_id(route_.param, id))
        return respond(
            error_reply(errc::not_found, "no job '" + clip(route_.param, 64) + "'"));
      if (route_.id == route_id::job_get)
        return ask<job_record>(
            [](session& s, job_record& rec) { s.respond(job_reply(rec)); },
            job_get_atom::value, id);
      if (route_.id == route_id::job_cancel)
        return ask<job_record>(
            [](session& s, job_record& rec) { s.respond(job_reply(rec)); },
            cancel_atom::value, id);
      std::optional<std::string_view> last_event_id;
      if (auto i = req.find("Last-Event-ID"); i != req.end())
        last_event_id.emplace(i->value().data(), i->value().size());
      auto after = parse_events_after(target_, last_event_id);
      if (!after)
        return respond(error_reply(after.error()));
      return open_events(id, *after);
    }
    case route_id::models_list:
      return ask<std::vector<model_info>>(
          [](session& s, std::vector<model_info>& models) {
            s.state_->remember_models(models);
            s.ask<cluster_stats>(
                [models = std::move(models)](session& s2, cluster_stats& stats) {
                  s2.respond(models_list_reply(models, stats));
                },
                stats_atom::value);
          },
          models_atom::value);
    case route_id::model_metadata:
      return ask<std::vector<model_info>>(
          [name = route_.param](session& s, std::vector<model_info>& models) {
            s.respond(model_metadata_reply(models, name));
          },
          models_atom::value);
    case route_id::model_ready:
      return ask<cluster_stats>(
          [name = route_.param](session& s, cluster_stats& stats) {
            s.respond(model_ready_reply(stats, name));
          },
          stats_atom::value);
    case route_id::model_infer: {
      auto id = parse_infer_id(req.body());
      if (!id)
        return respond(error_reply(id.error()));
      auto model = route_.param;
      return ask<std::vector<tensor_data>>(
          [model, id = std::move(*id)](session& s, std::vector<tensor_data>& outputs) {
            s.respond(infer_reply(model, id, outputs));
          },
          infer_atom::value, model, std::move(req.body()), request_id_);
    }
    case route_id::completions:
    case route_id::chat_completions: {
      auto parsed
          = parse_openai_request(req.body(), route_.id == route_id::chat_completions);
      if (!parsed)
        return respond(error_reply(parsed.error()));
      return open_completion(std::move(*parsed));
    }
    case route_id::audio_speech: {
      auto parsed = parse_speech_request(req.body());
      if (!parsed)
        return respond(error_reply(parsed.error()));
      return open_speech(std::move(*parsed));
    }
    case route_id::job_artifact: {
      int64_t id = 0;
      if (!parse_job_id(route_.param, id))
        return respond(
            error_reply(errc::not_found, "no job '" + clip(route_.param, 64) + "'"));
      if (!valid_artifact_name(route_.param2))
        return respond(
            error_reply(errc::not_found, "no artifact '" + clip(route_.param2, 64)
                                             + "' of job " + job_id_string(id)));
      return ask<artifact_ref>([](session& s, artifact_ref& ref) { s.respond_file(ref); },
                               artifact_atom::value, id, route_.param2);
    }
    case route_id::model_load:
    case route_id::model_unload: {
      auto model = route_.param;
      auto answer = [model](session& s, std::vector<worker_status>& workers) {
        s.respond(model_change_reply(model, workers));
      };
      if (route_.id == route_id::model_load)
        return ask_run<std::vector<worker_status>>(answer, load_atom::value, model);
      return ask_run<std::vector<worker_status>>(answer, unload_atom::value, model);
    }
    // The admin API. When auth exists (auth.enabled, API.md "Operations"),
    // the admin role check goes here, before any of these is asked:
    // is_admin_route(route_.id) and a key without the admin role -> 403.
    case route_id::admin_workers:
      return ask<cluster_stats>(
          [](session& s, cluster_stats& stats) { s.respond(workers_reply(stats)); },
          stats_atom::value);
    case route_id::admin_queue:
      return ask<cluster_stats>(
          [](session& s, cluster_stats& stats) { s.respond(queue_reply(stats)); },
          stats_atom::value);
    case route_id::admin_worker_drain:
    case route_id::admin_worker_resume:
      return ask<worker_status>(
          [](session& s, worker_status& w) { s.respond(worker_reply(w)); },
          drain_atom::value, route_.param, route_.id == route_id::admin_worker_drain);
    case route_id::admin_sessions:
      return ask<cluster_stats>(
          [](session& s, cluster_stats& stats) { s.respond(sessions_reply(stats)); },
          stats_atom::value);
    case route_id::sessions:
      return upgrade_to_session();
  }
  respond(error_reply(errc::internal, "unhandled route"));
}

/// One session over WebSocket (GET /v1/sessions). The connection carries
/// frames; the session actor (actors/session.hpp) decides what they mean.
/// Reads go to the actor as they arrive (at most ws_max_unhandled ahead of
/// it); the actor's frames are written in order, at most ws_max_pending
/// bytes held. All member functions run on the connection's strand.
class ws_connection : public std::enable_shared_from_this<ws_connection> {
public:
  using executor_type = beast::tcp_stream::executor_type;

  ws_connection(tcp::socket&& socket, std::shared_ptr<shared_state> state, uint64_t id,
                std::string request_id)
      : ws_(std::move(socket)), state_(std::move(state)), id_(id),
        request_id_(std::move(request_id)) {}

  ~ws_connection() {
    tell_closed();
  }

  executor_type executor() {
    return ws_.get_executor();
  }

  void start(bhttp::request<bhttp::string_body> req) {
    req_ = std::move(req);
    // The WebSocket's own timeouts (a ping after half the idle time, closed
    // when nothing came back) replace the TCP stream's.
    beast::get_lowest_layer(ws_).expires_never();
    beast::websocket::stream_base::timeout t;
    t.handshake_timeout = std::chrono::seconds(10);
    t.idle_timeout = state_->io_timeout;
    t.keep_alive_pings = true;
    ws_.set_option(t);
    ws_.read_message_max(ws_max_frame);
    ws_.set_option(beast::websocket::stream_base::decorator(
        [](beast::websocket::response_type& res) {
          res.set(bhttp::field::server, "infergrid");
        }));
    ws_.async_accept(
        req_, beast::bind_front_handler(&ws_connection::on_accept, shared_from_this()));
  }

  /// The server stops: the session ends (its client hears why).
  void on_stop_accepting() {
    if (!actor_)
      return finish();
    caf::anon_send(actor_, session_atom::value,
                   session_event{"session.end", 0, -1, "server_stopping"});
  }

  /// A frame from the session actor.
  void push(bool binary, std::string data) {
    if (finished_ || closing_)
      return;
    pending_bytes_ += data.size();
    if (pending_bytes_ > ws_max_pending) {
      spdlog::warn("{} session: the client takes its frames too slowly ({} bytes held); "
                   "closing",
                   request_id_, pending_bytes_);
      return finish();
    }
    out_.push_back(frame{binary, std::move(data)});
    if (!writing_)
      write_next();
  }

  /// The session actor is done: close once the frames before are written.
  void close_after_writes() {
    closing_ = true;
    if (!writing_)
      write_next();
  }

  /// The session actor handled one of our frames.
  void handled() {
    --unhandled_;
    if (read_paused_ && !finished_) {
      read_paused_ = false;
      do_read();
    }
  }

private:
  struct frame {
    bool binary;
    std::string data;
  };

  void on_accept(beast::error_code ec) {
    if (ec) {
      spdlog::info("{} GET /v1/sessions: WebSocket handshake failed: {}", request_id_,
                   ec.message());
      return finish();
    }
    std::weak_ptr<ws_connection> weak = shared_from_this();
    auto g = state_->gate_ptr;
    session_transport out;
    out.text = [g, weak](std::string data) {
      g->post(weak, [data = std::move(data)](ws_connection& c) mutable {
        c.push(false, std::move(data));
      });
    };
    out.binary = [g, weak](std::string data) {
      g->post(weak, [data = std::move(data)](ws_connection& c) mutable {
        c.push(true, std::move(data));
      });
    };
    out.close
        = [g, weak] { g->post(weak, [](ws_connection& c) { c.close_after_writes(); }); };
    out.handled = [g, weak] { g->post(weak, [](ws_connection& c) { c.handled(); }); };
    actor_ = spawn_session(state_->sys, state_->gateway, session_config{request_id_},
                           std::move(out));
    do_read();
  }

  void do_read() {
    if (unhandled_ >= ws_max_unhandled) {
      read_paused_ = true; // handled() reads on
      return;
    }
    ws_.async_read(
        in_, beast::bind_front_handler(&ws_connection::on_read, shared_from_this()));
  }

  void on_read(beast::error_code ec, std::size_t) {
    if (ec) {
      if (ec != beast::websocket::error::closed && ec != asio::error::operation_aborted)
        spdlog::info("{} session connection: {}", request_id_, ec.message());
      return finish();
    }
    if (finished_)
      return;
    auto data = beast::buffers_to_string(in_.data());
    in_.consume(in_.size());
    // The actor acknowledges each frame (transport.handled), so a client
    // cannot fill its mailbox.
    ++unhandled_;
    if (ws_.got_text())
      caf::anon_send(actor_, ws_text_atom::value, std::move(data));
    else
      caf::anon_send(actor_, ws_binary_atom::value, std::move(data));
    do_read();
  }

  void write_next() {
    if (finished_ || writing_)
      return;
    if (out_.empty()) {
      if (closing_) {
        writing_ = true;
        ws_.async_close(
            beast::websocket::close_code::normal,
            [self = shared_from_this()](beast::error_code) { self->finish(); });
      }
      return;
    }
    writing_ = true;
    ws_.binary(out_.front().binary);
    ws_.async_write(
        asio::buffer(out_.front().data),
        beast::bind_front_handler(&ws_connection::on_write, shared_from_this()));
  }

  void on_write(beast::error_code ec, std::size_t) {
    writing_ = false;
    if (ec)
      return finish();
    pending_bytes_ -= out_.front().data.size();
    out_.pop_front();
    write_next();
  }

  void tell_closed() {
    if (actor_ && !told_closed_) {
      told_closed_ = true;
      caf::anon_send(actor_, ws_closed_atom::value);
    }
  }

  void finish() {
    if (finished_)
      return;
    finished_ = true;
    tell_closed();
    beast::error_code ignored;
    auto& sock = beast::get_lowest_layer(ws_).socket();
    sock.shutdown(tcp::socket::shutdown_both, ignored);
    sock.close(ignored);
    state_->remove_socket(id_);
  }

  beast::websocket::stream<beast::tcp_stream> ws_;
  std::shared_ptr<shared_state> state_;
  uint64_t id_;
  std::string request_id_;
  bhttp::request<bhttp::string_body> req_;
  session_actor actor_;
  beast::flat_buffer in_;
  std::deque<frame> out_;
  std::size_t pending_bytes_ = 0;
  int64_t unhandled_ = 0;
  bool read_paused_ = false;
  bool writing_ = false;
  bool closing_ = false;
  bool finished_ = false;
  bool told_closed_ = false;
};

void session::upgrade_to_session() {
  auto& req = parser_->get();
  if (!beast::websocket::is_upgrade(req))
    return respond(error_reply(errc::invalid_input,
                               "GET /v1/sessions: expected a WebSocket upgrade "
                               "(Connection: Upgrade, Upgrade: websocket)"));
  std::shared_ptr<ws_connection> conn;
  {
    std::lock_guard<std::mutex> guard{state_->sessions_mtx};
    if (!state_->accepting.load())
      return respond(error_reply(errc::unavailable, "the server is stopping"));
    conn = std::make_shared<ws_connection>(stream_.release_socket(), state_, id_,
                                           request_id_);
    state_->sockets.emplace(id_, conn);
  }
  note_answer(101, "", "");
  conn->start(parser_->release());
  // This HTTP connection has no socket any more.
  finish();
}

// -- streamed results ----------------------------------------------------------
//
// A streamed completion or synthesis: a chunk sink posts each piece to the
// strand; the gateway's final reply (through the session's asker) carries the
// whole result. The header goes out with the first piece that can be
// written, or with the final reply, so that errors before any output (unknown
// model, wrong kind, queue full) are ordinary JSON errors. Pieces that come
// after the final reply are dropped; the reply supplies what they carried.
// One write at a time; pieces that come meanwhile are coalesced (bounded: past
// the bound they are dropped and the final reply fills in). When the client
// goes away (a read on the socket completes) or the stream ends, the sink
// goes down, and the worker, which monitors it, stops within one step.

/// The sink of one streamed result: an actor_companion whose pieces are
/// posted straight onto the session's strand from the thread that delivers
/// them (the middleman's for a worker process, the executor's in-process).
/// A scheduled actor here cost one more thread wake-up per piece, the first
/// token's included. release_sink() ends it; its monitors see it go down.
chunk_sink_actor spawn_chunk_sink(caf::actor_system& sys, std::shared_ptr<gate> g,
                                  std::weak_ptr<session> weak, uint64_t sid) {
  auto handle = sys.spawn<caf::actor_companion>();
  auto self
      = static_cast<caf::actor_companion*>(caf::actor_cast<caf::abstract_actor*>(handle));
  self->on_enqueue([g = std::move(g), weak = std::move(weak),
                    sid](caf::mailbox_element_ptr ptr) {
    auto& msg = ptr->content();
    if (!msg.match_elements<chunk_atom, std::string>())
      return; // exit and system messages: release_sink() is the only way out
    g->post(weak, [sid, data = std::string{msg.get_as<std::string>(1)}](
                      session& s) mutable { s.on_result_chunk(sid, std::move(data)); });
  });
  return caf::actor_cast<chunk_sink_actor>(std::move(handle));
}

void session::open_completion(openai_request req) {
  auto created = unix_now_ms() / 1000;
  generate_request gen;
  gen.model = req.model;
  gen.params = req.params;
  gen.request_id = request_id_;
  if (!req.stream) {
    gen.sink = open_watch("completion");
    gen.stream = false; // the sink only watches the client
    return ask_run<generate_reply>(
        [req = std::move(req), created](session& s, generate_reply& r) {
          s.respond(completion_reply(req, s.request_id_, created, r));
        },
        generate_atom::value, std::move(gen));
  }
  gen.sink = open_result("completion");
  result_->text.emplace(completion_id(req.chat, request_id_), req.model, created,
                        req.chat, req.include_usage, completion_max_pending);
  ask_result<generate_reply>([](session& s, generate_reply& r) { s.on_generate_done(r); },
                             [](session& s, caf::error& err) { s.on_result_error(err); },
                             generate_atom::value, std::move(gen));
}

speech_request speech_request_of(const speech_http_request& req,
                                 const std::string& request_id) {
  speech_request out;
  out.model = req.model;
  out.text = req.input.text;
  out.voice = req.input.voice;
  out.request_id = request_id;
  return out;
}

void session::open_speech(speech_http_request req) {
  if (!req.stream) {
    auto sreq = speech_request_of(req, request_id_);
    sreq.sink = open_watch("speech");
    sreq.stream = false; // the sink only watches the client
    return ask_run<speech_reply>(
        [req = std::move(req)](session& s, speech_reply& r) {
          s.respond(speech_response(req, r));
        },
        speech_atom::value, std::move(sreq));
  }
  // The header of a stream states the sample rate before the first phrase.
  int64_t rate = 0;
  if (state_->sample_rate_of(req.model, rate))
    return start_speech(std::move(req), rate);
  auto model = req.model;
  auto lookup = [model](session& s) {
    int64_t r = 0;
    s.state_->sample_rate_of(model, r);
    return r;
  };
  ask_or<std::vector<model_info>>(
      [req, lookup](session& s, std::vector<model_info>& models) {
        s.state_->remember_models(models);
        s.start_speech(req, lookup(s));
      },
      [req](session& s, caf::error& err) {
        // Without the rate the stream still works: the final reply carries it.
        spdlog::warn("{} speech stream: no model list: {}", s.request_id_,
                     message_of(err));
        s.start_speech(req, 0);
      },
      models_atom::value);
}

void session::start_speech(speech_http_request req, int64_t rate) {
  auto sreq = speech_request_of(req, request_id_);
  sreq.sink = open_result("speech");
  bool wav = req.response_format != "pcm";
  result_->audio.emplace(wav, rate, speech_max_pending);
  result_->content_type = wav ? "audio/wav" : "audio/pcm";
  ask_result<speech_reply>([](session& s, speech_reply& r) { s.on_speech_done(r); },
                           [](session& s, caf::error& err) { s.on_result_error(err); },
                           speech_atom::value, std::move(sreq));
}

chunk_sink_actor session::open_result(const char* what) {
  result_cleanup(); // an earlier stream of this connection
  auto st = std::make_unique<result_stream>();
  st->id = ++next_stream_id_;
  st->what = what;
  st->chunked = version_ == 11;
  if (!st->chunked)
    keep_alive_ = false; // the body ends with the connection
  st->sink = spawn_chunk_sink(state_->sys, state_->gate_ptr, weak_from_this(), st->id);
  auto sink = st->sink;
  result_ = std::move(st);
  start_watch(what);
  return sink;
}

void session::on_result_chunk(uint64_t sid, std::string data) {
  if (!result_current(sid))
    return;
  guarded([&] {
    auto& st = *result_;
    bool taken = st.text ? st.text->add_delta(data) : st.audio->add_chunk(data);
    if (!taken)
      return;
    if (!st.streaming) {
      if (result_has_output())
        start_result();
      return;
    }
    pump_result();
  });
}

void session::on_generate_done(generate_reply& r) {
  auto& st = *result_;
  release_sink(); // done: later chunks are dropped anyway
  if (st.text->text_bytes() > r.text.size())
    spdlog::warn("{} completion stream: {} bytes streamed, reply has {}", request_id_,
                 st.text->text_bytes(), r.text.size());
  st.text->finish(r);
  if (!st.streaming)
    return start_result();
  pump_result();
}

void session::on_speech_done(speech_reply& r) {
  auto& st = *result_;
  release_sink();
  if (!st.audio->finish(r))
    spdlog::warn("{} speech stream: announced {} Hz, the audio is at {} Hz", request_id_,
                 st.audio->sample_rate(), r.sample_rate);
  st.trailer.set("X-Worker", r.worker);
  st.trailer.set("X-Real-Time-Factor", real_time_factor_text(r.real_time_factor));
  if (!st.streaming)
    return start_result();
  pump_result();
}

void session::on_result_error(caf::error& err) {
  auto& st = *result_;
  release_sink();
  auto r = gateway_error_reply(err, state_->run_timeout.count());
  if (!st.streaming) {
    result_cleanup();
    return respond(std::move(r));
  }
  spdlog::info("{} {} stream failed after its header: {}: {}", request_id_, st.what,
               r.error_code, clip(r.error_message, 1024));
  if (!st.text)
    // A chunked body that ends without its last chunk tells the client that
    // the answer is incomplete.
    return end_result("synthesis failed");
  errc code = errc::internal;
  from_string(r.error_code, code);
  st.text->fail(code, r.error_message);
  pump_result();
}

bool session::result_has_output() const {
  auto& st = *result_;
  return st.text ? st.text->has_output() : st.audio->has_output();
}

bool session::result_finished() const {
  auto& st = *result_;
  return st.text ? st.text->finished() : st.audio->finished();
}

void session::start_result() {
  auto& st = *result_;
  st.streaming = true;
  st.writing = true;
  // From here on, no ordinary answer: the request ends with the stream.
  responding_ = true;
  auto& h = st.head;
  h.version(version_);
  h.result(bhttp::status::ok);
  h.set(bhttp::field::server, "infergrid");
  h.set("X-Request-Id", request_id_);
  h.set(bhttp::field::cache_control, "no-cache");
  h.set("X-Accel-Buffering", "no"); // proxies: do not buffer the stream
  if (st.text) {
    h.set(bhttp::field::content_type, "text/event-stream");
  } else {
    h.set(bhttp::field::content_type, st.content_type);
    if (st.audio->sample_rate() > 0)
      h.set("X-Sample-Rate", std::to_string(st.audio->sample_rate()));
    if (st.chunked)
      h.set(bhttp::field::trailer, "X-Worker, X-Real-Time-Factor");
  }
  if (st.chunked)
    h.chunked(true);
  // Without chunks the body ends when the connection does.
  h.keep_alive(st.chunked && keep_alive_ && state_->accepting.load());
  note_answer(200, {}, {});
  stream_.expires_after(state_->io_timeout);
  st.serializer.emplace(h);
  bhttp::async_write_header(
      stream_, *st.serializer,
      beast::bind_front_handler(&session::on_result_head, shared_from_this()));
}

void session::on_result_head(beast::error_code ec, std::size_t) {
  result_->writing = false;
  guarded([&] {
    if (closed_ || result_->ended)
      return;
    if (ec)
      return end_result("write failed");
    arm_result_keepalive();
    pump_result();
  });
}

void session::on_result_write(beast::error_code ec, std::size_t) {
  result_->writing = false;
  guarded([&] {
    if (closed_ || result_->ended)
      return;
    if (ec)
      return end_result(ec == beast::error::timeout ? "client not reading"
                                                    : "write failed");
    arm_result_keepalive();
    pump_result();
  });
}

void session::pump_result() {
  auto& st = *result_;
  if (closed_ || st.ended || !st.streaming || st.writing)
    return;
  if (result_has_output()) {
    st.out = st.text ? st.text->take() : st.audio->take();
    if (!st.out.empty())
      return write_result();
  }
  if (!result_finished())
    return;
  if (st.chunked && !st.last_chunk) {
    st.last_chunk = true;
    st.writing = true;
    stream_.expires_after(state_->io_timeout);
    asio::async_write(
        stream_, bhttp::make_chunk_last(st.trailer),
        beast::bind_front_handler(&session::on_result_write, shared_from_this()));
    return;
  }
  complete_result();
}

void session::write_result() {
  auto& st = *result_;
  st.writing = true;
  stream_.expires_after(state_->io_timeout);
  auto done = beast::bind_front_handler(&session::on_result_write, shared_from_this());
  if (st.chunked)
    asio::async_write(stream_, bhttp::make_chunk(asio::buffer(st.out)), std::move(done));
  else
    asio::async_write(stream_, asio::buffer(st.out), std::move(done));
}

void session::arm_result_keepalive() {
  auto& st = *result_;
  if (!st.text) // a chunked audio body has no comments
    return;
  auto gen = ++st.keepalive_gen;
  auto sid = st.id;
  keepalive_timer_.expires_after(sse_keepalive_interval);
  keepalive_timer_.async_wait(
      [self = shared_from_this(), sid, gen](beast::error_code ec) {
        if (ec || !self->result_current(sid) || gen != self->result_->keepalive_gen)
          return;
        auto& rs = *self->result_;
        // While a write is out, its completion arms the next one.
        if (rs.writing || !rs.streaming || self->result_has_output())
          return;
        rs.out = std::string{sse_keepalive};
        self->guarded([&] { self->write_result(); });
      });
}

void session::release_sink() {
  auto& st = *result_;
  if (st.sink) {
    // What actor_companion::disconnect would do (declared in CAF 0.17.6's
    // header, but not in its library): drop what still comes, then go down.
    auto sink = static_cast<caf::actor_companion*>(
        caf::actor_cast<caf::abstract_actor*>(st.sink));
    sink->on_enqueue({});
    sink->cleanup(caf::make_error(caf::exit_reason::user_shutdown), &asker_context_);
    st.sink = nullptr;
  }
}

void session::log_result_end(const char* why) const {
  auto& st = *result_;
  auto seconds = std::chrono::duration<double>(clock_type::now() - started_).count();
  if (st.streaming)
    spdlog::info("{} {} stream ended after {:.2f}ms: {} ({} bytes)", request_id_, st.what,
                 seconds * 1000.0, why,
                 st.text ? st.text->text_bytes() : st.audio->pcm_bytes());
  else
    spdlog::info("{} {} {} -> no answer after {:.2f}ms: {}", request_id_, method_,
                 clip(target_), seconds * 1000.0, why);
}

void session::end_result(const char* why) {
  if (result_ && !result_->ended)
    log_result_end(why);
  result_cleanup();
  if (busy_) {
    busy_ = false;
    state_->in_flight.fetch_sub(1);
  }
  finish();
}

void session::complete_result() {
  log_result_end("done");
  bool keep = result_->chunked && keep_alive_ && state_->accepting.load();
  result_cleanup();
  // Cancels the watch's read; what it read stays in buffer_ for the next
  // request, and on_write waits for the read to come back.
  stop_watch();
  on_write(keep, {}, 0);
  // The connection may stay open for long: it keeps nothing of the stream
  // (every later post or timer finds no current stream and drops out).
  result_.reset();
}

void session::result_cleanup() {
  if (!result_ || result_->ended)
    return;
  auto& st = *result_;
  st.ended = true;
  ++st.keepalive_gen;
  keepalive_timer_.cancel();
  release_sink();
}

// -- the watch of non-streamed completions and speech ------------------------

/// The sink of a non-streamed request: drops every piece (the final reply
/// carries the result); its exit tells the worker that the client left.
chunk_sink_actor::behavior_type liveness_sink(chunk_sink_actor::pointer, std::string) {
  return {
      [](chunk_atom, const std::string&) {},
  };
}

chunk_sink_actor session::open_watch(const char* what) {
  start_watch(what);
  // The argument only avoids a spawn without arguments (see ask_raw).
  watch_->sink = state_->sys.spawn(liveness_sink, request_id_);
  return watch_->sink;
}

void session::start_watch(const char* what) {
  watch_cleanup();
  watch_.emplace();
  watch_->id = ++next_stream_id_;
  watch_->what = what;
  arm_watch();
}

void session::arm_watch() {
  auto& w = *watch_;
  if (buffer_.size() >= watch_readahead_max)
    return; // a client this far ahead is there; TCP holds back the rest
  w.reading = true;
  auto room = std::min<std::size_t>(4096, watch_readahead_max - buffer_.size());
  // Raw socket: no tcp_stream timeout (the request has its own deadline).
  stream_.socket().async_read_some(
      buffer_.prepare(room),
      beast::bind_front_handler(&session::on_watch_read, shared_from_this(), w.id));
}

void session::on_watch_read(uint64_t wid, beast::error_code ec, std::size_t n) {
  buffer_.commit(n); // the next request's bytes, if any
  if (!watch_ || watch_->id != wid)
    return;
  auto& w = *watch_;
  w.reading = false;
  guarded([&] {
    if (closed_)
      return;
    if (w.stopped) {
      // The answer came first; on_write may be waiting for this read.
      if (w.then_continue)
        after_answer(w.then_keep_alive);
      return;
    }
    if (!ec)
      return arm_watch(); // pipelined bytes: kept for the next request
    if (ec == asio::error::eof && buffer_.size() > 0)
      return; // half-closed after sending more requests: it still reads answers
    if (ec == asio::error::operation_aborted && result_ && result_->writing)
      return; // the write timed out and closed the socket: its handler says so
    if (result_ && !result_->ended) {
      // A result stream: releasing its sink stops the worker.
      watch_cleanup();
      return end_result("client closed");
    }
    auto seconds = std::chrono::duration<double>(clock_type::now() - started_).count();
    spdlog::info("{} {} {} -> no answer after {:.2f}ms: client closed ({}); {} stopped",
                 request_id_, method_, clip(target_), seconds * 1000.0, ec.message(),
                 w.what);
    watch_cleanup();
    if (busy_) {
      busy_ = false;
      state_->in_flight.fetch_sub(1);
    }
    finish();
  });
}

void session::stop_watch() {
  if (!watch_ || watch_->stopped)
    return;
  watch_->stopped = true;
  watch_cleanup();
  if (watch_->reading) {
    beast::error_code ignored;
    stream_.socket().cancel(ignored);
  }
}

void session::watch_cleanup() {
  if (watch_ && watch_->sink) {
    caf::anon_send_exit(watch_->sink, caf::exit_reason::user_shutdown);
    watch_->sink = nullptr;
  }
}

// -- event streams -----------------------------------------------------------
//
// Opening (the request is in flight, answers go through ask_or):
//   1. spawn the subscriber; 2. subscribe it at the gateway and wait for the
//   answer, so no event committed after this point can be missed; 3. read the
//   job (unknown: 404; final: no live event will come); 4. read the backlog
//   after `after`. Live events that arrive meanwhile wait in `live`.
// Streaming (the header is out, the request no longer counts as in flight):
//   the backlog is written a page at a time (a full page fetches the next),
//   then the live events, in seq order, each seq at most once. One write at
//   a time; frames queued meanwhile go out together with the next one.

/// The subscriber of one stream: posts each event to the connection's strand.
event_subscriber_actor::behavior_type event_subscriber(event_subscriber_actor::pointer,
                                                       std::shared_ptr<gate> g,
                                                       std::weak_ptr<session> weak,
                                                       uint64_t sid) {
  return {
      [g, weak, sid](const job_event& ev) {
        g->post(weak,
                [sid, ev](session& s) mutable { s.on_live_event(sid, std::move(ev)); });
      },
  };
}

reply shutting_down_reply() {
  return error_reply(errc::unavailable, "the server is shutting down");
}

void session::open_events(int64_t job, int64_t after) {
  stream_cleanup(); // an earlier stream of this connection, refused
  auto st = std::make_unique<event_stream>();
  st->id = ++next_stream_id_;
  st->job = job;
  st->last_seq = after;
  st->sub
      = state_->sys.spawn(event_subscriber, state_->gate_ptr, weak_from_this(), st->id);
  auto sub = st->sub;
  sse_ = std::move(st);
  ask_or<bool>(
      [](session& s, bool& ok) {
        if (!s.sse_ || s.sse_->ended)
          return;
        if (!ok)
          return s.events_answer(
              error_reply(errc::unavailable, "cannot subscribe to the job's events"));
        s.events_subscribed();
      },
      [](session& s, caf::error& err) {
        s.events_answer(gateway_error_reply(err, s.state_->actor_timeout.count()));
      },
      subscribe_atom::value, job, std::move(sub));
}

void session::events_subscribed() {
  if (!state_->accepting.load())
    return events_answer(shutting_down_reply());
  ask_or<job_record>(
      [](session& s, job_record& rec) {
        if (s.sse_ && !s.sse_->ended)
          s.events_job_known(rec);
      },
      [](session& s, caf::error& err) {
        s.events_answer(gateway_error_reply(err, s.state_->actor_timeout.count()));
      },
      job_get_atom::value, sse_->job);
}

void session::events_job_known(const job_record& rec) {
  // Events are stored with the change they describe: a job final now has
  // all of its events in the backlog.
  sse_->final_at_open = is_final(rec.state);
  ask_or<std::vector<job_event>>(
      [](session& s, std::vector<job_event>& events) {
        if (s.sse_ && !s.sse_->ended)
          s.events_first_page(events);
      },
      [](session& s, caf::error& err) {
        s.events_answer(gateway_error_reply(err, s.state_->actor_timeout.count()));
      },
      events_atom::value, sse_->job, sse_->last_seq);
}

void session::events_first_page(std::vector<job_event>& events) {
  if (!state_->accepting.load())
    return events_answer(shutting_down_reply());
  auto& st = *sse_;
  auto before = st.last_seq;
  append_events(events);
  bool more = events.size() >= events_page_max && st.last_seq > before && !st.ending;
  if (!more) {
    st.backlog_done = true;
    if (st.final_at_open && !st.ending) {
      // Finished and the client has seen all of it: 204 tells EventSource
      // not to reconnect.
      if (st.pending.empty()) {
        reply r;
        r.status = 204;
        r.content_type.clear();
        return events_answer(std::move(r));
      }
      st.ending = true;
    }
  }
  start_stream();
}

void session::events_next_page(std::vector<job_event>& events) {
  auto& st = *sse_;
  st.fetching = false;
  auto before = st.last_seq;
  append_events(events);
  bool more = events.size() >= events_page_max && st.last_seq > before && !st.ending;
  if (!more) {
    st.backlog_done = true;
    if (st.final_at_open)
      st.ending = true;
  }
  pump();
}

void session::events_answer(reply r) {
  stream_cleanup();
  respond(std::move(r));
}

void session::start_stream() {
  auto& st = *sse_;
  st.streaming = true;
  st.writing = true;
  auto& h = st.head;
  h.version(version_);
  h.result(bhttp::status::ok);
  h.set(bhttp::field::server, "infergrid");
  h.set(bhttp::field::content_type, "text/event-stream");
  h.set(bhttp::field::cache_control, "no-cache");
  h.set("X-Accel-Buffering", "no"); // proxies: do not buffer the stream
  h.set("X-Request-Id", request_id_);
  // The body ends when the connection does: no Content-Length, no chunks.
  h.keep_alive(false);
  auto seconds = std::chrono::duration<double>(clock_type::now() - started_).count();
  state_->metrics.observe(route_.pattern, method_label(method_), 200, seconds);
  spdlog::info("{} {} {} -> 200 {:.2f}ms event stream of {} after {}", request_id_,
               method_, clip(target_), seconds * 1000.0, job_id_string(st.job),
               st.last_seq);
  stream_.expires_after(state_->io_timeout);
  st.serializer.emplace(h);
  bhttp::async_write_header(
      stream_, *st.serializer,
      beast::bind_front_handler(&session::on_stream_head, shared_from_this()));
}

void session::on_stream_head(beast::error_code ec, std::size_t) {
  // From now on the stream is not a request in flight: shutdown closes it.
  if (busy_) {
    busy_ = false;
    state_->in_flight.fetch_sub(1);
  }
  sse_->writing = false;
  guarded([&] {
    if (closed_ || sse_->ended)
      return;
    if (ec)
      return end_stream("write failed");
    watch_disconnect();
    arm_keepalive();
    pump();
  });
}

void session::on_stream_write(beast::error_code ec, std::size_t) {
  sse_->writing = false;
  guarded([&] {
    if (closed_ || sse_->ended)
      return;
    if (ec)
      return end_stream(ec == beast::error::timeout ? "client not reading"
                                                    : "write failed");
    arm_keepalive();
    pump();
  });
}

void session::watch_disconnect() {
  // A client sends nothing on an event stream; a read that completes means
  // it closed (or sent bytes we drop). Raw socket: no tcp_stream timeout.
  stream_.socket().async_read_some(
      asio::buffer(sse_->discard),
      [self = shared_from_this()](beast::error_code ec, std::size_t) {
        if (self->closed_ || !self->sse_ || self->sse_->ended)
          return;
        if (ec == asio::error::operation_aborted && self->sse_->writing)
          return; // the write timed out and closed the socket: its handler says so
        if (ec)
          return self->end_stream("client closed");
        self->watch_disconnect();
      });
}

void session::append_events(std::vector<job_event>& events) {
  auto& st = *sse_;
  for (auto& ev : events) {
    if (st.ending)
      break;
    if (ev.seq <= st.last_seq)
      continue;
    st.pending += sse_frame(ev);
    st.last_seq = ev.seq;
    if (is_final_event(ev))
      st.ending = true;
  }
}

void session::pump() {
  auto& st = *sse_;
  if (closed_ || st.ended || !st.streaming || st.writing)
    return;
  if (st.backlog_done && !st.live.empty()) {
    bool gap = false;
    auto ready = take_in_order(st.live, st.last_seq, gap);
    append_events(ready);
    // An earlier event of the job is still on its way from another writer:
    // read on from the table, which has it, instead of skipping it.
    if (gap && !st.ending)
      st.backlog_done = false;
  }
  if (!st.pending.empty()) {
    st.out.clear();
    st.out.swap(st.pending);
    st.writing = true;
    stream_.expires_after(state_->io_timeout);
    asio::async_write(
        stream_, asio::buffer(st.out),
        beast::bind_front_handler(&session::on_stream_write, shared_from_this()));
    return;
  }
  if (st.ending)
    return end_stream("job finished");
  if (!st.backlog_done && !st.fetching) {
    st.fetching = true;
    ask_stream<std::vector<job_event>>(
        [](session& s, std::vector<job_event>& events) { s.events_next_page(events); },
        [](session& s, caf::error& err) {
          spdlog::warn("{} event stream of {}: backlog: {}", s.request_id_,
                       job_id_string(s.sse_->job), message_of(err));
          s.end_stream("backlog failed");
        },
        events_atom::value, st.job, st.last_seq);
  }
}

void session::arm_keepalive() {
  auto gen = ++sse_->keepalive_gen;
  keepalive_timer_.expires_after(sse_keepalive_interval);
  keepalive_timer_.async_wait([self = shared_from_this(), gen](beast::error_code ec) {
    if (ec || self->closed_ || !self->sse_ || self->sse_->ended
        || gen != self->sse_->keepalive_gen)
      return;
    auto& st = *self->sse_;
    // While a write is out, its completion arms the next one.
    if (!st.writing && st.pending.empty())
      st.pending = std::string{sse_keepalive};
    self->guarded([&] { self->pump(); });
  });
}

void session::on_live_event(uint64_t sid, job_event ev) {
  if (!stream_current(sid) || ev.job_id != sse_->job)
    return;
  guarded([&] {
    auto& st = *sse_;
    if (st.ending || ev.seq <= st.last_seq)
      return;
    if (st.live.size() >= sse_max_pending) {
      if (!st.streaming)
        return events_answer(error_reply(
            errc::unavailable, "too many events while the stream opened; retry"));
      spdlog::warn("{} event stream of {}: {} events pending, closing", request_id_,
                   job_id_string(st.job), st.live.size());
      return end_stream("client too slow");
    }
    st.live.push_back(std::move(ev));
    pump();
  });
}

void session::end_stream(const char* why) {
  if (sse_ && !sse_->ended)
    spdlog::info("{} event stream of {} ended: {} (last id {})", request_id_,
                 job_id_string(sse_->job), why, sse_->last_seq);
  finish();
}

void session::stream_cleanup() {
  if (!sse_ || sse_->ended)
    return;
  auto& st = *sse_;
  st.ended = true;
  st.live.clear();
  st.pending.clear();
  ++st.keepalive_gen;
  keepalive_timer_.cancel();
  if (st.sub) {
    caf::anon_send(state_->gateway, unsub_atom::value, st.job, st.sub);
    caf::anon_send_exit(st.sub, caf::exit_reason::user_shutdown);
    st.sub = nullptr;
  }
}

} // namespace

/// One io_context per I/O thread, each run by that thread alone, and every
/// connection on one of them (round robin at accept). With one io_context
/// shared by several threads, Asio hands the reactor from thread to thread
/// and wakes another for each completion: on an H100 host, http.threads 4
/// doubled the heavy model's batched throughput but cost 21 instead of 8
/// thread switches per request, and 350-550 instead of 170 us at p50, at
/// concurrency 1 (docs/benchmarks.md). A connection that stays on one thread
/// keeps the one-thread latency while connections spread over the threads.
struct server::impl {
  impl(caf::actor_system& sys, gateway_actor gateway, http_settings opts)
      : state(std::make_shared<shared_state>(sys, std::move(gateway), std::move(opts))) {
    auto n = static_cast<std::size_t>(std::max(1, state->opts.threads));
    for (std::size_t i = 0; i < n; ++i) {
      // Hint 1: only its own thread runs it (posts from others stay safe).
      iocs.push_back(std::make_unique<asio::io_context>(1));
      work.push_back(asio::make_work_guard(*iocs.back()));
    }
  }

  /// The io_context of the next accepted connection.
  asio::io_context& next_ioc() {
    return *iocs[next_accept++ % iocs.size()];
  }

  void do_accept() {
    acceptor->async_accept(asio::make_strand(next_ioc()),
                           beast::bind_front_handler(&impl::on_accept, this));
  }

  void on_accept(beast::error_code ec, tcp::socket socket) {
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor->is_open())
        return;
      // E.g. out of file descriptors: back off instead of spinning.
      spdlog::warn("http: accept failed: {}", ec.message());
      backoff.emplace(acceptor->get_executor());
      backoff->expires_after(std::chrono::milliseconds(100));
      backoff->async_wait([this](beast::error_code wait_ec) {
        if (!wait_ec && acceptor->is_open())
          do_accept();
      });
      return;
    }
    beast::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    {
      std::lock_guard<std::mutex> guard{state->sessions_mtx};
      if (!state->accepting.load()) {
        socket.close(ignored);
        return;
      }
      auto id = ++state->next_session_id;
      auto s = std::make_shared<session>(std::move(socket), state, id);
      state->sessions.emplace(id, s);
      s->start();
    }
    do_accept();
  }

  ~impl() {
    // The acceptor's io_context goes first: its aborted accept still holds
    // the socket (and strand) made for the next connection, which belong to
    // another io_context and must find it alive. std::vector leaves the
    // order of destruction to the library (libc++ goes back to front).
    acceptor.reset();
    backoff.reset();
    work.clear();
    for (auto& ioc : iocs)
      ioc.reset();
  }

  // Members are destroyed bottom-up: the acceptor and timer before the
  // io_contexts, the io_contexts (with the sessions their handlers hold)
  // before the shared state.
  std::shared_ptr<shared_state> state;
  std::vector<std::unique_ptr<asio::io_context>> iocs;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> work;
  /// Only on the acceptor's strand (on_accept) and before the threads start.
  std::size_t next_accept = 0;
  std::optional<tcp::acceptor> acceptor;
  std::optional<asio::steady_timer> backoff;
  std::vector<std::thread> threads;
  std::mutex lifecycle_mtx;
  bool started = false;
  bool stopped = false;
};

server::server(caf::actor_system& sys, gateway_actor gateway, http_settings opts)
    : impl_(std::make_unique<impl>(sys, std::move(gateway), std::move(opts))) {}

server::~server() {
  stop();
}

caf::expected<uint16_t> server::start() {
  auto& d = *impl_;
  std::lock_guard<std::mutex> guard{d.lifecycle_mtx};
  auto& opts = d.state->opts;
  auto address = opts.host + ":" + std::to_string(opts.port);
  if (d.started || d.stopped)
    return make_error(errc::unavailable,
                      "http server on " + address + " was already started");
  beast::error_code ec;
  tcp::resolver resolver{*d.iocs.front()};
  auto results = resolver.resolve(opts.host, std::to_string(opts.port),
                                  tcp::resolver::passive, ec);
  if (ec || results.empty())
    return make_error(errc::unavailable, "cannot resolve " + address + ": "
                                             + (ec ? ec.message() : "no address"));
  auto endpoint = results.begin()->endpoint();
  tcp::acceptor acceptor{asio::make_strand(*d.iocs.front())};
  auto fail = [&](const char* what) {
    return make_error(errc::unavailable,
                      "cannot listen on " + address + ": " + what + ": " + ec.message());
  };
  if (acceptor.open(endpoint.protocol(), ec); ec)
    return fail("open");
  if (acceptor.set_option(asio::socket_base::reuse_address(true), ec); ec)
    return fail("set_option");
  if (acceptor.bind(endpoint, ec); ec)
    return fail("bind");
  if (acceptor.listen(asio::socket_base::max_listen_connections, ec); ec)
    return fail("listen");
  auto port = acceptor.local_endpoint(ec).port();
  if (ec)
    return fail("local_endpoint");
  d.acceptor.emplace(std::move(acceptor));
  d.started = true;
  if (!d.state->accepting.load())
    d.acceptor->close(ec); // stop_accepting came first
  else
    d.do_accept();
  auto n = d.iocs.size();
  d.threads.reserve(n);
  for (auto& ioc_ptr : d.iocs) {
    d.threads.emplace_back([&ioc = *ioc_ptr, &sys = d.state->sys] {
      // The gateway and queue steps of this thread's requests run here
      // when they find those actors idle (no scheduler thread to wake).
      caller_runs::lease unit{sys};
      caller_runs::scope here{*unit};
      for (;;) {
        try {
          ioc.run();
          return;
        } catch (const std::exception& e) {
          spdlog::error("http: I/O thread caught: {}", e.what());
        }
      }
    });
  }
  spdlog::info("http: listening on {}:{} with {} thread(s)",
               endpoint.address().to_string(), port, n);
  return port;
}

void server::stop_accepting() {
  auto& d = *impl_;
  std::lock_guard<std::mutex> guard{d.lifecycle_mtx};
  std::vector<std::shared_ptr<session>> open;
  std::vector<std::shared_ptr<ws_connection>> sockets;
  {
    std::lock_guard<std::mutex> sguard{d.state->sessions_mtx};
    if (!d.state->accepting.exchange(false))
      return;
    open.reserve(d.state->sessions.size());
    for (auto& [id, s] : d.state->sessions)
      open.push_back(s);
    for (auto& [id, c] : d.state->sockets)
      sockets.push_back(c);
  }
  if (d.acceptor) {
    asio::post(d.acceptor->get_executor(), [&d] {
      beast::error_code ignored;
      d.acceptor->close(ignored);
    });
  }
  // The references move into the handlers, so a session is never destroyed
  // on this thread.
  auto count = open.size() + sockets.size();
  for (auto& s : open) {
    auto ex = s->executor();
    asio::post(ex, [s = std::move(s)] { s->on_stop_accepting(); });
  }
  // Sessions end (session.end "server_stopping") and close.
  for (auto& c : sockets) {
    auto ex = c->executor();
    asio::post(ex, [c = std::move(c)] { c->on_stop_accepting(); });
  }
  spdlog::info("http: stopped accepting; {} connection(s) open", count);
}

int64_t server::in_flight() const {
  return impl_->state->in_flight.load();
}

void server::stop() {
  auto& d = *impl_;
  {
    std::lock_guard<std::mutex> guard{d.lifecycle_mtx};
    if (d.stopped)
      return;
    d.stopped = true;
  }
  {
    std::lock_guard<std::mutex> guard{d.state->sessions_mtx};
    d.state->accepting.store(false);
  }
  {
    // From here on, actor callbacks drop their answers.
    std::lock_guard<std::mutex> guard{d.state->gate_ptr->mtx};
    d.state->gate_ptr->open = false;
  }
  d.work.clear();
  for (auto& ioc : d.iocs)
    ioc->stop();
  for (auto& t : d.threads)
    if (t.joinable())
      t.join();
  d.threads.clear();
  // No I/O thread runs now: release what the io_contexts still serve.
  beast::error_code ignored;
  if (d.acceptor)
    d.acceptor->close(ignored);
  d.backoff.reset();
  std::unordered_map<uint64_t, std::shared_ptr<session>> sessions;
  std::unordered_map<uint64_t, std::shared_ptr<ws_connection>> sockets;
  {
    std::lock_guard<std::mutex> guard{d.state->sessions_mtx};
    sessions.swap(d.state->sessions);
    sockets.swap(d.state->sockets);
  }
  sessions.clear();
  // Their session actors hear that the client is gone and end.
  sockets.clear();
}

} // namespace infergrid::http
