#define CAF_SUITE session_io
#include "tests/unit/test_support.hpp"

#include "messages/session_io.hpp"

#include <caf/test/unit_test.hpp>

#include <cmath>

#include <nlohmann/json.hpp>

#include "messages/errors.hpp"

using namespace infergrid;
using json = nlohmann::json;

namespace {

struct bad_case {
  std::string frame;
  std::string expected;
};

void check_refused(const std::vector<bad_case>& cases) {
  for (auto& c : cases) {
    auto r = decode_session_frame(c.frame);
    if (r) {
      CAF_MESSAGE("frame " << c.frame.substr(0, 120) << " was accepted");
      CAF_CHECK(!r);
      continue;
    }
    CAF_CHECK(code_of(r.error()) == errc::invalid_input);
    auto text = message_of(r.error());
    if (text.find(c.expected) == std::string::npos)
      CAF_MESSAGE("frame " << c.frame.substr(0, 120) << " gave '" << text << "'");
    CAF_CHECK(text.find(c.expected) != std::string::npos);
  }
}

// Parses an encoder's output, failing the test when it is not valid JSON.
json parsed(const std::string& text) {
  auto j = json::parse(text, nullptr, false);
  CAF_CHECK(!j.is_discarded());
  return j;
}

} // namespace

CAF_TEST(a minimal session start takes the defaults) {
  auto f = decode_session_frame(R"({"type":"session.start","model":"llm"})");
  CAF_REQUIRE(f);
  CAF_CHECK_EQUAL(f->type, "session.start");
  CAF_CHECK_EQUAL(f->model, "llm");
  CAF_CHECK_EQUAL(f->pipeline, "");
  CAF_CHECK_EQUAL(f->mode, "turn");
  CAF_CHECK_EQUAL(f->record, false);
  CAF_CHECK_EQUAL(f->input_rate, 16000);
  CAF_CHECK_EQUAL(f->voice, "");
  generate_input defaults;
  CAF_CHECK_EQUAL(f->params.prompt, "");
  CAF_CHECK_EQUAL(f->params.max_tokens, defaults.max_tokens);
  CAF_CHECK_EQUAL(f->params.temperature, defaults.temperature);
  CAF_CHECK_EQUAL(f->params.top_k, defaults.top_k);
  CAF_CHECK_EQUAL(f->params.top_p, defaults.top_p);
  CAF_CHECK(!f->params.has_seed);
  CAF_CHECK(f->params.stop.empty());
}

CAF_TEST(a session start with every field decodes) {
  auto f = decode_session_frame(
      R"({"type":"session.start","pipeline":"voice-chat","mode":"duplex",)"
      R"("record":true,"input_rate":48000,"voice":"alto","max_tokens":4096,)"
      R"("temperature":0.5,"top_k":40,"top_p":0.9,"seed":7,"stop":["\n","END"]})");
  CAF_REQUIRE(f);
  CAF_CHECK_EQUAL(f->type, "session.start");
  CAF_CHECK_EQUAL(f->model, "");
  CAF_CHECK_EQUAL(f->pipeline, "voice-chat");
  CAF_CHECK_EQUAL(f->mode, "duplex");
  CAF_CHECK_EQUAL(f->record, true);
  CAF_CHECK_EQUAL(f->input_rate, 48000);
  CAF_CHECK_EQUAL(f->voice, "alto");
  CAF_CHECK_EQUAL(f->params.prompt, "");
  CAF_CHECK_EQUAL(f->params.max_tokens, 4096);
  CAF_CHECK_EQUAL(f->params.temperature, 0.5);
  CAF_CHECK_EQUAL(f->params.top_k, 40);
  CAF_CHECK_EQUAL(f->params.top_p, 0.9);
  CAF_CHECK(f->params.has_seed);
  CAF_CHECK_EQUAL(f->params.seed, 7u);
  CAF_REQUIRE_EQUAL(f->params.stop.size(), 2u);
  CAF_CHECK_EQUAL(f->params.stop[0], "\n");
  CAF_CHECK_EQUAL(f->params.stop[1], "END");
  // Edges of the ranges are accepted; a single stop string is a list of one.
  auto edges = decode_session_frame(
      R"({"type":"session.start","model":"m","input_rate":8000,"max_tokens":1,)"
      R"("temperature":0,"top_k":0,"top_p":1,"seed":0,"stop":"x","mode":"turn",)"
      R"("record":false})");
  CAF_REQUIRE(edges);
  CAF_CHECK_EQUAL(edges->input_rate, 8000);
  CAF_CHECK_EQUAL(edges->params.max_tokens, 1);
  CAF_CHECK_EQUAL(edges->params.temperature, 0.0);
  CAF_CHECK(edges->params.has_seed);
  CAF_CHECK_EQUAL(edges->params.seed, 0u);
  CAF_REQUIRE_EQUAL(edges->params.stop.size(), 1u);
  CAF_CHECK_EQUAL(edges->params.stop[0], "x");
  CAF_CHECK_EQUAL(edges->mode, "turn");
}

CAF_TEST(input text and control frames decode) {
  auto t = decode_session_frame(R"({"type":"input.text","text":"Hello there."})");
  CAF_REQUIRE(t);
  CAF_CHECK_EQUAL(t->type, "input.text");
  CAF_CHECK_EQUAL(t->text, "Hello there.");
  for (std::string action : {"pause", "resume", "stop", "barge_in"}) {
    auto c = decode_session_frame(R"({"action":")" + action + R"(","type":"control"})");
    CAF_REQUIRE(c);
    CAF_CHECK_EQUAL(c->type, "control");
    CAF_CHECK_EQUAL(c->action, action);
  }
  // The largest frame allowed is decoded.
  std::string prefix = R"({"type":"input.text","text":")";
  std::string text(max_session_frame_bytes - prefix.size() - 2, 'a');
  auto frame = prefix + text + R"("})";
  CAF_REQUIRE_EQUAL(frame.size(), max_session_frame_bytes);
  auto big = decode_session_frame(frame);
  CAF_REQUIRE(big);
  CAF_CHECK_EQUAL(big->text.size(), text.size());
}

CAF_TEST(bad frames are refused) {
  std::string prefix = R"({"type":"input.text","text":")";
  std::string too_big
      = prefix + std::string(max_session_frame_bytes - prefix.size() - 1, 'a') + R"("})";
  CAF_REQUIRE_EQUAL(too_big.size(), max_session_frame_bytes + 1);
  check_refused({
      {too_big, "frame: larger than 65536 bytes"},
      {std::string(max_session_frame_bytes + 1, ' '), "frame: larger than 65536 bytes"},
      {"{oops", "frame: malformed JSON"},
      {"", "frame: malformed JSON"},
      {"[]", "frame: expected a JSON object"},
      {R"("control")", "frame: expected a JSON object"},
      {"{}", "type: expected session.start, input.text or control"},
      {R"({"action":"stop"})", "type: expected session.start, input.text or control"},
      {R"({"type":1})", "type: expected session.start, input.text or control"},
      {R"({"type":null})", "type: expected session.start, input.text or control"},
      {R"({"type":"session.end"})",
       "type: expected session.start, input.text or control"},
      {R"({"type":"Control","action":"stop"})",
       "type: expected session.start, input.text or control"},
  });
}

CAF_TEST(bad session starts name the field) {
  auto start = [](const std::string& fields) {
    return R"({"type":"session.start","model":"m",)" + fields + "}";
  };
  check_refused({
      {R"({"type":"session.start"})",
       "session.start: expected exactly one of model and pipeline"},
      {R"({"type":"session.start","model":"m","pipeline":"p"})",
       "session.start: expected exactly one of model and pipeline"},
      {R"({"type":"session.start","model":""})",
       "session.start.model: expected a non-empty string"},
      {R"({"type":"session.start","model":1})",
       "session.start.model: expected a non-empty string"},
      {R"({"type":"session.start","pipeline":""})",
       "session.start.pipeline: expected a non-empty string"},
      {R"({"type":"session.start","pipeline":["p"]})",
       "session.start.pipeline: expected a non-empty string"},
      {start(R"("mode":"half")"), "session.start.mode: expected turn or duplex"},
      {start(R"("mode":1)"), "session.start.mode: expected turn or duplex"},
      {start(R"("record":"yes")"), "session.start.record: expected a boolean"},
      {start(R"("record":1)"), "session.start.record: expected a boolean"},
      {start(R"("input_rate":7999)"),
       "session.start.input_rate: expected an integer in 8000..48000"},
      {start(R"("input_rate":48001)"),
       "session.start.input_rate: expected an integer in 8000..48000"},
      {start(R"("input_rate":16000.5)"),
       "session.start.input_rate: expected an integer in 8000..48000"},
      {start(R"("input_rate":"16000")"),
       "session.start.input_rate: expected an integer in 8000..48000"},
      {start(R"("input_rate":18446744073709551615)"),
       "session.start.input_rate: expected an integer in 8000..48000"},
      {start(R"("voice":2)"), "session.start.voice: expected a string"},
      {start(R"("max_tokens":0)"),
       "session.start.max_tokens: expected an integer in 1..4096"},
      {start(R"("max_tokens":4097)"),
       "session.start.max_tokens: expected an integer in 1..4096"},
      {start(R"("max_tokens":1.5)"),
       "session.start.max_tokens: expected an integer in 1..4096"},
      {start(R"("max_tokens":18446744073709551615)"),
       "session.start.max_tokens: expected an integer in 1..4096"},
      {start(R"("temperature":-0.1)"),
       "session.start.temperature: expected a number in 0..10"},
      {start(R"("temperature":10.5)"),
       "session.start.temperature: expected a number in 0..10"},
      {start(R"("temperature":"hot")"),
       "session.start.temperature: expected a number in 0..10"},
      {start(R"("top_k":-1)"), "session.start.top_k: expected a non-negative integer"},
      {start(R"("top_k":2.5)"), "session.start.top_k: expected a non-negative integer"},
      {start(R"("top_p":0)"), "session.start.top_p: expected a number in (0, 1]"},
      {start(R"("top_p":1.01)"), "session.start.top_p: expected a number in (0, 1]"},
      {start(R"("seed":-1)"), "session.start.seed: expected a non-negative integer"},
      {start(R"("seed":1.5)"), "session.start.seed: expected a non-negative integer"},
      {start(R"("seed":"1")"), "session.start.seed: expected a non-negative integer"},
      {start(R"("stop":"")"), "session.start.stop: stop strings must not be empty"},
      {start(R"("stop":["a",""])"), "session.start.stop: stop strings must not be empty"},
      {start(R"("stop":["a",1])"), "session.start.stop: expected strings"},
      {start(R"("stop":5)"), "session.start.stop: expected a string or up to 8 strings"},
      {start(R"("stop":["1","2","3","4","5","6","7","8","9"])"),
       "session.start.stop: expected a string or up to 8 strings"},
      {start(R"("prompt":"hi")"), "session.start.prompt: unknown field"},
      {start(R"("text":"hi")"), "session.start.text: unknown field"},
      {start(R"("action":"stop")"), "session.start.action: unknown field"},
  });
}

CAF_TEST(bad input text and control frames name the field) {
  check_refused({
      {R"({"type":"input.text"})", "input.text.text: expected a non-empty string"},
      {R"({"type":"input.text","text":""})",
       "input.text.text: expected a non-empty string"},
      {R"({"type":"input.text","text":5})",
       "input.text.text: expected a non-empty string"},
      {R"({"type":"input.text","text":null})",
       "input.text.text: expected a non-empty string"},
      {R"({"type":"input.text","text":"hi","model":"m"})",
       "input.text.model: unknown field"},
      {R"({"type":"input.text","text":"hi","action":"stop"})",
       "input.text.action: unknown field"},
      {R"({"type":"control"})",
       "control.action: expected pause, resume, stop or barge_in"},
      {R"({"type":"control","action":"cancel"})",
       "control.action: expected pause, resume, stop or barge_in"},
      {R"({"type":"control","action":"STOP"})",
       "control.action: expected pause, resume, stop or barge_in"},
      {R"({"type":"control","action":1})",
       "control.action: expected pause, resume, stop or barge_in"},
      {R"({"type":"control","action":"stop","text":"hi"})",
       "control.text: unknown field"},
  });
}

CAF_TEST(queue position leaves out an unknown eta) {
  auto j = parsed(encode_queue_position(3, 1500));
  CAF_CHECK_EQUAL(j["type"], "queue.position");
  CAF_CHECK_EQUAL(j["position"], 3);
  CAF_CHECK_EQUAL(j["eta_ms"], 1500);
  CAF_CHECK_EQUAL(j.size(), 3u);
  auto zero = parsed(encode_queue_position(0, 0));
  CAF_CHECK_EQUAL(zero["eta_ms"], 0);
  auto unknown = parsed(encode_queue_position(2, -1));
  CAF_CHECK_EQUAL(unknown["position"], 2);
  CAF_CHECK(!unknown.contains("eta_ms"));
  CAF_CHECK_EQUAL(unknown.size(), 2u);
}

CAF_TEST(session started carries the sample rate only when positive) {
  auto j = parsed(encode_session_started("s-1", "w-2", "tts", "duplex", 24000));
  CAF_CHECK_EQUAL(j["type"], "session.started");
  CAF_CHECK_EQUAL(j["session_id"], "s-1");
  CAF_CHECK_EQUAL(j["worker"], "w-2");
  CAF_CHECK_EQUAL(j["model"], "tts");
  CAF_CHECK_EQUAL(j["mode"], "duplex");
  CAF_CHECK_EQUAL(j["sample_rate"], 24000);
  CAF_CHECK_EQUAL(j.size(), 6u);
  for (int64_t rate : {int64_t{0}, int64_t{-1}}) {
    auto text = parsed(encode_session_started("s-1", "w-2", "llm", "turn", rate));
    CAF_CHECK_EQUAL(text["mode"], "turn");
    CAF_CHECK(!text.contains("sample_rate"));
    CAF_CHECK_EQUAL(text.size(), 5u);
  }
}

CAF_TEST(state end and error frames encode) {
  auto s = parsed(encode_session_state("BARGED_IN"));
  CAF_CHECK_EQUAL(s["type"], "state");
  CAF_CHECK_EQUAL(s["state"], "BARGED_IN");
  CAF_CHECK_EQUAL(s.size(), 2u);
  auto e = parsed(encode_session_end("client_closed"));
  CAF_CHECK_EQUAL(e["type"], "session.end");
  CAF_CHECK_EQUAL(e["reason"], "client_closed");
  CAF_CHECK_EQUAL(e.size(), 2u);
  auto err = parsed(encode_session_error("invalid_input", "control.action: \"x\""));
  CAF_CHECK_EQUAL(err["type"], "error");
  CAF_CHECK_EQUAL(err["code"], "invalid_input");
  CAF_CHECK_EQUAL(err["message"], "control.action: \"x\"");
  CAF_CHECK_EQUAL(err.size(), 3u);
  // Odd bytes in a message still give valid JSON.
  auto odd = parsed(encode_session_error("internal", "bad \xc3 byte"));
  CAF_CHECK_EQUAL(odd["message"], "bad \xef\xbf\xbd byte");
}

CAF_TEST(output text is always valid JSON) {
  auto j = parsed(encode_output_text("Hello, \"world\"\n", 4));
  CAF_CHECK_EQUAL(j["type"], "output.text");
  CAF_CHECK_EQUAL(j["delta"], "Hello, \"world\"\n");
  CAF_CHECK_EQUAL(j["seq"], 4);
  CAF_CHECK_EQUAL(j.size(), 3u);
  // A token cut in the middle of a UTF-8 sequence, and a lone bad byte.
  auto cut = parsed(encode_output_text("caf\xc3", 5));
  CAF_REQUIRE(cut.is_object());
  CAF_CHECK_EQUAL(cut["delta"], "caf\xef\xbf\xbd");
  CAF_CHECK_EQUAL(cut["seq"], 5);
  auto bad = parsed(encode_output_text("a\xff"
                                       "b",
                                       6));
  CAF_REQUIRE(bad.is_object());
  CAF_CHECK_EQUAL(bad["delta"], "a\xef\xbf\xbd"
                                "b");
}

CAF_TEST(text turn end sums the usage) {
  auto j = parsed(encode_text_turn_end(2, "stop", 11, 31));
  CAF_CHECK_EQUAL(j["type"], "turn.end");
  CAF_CHECK_EQUAL(j["turn"], 2);
  CAF_CHECK_EQUAL(j["finish_reason"], "stop");
  CAF_CHECK_EQUAL(j.size(), 4u);
  auto& u = j["usage"];
  CAF_CHECK_EQUAL(u["prompt_tokens"], 11);
  CAF_CHECK_EQUAL(u["completion_tokens"], 31);
  CAF_CHECK_EQUAL(u["total_tokens"], 42);
  CAF_CHECK_EQUAL(u.size(), 3u);
}

CAF_TEST(speech turn end reports seconds and real time factor) {
  auto j = parsed(encode_speech_turn_end(1, "length", 36000, 24000, 0.25));
  CAF_CHECK_EQUAL(j["type"], "turn.end");
  CAF_CHECK_EQUAL(j["turn"], 1);
  CAF_CHECK_EQUAL(j["finish_reason"], "length");
  CAF_CHECK_EQUAL(j.size(), 4u);
  auto& u = j["usage"];
  CAF_CHECK_EQUAL(u["samples"], 36000);
  CAF_CHECK_EQUAL(u["sample_rate"], 24000);
  CAF_CHECK_EQUAL(u["audio_seconds"].get<double>(), 1.5);
  CAF_CHECK_EQUAL(u["real_time_factor"].get<double>(), 0.25);
  CAF_CHECK_EQUAL(u.size(), 4u);
  // No rate: no division by zero; NaN still gives valid JSON.
  auto odd = parsed(encode_speech_turn_end(3, "stop", 10, 0, std::nan("")));
  CAF_REQUIRE(odd.is_object());
  CAF_CHECK_EQUAL(odd["usage"]["audio_seconds"].get<double>(), 0.0);
  CAF_CHECK(odd["usage"]["real_time_factor"].is_null());
}
