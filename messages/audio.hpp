// Audio as bytes: float samples to PCM16, WAV (RIFF) headers and files,
// base64 for audio inside JSON events. No dependencies beyond the standard
// library.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <caf/expected.hpp>

namespace infergrid {

/// Samples in [-1, 1] (clamped; NaN -> 0) to PCM 16-bit little-endian:
/// round(x * 32767).
std::string pcm16_from_float(const std::vector<float>& samples);

/// Number of samples in PCM16 bytes (size / 2).
inline int64_t pcm16_samples(const std::string& pcm16) {
  return static_cast<int64_t>(pcm16.size() / 2);
}

/// The 44-byte header of a mono PCM16 WAV file holding `data_bytes` of
/// samples. data_bytes < 0 writes 0xFFFFFFFF sizes, the convention for a
/// stream whose length is not known yet.
std::string wav_header(int64_t sample_rate, int64_t data_bytes);

/// header + pcm16.
std::string encode_wav(const std::string& pcm16, int64_t sample_rate);

struct wav_info {
  int64_t sample_rate = 0;
  int32_t channels = 0;
  int32_t bits_per_sample = 0;
  /// Where the "data" chunk's bytes start and how many there are.
  int64_t data_offset = 0;
  int64_t data_bytes = 0;
};

/// Reads a RIFF/WAVE file's fmt and data chunks (skipping others). Fails
/// with errc::invalid_input on anything that is not PCM WAV.
caf::expected<wav_info> parse_wav(std::string_view bytes);

/// Standard base64 (RFC 4648, with padding).
std::string base64_encode(std::string_view bytes);

/// Fails with errc::invalid_input on characters outside the alphabet or bad
/// padding.
caf::expected<std::string> base64_decode(std::string_view text);

} // namespace infergrid
