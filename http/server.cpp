// The Beast HTTP/1.1 server: a listener, one session per connection on its
// own strand, and the bridge to the gateway through one-shot requester actors
// (caf-0.17-notes.md §6.1). No I/O thread ever waits on an actor.
#include "http/server.hpp"

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
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
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>

#include <spdlog/spdlog.h>

#include "http/metrics.hpp"
#include "http/routes.hpp"
#include "messages/errors.hpp"

namespace infergrid::http {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

/// How long a connection may take to send a request (and stay idle between
/// keep-alive requests), and a client to take a response.
constexpr auto io_deadline = std::chrono::seconds(60);

/// How long a connection that is closed with an unread body is drained, so
/// that the client reads the error instead of a reset.
constexpr auto linger_deadline = std::chrono::seconds(2);

/// Added to request_timeout_ms for the HTTP layer's own actor deadline.
constexpr auto timeout_grace = std::chrono::milliseconds(250);

constexpr const char* metrics_content_type = "text/plain; version=0.0.4; charset=utf-8";

class session;

/// Lets actor callbacks post into the io_context only while it is running:
/// stop() closes it before the io_context and the sessions go away.
struct gate {
  std::mutex mtx;
  bool open = true;

  /// Runs `f(session&)` on the session's strand if both are still there.
  /// Called from CAF threads. Everything that touches Asio objects here
  /// happens under the lock, while the io_context is alive.
  template <class F>
  void post(const std::weak_ptr<session>& weak, F&& f);
};

/// What the server shares with its sessions. Outlives the server when a
/// handler still holds a session during io_context teardown.
struct shared_state {
  shared_state(caf::actor_system& sys, gateway_actor gateway, http_settings opts)
      : sys(sys), gateway(std::move(gateway)), opts(std::move(opts)) {
    auto ms = this->opts.request_timeout_ms > 0 ? this->opts.request_timeout_ms
                                                : int64_t{30000};
    request_timeout = std::chrono::milliseconds(ms);
    // A backstop: the gateway and queue enforce request_timeout_ms with a
    // message that says what was late; ours only covers lost answers.
    actor_timeout = request_timeout + timeout_grace;
  }

  caf::actor_system& sys;
  gateway_actor gateway;
  http_settings opts;
  std::chrono::milliseconds request_timeout{30000};
  std::chrono::milliseconds actor_timeout{30250};
  std::atomic<int64_t> in_flight{0};
  std::atomic<bool> accepting{true};
  metrics_registry metrics;
  std::shared_ptr<gate> gate_ptr = std::make_shared<gate>();

  /// Open connections. Strong references: a session waiting for an actor has
  /// no pending I/O operation, so this map keeps it alive. Guarded by
  /// sessions_mtx, which also orders `accepting` against registration.
  std::mutex sessions_mtx;
  std::unordered_map<uint64_t, std::shared_ptr<session>> sessions;
  uint64_t next_session_id = 0;

  void remove(uint64_t id) {
    std::shared_ptr<session> victim; // destroyed outside the lock
    std::lock_guard<std::mutex> guard{sessions_mtx};
    auto i = sessions.find(id);
    if (i != sessions.end()) {
      victim = std::move(i->second);
      sessions.erase(i);
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
      : stream_(std::move(socket)), state_(std::move(state)), id_(id) {}

  ~session() {
    if (busy_)
      state_->in_flight.fetch_sub(1);
  }

  executor_type executor() {
    return stream_.get_executor();
  }

  void start() {
    asio::dispatch(stream_.get_executor(),
                   beast::bind_front_handler(&session::do_read, shared_from_this()));
  }

  /// The server stopped accepting: close now if between requests, otherwise
  /// after the current answer.
  void on_stop_accepting() {
    if (!busy_ && !closed_ && buffer_.size() == 0 && (!parser_ || !parser_->got_some()))
      finish();
  }

  /// Sends `r` as the answer to the current request. Only call while busy.
  void respond(reply r);

  /// Requests `xs...` from the gateway through a one-shot actor and calls
  /// `on_ok(session&, T&)` or `on_err(session&, caf::error&)` on the strand.
  template <class T, class OnOk, class OnErr, class... Ts>
  void ask_or(OnOk on_ok, OnErr on_err, Ts... xs);

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

  /// Runs `f` for the request generation `gen`; an answer that arrives for
  /// a request already answered is dropped. Exceptions become a 500.
  template <class F>
  void resume(uint64_t gen, F&& f) {
    if (closed_ || !busy_ || gen != generation_)
      return;
    guarded(std::forward<F>(f));
  }

private:
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
    stream_.expires_after(io_deadline);
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
    stream_.expires_after(io_deadline);
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

  void on_write(bool keep_alive, beast::error_code ec, std::size_t) {
    if (busy_) {
      busy_ = false;
      state_->in_flight.fetch_sub(1);
    }
    if (ec)
      return finish();
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
    if (closed_)
      return;
    closed_ = true;
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
    state_->remove(id_);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  bhttp::response<bhttp::empty_body> continue_;
  bhttp::response<bhttp::string_body> res_;
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

template <class F>
void gate::post(const std::weak_ptr<session>& weak, F&& f) {
  std::lock_guard<std::mutex> guard{mtx};
  if (!open)
    return;
  auto s = weak.lock();
  if (!s)
    return;
  auto ex = s->executor();
  asio::post(ex, [s = std::move(s), f = std::forward<F>(f)]() mutable { f(*s); });
}

template <class T, class OnOk, class OnErr, class... Ts>
void session::ask_or(OnOk on_ok, OnErr on_err, Ts... xs) {
  std::weak_ptr<session> weak = weak_from_this();
  auto g = state_->gate_ptr;
  auto gw = state_->gateway;
  auto timeout = state_->actor_timeout;
  auto gen = generation_;
  auto body = [=](caf::event_based_actor* self) mutable {
    self->request(gw, timeout, std::move(xs)...)
        .then(
            [=](T& result) {
              g->post(weak, [on_ok, gen, r = std::move(result)](session& s) mutable {
                s.resume(gen, [&] { on_ok(s, r); });
              });
            },
            [=](caf::error& err) {
              g->post(weak, [on_err, gen, err](session& s) mutable {
                s.resume(gen, [&] { on_err(s, err); });
              });
            });
  };
  // The closure travels as a spawn argument: for a spawn without arguments
  // CAF 0.17 dereferences a null argument tuple (UBSan reports it).
  state_->sys.spawn([](caf::event_based_actor* self, decltype(body) run) { run(self); },
                    std::move(body));
}

void session::respond(reply r) {
  if (!busy_ || responding_)
    return;
  responding_ = true;
  bool keep = keep_alive_ && state_->accepting.load();
  auto seconds = std::chrono::duration<double>(clock_type::now() - started_).count();
  res_ = {};
  res_.version(version_);
  res_.result(r.status);
  res_.set(bhttp::field::server, "infergrid");
  res_.set(bhttp::field::content_type, r.content_type);
  res_.set("X-Request-Id", request_id_);
  for (auto& [name, value] : r.headers)
    res_.set(name, value);
  res_.keep_alive(keep);
  res_.body() = std::move(r.body);
  res_.prepare_payload();
  state_->metrics.observe(route_.pattern, method_label(method_), r.status, seconds);
  auto ms = seconds * 1000.0;
  if (r.status >= 500 && r.status != 503 && r.status != 504)
    spdlog::error("{} {} {} -> {} {:.2f}ms {}: {}", request_id_, method_, clip(target_),
                  r.status, ms, r.error_code, clip(r.error_message, 1024));
  else if (r.status >= 400)
    spdlog::info("{} {} {} -> {} {:.2f}ms {}: {}", request_id_, method_, clip(target_),
                 r.status, ms, r.error_code, clip(r.error_message, 1024));
  else
    spdlog::info("{} {} {} -> {} {:.2f}ms", request_id_, method_, clip(target_), r.status,
                 ms);
  stream_.expires_after(io_deadline);
  bhttp::async_write(
      stream_, res_,
      beast::bind_front_handler(&session::on_write, shared_from_this(), keep));
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
    case route_id::job_get: {
      int64_t id = 0;
      if (!parse_job_id(route_.param, id))
        return respond(
            error_reply(errc::not_found, "no job '" + clip(route_.param, 64) + "'"));
      return ask<job_record>(
          [](session& s, job_record& rec) { s.respond(job_reply(rec)); },
          job_get_atom::value, id);
    }
    case route_id::models_list:
      return ask<std::vector<model_info>>(
          [](session& s, std::vector<model_info>& models) {
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
  }
  respond(error_reply(errc::internal, "unhandled route"));
}

} // namespace

struct server::impl {
  impl(caf::actor_system& sys, gateway_actor gateway, http_settings opts)
      : state(std::make_shared<shared_state>(sys, std::move(gateway), std::move(opts))),
        ioc(std::max(1, state->opts.threads)), work(asio::make_work_guard(ioc)) {}

  void do_accept() {
    acceptor->async_accept(asio::make_strand(ioc),
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

  // Members are destroyed bottom-up: the acceptor and timer before the
  // io_context, the io_context (with the sessions its handlers hold) before
  // the shared state.
  std::shared_ptr<shared_state> state;
  asio::io_context ioc;
  asio::executor_work_guard<asio::io_context::executor_type> work;
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
  tcp::resolver resolver{d.ioc};
  auto results = resolver.resolve(opts.host, std::to_string(opts.port),
                                  tcp::resolver::passive, ec);
  if (ec || results.empty())
    return make_error(errc::unavailable, "cannot resolve " + address + ": "
                                             + (ec ? ec.message() : "no address"));
  auto endpoint = results.begin()->endpoint();
  tcp::acceptor acceptor{asio::make_strand(d.ioc)};
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
  auto n = std::max(1, opts.threads);
  d.threads.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    d.threads.emplace_back([&ioc = d.ioc] {
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
  {
    std::lock_guard<std::mutex> sguard{d.state->sessions_mtx};
    if (!d.state->accepting.exchange(false))
      return;
    open.reserve(d.state->sessions.size());
    for (auto& [id, s] : d.state->sessions)
      open.push_back(s);
  }
  if (d.acceptor) {
    asio::post(d.acceptor->get_executor(), [&d] {
      beast::error_code ignored;
      d.acceptor->close(ignored);
    });
  }
  // The references move into the handlers, so a session is never destroyed
  // on this thread.
  auto count = open.size();
  for (auto& s : open) {
    auto ex = s->executor();
    asio::post(ex, [s = std::move(s)] { s->on_stop_accepting(); });
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
  d.work.reset();
  d.ioc.stop();
  for (auto& t : d.threads)
    if (t.joinable())
      t.join();
  d.threads.clear();
  // No I/O thread runs now: release what the io_context still serves.
  beast::error_code ignored;
  if (d.acceptor)
    d.acceptor->close(ignored);
  d.backoff.reset();
  std::unordered_map<uint64_t, std::shared_ptr<session>> sessions;
  {
    std::lock_guard<std::mutex> guard{d.state->sessions_mtx};
    sessions.swap(d.state->sessions);
  }
  sessions.clear();
}

} // namespace infergrid::http
