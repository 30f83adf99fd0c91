// PCM16 conversion, WAV headers and parsing, base64: byte-exact and bounded
// by the input (parse_wav never reads past `bytes` nor allocates).
#include "messages/audio.hpp"

#include <array>
#include <cmath>
#include <cstdint>

#if defined(__SSE2__) && (defined(__x86_64__) || defined(_M_X64))
#  include <emmintrin.h>
#endif

#include "messages/errors.hpp"

namespace infergrid {

namespace {

caf::error invalid(std::string message) {
  return make_error(errc::invalid_input, std::move(message));
}

void put_u16(std::string& out, uint32_t x) {
  out += static_cast<char>(x & 0xFF);
  out += static_cast<char>((x >> 8) & 0xFF);
}

void put_u32(std::string& out, uint32_t x) {
  put_u16(out, x & 0xFFFF);
  put_u16(out, x >> 16);
}

uint32_t get_u16(std::string_view b, std::size_t at) {
  return static_cast<uint32_t>(static_cast<unsigned char>(b[at]))
         | static_cast<uint32_t>(static_cast<unsigned char>(b[at + 1])) << 8;
}

uint32_t get_u32(std::string_view b, std::size_t at) {
  return get_u16(b, at) | get_u16(b, at + 2) << 16;
}

constexpr uint32_t unknown_size = 0xFFFFFFFF;
constexpr std::size_t wav_header_bytes = 44;

constexpr char base64_alphabet[]
    = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// -1 for characters outside the alphabet (the pad '=' included).
constexpr std::array<int8_t, 256> base64_values() {
  std::array<int8_t, 256> t{};
  for (auto& v : t)
    v = -1;
  for (int i = 0; i < 64; ++i)
    t[static_cast<unsigned char>(base64_alphabet[i])] = static_cast<int8_t>(i);
  return t;
}

// One sample as std::lround(clamp(x, -1, 1) * 32767.0) would give it (NaN:
// 0). A float times 32767 is exact in a double, and so is adding or taking
// 0.5 from it, so truncating y +- 0.5 rounds half away from zero exactly as
// lround does. audio_test sweeps this against lround.
inline int16_t pcm16_of(float x) {
  if (std::isnan(x))
    x = 0.f;
  x = x < -1.f ? -1.f : (x > 1.f ? 1.f : x);
  double y = static_cast<double>(x) * 32767.0;
  return static_cast<int16_t>(y < 0 ? y - 0.5 : y + 0.5);
}

} // namespace

std::string pcm16_from_float(const std::vector<float>& samples) {
  // Speech turns every sample into PCM16 on the executor's thread: with a
  // libm call and a string append per byte this cost as much as the demo
  // synthesiser itself (perf). GCC does not vectorise the scalar loop (its
  // NaN and clamp branches), so on x86-64 four samples go at once in SSE2,
  // with the same arithmetic in doubles; the rest takes pcm16_of.
  std::string out(samples.size() * 2, '\0');
  auto* bytes = reinterpret_cast<unsigned char*>(out.data());
  const float* in = samples.data();
  std::size_t n = samples.size();
  std::size_t i = 0;
#if defined(__SSE2__) && (defined(__x86_64__) || defined(_M_X64))
  const __m128 lo = _mm_set1_ps(-1.f);
  const __m128 hi = _mm_set1_ps(1.f);
  const __m128d scale = _mm_set1_pd(32767.0);
  const __m128d half = _mm_set1_pd(0.5);
  const __m128d sign = _mm_set1_pd(-0.0);
  auto round_away = [&](__m128d y) {
    // y + copysign(0.5, y), truncated.
    return _mm_cvttpd_epi32(_mm_add_pd(y, _mm_or_pd(half, _mm_and_pd(y, sign))));
  };
  for (; i + 4 <= n; i += 4) {
    __m128 x = _mm_loadu_ps(in + i);
    x = _mm_and_ps(x, _mm_cmpord_ps(x, x)); // NaN -> 0
    x = _mm_min_ps(_mm_max_ps(x, lo), hi);
    __m128i a = round_away(_mm_mul_pd(_mm_cvtps_pd(x), scale));
    __m128i b = round_away(_mm_mul_pd(_mm_cvtps_pd(_mm_movehl_ps(x, x)), scale));
    // Four int32 in [-32767, 32767] -> four int16, little-endian as x86 is.
    __m128i v = _mm_packs_epi32(_mm_unpacklo_epi64(a, b), _mm_setzero_si128());
    _mm_storel_epi64(reinterpret_cast<__m128i*>(bytes + 2 * i), v);
  }
#endif
  for (; i < n; ++i) {
    auto u = static_cast<uint16_t>(pcm16_of(in[i]));
    bytes[2 * i] = static_cast<unsigned char>(u & 0xFF);
    bytes[2 * i + 1] = static_cast<unsigned char>(u >> 8);
  }
  return out;
}

std::string wav_header(int64_t sample_rate, int64_t data_bytes) {
  // Sizes that do not fit 32 bits are written as "unknown", like streams.
  uint32_t data_size = unknown_size;
  uint32_t riff_size = unknown_size;
  if (data_bytes >= 0 && data_bytes <= int64_t{unknown_size} - 36) {
    data_size = static_cast<uint32_t>(data_bytes);
    riff_size = static_cast<uint32_t>(data_bytes + 36);
  }
  auto rate = static_cast<uint32_t>(sample_rate < 0 ? 0 : sample_rate);
  std::string out;
  out.reserve(wav_header_bytes);
  out += "RIFF";
  put_u32(out, riff_size);
  out += "WAVE";
  out += "fmt ";
  put_u32(out, 16);       // fmt chunk size
  put_u16(out, 1);        // PCM
  put_u16(out, 1);        // mono
  put_u32(out, rate);     // sample rate
  put_u32(out, rate * 2); // byte rate
  put_u16(out, 2);        // block align
  put_u16(out, 16);       // bits per sample
  out += "data";
  put_u32(out, data_size);
  return out;
}

std::string encode_wav(const std::string& pcm16, int64_t sample_rate) {
  auto out = wav_header(sample_rate, static_cast<int64_t>(pcm16.size()));
  out += pcm16;
  return out;
}

caf::expected<wav_info> parse_wav(std::string_view bytes) {
  if (bytes.size() < 12 || bytes.substr(0, 4) != "RIFF" || bytes.substr(8, 4) != "WAVE")
    return invalid("wav: not a RIFF/WAVE file");
  wav_info info;
  bool has_fmt = false;
  uint64_t frame_bytes = 1;
  // 64-bit offsets: chunk sizes up to 4 GiB cannot wrap around.
  uint64_t at = 12;
  const uint64_t n = bytes.size();
  while (at + 8 <= n) {
    auto id = bytes.substr(at, 4);
    uint64_t size = get_u32(bytes, at + 4);
    uint64_t body = at + 8;
    if (id == "data") {
      if (!has_fmt)
        return invalid("wav: data chunk before fmt chunk");
      info.data_offset = static_cast<int64_t>(body);
      if (size == unknown_size) {
        // A stream's header: the data runs to the end, in whole frames.
        auto rest = n - body;
        info.data_bytes = static_cast<int64_t>(rest - rest % frame_bytes);
      } else if (body + size > n) {
        return invalid("wav: data chunk of " + std::to_string(size) + " bytes but only "
                       + std::to_string(n - body) + " present");
      } else {
        info.data_bytes = static_cast<int64_t>(size);
      }
      return info;
    }
    if (body + size > n)
      return invalid("wav: chunk at byte " + std::to_string(at) + " runs past the end");
    if (id == "fmt ") {
      if (has_fmt)
        return invalid("wav: more than one fmt chunk");
      if (size < 16)
        return invalid("wav: fmt chunk of " + std::to_string(size) + " bytes");
      auto format = get_u16(bytes, body);
      auto channels = get_u16(bytes, body + 2);
      auto rate = get_u32(bytes, body + 4);
      auto block_align = get_u16(bytes, body + 12);
      auto bits = get_u16(bytes, body + 14);
      if (format != 1)
        return invalid("wav: format " + std::to_string(format) + " is not PCM (1)");
      if (channels == 0)
        return invalid("wav: zero channels");
      if (rate == 0)
        return invalid("wav: zero sample rate");
      if (bits != 8 && bits != 16 && bits != 24 && bits != 32)
        return invalid("wav: " + std::to_string(bits) + " bits per sample");
      if (block_align != channels * (bits / 8))
        return invalid("wav: block align " + std::to_string(block_align)
                       + " does not match channels and bits");
      info.sample_rate = rate;
      info.channels = static_cast<int32_t>(channels);
      info.bits_per_sample = static_cast<int32_t>(bits);
      frame_bytes = block_align;
      has_fmt = true;
    }
    // Chunks are padded to an even size.
    at = body + size + (size & 1);
  }
  return invalid(has_fmt ? "wav: no data chunk" : "wav: no fmt chunk");
}

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  auto byte = [&](std::size_t k) {
    return static_cast<uint32_t>(static_cast<unsigned char>(bytes[k]));
  };
  for (; i + 3 <= bytes.size(); i += 3) {
    auto v = byte(i) << 16 | byte(i + 1) << 8 | byte(i + 2);
    out += base64_alphabet[(v >> 18) & 63];
    out += base64_alphabet[(v >> 12) & 63];
    out += base64_alphabet[(v >> 6) & 63];
    out += base64_alphabet[v & 63];
  }
  auto rest = bytes.size() - i;
  if (rest == 1) {
    auto v = byte(i) << 16;
    out += base64_alphabet[(v >> 18) & 63];
    out += base64_alphabet[(v >> 12) & 63];
    out += "==";
  } else if (rest == 2) {
    auto v = byte(i) << 16 | byte(i + 1) << 8;
    out += base64_alphabet[(v >> 18) & 63];
    out += base64_alphabet[(v >> 12) & 63];
    out += base64_alphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

// Padding is required; the unused low bits of the last group are ignored.
caf::expected<std::string> base64_decode(std::string_view text) {
  static constexpr auto values = base64_values();
  if (text.size() % 4 != 0)
    return invalid("base64: length " + std::to_string(text.size())
                   + " is not a multiple of 4");
  std::size_t pad = 0;
  if (!text.empty() && text.back() == '=')
    pad = text.size() >= 2 && text[text.size() - 2] == '=' ? 2 : 1;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    bool last = i + 4 == text.size();
    uint32_t v = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      auto c = static_cast<unsigned char>(text[i + k]);
      if (last && k >= 4 - pad) {
        v <<= 6;
        continue;
      }
      if (c == '=')
        return invalid("base64: bad padding at offset " + std::to_string(i + k));
      auto x = values[c];
      if (x < 0)
        return invalid("base64: invalid character at offset " + std::to_string(i + k));
      v = v << 6 | static_cast<uint32_t>(x);
    }
    out += static_cast<char>((v >> 16) & 0xFF);
    if (!last || pad < 2)
      out += static_cast<char>((v >> 8) & 0xFF);
    if (!last || pad < 1)
      out += static_cast<char>(v & 0xFF);
  }
  return out;
}

} // namespace infergrid
