// Splitting text into phrases for streaming speech synthesis: one phrase is
// synthesised and sent while the next is prepared. Torch-free.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace infergrid::inference {

/// Splits text into phrases to synthesise one at a time:
/// - after sentence punctuation . ! ? ; : followed by whitespace or end (so "3.14",
///   "12:30" and "e.g.x" stay whole), and after the CJK 。！？；： always (CJK text
///   puts no space after them); closing quotes and brackets right after the
///   punctuation (" ' ) ] } ” ’ 」 』 ）) stay with it;
/// - at newlines.
/// Each phrase is trimmed of surrounding ASCII whitespace; empty ones are dropped.
/// A phrase longer than max_bytes is split at the last whitespace or comma
/// (, ， 、) before the limit, at a UTF-8 character boundary if there is none.
/// Fragments shorter than min_bytes are merged into the previous phrase (the first
/// one into the next) unless the result would exceed max_bytes. Never splits
/// inside a UTF-8 sequence; every phrase is at most max_bytes long (max_bytes < 4
/// counts as 4, the longest UTF-8 character).
/// The phrases hold the text's non-whitespace characters in order. Concatenating
/// them with single spaces reproduces the text's words in order wherever the text
/// had whitespace at the split; splits inside a word (after CJK punctuation, at a
/// comma without a following space, at a bare character boundary) join back
/// without a space when short fragments are merged.
/// Runs in the caller's thread; linear in the text's length for a fixed max_bytes.
std::vector<std::string> split_phrases(const std::string& text,
                                       std::size_t max_bytes = 200,
                                       std::size_t min_bytes = 8);

} // namespace infergrid::inference
