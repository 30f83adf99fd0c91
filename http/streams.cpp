// Streamed answers as bytes: OpenAI SSE chunks and streamed WAV/PCM.
#include "http/streams.hpp"

#include <algorithm>

#include <utility>

#include "http/routes.hpp"
#include "messages/audio.hpp"
#include "messages/openai.hpp"

namespace infergrid::http {

std::vector<job_event> take_in_order(std::vector<job_event>& live, int64_t last_seq,
                                     bool& gap) {
  gap = false;
  std::sort(live.begin(), live.end(),
            [](const job_event& x, const job_event& y) { return x.seq < y.seq; });
  std::vector<job_event> out;
  for (auto& ev : live) {
    if (ev.seq <= last_seq)
      continue;
    if (ev.prev_seq > last_seq) {
      gap = true;
      break;
    }
    last_seq = ev.seq;
    out.push_back(std::move(ev));
  }
  live.clear();
  return out;
}

std::size_t utf8_complete_prefix(std::string_view text) {
  // Mirrors the decoder of nlohmann-json's dump with error_handler_t::replace
  // (Hoehrmann's DFA): an invalid first byte is one replaced character; a
  // byte that breaks a sequence ends it (one replacement) and is read again
  // as the start of the next one.
  std::size_t complete = 0;
  std::size_t i = 0;
  int expect = 0; // continuation bytes still to come
  unsigned char lo = 0x80;
  unsigned char hi = 0xBF;
  while (i < text.size()) {
    auto b = static_cast<unsigned char>(text[i]);
    if (expect == 0) {
      lo = 0x80;
      hi = 0xBF;
      if (b < 0x80) {
        complete = ++i;
        continue;
      }
      if (b >= 0xC2 && b <= 0xDF) {
        expect = 1;
      } else if (b >= 0xE0 && b <= 0xEF) {
        expect = 2;
        if (b == 0xE0)
          lo = 0xA0;
        else if (b == 0xED)
          hi = 0x9F;
      } else if (b >= 0xF0 && b <= 0xF4) {
        expect = 3;
        if (b == 0xF0)
          lo = 0x90;
        else if (b == 0xF4)
          hi = 0x8F;
      } else {
        complete = ++i; // 0x80..0xC1, 0xF5..0xFF: replaced on its own
        continue;
      }
      ++i;
      continue;
    }
    if (b >= lo && b <= hi) {
      lo = 0x80;
      hi = 0xBF;
      ++i;
      if (--expect == 0)
        complete = i;
      continue;
    }
    // The sequence breaks here: it is replaced, and this byte starts anew.
    expect = 0;
    complete = i;
  }
  return complete;
}

// -- completion_stream ---------------------------------------------------------

completion_stream::completion_stream(std::string id, std::string model, int64_t created_s,
                                     bool chat, bool include_usage,
                                     std::size_t max_pending)
    : id_(std::move(id)), model_(std::move(model)), created_s_(created_s), chat_(chat),
      include_usage_(include_usage), max_pending_(max_pending) {}

std::string completion_stream::frame(const std::string& json) const {
  std::string out;
  out.reserve(json.size() + 8);
  out += "data: ";
  out += json;
  out += "\n\n";
  return out;
}

std::string completion_stream::text_chunk(const std::string& text) const {
  return frame(chat_ ? encode_chat_chunk(id_, model_, created_s_, text, "")
                     : encode_completion_chunk(id_, model_, created_s_, text, ""));
}

bool completion_stream::add_delta(std::string_view delta) {
  if (finished_ || overflowed_)
    return false;
  if (text_.size() + delta.size() > max_pending_) {
    overflowed_ = true;
    return false;
  }
  text_.append(delta.data(), delta.size());
  accounted_ += delta.size();
  return true;
}

void completion_stream::finish(const generate_reply& r) {
  if (finished_)
    return;
  finished_ = true;
  // The deltas were a prefix of the text; the reply completes it.
  if (r.text.size() > accounted_) {
    text_.append(r.text, accounted_, std::string::npos);
    accounted_ = r.text.size();
  }
  auto reason = openai_finish_reason(r.finish_reason);
  tail_ += frame(chat_ ? encode_chat_chunk(id_, model_, created_s_, "", reason)
                       : encode_completion_chunk(id_, model_, created_s_, "", reason));
  if (include_usage_)
    tail_
        += frame(encode_usage_chunk(id_, model_, created_s_, chat_, openai_result_of(r)));
  tail_ += "data: [DONE]\n\n";
}

void completion_stream::fail(errc code, const std::string& message) {
  if (finished_)
    return;
  finished_ = true;
  // What was generated goes out; a character cut in half would come out as
  // U+FFFD, so the incomplete end is dropped.
  text_.resize(utf8_complete_prefix(text_));
  tail_ += frame(error_reply(code, message).body);
  tail_ += "data: [DONE]\n\n";
}

bool completion_stream::has_output() const {
  if ((opening_ && chat_) || !tail_.empty())
    return true;
  return finished_ ? !text_.empty() : utf8_complete_prefix(text_) > 0;
}

std::string completion_stream::take() {
  std::string out;
  if (opening_) {
    opening_ = false;
    if (chat_)
      out += frame(encode_chat_chunk(id_, model_, created_s_, "", "", true));
  }
  auto n = finished_ ? text_.size() : utf8_complete_prefix(text_);
  if (n > 0) {
    out += text_chunk(text_.substr(0, n));
    text_.erase(0, n);
  }
  out += tail_;
  tail_.clear();
  return out;
}

// -- speech_stream -------------------------------------------------------------

speech_stream::speech_stream(bool wav, int64_t sample_rate, std::size_t max_pending)
    : wav_(wav), rate_(sample_rate > 0 ? sample_rate : 0), max_pending_(max_pending) {}

bool speech_stream::add_chunk(std::string_view pcm16) {
  if (finished_ || overflowed_ || rate_ == 0)
    return false;
  if (pending_.size() + pcm16.size() > max_pending_) {
    overflowed_ = true;
    return false;
  }
  if (wav_ && !header_done_) {
    header_done_ = true;
    pending_ += wav_header(rate_, -1);
  }
  pending_.append(pcm16.data(), pcm16.size());
  accounted_ += pcm16.size();
  return true;
}

bool speech_stream::finish(const speech_reply& r) {
  if (finished_)
    return true;
  finished_ = true;
  bool same_rate = true;
  if (rate_ == 0) {
    rate_ = r.sample_rate;
  } else if (r.sample_rate != rate_) {
    same_rate = false;
  }
  if (wav_ && !header_done_) {
    header_done_ = true;
    // Nothing streamed yet (a chunk writes the header): the header can carry
    // the real sizes.
    pending_ += wav_header(rate_, static_cast<int64_t>(r.pcm16.size()));
  }
  if (r.pcm16.size() > accounted_) {
    pending_.append(r.pcm16, accounted_, std::string::npos);
    accounted_ = r.pcm16.size();
  }
  return same_rate;
}

std::string speech_stream::take() {
  std::string out;
  out.swap(pending_);
  return out;
}

} // namespace infergrid::http
