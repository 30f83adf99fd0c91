#define CAF_SUITE openai
#include "tests/unit/test_support.hpp"

#include "messages/openai.hpp"

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

// Checks that every body fails with invalid_input and a message containing
// `expected`.
template <class Decode>
void check_refused(Decode decode, const std::vector<bad_case>& cases) {
  for (auto& c : cases) {
    auto req = decode(c.body);
    if (req) {
      CAF_MESSAGE("body " << c.body << " was accepted");
      CAF_CHECK(!req);
      continue;
    }
    CAF_CHECK(code_of(req.error()) == errc::invalid_input);
    auto text = message_of(req.error());
    if (text.find(c.expected) == std::string::npos)
      CAF_MESSAGE("body " << c.body << " gave '" << text << "'");
    CAF_CHECK(text.find(c.expected) != std::string::npos);
  }
}

// A completions body with `field` added.
std::string completion_with(const std::string& field) {
  return R"({"model":"m","prompt":"hi",)" + field + "}";
}

std::string chat_with(const std::string& field) {
  return R"({"model":"m","messages":[{"role":"user","content":"hi"}],)" + field + "}";
}

bool valid_utf8(const std::string& s) {
  // Throws on invalid UTF-8 unless told otherwise.
  try {
    json j = s;
    (void)j.dump();
    return true;
  } catch (const json::exception&) {
    return false;
  }
}

} // namespace

CAF_TEST(a completion body with every field decodes) {
  auto req = decode_completion_request(
      R"({"model":"tiny","prompt":"Once","max_tokens":32,"temperature":0.5,)"
      R"("top_p":0.9,"top_k":40,"seed":7,"stop":["\n","END"],"stream":true,)"
      R"("stream_options":{"include_usage":true},"user":"u1","n":1,"best_of":1,)"
      R"("echo":false,"logprobs":null,"presence_penalty":0,"frequency_penalty":0.0,)"
      R"("logit_bias":{},"suffix":null})");
  CAF_REQUIRE(req);
  CAF_CHECK_EQUAL(req->model, "tiny");
  CAF_CHECK(!req->chat);
  CAF_CHECK(req->stream);
  CAF_CHECK(req->include_usage);
  CAF_CHECK(req->messages.empty());
  auto& p = req->params;
  CAF_CHECK_EQUAL(p.prompt, "Once");
  CAF_CHECK_EQUAL(p.max_tokens, 32);
  CAF_CHECK_EQUAL(p.temperature, 0.5);
  CAF_CHECK_EQUAL(p.top_p, 0.9);
  CAF_CHECK_EQUAL(p.top_k, 40);
  CAF_CHECK(p.has_seed);
  CAF_CHECK_EQUAL(p.seed, 7u);
  CAF_CHECK_EQUAL(p.stop, (std::vector<std::string>{"\n", "END"}));
}

CAF_TEST(a minimal completion body takes the defaults) {
  auto req = decode_completion_request(R"({"model":"tiny","prompt":["Once"]})");
  CAF_REQUIRE(req);
  CAF_CHECK_EQUAL(req->params.prompt, "Once");
  CAF_CHECK_EQUAL(req->params.max_tokens, 16);
  CAF_CHECK_EQUAL(req->params.temperature, 1.0);
  CAF_CHECK_EQUAL(req->params.top_p, 1.0);
  CAF_CHECK_EQUAL(req->params.top_k, 0);
  CAF_CHECK(!req->params.has_seed);
  CAF_CHECK(req->params.stop.empty());
  CAF_CHECK(!req->stream);
  CAF_CHECK(!req->include_usage);
  // A single stop string, temperature at both ends, nulls as defaults.
  auto edge = decode_completion_request(
      completion_with(R"("stop":"x","temperature":2,"max_tokens":null,"n":null)"));
  CAF_REQUIRE(edge);
  CAF_CHECK_EQUAL(edge->params.stop, (std::vector<std::string>{"x"}));
  CAF_CHECK_EQUAL(edge->params.temperature, 2.0);
  CAF_CHECK_EQUAL(edge->params.max_tokens, 16);
  auto cold = decode_completion_request(completion_with(R"("temperature":0)"));
  CAF_REQUIRE(cold);
  CAF_CHECK_EQUAL(cold->params.temperature, 0.0);
  auto big_seed
      = decode_completion_request(completion_with(R"("seed":18446744073709551615)"));
  CAF_REQUIRE(big_seed);
  CAF_CHECK_EQUAL(big_seed->params.seed, 18446744073709551615u);
}

CAF_TEST(bad completion bodies name the field) {
  std::string long_prompt(max_prompt_bytes + 1, 'a');
  check_refused(
      decode_completion_request,
      {
          {"{not json", "body: malformed JSON"},
          {"[1]", "body: expected a JSON object"},
          {R"({"prompt":"hi"})", "model: missing"},
          {R"({"model":"m"})", "prompt: missing"},
          {R"({"model":3,"prompt":"hi"})", "model: expected a non-empty string"},
          {R"({"model":"","prompt":"hi"})", "model: expected a non-empty string"},
          {R"({"model":"m","prompt":5})", "prompt: expected a string or an array of one"},
          {R"({"model":"m","prompt":["a","b"]})",
           "prompt: expected a string or an array"},
          {R"({"model":"m","prompt":[[1,2]]})", "prompt: expected a string or an array"},
          {R"({"model":"m","prompt":")" + long_prompt + R"("})",
           "prompt: longer than 65536"},
          {completion_with(R"("temprature":1)"), "body: unknown field 'temprature'"},
          {completion_with(R"("messages":[])"), "body: unknown field 'messages'"},
          {completion_with(R"("max_completion_tokens":4)"),
           "body: unknown field 'max_completion_tokens'"},
          {completion_with(R"("max_tokens":0)"),
           "max_tokens: expected an integer in 1..4096"},
          {completion_with(R"("max_tokens":4097)"),
           "max_tokens: expected an integer in 1..4096"},
          {completion_with(R"("max_tokens":1.5)"), "max_tokens: expected an integer"},
          {completion_with(R"("max_tokens":"8")"), "max_tokens: expected an integer"},
          {completion_with(R"("temperature":2.01)"),
           "temperature: expected a number in 0..2"},
          {completion_with(R"("temperature":-0.1)"),
           "temperature: expected a number in 0..2"},
          {completion_with(R"("temperature":"hot")"), "temperature: expected a number"},
          {completion_with(R"("top_p":0)"), "top_p: expected a number in (0, 1]"},
          {completion_with(R"("top_p":1.5)"), "top_p: expected a number in (0, 1]"},
          {completion_with(R"("top_k":-1)"), "top_k: expected a non-negative integer"},
          {completion_with(R"("seed":-1)"), "seed: expected a non-negative integer"},
          {completion_with(R"("seed":"7")"), "seed: expected a non-negative integer"},
          {completion_with(R"("stop":["a",1])"), "stop: expected strings"},
          {completion_with(R"("stop":"")"), "stop: stop strings must not be empty"},
          {completion_with(R"("stop":["1","2","3","4","5","6","7","8","9"])"),
           "stop: expected a string or up to 8 strings"},
          {completion_with(R"("stop":7)"), "stop: expected a string or up to 8"},
          {completion_with(R"("stream":"yes")"), "stream: expected a boolean"},
          {completion_with(R"("stream_options":true)"),
           "stream_options: expected an object"},
          {completion_with(R"("stream_options":{"include_usage":1})"),
           "stream_options.include_usage: expected a boolean"},
          {completion_with(R"("stream_options":{"x":true})"),
           "stream_options: unknown field 'x'"},
          {completion_with(R"("user":5)"), "user: expected a string"},
          {completion_with(R"("n":2)"), "n: only 1 is supported"},
          {completion_with(R"("best_of":3)"), "best_of: only 1 is supported"},
          {completion_with(R"("echo":true)"), "echo: only false is supported"},
          {completion_with(R"("logprobs":5)"), "logprobs: not supported"},
          {completion_with(R"("logprobs":true)"), "logprobs: not supported"},
          {completion_with(R"("presence_penalty":0.5)"), "presence_penalty: only 0"},
          {completion_with(R"("frequency_penalty":"0")"), "frequency_penalty: only 0"},
          {completion_with(R"("logit_bias":{"50256":-100})"),
           "logit_bias: not supported"},
          {completion_with(R"("suffix":"end")"), "suffix: not supported"},
      });
}

CAF_TEST(a chat body with every field decodes and renders the prompt) {
  auto req = decode_chat_request(
      R"({"model":"tiny","messages":[{"role":"system","content":"Be brief."},)"
      R"({"role":"user","name":"ann","content":[{"type":"text","text":"Hi"},)"
      R"({"type":"text","text":"there"}]},{"role":"assistant","content":null},)"
      R"({"role":"developer","content":"d"},{"role":"tool","content":"t"}],)"
      R"("max_completion_tokens":20,"temperature":0,"top_p":0.5,"top_k":3,"seed":0,)"
      R"("stop":"\n","stream":true,"stream_options":{"include_usage":false},)"
      R"("user":"u","n":1,"logprobs":false,"presence_penalty":0,)"
      R"("frequency_penalty":0,"logit_bias":null})");
  CAF_REQUIRE(req);
  CAF_CHECK(req->chat);
  CAF_CHECK(req->stream);
  CAF_CHECK(!req->include_usage);
  CAF_REQUIRE_EQUAL(req->messages.size(), 5u);
  CAF_CHECK_EQUAL(req->messages[0].role, "system");
  CAF_CHECK_EQUAL(req->messages[1].content, "Hi\nthere");
  CAF_CHECK_EQUAL(req->messages[2].content, "");
  CAF_CHECK_EQUAL(req->messages[3].role, "developer");
  CAF_CHECK_EQUAL(req->params.prompt, "system: Be brief.\nuser: Hi\nthere\nassistant: \n"
                                      "developer: d\ntool: t\nassistant:");
  CAF_CHECK_EQUAL(req->params.max_tokens, 20);
  CAF_CHECK_EQUAL(req->params.temperature, 0.0);
  CAF_CHECK_EQUAL(req->params.top_k, 3);
  CAF_CHECK(req->params.has_seed);
  CAF_CHECK_EQUAL(req->params.seed, 0u);
  CAF_CHECK_EQUAL(req->params.stop, (std::vector<std::string>{"\n"}));
}

CAF_TEST(a minimal chat body takes the chat defaults) {
  auto req = decode_chat_request(
      R"({"model":"m","messages":[{"role":"user","content":"hi"}]})");
  CAF_REQUIRE(req);
  CAF_CHECK_EQUAL(req->params.max_tokens, 64);
  CAF_CHECK_EQUAL(req->params.prompt, "user: hi\nassistant:");
  CAF_CHECK(!req->stream);
  auto alias = decode_chat_request(chat_with(R"("max_tokens":9)"));
  CAF_REQUIRE(alias);
  CAF_CHECK_EQUAL(alias->params.max_tokens, 9);
  auto both
      = decode_chat_request(chat_with(R"("max_tokens":9,"max_completion_tokens":9)"));
  CAF_REQUIRE(both);
  CAF_CHECK_EQUAL(both->params.max_tokens, 9);
}

CAF_TEST(chat prompts render one line per message) {
  CAF_CHECK_EQUAL(chat_prompt({}), "assistant:");
  CAF_CHECK_EQUAL(chat_prompt({{"user", "a"}, {"assistant", "b"}, {"user", "c"}}),
                  "user: a\nassistant: b\nuser: c\nassistant:");
}

CAF_TEST(bad chat bodies name the field) {
  std::string half(max_prompt_bytes / 2, 'a');
  auto two_halves = R"({"model":"m","messages":[{"role":"user","content":")" + half
                    + R"("},{"role":"user","content":")" + half + R"("}]})";
  std::string many = R"({"model":"m","messages":[)";
  for (int i = 0; i < 257; ++i)
    many += std::string(i ? "," : "") + R"({"role":"user","content":"x"})";
  many += "]}";
  check_refused(
      decode_chat_request,
      {
          {"{", "body: malformed JSON"},
          {R"({"model":"m"})", "messages: missing"},
          {R"({"messages":[{"role":"user","content":"hi"}]})", "model: missing"},
          {R"({"model":"m","messages":[]})", "messages: expected an array of 1..256"},
          {R"({"model":"m","messages":{}})", "messages: expected an array of 1..256"},
          {many, "messages: expected an array of 1..256"},
          {R"({"model":"m","messages":["hi"]})", "messages[0]: expected an object"},
          {R"({"model":"m","messages":[{"content":"hi"}]})", "messages[0].role: missing"},
          {R"({"model":"m","messages":[{"role":"user"}]})",
           "messages[0].content: missing"},
          {R"({"model":"m","messages":[{"role":7,"content":"x"}]})",
           "messages[0].role: expected a string"},
          {R"({"model":"m","messages":[{"role":"robot","content":"x"}]})",
           "messages[0].role: expected system, user, assistant"},
          {R"({"model":"m","messages":[{"role":"user","content":5}]})",
           "messages[0].content: expected a string, null or an array of text parts"},
          {R"({"model":"m","messages":[{"role":"user","content":"x","name":1}]})",
           "messages[0].name: expected a string"},
          {R"({"model":"m","messages":[{"role":"user","content":"x","tool_calls":[]}]})",
           "messages[0]: unknown field 'tool_calls'"},
          {R"({"model":"m","messages":[{"role":"user","content":"a"},)"
           R"({"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}}]}]})",
           "messages[1].content[0].type: only \"text\" parts are supported"},
          {R"({"model":"m","messages":[{"role":"user","content":["a"]}]})",
           "messages[0].content[0]: expected an object"},
          {R"({"model":"m","messages":[{"role":"user","content":[{"text":"a"}]}]})",
           "messages[0].content[0].type: missing"},
          {R"({"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]})",
           "messages[0].content[0].text: missing"},
          {R"({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a","x":1}]}]})",
           "messages[0].content[0]: unknown field 'x'"},
          {two_halves, "messages: rendered prompt longer than 65536 bytes"},
          {chat_with(R"("prompt":"x")"), "body: unknown field 'prompt'"},
          {chat_with(R"("max_completion_tokens":0)"),
           "max_completion_tokens: expected an integer in 1..4096"},
          {chat_with(R"("max_tokens":5,"max_completion_tokens":6)"),
           "max_completion_tokens: differs from max_tokens"},
          {chat_with(R"("n":2)"), "n: only 1 is supported"},
          {chat_with(R"("logprobs":true)"), "logprobs: not supported"},
          {chat_with(R"("stream_options":"usage")"),
           "stream_options: expected an object"},
          {chat_with(R"("temperature":3)"), "temperature: expected a number in 0..2"},
          {chat_with(R"("tools":[])"), "body: unknown field 'tools'"},
      });
}

CAF_TEST(finish reasons map onto the OpenAI ones) {
  CAF_CHECK_EQUAL(openai_finish_reason("cancelled"), "stop");
  CAF_CHECK_EQUAL(openai_finish_reason("stop"), "stop");
  CAF_CHECK_EQUAL(openai_finish_reason("length"), "length");
  CAF_CHECK_EQUAL(openai_finish_reason(""), "");
}

CAF_TEST(completions encode with usage) {
  openai_result r{"Hello", 3, 5, "cancelled"};
  auto j = json::parse(encode_completion("cmpl-1", "tiny", 1700000000, r));
  CAF_CHECK_EQUAL(j["id"], "cmpl-1");
  CAF_CHECK_EQUAL(j["object"], "text_completion");
  CAF_CHECK_EQUAL(j["created"], 1700000000);
  CAF_CHECK_EQUAL(j["model"], "tiny");
  CAF_REQUIRE_EQUAL(j["choices"].size(), 1u);
  auto& c = j["choices"][0];
  CAF_CHECK_EQUAL(c["index"], 0);
  CAF_CHECK_EQUAL(c["text"], "Hello");
  CAF_CHECK_EQUAL(c["finish_reason"], "stop");
  CAF_CHECK(c["logprobs"].is_null());
  CAF_CHECK_EQUAL(j["usage"]["prompt_tokens"], 3);
  CAF_CHECK_EQUAL(j["usage"]["completion_tokens"], 5);
  CAF_CHECK_EQUAL(j["usage"]["total_tokens"], 8);
}

CAF_TEST(chat completions encode an assistant message) {
  openai_result r{"Hi!", 10, 2, "length"};
  auto j = json::parse(encode_chat_completion("chatcmpl-1", "tiny", 42, r));
  CAF_CHECK_EQUAL(j["id"], "chatcmpl-1");
  CAF_CHECK_EQUAL(j["object"], "chat.completion");
  CAF_CHECK_EQUAL(j["created"], 42);
  CAF_CHECK_EQUAL(j["model"], "tiny");
  auto& c = j["choices"][0];
  CAF_CHECK_EQUAL(c["index"], 0);
  CAF_CHECK_EQUAL(c["message"]["role"], "assistant");
  CAF_CHECK_EQUAL(c["message"]["content"], "Hi!");
  CAF_CHECK_EQUAL(c["finish_reason"], "length");
  CAF_CHECK_EQUAL(j["usage"]["total_tokens"], 12);
}

CAF_TEST(stream chunks carry deltas and a null finish reason until the end) {
  auto a = json::parse(encode_completion_chunk("cmpl-2", "tiny", 7, "He", ""));
  CAF_CHECK_EQUAL(a["object"], "text_completion");
  CAF_CHECK_EQUAL(a["id"], "cmpl-2");
  CAF_CHECK_EQUAL(a["created"], 7);
  CAF_CHECK_EQUAL(a["choices"][0]["text"], "He");
  CAF_CHECK(a["choices"][0]["finish_reason"].is_null());
  CAF_CHECK(a.find("usage") == a.end());
  auto z = json::parse(encode_completion_chunk("cmpl-2", "tiny", 7, "", "length"));
  CAF_CHECK_EQUAL(z["choices"][0]["finish_reason"], "length");

  auto first = json::parse(encode_chat_chunk("c-3", "tiny", 8, "", "", true));
  CAF_CHECK_EQUAL(first["object"], "chat.completion.chunk");
  CAF_CHECK_EQUAL(first["choices"][0]["delta"],
                  (json{{"role", "assistant"}, {"content", ""}}));
  CAF_CHECK(first["choices"][0]["finish_reason"].is_null());
  auto mid = json::parse(encode_chat_chunk("c-3", "tiny", 8, "lo", ""));
  CAF_CHECK_EQUAL(mid["choices"][0]["delta"], (json{{"content", "lo"}}));
  CAF_CHECK_EQUAL(mid["choices"][0]["index"], 0);
  auto last = json::parse(encode_chat_chunk("c-3", "tiny", 8, "", "cancelled"));
  CAF_CHECK_EQUAL(last["choices"][0]["finish_reason"], "stop");
}

CAF_TEST(the usage chunk has no choices) {
  openai_result r{"", 4, 6, "stop"};
  auto chat = json::parse(encode_usage_chunk("c-4", "tiny", 9, true, r));
  CAF_CHECK_EQUAL(chat["object"], "chat.completion.chunk");
  CAF_CHECK(chat["choices"].is_array() && chat["choices"].empty());
  CAF_CHECK_EQUAL(
      chat["usage"],
      (json{{"prompt_tokens", 4}, {"completion_tokens", 6}, {"total_tokens", 10}}));
  auto plain = json::parse(encode_usage_chunk("c-5", "tiny", 9, false, r));
  CAF_CHECK_EQUAL(plain["object"], "text_completion");
  CAF_CHECK_EQUAL(plain["usage"]["total_tokens"], 10);
}

CAF_TEST(invalid UTF - 8 in generated text still yields valid JSON) {
  std::string bytes{"ok\xff\xfe\xc3"};
  CAF_REQUIRE(!valid_utf8(bytes));
  openai_result r{bytes, 1, 5, "length"};
  std::vector<std::string> outs{
      encode_completion("i", "m", 1, r),
      encode_chat_completion("i", "m", 1, r),
      encode_completion_chunk("i", "m", 1, bytes, ""),
      encode_chat_chunk("i", "m", 1, bytes, "", true),
      encode_completion(bytes, bytes, 1, r),
  };
  for (auto& out : outs) {
    CAF_CHECK(out.find('\xff') == std::string::npos);
    auto j = json::parse(out, nullptr, false);
    CAF_REQUIRE(!j.is_discarded());
    CAF_CHECK(valid_utf8(out));
  }
  auto j = json::parse(outs[0]);
  CAF_CHECK_EQUAL(j["choices"][0]["text"], "ok\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
}
