#define CAF_SUITE speech_io
#include "tests/unit/test_support.hpp"

#include "messages/speech_io.hpp"

#include <caf/test/unit_test.hpp>

#include <nlohmann/json.hpp>

#include "messages/errors.hpp"

using namespace infergrid;
using json = nlohmann::json;

namespace {

struct bad_case {
  std::string body;
  std::string expected;
};

template <class Decode>
void check_refused(Decode decode, const std::vector<bad_case>& cases) {
  for (auto& c : cases) {
    auto r = decode(c.body);
    if (r) {
      CAF_MESSAGE("body " << c.body << " was accepted");
      CAF_CHECK(!r);
      continue;
    }
    CAF_CHECK(code_of(r.error()) == errc::invalid_input);
    auto text = message_of(r.error());
    if (text.find(c.expected) == std::string::npos)
      CAF_MESSAGE("body " << c.body << " gave '" << text << "'");
    CAF_CHECK(text.find(c.expected) != std::string::npos);
  }
}

} // namespace

CAF_TEST(speech job input decodes text and voice) {
  auto in = decode_speech_input(R"({"text":"Hello there.","voice":"alto"})");
  CAF_REQUIRE(in);
  CAF_CHECK_EQUAL(in->text, "Hello there.");
  CAF_CHECK_EQUAL(in->voice, "alto");
  auto plain = decode_speech_input(R"({"text":"Hi"})");
  CAF_REQUIRE(plain);
  CAF_CHECK_EQUAL(plain->voice, "");
  std::string longest(max_speech_text_bytes, 'a');
  CAF_CHECK(decode_speech_input(R"({"text":")" + longest + R"("})"));
}

CAF_TEST(bad speech job input names the field) {
  std::string too_long(max_speech_text_bytes + 1, 'a');
  check_refused(
      decode_speech_input,
      {
          {"{oops", "input: malformed JSON"},
          {R"("text")", "input: expected an object"},
          {"{}", "input.text: missing"},
          {R"({"voice":"a"})", "input.text: missing"},
          {R"({"text":""})", "input.text: expected a non-empty string"},
          {R"({"text":5})", "input.text: expected a non-empty string"},
          {R"({"text":null})", "input.text: expected a non-empty string"},
          {R"({"text":")" + too_long + R"("})", "input.text: longer than 16384 bytes"},
          {R"({"text":"a","voice":1})", "input.voice: expected a string"},
          {R"({"text":"a","speed":2})", "input.speed: unknown field"},
      });
}

CAF_TEST(a speech request with every field decodes) {
  auto req = decode_speech_request(
      R"({"model":"tts","input":"Hello.","voice":"bass","response_format":"pcm",)"
      R"("stream":true,"speed":1.0})");
  CAF_REQUIRE(req);
  CAF_CHECK_EQUAL(req->model, "tts");
  CAF_CHECK_EQUAL(req->input.text, "Hello.");
  CAF_CHECK_EQUAL(req->input.voice, "bass");
  CAF_CHECK_EQUAL(req->response_format, "pcm");
  CAF_CHECK(req->stream);
}

CAF_TEST(a minimal speech request takes the defaults) {
  auto req = decode_speech_request(R"({"model":"tts","input":"Hi","speed":1})");
  CAF_REQUIRE(req);
  CAF_CHECK_EQUAL(req->input.voice, "");
  CAF_CHECK_EQUAL(req->response_format, "wav");
  CAF_CHECK(!req->stream);
}

CAF_TEST(bad speech requests name the field) {
  std::string too_long(max_speech_text_bytes + 1, 'a');
  check_refused(
      decode_speech_request,
      {
          {"{", "body: malformed JSON"},
          {"[]", "body: expected a JSON object"},
          {R"({"input":"hi"})", "model: missing"},
          {R"({"model":"tts"})", "input: missing"},
          {R"({"model":1,"input":"hi"})", "model: expected a non-empty string"},
          {R"({"model":"tts","input":""})", "input: expected a non-empty string"},
          {R"({"model":"tts","input":["hi"]})", "input: expected a non-empty string"},
          {R"({"model":"tts","input":")" + too_long + R"("})",
           "input: longer than 16384 bytes"},
          {R"({"model":"tts","input":"hi","voice":false})", "voice: expected a string"},
          {R"({"model":"tts","input":"hi","response_format":"mp3"})",
           R"(response_format: expected "wav" or "pcm")"},
          {R"({"model":"tts","input":"hi","response_format":1})",
           "response_format: expected"},
          {R"({"model":"tts","input":"hi","stream":1})", "stream: expected a boolean"},
          {R"({"model":"tts","input":"hi","speed":1.5})", "speed: only 1.0 is supported"},
          {R"({"model":"tts","input":"hi","speed":"1"})", "speed: only 1.0 is supported"},
          {R"({"model":"tts","input":"hi","instructions":"x"})",
           "body: unknown field 'instructions'"},
      });
}

CAF_TEST(speech output encodes duration and real time factor) {
  auto j = json::parse(encode_speech_output("speech.wav", 24000, 36000, 3, 0.25));
  CAF_CHECK_EQUAL(j["artifact"], "speech.wav");
  CAF_CHECK_EQUAL(j["content_type"], "audio/wav");
  CAF_CHECK_EQUAL(j["sample_rate"], 24000);
  CAF_CHECK_EQUAL(j["samples"], 36000);
  CAF_CHECK_EQUAL(j["duration_s"].get<double>(), 1.5);
  CAF_CHECK_EQUAL(j["phrases"], 3);
  CAF_CHECK_EQUAL(j["real_time_factor"].get<double>(), 0.25);
  CAF_CHECK_EQUAL(j.size(), 7u);
  // No rate: no duration; odd bytes and NaN still give valid JSON.
  auto odd = json::parse(encode_speech_output("a\xff.wav", 0, 10, 1, std::nan("")),
                         nullptr, false);
  CAF_REQUIRE(!odd.is_discarded());
  CAF_CHECK_EQUAL(odd["duration_s"].get<double>(), 0.0);
  CAF_CHECK(odd["real_time_factor"].is_null());
}
