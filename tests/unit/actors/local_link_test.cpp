// Local link tests: a real hub and client (an abstract Unix socket) in one
// actor system, with runners that say which way a batch came.
#define CAF_SUITE local_link
#include "tests/unit/test_support.hpp"

#include "actors/local_link.hpp"

#include <caf/test/unit_test.hpp>

#include <atomic>
#include <cstddef>
#include <cstring>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "actors/cluster.hpp"
#include "messages/errors.hpp"

using namespace infergrid;
using namespace std::chrono_literals;

namespace {

// Answers each batch with one tensor per request, named `who` and holding
// the request's id, so a test sees which runner ran it.
batch_runner_actor::behavior_type named_runner(batch_runner_actor::pointer,
                                               std::string who) {
  return {
      [who](infer_atom, infer_batch& batch) {
        infer_batch_result out;
        for (auto& r : batch.requests) {
          tensor_data t;
          t.name = who;
          t.type = dtype::int64;
          t.bytes.assign(r.request_id.begin(), r.request_id.end());
          out.outputs.push_back({t});
        }
        return out;
      },
  };
}

// Never answers: its requests stay in flight. Raises `got` on the first.
batch_runner_actor::behavior_type silent_runner(batch_runner_actor::pointer self,
                                                std::shared_ptr<std::atomic<bool>> got) {
  return {
      [self, got](infer_atom, infer_batch&) -> caf::result<infer_batch_result> {
        got->store(true);
        return self->make_response_promise<infer_batch_result>();
      },
  };
}

// A worker actor's stand-in for generations: sends the prompt's characters
// one by one to the request's sink, then answers with the whole text. With
// `hold`, it sends the first piece and waits: a down message of its sink
// (the client went away, or the link closed) ends the run as "cancelled".
struct fake_flags {
  std::atomic<bool> started{false};
  std::atomic<int> downs{0};
};

caf::behavior fake_worker(caf::event_based_actor* self, std::string name, bool hold,
                          std::shared_ptr<fake_flags> flags) {
  auto pending = std::make_shared<std::vector<caf::response_promise>>();
  self->set_down_handler([pending, flags, name](caf::down_msg&) {
    ++flags->downs;
    for (auto& rp : *pending) {
      generate_reply r;
      r.finish_reason = "cancelled";
      r.worker = name;
      rp.deliver(r);
    }
    pending->clear();
  });
  return {
      [=](generate_atom, generate_request& req) -> caf::result<generate_reply> {
        if (!req.sink)
          return make_error(errc::internal, "no sink arrived");
        self->monitor(req.sink);
        if (hold) {
          self->send(req.sink, chunk_atom::value, req.params.prompt.substr(0, 1));
          flags->started.store(true);
          pending->push_back(self->make_response_promise());
          return caf::delegated<generate_reply>{};
        }
        for (auto c : req.params.prompt)
          self->send(req.sink, chunk_atom::value, std::string(1, c));
        generate_reply r;
        r.text = req.params.prompt;
        r.finish_reason = "length";
        r.worker = name;
        return r;
      },
  };
}

// The pieces a sink got (written by its actor, read by the test).
class collected {
public:
  void add(const std::string& piece) {
    std::lock_guard<std::mutex> guard{mtx_};
    text_ += piece;
  }

  std::string text() const {
    std::lock_guard<std::mutex> guard{mtx_};
    return text_;
  }

private:
  mutable std::mutex mtx_;
  std::string text_;
};

chunk_sink_actor::behavior_type collecting_sink(chunk_sink_actor::pointer,
                                                std::shared_ptr<collected> got) {
  return {
      [got](chunk_atom, std::string& piece) { got->add(piece); },
  };
}

bool wait_until(const std::function<bool()>& done) {
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!done() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  return done();
}

// With the middleman, as in serve and its worker processes: it gives the
// node an id, so that a handle in a message (a request's sink) can no longer
// be read as a handle of this node without a context that knows proxies.
struct config : caf::actor_system_config {
  config() {
    add_cluster_message_types(*this);
    load<caf::io::middleman>();
  }
};

infer_batch batch_of(std::initializer_list<std::string> ids) {
  infer_batch b;
  b.model = "m";
  for (auto& id : ids) {
    infer_request r;
    r.model = "m";
    r.request_id = id;
    b.requests.push_back(r);
  }
  return b;
}

struct fixture {
  config cfg;
  caf::actor_system sys{cfg};
  std::shared_ptr<link_hub> hub;
  batch_runner_actor fallback = sys.spawn(named_runner, std::string{"fallback"});

  fixture() {
    auto opened = link_hub::open(sys);
    CAF_REQUIRE(opened);
    hub = *opened;
  }

  ~fixture() {
    hub->close();
  }

  // "runner:id" for each answer, or "error:<code>: <message>".
  std::string ask(const batch_runner_actor& runner, infer_batch batch) {
    caf::scoped_actor self{sys};
    std::string out;
    self->request(runner, 10s, infer_atom::value, std::move(batch))
        .receive(
            [&](infer_batch_result& r) {
              for (auto& ts : r.outputs)
                out += (out.empty() ? "" : " ") + ts.at(0).name + ":"
                       + std::string{ts.at(0).bytes.begin(), ts.at(0).bytes.end()};
            },
            [&](caf::error& err) {
              out = "error:" + to_string(code_of(err)) + ": " + message_of(err);
            });
    return out;
  }

  // Asks `runner` for a batch that the client's silent target takes and
  // never answers, runs `then` once it is in flight, and returns the answer.
  std::string ask_while(const std::shared_ptr<link_client>& client,
                        const batch_runner_actor& runner,
                        const std::function<void()>& then) {
    auto got = std::make_shared<std::atomic<bool>>(false);
    client->serve(caf::actor_cast<caf::strong_actor_ptr>(sys.spawn(silent_runner, got)));
    std::string answer;
    std::thread asker{[&] { answer = ask(runner, batch_of({"lost"})); }};
    CAF_CHECK(wait_until([&] { return got->load(); }));
    then();
    asker.join();
    return answer;
  }

  // "worker:reason:text" of a generation of `prompt` streamed to `sink`, or
  // "error:<code>: <message>".
  std::string generate(const worker_actor& worker, const std::string& prompt,
                       chunk_sink_actor sink) {
    generate_request req;
    req.model = "m";
    req.params.prompt = prompt;
    req.sink = std::move(sink);
    caf::scoped_actor self{sys};
    std::string out;
    self->request(worker, 10s, generate_atom::value, std::move(req))
        .receive(
            [&](generate_reply& r) {
              out = r.worker + ":" + r.finish_reason + ":" + r.text;
            },
            [&](caf::error& err) {
              out = "error:" + to_string(code_of(err)) + ": " + message_of(err);
            });
    return out;
  }

  struct held_run {
    std::string answer;
    std::shared_ptr<fake_flags> flags;
  };

  // A generation over the link that the worker holds after its first
  // piece; runs `then` once that piece reached the sink, checks that the
  // worker saw the sink's stand-in go down (the run stops), and returns
  // the answer.
  held_run
  held_generation(const std::function<void(link_client&, const caf::actor&)>& then) {
    auto token = hub->issue("w1");
    auto client = connect(token);
    held_run run{"", std::make_shared<fake_flags>()};
    auto worker = sys.spawn(fake_worker, "linked", true, run.flags);
    client->serve(nullptr, worker.address());
    auto linked = hub->streams_for(token, worker_actor{});
    auto got = std::make_shared<collected>();
    auto sink = sys.spawn(collecting_sink, got);
    std::thread asker{[&] { run.answer = generate(linked, "held", sink); }};
    CAF_CHECK(
        wait_until([&] { return run.flags->started.load() && got->text() == "h"; }));
    then(*client, caf::actor_cast<caf::actor>(sink));
    asker.join();
    CAF_CHECK(wait_until([&] { return run.flags->downs.load() == 1; }));
    client->close();
    caf::anon_send_exit(sink, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(worker, caf::exit_reason::user_shutdown);
    return run;
  }

  std::shared_ptr<link_client> connect(const std::string& token) {
    auto c = link_client::connect(sys, hub->address(), token);
    CAF_REQUIRE(c);
    return *c;
  }
};

} // namespace

CAF_TEST_FIXTURE_SCOPE(local_link_tests, fixture)

CAF_TEST(batches go over the link to the target of the client and answers come back) {
  auto token = hub->issue("w1");
  auto client = connect(token);
  client->serve(caf::actor_cast<caf::strong_actor_ptr>(
      sys.spawn(named_runner, std::string{"linked"})));
  auto runner = hub->runner_for(token, fallback);
  CAF_CHECK(runner != fallback);
  CAF_CHECK_EQUAL(hub->connected(), 1);
  CAF_CHECK_EQUAL(ask(runner, batch_of({"a", "b"})), "linked:a linked:b");
  // Many in a row, each matched to its own request.
  for (int i = 0; i < 50; ++i) {
    auto id = std::to_string(i);
    CAF_CHECK_EQUAL(ask(runner, batch_of({id})), "linked:" + id);
  }
  client->close();
}

CAF_TEST(a batch the client can run itself never reaches its executor) {
  auto token = hub->issue("w1");
  auto client = connect(token);
  // The direct runner: "busy*" is left to the executor (nullopt, batch
  // untouched), "bad" fails, "boom" throws, anything else runs here.
  auto direct
      = [](infer_batch& batch) -> std::optional<caf::expected<infer_batch_result>> {
    auto& id = batch.requests.at(0).request_id;
    if (id.rfind("busy", 0) == 0)
      return std::nullopt;
    if (id == "bad")
      return caf::expected<infer_batch_result>{
          make_error(errc::invalid_input, "bad row")};
    if (id == "boom")
      throw std::runtime_error("forward exploded");
    infer_batch_result out;
    for (auto& r : batch.requests) {
      tensor_data t;
      t.name = "direct";
      t.type = dtype::int64;
      t.bytes.assign(r.request_id.begin(), r.request_id.end());
      out.outputs.push_back({t});
    }
    return caf::expected<infer_batch_result>{std::move(out)};
  };
  client->serve(caf::actor_cast<caf::strong_actor_ptr>(
                    sys.spawn(named_runner, std::string{"executor"})),
                caf::actor_addr{}, direct);
  auto runner = hub->runner_for(token, fallback);
  CAF_CHECK_EQUAL(ask(runner, batch_of({"a", "b"})), "direct:a direct:b");
  CAF_CHECK_EQUAL(ask(runner, batch_of({"busy1", "x"})), "executor:busy1 executor:x");
  CAF_CHECK_EQUAL(ask(runner, batch_of({"bad"})), "error:invalid_input: bad row");
  CAF_CHECK_EQUAL(ask(runner, batch_of({"boom"})),
                  "error:internal: the batch failed: forward exploded");
  // The link is still up and still runs batches itself.
  CAF_CHECK_EQUAL(ask(runner, batch_of({"c"})), "direct:c");
  CAF_CHECK_EQUAL(hub->connected(), 1);
  client->close();
}

CAF_TEST(large batches both ways keep flowing when each answer sends the next) {
  // A hub's reader runs an idle requester on its own thread when an answer
  // arrives (caller_runs); the requester's next request must not be written
  // there. Here the worker's reader writes 1 MiB answers while a request of
  // 1 MiB goes the other way; a reader that wrote would wait for the other
  // reader, which waits for it, until the link's write timeout broke it.
  auto token = hub->issue("w1");
  auto client = connect(token);
  auto direct
      = [](infer_batch& batch) -> std::optional<caf::expected<infer_batch_result>> {
    infer_batch_result out;
    for (auto& r : batch.requests) {
      tensor_data t;
      t.name = "direct";
      t.type = dtype::uint8;
      t.bytes.assign(std::size_t{1} << 20, 'a');
      out.outputs.push_back({t});
      (void)r;
    }
    return caf::expected<infer_batch_result>{std::move(out)};
  };
  client->serve(caf::actor_cast<caf::strong_actor_ptr>(
                    sys.spawn(named_runner, std::string{"executor"})),
                caf::actor_addr{}, direct);
  auto runner = hub->runner_for(token, fallback);
  constexpr int rounds = 40;
  struct tally {
    std::atomic<int> answers{0};
    std::atomic<int> errors{0};
  };
  auto t = std::make_shared<tally>();
  auto big = batch_of({"big"});
  big.requests[0].inputs.resize(1);
  big.requests[0].inputs[0].type = dtype::uint8;
  big.requests[0].inputs[0].bytes.assign(std::size_t{1} << 20, 'q');
  // Two in flight at a time, as the queue keeps (queue.batches_in_flight).
  auto pump = sys.spawn<caf::lazy_init>([=](caf::event_based_actor* self) {
    auto sent = std::make_shared<int>(0);
    // The behavior holds `next`; the handlers reach it weakly (no cycle, so
    // the runner's handle goes when the actor does).
    auto next = std::make_shared<std::function<void()>>();
    std::weak_ptr<std::function<void()>> weak_next = next;
    auto again = [weak_next] {
      if (auto n = weak_next.lock())
        (*n)();
    };
    *next = [=] {
      if (*sent >= rounds)
        return;
      ++*sent;
      self->request(runner, 30s, infer_atom::value, big)
          .then([=](infer_batch_result&) { ++t->answers, again(); },
                [=](caf::error&) { ++t->errors, ++t->answers, again(); });
    };
    return caf::behavior{[next](caf::atom_constant<caf::atom("go")>) {
      (*next)();
      (*next)();
    }};
  });
  caf::anon_send(pump, caf::atom_constant<caf::atom("go")>::value);
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (t->answers.load() < rounds && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  CAF_CHECK_EQUAL(t->answers.load(), rounds);
  CAF_CHECK_EQUAL(t->errors.load(), 0);
  CAF_CHECK_EQUAL(hub->connected(), 1);
  caf::anon_send_exit(pump, caf::exit_reason::user_shutdown);
  client->close();
}

CAF_TEST(an unknown or used token is refused and its registration keeps BASP) {
  auto bad = link_client::connect(sys, hub->address(), "not-a-token");
  CAF_REQUIRE(!bad);
  CAF_CHECK(code_of(bad.error()) == errc::unauthorized);
  auto token = hub->issue("w1");
  auto first = connect(token);
  auto again = link_client::connect(sys, hub->address(), token);
  CAF_REQUIRE(!again);
  CAF_CHECK(code_of(again.error()) == errc::unauthorized);
  CAF_CHECK(hub->runner_for("not-a-token", fallback) == fallback);
  CAF_CHECK_EQUAL(ask(hub->runner_for("not-a-token", fallback), batch_of({"x"})),
                  "fallback:x");
  first->close();
}

CAF_TEST(a handshake frame too large for a token is refused before it is read) {
  // A raw client announces a 1 GiB token: the hub closes the connection
  // without allocating or waiting for it, and serves the next client.
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  CAF_REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  auto& name = hub->address();
  std::memcpy(addr.sun_path + 1, name.data(), name.size());
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  CAF_REQUIRE_EQUAL(::connect(fd, reinterpret_cast<sockaddr*>(&addr), len), 0);
  char header[24] = {}; // length, kind 0 (handshake), sequence, reference
  uint32_t size = 1u << 30;
  std::memcpy(header, &size, sizeof(size));
  CAF_REQUIRE_EQUAL(::send(fd, header, sizeof(header), MSG_NOSIGNAL), 24);
  // Closed by the hub well before its 5 s handshake deadline (the old hub
  // waited that long for the gigabyte).
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char byte = 0;
  CAF_CHECK_EQUAL(::recv(fd, &byte, 1, 0), 0);
  ::close(fd);
  auto token = hub->issue("w1");
  auto client = connect(token);
  CAF_CHECK_EQUAL(hub->connected(), 1);
  client->close();
}

CAF_TEST(a closed link fails what is in flight and sends later batches over BASP) {
  auto token = hub->issue("w1");
  auto client = connect(token);
  auto runner = hub->runner_for(token, fallback);
  auto in_flight = ask_while(client, runner, [&] { client->close(); });
  CAF_CHECK_EQUAL(in_flight.substr(0, 18), "error:unavailable:");
  CAF_CHECK(in_flight.find("local link to worker w1") != std::string::npos);
  // The hub has seen the end of the stream: batches take BASP now.
  CAF_CHECK(wait_until([&] { return hub->connected() == 0; }));
  CAF_CHECK_EQUAL(ask(runner, batch_of({"y"})), "fallback:y");
}

CAF_TEST(closing the hub fails what is in flight) {
  auto token = hub->issue("w1");
  auto client = connect(token);
  auto runner = hub->runner_for(token, fallback);
  auto in_flight = ask_while(client, runner, [&] { hub->close(); });
  CAF_CHECK_EQUAL(in_flight.substr(0, 18), "error:unavailable:");
  client->close();
}

CAF_TEST(a generation goes over the link and its pieces come back to its sink) {
  auto token = hub->issue("w1");
  auto client = connect(token);
  auto flags = std::make_shared<fake_flags>();
  auto worker = sys.spawn(fake_worker, "linked", false, flags);
  client->serve(nullptr, worker.address());
  auto fallback_worker
      = caf::actor_cast<worker_actor>(sys.spawn(fake_worker, "fallback", false, flags));
  auto linked = hub->streams_for(token, fallback_worker);
  CAF_CHECK(linked != fallback_worker);
  CAF_CHECK(hub->streams_for("not-a-token", fallback_worker) == fallback_worker);
  // Each with its own sink: the pieces arrive in order, and before the
  // answer (as the executor flushes before it replies). `via` is the
  // worker that ran it.
  auto generate_to_sink = [&](const std::string& prompt, const std::string& via) {
    auto got = std::make_shared<collected>();
    auto sink = sys.spawn(collecting_sink, got);
    CAF_CHECK_EQUAL(generate(linked, prompt, sink), via + ":length:" + prompt);
    CAF_CHECK(wait_until([&] { return got->text() == prompt; }));
    CAF_CHECK_EQUAL(got->text(), prompt);
    caf::anon_send_exit(sink, caf::exit_reason::user_shutdown);
  };
  for (int i = 0; i < 20; ++i)
    generate_to_sink("piece by piece " + std::to_string(i), "linked");
  // Without a sink the request goes as it is.
  CAF_CHECK_EQUAL(generate(linked, "x", chunk_sink_actor{}),
                  "error:internal: no sink arrived");
  // Once the link is gone, over BASP with the sink put back.
  client->close();
  CAF_CHECK(wait_until([&] { return hub->connected() == 0; }));
  generate_to_sink("after the link", "fallback");
  caf::anon_send_exit(worker, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(fallback_worker, caf::exit_reason::user_shutdown);
}

CAF_TEST(a sink that goes down stops the generation over the link) {
  auto run = held_generation([](link_client&, const caf::actor& sink) {
    // The HTTP client went away: its sink ends, and the worker process's
    // stand-in goes down with it.
    caf::anon_send_exit(sink, caf::exit_reason::user_shutdown);
  });
  CAF_CHECK_EQUAL(run.answer, "linked:cancelled:");
}

CAF_TEST(a link that closes during a generation fails it and stops the run) {
  auto run
      = held_generation([](link_client& client, const caf::actor&) { client.close(); });
  CAF_CHECK_EQUAL(run.answer.substr(0, 18), "error:unavailable:");
}

CAF_TEST_FIXTURE_SCOPE_END()
