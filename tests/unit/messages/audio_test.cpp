#define CAF_SUITE audio
#include "tests/unit/test_support.hpp"

#include "messages/audio.hpp"

#include <caf/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "messages/errors.hpp"

using namespace infergrid;

namespace {

int16_t sample_at(const std::string& pcm, std::size_t i) {
  auto lo = static_cast<uint16_t>(static_cast<unsigned char>(pcm[2 * i]));
  auto hi = static_cast<uint16_t>(static_cast<unsigned char>(pcm[2 * i + 1]));
  return static_cast<int16_t>(static_cast<uint16_t>(lo | hi << 8));
}

uint32_t u32_at(const std::string& b, std::size_t at) {
  uint32_t v = 0;
  for (int k = 3; k >= 0; --k)
    v = v << 8 | static_cast<unsigned char>(b[at + k]);
  return v;
}

uint16_t u16_at(const std::string& b, std::size_t at) {
  return static_cast<uint16_t>(static_cast<unsigned char>(b[at])
                               | static_cast<unsigned char>(b[at + 1]) << 8);
}

void put_u32(std::string& b, std::size_t at, uint32_t v) {
  for (int k = 0; k < 4; ++k)
    b[at + k] = static_cast<char>((v >> (8 * k)) & 0xFF);
}

void put_u16(std::string& b, std::size_t at, uint16_t v) {
  b[at] = static_cast<char>(v & 0xFF);
  b[at + 1] = static_cast<char>(v >> 8);
}

std::string wav_error(std::string_view bytes) {
  auto info = parse_wav(bytes);
  if (info)
    return "accepted";
  CAF_CHECK(code_of(info.error()) == errc::invalid_input);
  return message_of(info.error());
}

bool contains(const std::string& text, const std::string& part) {
  if (text.find(part) == std::string::npos) {
    CAF_MESSAGE("'" << text << "' lacks '" << part << "'");
    return false;
  }
  return true;
}

} // namespace

CAF_TEST(float samples become rounded and clamped PCM16) {
  auto nan = std::numeric_limits<float>::quiet_NaN();
  auto inf = std::numeric_limits<float>::infinity();
  auto pcm = pcm16_from_float({0.f, 1.f, -1.f, 0.5f, -0.5f, 2.f, -3.f, nan, inf, -inf,
                               1.f / 32767.f * 0.49f, 1.f / 32767.f * 0.51f});
  CAF_REQUIRE_EQUAL(pcm.size(), 24u);
  CAF_CHECK_EQUAL(pcm16_samples(pcm), 12);
  CAF_CHECK_EQUAL(sample_at(pcm, 0), 0);
  CAF_CHECK_EQUAL(sample_at(pcm, 1), 32767);
  CAF_CHECK_EQUAL(sample_at(pcm, 2), -32767);
  CAF_CHECK_EQUAL(sample_at(pcm, 3), 16384); // 16383.5 rounds away from zero
  CAF_CHECK_EQUAL(sample_at(pcm, 4), -16384);
  CAF_CHECK_EQUAL(sample_at(pcm, 5), 32767);
  CAF_CHECK_EQUAL(sample_at(pcm, 6), -32767);
  CAF_CHECK_EQUAL(sample_at(pcm, 7), 0);
  CAF_CHECK_EQUAL(sample_at(pcm, 8), 32767);
  CAF_CHECK_EQUAL(sample_at(pcm, 9), -32767);
  CAF_CHECK_EQUAL(sample_at(pcm, 10), 0);
  CAF_CHECK_EQUAL(sample_at(pcm, 11), 1);
  // Little-endian byte order: 32767 = 0x7FFF.
  CAF_CHECK_EQUAL(static_cast<unsigned char>(pcm[2]), 0xFFu);
  CAF_CHECK_EQUAL(static_cast<unsigned char>(pcm[3]), 0x7Fu);
  CAF_CHECK(pcm16_from_float({}).empty());
}

CAF_TEST(pcm16 conversion rounds as lround over a dense sweep of samples) {
  // The reference: clamp, then std::lround of the double, as the first
  // version of pcm16_from_float did it.
  auto reference = [](float x) {
    if (std::isnan(x))
      x = 0.f;
    x = std::clamp(x, -1.f, 1.f);
    return static_cast<int>(std::lround(static_cast<double>(x) * 32767.0));
  };
  std::vector<float> xs;
  // The float nearest to each k + 0.5 and its neighbours (the only exact
  // ties are +-0.5: 32767 is odd), then a dense ramp past both ends.
  for (int k = -32768; k <= 32767; ++k) {
    auto near_tie = static_cast<float>((k + 0.5) / 32767.0);
    xs.push_back(near_tie);
    xs.push_back(std::nextafter(near_tie, 2.f));
    xs.push_back(std::nextafter(near_tie, -2.f));
  }
  for (int i = -1'100'000; i <= 1'100'000; ++i)
    xs.push_back(static_cast<float>(i) / 1'000'000.f);
  xs.push_back(std::numeric_limits<float>::denorm_min());
  xs.push_back(-std::numeric_limits<float>::denorm_min());
  xs.push_back(-0.f);
  auto count_wrong = [&](std::size_t from, std::size_t to, const std::string& pcm) {
    std::size_t wrong = 0;
    for (std::size_t i = from; i < to; ++i) {
      auto got = sample_at(pcm, i - from);
      if (got == reference(xs[i]))
        continue;
      if (wrong++ == 0)
        CAF_MESSAGE("first difference: " << xs[i] << " -> " << got
                                         << ", lround: " << reference(xs[i]));
    }
    return wrong;
  };
  // All at once (the vector path on x86-64, four samples at a time) ...
  auto pcm = pcm16_from_float(xs);
  CAF_REQUIRE_EQUAL(pcm.size(), xs.size() * 2);
  CAF_CHECK_EQUAL(count_wrong(0, xs.size(), pcm), 0u);
  // ... and three at a time (the scalar path).
  std::size_t wrong = 0;
  for (std::size_t i = 0; i + 3 <= xs.size(); i += 3 * 7)
    wrong += count_wrong(i, i + 3, pcm16_from_float({xs[i], xs[i + 1], xs[i + 2]}));
  CAF_CHECK_EQUAL(wrong, 0u);
}

CAF_TEST(the wav header has the canonical 44 - byte layout) {
  auto h = wav_header(24000, 1000);
  CAF_REQUIRE_EQUAL(h.size(), 44u);
  CAF_CHECK_EQUAL(h.substr(0, 4), "RIFF");
  CAF_CHECK_EQUAL(u32_at(h, 4), 1036u);
  CAF_CHECK_EQUAL(h.substr(8, 4), "WAVE");
  CAF_CHECK_EQUAL(h.substr(12, 4), "fmt ");
  CAF_CHECK_EQUAL(u32_at(h, 16), 16u);
  CAF_CHECK_EQUAL(u16_at(h, 20), 1u);     // PCM
  CAF_CHECK_EQUAL(u16_at(h, 22), 1u);     // mono
  CAF_CHECK_EQUAL(u32_at(h, 24), 24000u); // sample rate
  CAF_CHECK_EQUAL(u32_at(h, 28), 48000u); // byte rate
  CAF_CHECK_EQUAL(u16_at(h, 32), 2u);     // block align
  CAF_CHECK_EQUAL(u16_at(h, 34), 16u);    // bits per sample
  CAF_CHECK_EQUAL(h.substr(36, 4), "data");
  CAF_CHECK_EQUAL(u32_at(h, 40), 1000u);
}

CAF_TEST(a streaming header writes unknown sizes) {
  auto h = wav_header(16000, -1);
  CAF_REQUIRE_EQUAL(h.size(), 44u);
  CAF_CHECK_EQUAL(u32_at(h, 4), 0xFFFFFFFFu);
  CAF_CHECK_EQUAL(u32_at(h, 40), 0xFFFFFFFFu);
  CAF_CHECK_EQUAL(u32_at(h, 24), 16000u);
  // A stream's bytes parse: the data runs to the end in whole samples.
  auto stream = h + pcm16_from_float({0.1f, 0.2f, 0.3f}) + "x";
  auto info = parse_wav(stream);
  CAF_REQUIRE(info);
  CAF_CHECK_EQUAL(info->data_offset, 44);
  CAF_CHECK_EQUAL(info->data_bytes, 6);
  CAF_CHECK_EQUAL(info->sample_rate, 16000);
}

CAF_TEST(encode then parse round trips) {
  auto pcm = pcm16_from_float({0.f, 0.25f, -0.25f, 1.f});
  auto wav = encode_wav(pcm, 22050);
  CAF_REQUIRE_EQUAL(wav.size(), 44u + 8u);
  CAF_CHECK_EQUAL(wav.substr(44), pcm);
  auto info = parse_wav(wav);
  CAF_REQUIRE(info);
  CAF_CHECK_EQUAL(info->sample_rate, 22050);
  CAF_CHECK_EQUAL(info->channels, 1);
  CAF_CHECK_EQUAL(info->bits_per_sample, 16);
  CAF_CHECK_EQUAL(info->data_offset, 44);
  CAF_CHECK_EQUAL(info->data_bytes, 8);
  CAF_CHECK_EQUAL(wav.substr(info->data_offset, info->data_bytes), pcm);
  auto empty = parse_wav(encode_wav({}, 8000));
  CAF_REQUIRE(empty);
  CAF_CHECK_EQUAL(empty->data_bytes, 0);
}

CAF_TEST(parse_wav skips unknown chunks with padding) {
  auto pcm = pcm16_from_float({0.5f, -0.5f});
  auto wav = encode_wav(pcm, 8000);
  // Insert an odd-sized LIST chunk (3 bytes + 1 pad) between fmt and data.
  std::string list = std::string("LIST") + std::string("\x03\x00\x00\x00", 4) + "abc"
                     + std::string(1, '\0');
  auto with_list = wav.substr(0, 36) + list + wav.substr(36);
  auto info = parse_wav(with_list);
  CAF_REQUIRE(info);
  CAF_CHECK_EQUAL(info->data_offset, 36 + 12 + 8);
  CAF_CHECK_EQUAL(with_list.substr(info->data_offset, info->data_bytes), pcm);
  // A larger fmt chunk (18 bytes, cbSize = 0) is still PCM.
  auto fmt18 = wav.substr(0, 12) + "fmt " + std::string("\x12\x00\x00\x00", 4)
               + wav.substr(20, 16) + std::string(2, '\0') + wav.substr(36);
  auto info18 = parse_wav(fmt18);
  CAF_REQUIRE(info18);
  CAF_CHECK_EQUAL(info18->data_offset, 46);
  CAF_CHECK_EQUAL(info18->sample_rate, 8000);
}

CAF_TEST(parse_wav refuses truncated garbage and non - PCM input) {
  auto wav = encode_wav(pcm16_from_float({0.1f, 0.2f, 0.3f, 0.4f}), 16000);
  CAF_CHECK(contains(wav_error(""), "wav: not a RIFF/WAVE file"));
  CAF_CHECK(contains(wav_error("RIFF"), "wav: not a RIFF/WAVE file"));
  CAF_CHECK(contains(wav_error("garbage that is long enough"), "not a RIFF/WAVE"));
  auto riff_avi = wav;
  riff_avi.replace(8, 4, "AVI ");
  CAF_CHECK(contains(wav_error(riff_avi), "not a RIFF/WAVE"));
  // Every truncation of a valid file fails; none reads past the end (the
  // view ends where the copy does, so ASan would see it).
  for (std::size_t n = 0; n < wav.size(); ++n) {
    std::string cut = wav.substr(0, n);
    CAF_CHECK(!parse_wav(cut));
  }
  CAF_CHECK(contains(wav_error(wav.substr(0, wav.size() - 1)),
                     "wav: data chunk of 8 bytes but only 7 present"));
  CAF_CHECK(contains(wav_error(wav.substr(0, 36)), "wav: no data chunk"));
  CAF_CHECK(contains(wav_error(wav.substr(0, 30)), "runs past the end"));
  CAF_CHECK(contains(wav_error(wav.substr(0, 12)), "wav: no fmt chunk"));
  // Hostile sizes: a chunk claiming 4 GiB must not be trusted.
  auto huge = wav;
  put_u32(huge, 16, 0xFFFFFFF0u);
  CAF_CHECK(contains(wav_error(huge), "runs past the end"));
  auto huge_data = wav;
  put_u32(huge_data, 40, 0x7FFFFFFFu);
  CAF_CHECK(contains(wav_error(huge_data), "data chunk of 2147483647 bytes"));
  // Not PCM, or PCM that makes no sense.
  auto float_fmt = wav;
  put_u16(float_fmt, 20, 3);
  CAF_CHECK(contains(wav_error(float_fmt), "wav: format 3 is not PCM (1)"));
  auto no_channels = wav;
  put_u16(no_channels, 22, 0);
  CAF_CHECK(contains(wav_error(no_channels), "wav: zero channels"));
  auto no_rate = wav;
  put_u32(no_rate, 24, 0);
  CAF_CHECK(contains(wav_error(no_rate), "wav: zero sample rate"));
  auto odd_bits = wav;
  put_u16(odd_bits, 34, 12);
  CAF_CHECK(contains(wav_error(odd_bits), "wav: 12 bits per sample"));
  auto bad_align = wav;
  put_u16(bad_align, 32, 3);
  CAF_CHECK(contains(wav_error(bad_align), "block align 3"));
  auto short_fmt = wav;
  put_u32(short_fmt, 16, 14);
  CAF_CHECK(contains(wav_error(short_fmt), "wav: fmt chunk of 14 bytes"));
  auto data_first = wav.substr(0, 12) + wav.substr(36) + wav.substr(12, 24);
  CAF_CHECK(contains(wav_error(data_first), "wav: data chunk before fmt chunk"));
}

CAF_TEST(base64 follows the RFC 4648 test vectors) {
  std::vector<std::pair<std::string, std::string>> vectors{
      {"", ""},
      {"f", "Zg=="},
      {"fo", "Zm8="},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="},
      {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"},
  };
  for (auto& [plain, encoded] : vectors) {
    CAF_CHECK_EQUAL(base64_encode(plain), encoded);
    auto back = base64_decode(encoded);
    CAF_REQUIRE(back);
    CAF_CHECK_EQUAL(*back, plain);
  }
  // All byte values, including the two non-alphanumeric digits.
  std::string all;
  for (int i = 0; i < 256; ++i)
    all += static_cast<char>(i);
  auto enc = base64_encode(all);
  CAF_CHECK(enc.find('+') != std::string::npos);
  CAF_CHECK(enc.find('/') != std::string::npos);
  auto dec = base64_decode(enc);
  CAF_REQUIRE(dec);
  CAF_CHECK_EQUAL(*dec, all);
  CAF_CHECK_EQUAL(base64_encode(std::string("\xfb\xff", 2)), "+/8=");
}

CAF_TEST(base64 refuses bad input) {
  struct bad_case {
    const char* text;
    const char* expected;
  };
  std::vector<bad_case> cases{
      {"Zg", "base64: length 2 is not a multiple of 4"},
      {"Zm9vY", "not a multiple of 4"},
      {"Zm9v!mFy", "base64: invalid character at offset 4"},
      {"Zm9 ", "base64: invalid character at offset 3"},
      {"Zm9v\nYmFy", "not a multiple of 4"},
      {"Z===", "base64: bad padding at offset 1"},
      {"====", "base64: bad padding at offset 0"},
      {"Zg==Zm9v", "base64: bad padding at offset 2"},
      {"Zm=v", "base64: bad padding at offset 2"},
      {"Zm9-", "base64: invalid character"},
  };
  for (auto& c : cases) {
    auto r = base64_decode(c.text);
    CAF_REQUIRE(!r);
    CAF_CHECK(code_of(r.error()) == errc::invalid_input);
    CAF_CHECK(contains(message_of(r.error()), c.expected));
  }
}
