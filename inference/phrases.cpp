// Phrase splitting for streaming speech synthesis: sentence boundaries first, then
// length limits, then merging of short fragments. Works on UTF-8 bytes.
#include "inference/phrases.hpp"

#include <algorithm>
#include <string_view>

namespace infergrid::inference {

namespace {

// Multi-byte marks are spelled as escapes so the bytes do not depend on the
// source encoding or on char8_t (C++20).
constexpr std::string_view cjk_stops[] = {
    "\xE3\x80\x82", // 。
    "\xEF\xBC\x81", // ！
    "\xEF\xBC\x9F", // ？
    "\xEF\xBC\x9B", // ；
    "\xEF\xBC\x9A", // ：
};

constexpr std::string_view closers[] = {
    "\"",           "'", ")", "]", "}",
    "\xE2\x80\x9D", // ”
    "\xE2\x80\x99", // ’
    "\xE3\x80\x8D", // 」
    "\xE3\x80\x8F", // 』
    "\xEF\xBC\x89", // ）
};

constexpr std::string_view commas[] = {
    ",",
    "\xEF\xBC\x8C", // ，
    "\xE3\x80\x81", // 、
};

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

bool is_ascii_stop(char c) {
  return c == '.' || c == '!' || c == '?' || c == ';' || c == ':';
}

bool is_continuation(char c) {
  return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}

/// Length of the mark of `marks` that starts at text[i], 0 if none does.
template <std::size_t N>
std::size_t match(std::string_view text, std::size_t i,
                  const std::string_view (&marks)[N]) {
  for (auto m : marks)
    if (text.compare(i, m.size(), m) == 0)
      return m.size();
  return 0;
}

/// A phrase as a byte range of the text. `glued`: no whitespace separates it
/// from the text before it, so merging joins it without a space.
struct piece {
  std::size_t begin;
  std::size_t end;
  bool glued;
};

class splitter {
public:
  splitter(std::string_view text, std::size_t max_bytes)
      : text_(text), max_(std::max<std::size_t>(max_bytes, 4)) {}

  /// Pass 1 and 2: sentence boundaries and newlines, then the length limit.
  std::vector<piece> run() {
    std::size_t start = 0;
    std::size_t i = 0;
    auto n = text_.size();
    while (i < n) {
      if (text_[i] == '\n') {
        add(start, i);
        start = ++i;
        continue;
      }
      std::size_t len = is_ascii_stop(text_[i]) ? 1 : 0;
      bool cjk = false;
      if (len == 0) {
        len = match(text_, i, cjk_stops);
        cjk = len > 0;
      }
      if (len == 0) {
        ++i;
        continue;
      }
      auto j = i + len;
      while (j < n) {
        auto c = match(text_, j, closers);
        if (c == 0)
          break;
        j += c;
      }
      if (cjk || j == n || is_space(text_[j])) {
        add(start, j);
        start = j;
      }
      i = j;
    }
    add(start, n);
    return std::move(out_);
  }

private:
  /// Trims [b, e) and adds it, split to the length limit, unless it is empty.
  void add(std::size_t b, std::size_t e) {
    while (b < e && is_space(text_[b]))
      ++b;
    while (e > b && is_space(text_[e - 1]))
      --e;
    while (e - b > max_) {
      auto cut = cut_point(b);
      auto first_end = cut;
      while (first_end > b && is_space(text_[first_end - 1]))
        --first_end;
      push(b, first_end);
      b = cut;
      while (b < e && is_space(text_[b]))
        ++b;
    }
    if (b < e)
      push(b, e);
  }

  void push(std::size_t b, std::size_t e) {
    out_.push_back(piece{b, e, b > 0 && !is_space(text_[b - 1])});
  }

  /// Where to end the first part of an over-long phrase starting at `b` (whose
  /// end lies beyond b + max_): after the last whitespace or comma that keeps the
  /// part within max_ bytes, else at the last character boundary within it.
  std::size_t cut_point(std::size_t b) const {
    auto limit = b + max_;
    for (auto k = limit; k > b; --k) {
      if (is_space(text_[k]))
        return k;
      auto c = match(text_, k, commas);
      if (c > 0 && k + c <= limit)
        return k + c;
    }
    auto k = limit;
    while (k > b && is_continuation(text_[k]))
      --k;
    // No boundary within the limit: not UTF-8; cut at the limit.
    return k > b ? k : limit;
  }

  std::string_view text_;
  std::size_t max_;
  std::vector<piece> out_;
};

struct phrase {
  std::string text;
  bool glued;
};

std::size_t joined_size(const phrase& a, const phrase& b) {
  return a.text.size() + (b.glued ? 0 : 1) + b.text.size();
}

void append(phrase& a, const phrase& b) {
  if (!b.glued)
    a.text += ' ';
  a.text += b.text;
}

} // namespace

std::vector<std::string> split_phrases(const std::string& text, std::size_t max_bytes,
                                       std::size_t min_bytes) {
  splitter s{text, max_bytes};
  auto pieces = s.run();
  auto limit = std::max<std::size_t>(max_bytes, 4);
  // Pass 3: a short fragment joins the phrase before it.
  std::vector<phrase> merged;
  merged.reserve(pieces.size());
  for (const auto& p : pieces) {
    phrase ph{text.substr(p.begin, p.end - p.begin), p.glued};
    if (!merged.empty() && ph.text.size() < min_bytes
        && joined_size(merged.back(), ph) <= limit)
      append(merged.back(), ph);
    else
      merged.push_back(std::move(ph));
  }
  // Pass 4: one still short (the first, or one whose predecessor was full)
  // takes in the phrase after it.
  std::vector<phrase> joined;
  joined.reserve(merged.size());
  for (auto& ph : merged) {
    if (!joined.empty() && joined.back().text.size() < min_bytes
        && joined_size(joined.back(), ph) <= limit)
      append(joined.back(), ph);
    else
      joined.push_back(std::move(ph));
  }
  std::vector<std::string> out;
  out.reserve(joined.size());
  for (auto& ph : joined)
    out.push_back(std::move(ph.text));
  return out;
}

} // namespace infergrid::inference
