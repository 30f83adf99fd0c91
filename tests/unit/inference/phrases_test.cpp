// Tests phrase splitting for streaming speech synthesis.
#define CAF_SUITE phrases

#include "inference/phrases.hpp"

#include <caf/test/unit_test.hpp>

#include <cstdint>

using namespace infergrid::inference;

namespace {

using phrases = std::vector<std::string>;

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/// Whether `s` is well-formed UTF-8 (no overlongs, surrogates or values > U+10FFFF).
bool valid_utf8(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size())
      return false;
    for (std::size_t k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80)
        return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

std::string without_spaces(const std::string& s) {
  std::string out;
  for (char c : s)
    if (!is_space(c))
      out += c;
  return out;
}

/// The text's whitespace-separated words joined by single spaces.
std::string words(const std::string& s) {
  std::string out;
  std::string word;
  for (char c : s + " ") {
    if (!is_space(c)) {
      word += c;
    } else if (!word.empty()) {
      if (!out.empty())
        out += ' ';
      out += word;
      word.clear();
    }
  }
  return out;
}

std::string join(const phrases& ps, const std::string& sep) {
  std::string out;
  for (std::size_t i = 0; i < ps.size(); ++i)
    out += (i > 0 ? sep : "") + ps[i];
  return out;
}

/// The promises every result keeps, whatever the text.
void check_invariants(const std::string& text, const phrases& ps, std::size_t max_bytes) {
  auto limit = std::max<std::size_t>(max_bytes, 4);
  for (auto& p : ps) {
    CAF_CHECK(!p.empty());
    CAF_CHECK_LESS_OR_EQUAL(p.size(), limit);
    CAF_CHECK(valid_utf8(p));
    if (!p.empty()) {
      CAF_CHECK(!is_space(p.front()));
      CAF_CHECK(!is_space(p.back()));
    }
  }
  CAF_CHECK_EQUAL(without_spaces(join(ps, "")), without_spaces(text));
}

} // namespace

CAF_TEST(sentence punctuation followed by whitespace splits) {
  std::string text = "Hello there. How are you? I am fine! Really; yes: done.";
  auto ps = split_phrases(text, 200, 0);
  CAF_CHECK_EQUAL(ps, (phrases{"Hello there.", "How are you?", "I am fine!", "Really;",
                               "yes:", "done."}));
  CAF_CHECK_EQUAL(join(ps, " "), text);
  check_invariants(text, ps, 200);
  // Runs of punctuation and closing quotes stay with the sentence.
  ps = split_phrases("Wait... what?! He said \"Stop.\" Then (quietly.) he left.", 200, 0);
  CAF_CHECK_EQUAL(ps, (phrases{"Wait...", "what?!", "He said \"Stop.\"",
                               "Then (quietly.)", "he left."}));
}

CAF_TEST(decimals and abbreviations without whitespace do not split) {
  auto ps
      = split_phrases("Pi is 3.14 and e is 2.718. It is 12:30 now, e.g.today.", 200, 0);
  CAF_CHECK_EQUAL(ps,
                  (phrases{"Pi is 3.14 and e is 2.718.", "It is 12:30 now, e.g.today."}));
  ps = split_phrases("Version 1.2.3 of U.S.A.style code ships at 10:45:00 sharp.", 200,
                     0);
  CAF_CHECK_EQUAL(
      ps, (phrases{"Version 1.2.3 of U.S.A.style code ships at 10:45:00 sharp."}));
  ps = split_phrases("See www.example.com/a.b?x=1 for more", 200, 0);
  CAF_CHECK_EQUAL(ps, (phrases{"See www.example.com/a.b?x=1 for more"}));
}

CAF_TEST(newlines split and whitespace is trimmed) {
  std::string text = "  first line\nsecond line\r\n\n \t third line  \n";
  auto ps = split_phrases(text, 200, 0);
  CAF_CHECK_EQUAL(ps, (phrases{"first line", "second line", "third line"}));
  CAF_CHECK_EQUAL(join(ps, " "), words(text));
  check_invariants(text, ps, 200);
}

CAF_TEST(CJK punctuation splits without following whitespace) {
  // 你好。我很好！谢谢？好的；再见：
  std::string text = "\xE4\xBD\xA0\xE5\xA5\xBD\xE3\x80\x82"
                     "\xE6\x88\x91\xE5\xBE\x88\xE5\xA5\xBD\xEF\xBC\x81"
                     "\xE8\xB0\xA2\xE8\xB0\xA2\xEF\xBC\x9F"
                     "\xE5\xA5\xBD\xE7\x9A\x84\xEF\xBC\x9B"
                     "\xE5\x86\x8D\xE8\xA7\x81\xEF\xBC\x9A";
  auto ps = split_phrases(text, 200, 0);
  CAF_CHECK_EQUAL(ps, (phrases{"\xE4\xBD\xA0\xE5\xA5\xBD\xE3\x80\x82",
                               "\xE6\x88\x91\xE5\xBE\x88\xE5\xA5\xBD\xEF\xBC\x81",
                               "\xE8\xB0\xA2\xE8\xB0\xA2\xEF\xBC\x9F",
                               "\xE5\xA5\xBD\xE7\x9A\x84\xEF\xBC\x9B",
                               "\xE5\x86\x8D\xE8\xA7\x81\xEF\xBC\x9A"}));
  // Glued back without a space they are the text again.
  CAF_CHECK_EQUAL(join(ps, ""), text);
  check_invariants(text, ps, 200);
  // Short CJK fragments merge without inserting a space: 好。是。
  ps = split_phrases("\xE5\xA5\xBD\xE3\x80\x82\xE6\x98\xAF\xE3\x80\x82", 200, 8);
  CAF_CHECK_EQUAL(ps, (phrases{"\xE5\xA5\xBD\xE3\x80\x82\xE6\x98\xAF\xE3\x80\x82"}));
  // Mixed with Latin text and a closing bracket: 「好。」Then more.
  ps = split_phrases("\xE3\x80\x8C\xE5\xA5\xBD\xE3\x80\x82\xE3\x80\x8D"
                     "Then more words.",
                     200, 0);
  CAF_CHECK_EQUAL(ps, (phrases{"\xE3\x80\x8C\xE5\xA5\xBD\xE3\x80\x82\xE3\x80\x8D",
                               "Then more words."}));
}

CAF_TEST(long text splits at whitespace) {
  std::string text;
  for (int i = 0; i < 200; ++i)
    text += "word" + std::to_string(i) + " ";
  for (std::size_t max : {12, 30, 50, 200}) {
    auto ps = split_phrases(text, max, 8);
    check_invariants(text, ps, max);
    CAF_CHECK_GREATER_OR_EQUAL(ps.size(), text.size() / max);
    // Every cut fell between words.
    CAF_CHECK_EQUAL(words(join(ps, " ")), words(text));
    // Cuts come as late as the limit allows: a phrase plus the next word would not fit.
    for (std::size_t i = 0; i + 1 < ps.size(); ++i) {
      auto next_word = ps[i + 1].substr(0, ps[i + 1].find(' '));
      CAF_CHECK_GREATER(ps[i].size() + 1 + next_word.size(), max);
    }
  }
}

CAF_TEST(long text splits after commas) {
  std::string text = "alpha,beta,gamma,delta,epsilon,zeta,eta,theta";
  auto ps = split_phrases(text, 12, 0);
  CAF_CHECK_EQUAL(
      ps, (phrases{"alpha,beta,", "gamma,delta,", "epsilon,", "zeta,eta,", "theta"}));
  check_invariants(text, ps, 12);
  // The later of a space and a comma wins; a comma's space stays out.
  ps = split_phrases("one two,three four, five", 14, 0);
  CAF_CHECK_EQUAL(ps, (phrases{"one two,three", "four, five"}));
  // Full-width commas count too: 一二三，四五六，七八九 (10 bytes each part).
  std::string cjk = "\xE4\xB8\x80\xE4\xBA\x8C\xE4\xB8\x89\xEF\xBC\x8C"
                    "\xE5\x9B\x9B\xE4\xBA\x94\xE5\x85\xAD\xEF\xBC\x8C"
                    "\xE4\xB8\x83\xE5\x85\xAB\xE4\xB9\x9D";
  ps = split_phrases(cjk, 14, 0);
  CAF_CHECK_EQUAL(ps, (phrases{"\xE4\xB8\x80\xE4\xBA\x8C\xE4\xB8\x89\xEF\xBC\x8C",
                               "\xE5\x9B\x9B\xE4\xBA\x94\xE5\x85\xAD\xEF\xBC\x8C",
                               "\xE4\xB8\x83\xE5\x85\xAB\xE4\xB9\x9D"}));
  check_invariants(cjk, ps, 14);
}

CAF_TEST(text without breaks splits at UTF - 8 character boundaries) {
  // 300 x 日 (3 bytes each).
  std::string han;
  for (int i = 0; i < 300; ++i)
    han += "\xE6\x97\xA5";
  auto ps = split_phrases(han, 10, 8);
  check_invariants(han, ps, 10);
  CAF_CHECK_EQUAL(join(ps, ""), han);
  for (auto& p : ps)
    CAF_CHECK_EQUAL(p.size(), 9u);
  // Mixed widths: a, é (2), 日 (3), 😀 (4).
  std::string mixed;
  for (int i = 0; i < 60; ++i)
    mixed += "a\xC3\xA9\xE6\x97\xA5\xF0\x9F\x98\x80";
  for (std::size_t max : {1, 4, 5, 7, 10, 33}) {
    ps = split_phrases(mixed, max, 0);
    check_invariants(mixed, ps, max);
    CAF_CHECK_EQUAL(join(ps, ""), mixed);
  }
  // Below 4 bytes the limit is 4: 😀 never splits.
  ps = split_phrases("\xF0\x9F\x98\x80\xF0\x9F\x98\x80", 2, 0);
  CAF_CHECK_EQUAL(ps, (phrases{"\xF0\x9F\x98\x80", "\xF0\x9F\x98\x80"}));
  // A long word after a short one keeps the word whole where it can.
  ps = split_phrases("a " + std::string(25, 'x'), 10, 0);
  CAF_CHECK_EQUAL(ps, (phrases{"a", "xxxxxxxxxx", "xxxxxxxxxx", "xxxxx"}));
}

CAF_TEST(short fragments merge into the previous phrase) {
  std::string text = "Hi. How are you doing today? OK. Fine thanks, and you?";
  auto ps = split_phrases(text, 200, 8);
  CAF_CHECK_EQUAL(ps,
                  (phrases{"Hi. How are you doing today? OK.", "Fine thanks, and you?"}));
  CAF_CHECK_EQUAL(join(ps, " "), text);
  // Several short ones in a row accumulate.
  ps = split_phrases("A longer sentence. A. B. C. Another long sentence.", 200, 8);
  CAF_CHECK_EQUAL(ps, (phrases{"A longer sentence. A. B. C.", "Another long sentence."}));
  // Merging never exceeds max_bytes.
  ps = split_phrases("Aaaaaaaaaaaaaaaaaa. Ok. Bbbbbbbbbbbbbbbbbb.", 20, 8);
  CAF_CHECK_EQUAL(ps, (phrases{"Aaaaaaaaaaaaaaaaaa.", "Ok.", "Bbbbbbbbbbbbbbbbbb."}));
  // A short text stays one short phrase.
  CAF_CHECK_EQUAL(split_phrases("Hi."), (phrases{"Hi."}));
  // Fragments across newlines merge with a single space.
  CAF_CHECK_EQUAL(split_phrases("Hello Dr.\nSmith.\n"), (phrases{"Hello Dr. Smith."}));
}

CAF_TEST(empty and whitespace - only text gives no phrases) {
  CAF_CHECK(split_phrases("").empty());
  CAF_CHECK(split_phrases("   ").empty());
  CAF_CHECK(split_phrases(" \n\t\r\n  \n").empty());
}

CAF_TEST(invalid UTF - 8 still terminates within the limit) {
  std::string junk(50, '\x80');
  auto ps = split_phrases(junk, 10, 0);
  CAF_CHECK_EQUAL(join(ps, ""), junk);
  for (auto& p : ps)
    CAF_CHECK_LESS_OR_EQUAL(p.size(), 10u);
}

CAF_TEST(generated texts keep every promise) {
  const std::vector<std::string> tokens = {"word",
                                           "a",
                                           "3.14",
                                           "e.g.",
                                           "Dr.",
                                           ".",
                                           "!",
                                           "?",
                                           ";",
                                           ":",
                                           ",",
                                           " ",
                                           "  ",
                                           "\n",
                                           "\t",
                                           "\"",
                                           ")",
                                           "\xC3\xA9",                 // é
                                           "\xE6\x97\xA5\xE6\x9C\xAC", // 日本
                                           "\xE3\x80\x82",
                                           "\xEF\xBC\x8C", // 。，
                                           "\xE3\x80\x8D",
                                           "\xF0\x9F\x98\x80", // 」😀
                                           "supercalifragilistic"};
  uint32_t state = 12345;
  auto next = [&state] {
    state = state * 1664525u + 1013904223u;
    return state >> 8;
  };
  for (int round = 0; round < 300; ++round) {
    std::string text;
    auto n = next() % 80;
    for (uint32_t i = 0; i < n; ++i)
      text += tokens[next() % tokens.size()];
    auto max = static_cast<std::size_t>(next() % 60);
    auto min = static_cast<std::size_t>(next() % 20);
    auto ps = split_phrases(text, max, min);
    check_invariants(text, ps, max);
  }
}
