#define CAF_SUITE streams
#include "tests/unit/test_support.hpp"

#include "http/streams.hpp"

#include <caf/test/unit_test.hpp>

#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "http/routes.hpp"
#include "messages/audio.hpp"
#include "messages/openai.hpp"

using namespace infergrid;
using namespace infergrid::http;
using json = nlohmann::json;

namespace {

/// The JSON of each `data: ` frame of an SSE body, in order; "[DONE]" as is.
std::vector<std::string> frames_of(const std::string& body) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < body.size()) {
    auto end = body.find("\n\n", pos);
    if (end == std::string::npos) {
      out.push_back("<unterminated>" + body.substr(pos));
      break;
    }
    auto frame = body.substr(pos, end - pos);
    if (frame.rfind("data: ", 0) == 0)
      out.push_back(frame.substr(6));
    else
      out.push_back("<not data>" + frame);
    pos = end + 2;
  }
  return out;
}

generate_reply reply_of(std::string text, std::string finish = "length") {
  generate_reply r;
  r.text = std::move(text);
  r.prompt_tokens = 4;
  r.tokens = static_cast<int64_t>(r.text.size());
  r.finish_reason = std::move(finish);
  r.worker = "w1";
  return r;
}

/// The text the chunks of a completions stream carry, concatenated.
std::string streamed_text(const std::vector<std::string>& frames, bool chat) {
  std::string out;
  for (auto& f : frames) {
    if (f == "[DONE]")
      continue;
    auto doc = json::parse(f);
    if (doc["choices"].empty())
      continue;
    auto& choice = doc["choices"][0];
    out += chat ? choice["delta"]["content"].get<std::string>()
                : choice["text"].get<std::string>();
  }
  return out;
}

} // namespace

CAF_TEST(utf8 prefixes end between characters) {
  CAF_CHECK_EQUAL(utf8_complete_prefix(""), 0u);
  CAF_CHECK_EQUAL(utf8_complete_prefix("abc"), 3u);
  CAF_CHECK_EQUAL(utf8_complete_prefix("a\xC3"), 1u);            // é cut
  CAF_CHECK_EQUAL(utf8_complete_prefix("a\xC3\xA9"), 3u);        // é
  CAF_CHECK_EQUAL(utf8_complete_prefix("\xE2\x82"), 0u);         // € cut
  CAF_CHECK_EQUAL(utf8_complete_prefix("\xE2\x82\xAC"), 3u);     // €
  CAF_CHECK_EQUAL(utf8_complete_prefix("\xF0\x9F\x98"), 0u);     // emoji cut
  CAF_CHECK_EQUAL(utf8_complete_prefix("\xF0\x9F\x98\x80"), 4u); // emoji
  CAF_CHECK_EQUAL(utf8_complete_prefix("a\xFF"), 2u);            // invalid: own char
  CAF_CHECK_EQUAL(utf8_complete_prefix("\x80"), 1u);             // stray continuation
  CAF_CHECK_EQUAL(utf8_complete_prefix("\xE2\x82"
                                       "A"),
                  3u); // broken, then A
  // A byte that breaks a sequence starts anew: here it is invalid on its own
  // too (overlong, surrogate, above U+10FFFF), so both are complete.
  CAF_CHECK_EQUAL(utf8_complete_prefix("\xE0\x80"), 2u);
  CAF_CHECK_EQUAL(utf8_complete_prefix("\xED\xA0"), 2u);
  CAF_CHECK_EQUAL(utf8_complete_prefix("\xF4\x90"), 2u);
  // Here it starts a character that is still cut.
  CAF_CHECK_EQUAL(utf8_complete_prefix("\xE0\xC3"), 1u);
}

CAF_TEST(completion chunks carry the text then finish usage and done) {
  completion_stream st{"cmpl-r_1", "tinylm", 1700000000, false, true, 1024};
  CAF_CHECK(!st.has_output());
  CAF_CHECK(st.add_delta("Hel"));
  CAF_CHECK(st.add_delta("lo"));
  CAF_CHECK(st.has_output());
  auto first = frames_of(st.take());
  CAF_REQUIRE_EQUAL(first.size(), 1u); // coalesced
  CAF_CHECK_EQUAL(first[0],
                  encode_completion_chunk("cmpl-r_1", "tinylm", 1700000000, "Hello", ""));
  CAF_CHECK(!st.has_output());
  CAF_CHECK(st.add_delta(","));
  auto r = reply_of("Hello, world", "cancelled");
  st.finish(r);
  CAF_CHECK(st.finished());
  CAF_CHECK(!st.add_delta(" late")); // after the reply: dropped
  auto rest = frames_of(st.take());
  CAF_REQUIRE_EQUAL(rest.size(), 4u);
  CAF_CHECK_EQUAL(
      rest[0], encode_completion_chunk("cmpl-r_1", "tinylm", 1700000000, ", world", ""));
  CAF_CHECK_EQUAL(rest[1],
                  encode_completion_chunk("cmpl-r_1", "tinylm", 1700000000, "", "stop"));
  openai_result usage;
  usage.text = r.text;
  usage.prompt_tokens = 4;
  usage.completion_tokens = r.tokens;
  usage.finish_reason = r.finish_reason;
  CAF_CHECK_EQUAL(rest[2],
                  encode_usage_chunk("cmpl-r_1", "tinylm", 1700000000, false, usage));
  CAF_CHECK_EQUAL(rest[3], "[DONE]");
  CAF_CHECK(!st.has_output());
  CAF_CHECK(st.take().empty());
}

CAF_TEST(chat streams open with the assistant role) {
  completion_stream st{"chatcmpl-r_2", "tinylm", 1, true, false, 1024};
  CAF_CHECK(st.has_output()); // the role chunk is ready at once
  auto open = frames_of(st.take());
  CAF_REQUIRE_EQUAL(open.size(), 1u);
  auto doc = json::parse(open[0]);
  CAF_CHECK_EQUAL(doc["object"], "chat.completion.chunk");
  CAF_CHECK_EQUAL(doc["choices"][0]["delta"]["role"], "assistant");
  CAF_CHECK_EQUAL(doc["choices"][0]["delta"]["content"], "");
  st.add_delta("hi");
  st.finish(reply_of("hi there"));
  auto frames = frames_of(st.take());
  // text, finish, [DONE]: no usage unless asked for.
  CAF_REQUIRE_EQUAL(frames.size(), 3u);
  CAF_CHECK_EQUAL(streamed_text(frames, true), "hi there");
  auto finish = json::parse(frames[1]);
  CAF_CHECK_EQUAL(finish["choices"][0]["finish_reason"], "length");
  CAF_CHECK_EQUAL(frames[2], "[DONE]");
}

CAF_TEST(a slow client loses no text past the pending bound) {
  completion_stream st{"cmpl-x", "m", 1, false, false, 8};
  CAF_CHECK(st.add_delta("abcd"));
  CAF_CHECK(st.add_delta("efgh"));
  CAF_CHECK(!st.add_delta("i")); // 9 bytes would wait
  CAF_CHECK(st.overflowed());
  CAF_CHECK(!st.add_delta("j")); // stays dropped, so the order holds
  st.finish(reply_of("abcdefghijkl"));
  auto frames = frames_of(st.take());
  CAF_CHECK_EQUAL(streamed_text(frames, false), "abcdefghijkl");
}

CAF_TEST(an error ends the stream with the error shape and done) {
  completion_stream st{"cmpl-x", "m", 1, false, true, 64};
  st.add_delta("ab\xE2\x82"); // ends inside a character
  auto first = frames_of(st.take());
  CAF_CHECK_EQUAL(streamed_text(first, false), "ab");
  st.fail(errc::timeout, "took too long");
  CAF_CHECK(st.finished());
  auto frames = frames_of(st.take());
  CAF_REQUIRE_EQUAL(frames.size(), 2u); // the cut character is dropped
  CAF_CHECK_EQUAL(
      frames[0],
      R"({"error":{"code":"timeout","message":"took too long","retryable":true}})");
  CAF_CHECK_EQUAL(frames[1], "[DONE]");
  st.finish(reply_of("ignored"));
  CAF_CHECK(st.take().empty());
}

CAF_TEST(streamed text equals the text of the whole reply for any bytes) {
  // Byte-level models emit any byte: deltas may cut characters or carry
  // invalid UTF-8. Whatever the cuts, the chunks concatenate to what the
  // non-streamed answer shows.
  std::mt19937 rng{7};
  const std::vector<std::string> pieces{
      "a",    "Z",    " ",        "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "\xFF",
      "\x80", "\xC3", "\xE2\x82", "\xF0",     "\xED\xA0\x80", "\xE0\x80"};
  for (int round = 0; round < 300; ++round) {
    std::string text;
    auto n = 1 + rng() % 40;
    for (unsigned i = 0; i < n; ++i)
      text += pieces[rng() % pieces.size()];
    bool chat = round % 2 == 1;
    completion_stream st{"id", "m", 1, chat, false, 1 << 20};
    std::string body;
    std::size_t pos = 0;
    // Deltas cut anywhere; some takes in between; stop early sometimes, so
    // the reply supplies the rest.
    auto stop_at = rng() % 3 == 0 ? rng() % (text.size() + 1) : text.size();
    while (pos < stop_at) {
      auto len = std::min<std::size_t>(1 + rng() % 4, stop_at - pos);
      st.add_delta(std::string_view{text}.substr(pos, len));
      pos += len;
      if (rng() % 2 == 0)
        body += st.take();
    }
    st.finish(reply_of(text));
    body += st.take();
    auto whole
        = json::parse(encode_completion("id", "m", 1, openai_result_of(reply_of(text))));
    auto expected = whole["choices"][0]["text"].get<std::string>();
    auto got = streamed_text(frames_of(body), chat);
    if (got != expected) {
      CAF_FAIL("round " << round << ": streamed text differs");
    }
  }
}

CAF_TEST(a speech stream sends a wav header then the pcm) {
  speech_stream st{true, 24000, 1 << 20};
  CAF_CHECK(!st.has_output());
  CAF_CHECK(st.add_chunk(std::string("\x01\x02\x03\x04", 4)));
  auto head = st.take();
  CAF_REQUIRE_EQUAL(head.size(), 48u);
  CAF_CHECK_EQUAL(head.substr(0, 44), wav_header(24000, -1));
  CAF_CHECK_EQUAL(head.substr(44), std::string("\x01\x02\x03\x04", 4));
  CAF_CHECK(st.add_chunk(std::string("\x05\x06", 2)));
  speech_reply r;
  r.pcm16 = std::string("\x01\x02\x03\x04\x05\x06\x07\x08", 8);
  r.sample_rate = 24000;
  CAF_CHECK(st.finish(r));
  CAF_CHECK(!st.add_chunk(std::string("\x07\x08", 2))); // late: the reply has it
  CAF_CHECK_EQUAL(st.take(), std::string("\x05\x06\x07\x08", 4));
  CAF_CHECK(st.finished());
  CAF_CHECK(!st.has_output());
  CAF_CHECK_EQUAL(st.pcm_bytes(), 8u);
  // The body parses as a WAV (a stream: sizes unknown).
  auto info = parse_wav(head + std::string("\x05\x06\x07\x08", 4));
  CAF_REQUIRE(info);
  CAF_CHECK_EQUAL(info->sample_rate, 24000);
  CAF_CHECK_EQUAL(info->bits_per_sample, 16);
}

CAF_TEST(a speech stream without a known rate waits for the reply) {
  speech_stream st{true, 0, 1 << 20};
  CAF_CHECK(!st.add_chunk("ab"));
  CAF_CHECK(!st.has_output());
  speech_reply r;
  r.pcm16 = "abcd";
  r.sample_rate = 16000;
  CAF_CHECK(st.finish(r));
  CAF_CHECK_EQUAL(st.sample_rate(), 16000);
  CAF_CHECK_EQUAL(st.take(), encode_wav("abcd", 16000)); // real sizes
}

CAF_TEST(raw pcm streams have no header and report a rate change) {
  speech_stream st{false, 24000, 4};
  CAF_CHECK(st.add_chunk("abcd"));
  CAF_CHECK(!st.add_chunk("e")); // over the bound
  CAF_CHECK(!st.add_chunk("f"));
  CAF_CHECK_EQUAL(st.take(), "abcd");
  speech_reply r;
  r.pcm16 = "abcdefgh";
  r.sample_rate = 22050;
  CAF_CHECK(!st.finish(r)); // the header said 24000
  CAF_CHECK_EQUAL(st.take(), "efgh");
}

namespace {

infergrid::job_event event(int64_t seq, int64_t prev) {
  infergrid::job_event ev;
  ev.seq = seq;
  ev.prev_seq = prev;
  ev.job_id = 1;
  ev.kind = "data";
  return ev;
}

std::vector<int64_t> seqs(const std::vector<infergrid::job_event>& xs) {
  std::vector<int64_t> out;
  for (auto& x : xs)
    out.push_back(x.seq);
  return out;
}

} // namespace

CAF_TEST(live events are written in order and a gap sends the reader to the table) {
  using infergrid::http::take_in_order;
  bool gap = true;
  // In order, out of arrival order, with one already written (seq 3).
  std::vector<infergrid::job_event> live{event(9, 5), event(5, 3), event(3, 1)};
  CAF_CHECK_EQUAL(seqs(take_in_order(live, 3, gap)), (std::vector<int64_t>{5, 9}));
  CAF_CHECK(!gap);
  CAF_CHECK(live.empty());
  // Event 12 follows 10, which has not arrived: 12 must not be written yet.
  live = {event(12, 10), event(8, 3)};
  CAF_CHECK_EQUAL(seqs(take_in_order(live, 3, gap)), (std::vector<int64_t>{8}));
  CAF_CHECK(gap);
  // Events without a known predecessor (prev 0) never make a gap.
  live = {event(20, 0)};
  CAF_CHECK_EQUAL(seqs(take_in_order(live, 15, gap)), (std::vector<int64_t>{20}));
  CAF_CHECK(!gap);
}
