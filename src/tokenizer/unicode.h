#pragma once
// UTF-8 and Unicode character-class helpers for the tokenizer. Classes follow the definitions
// the `tokenizers` library relies on: Rust's char::is_numeric / is_whitespace and Oniguruma's
// \p{L}, \p{N}, \s (see tools/gen_unicode_tables.py).
#include <cstddef>
#include <string>
#include <string_view>

#include "tokenizer/unicode_tables.h"

namespace subbit::tokenization {

using unicode_tables::CharClass;

CharClass char_class(char32_t code_point);
inline bool is_whitespace(char32_t code_point) {
  return char_class(code_point) == CharClass::kWhitespace;
}
inline bool is_numeric(char32_t code_point) { return char_class(code_point) == CharClass::kNumber; }

// Byte offset just past the leading White_Space characters / where the trailing ones begin.
std::size_t leading_whitespace_end(std::string_view text);
std::size_t trailing_whitespace_start(std::string_view text);

// Length of the well-formed UTF-8 sequence at text[pos], or 0 when the bytes there are not one.
// For an ill-formed sequence, `error_length` receives the length of its maximal valid prefix
// (at least 1): the unit Rust's String::from_utf8_lossy replaces with one U+FFFD.
std::size_t utf8_sequence_length(std::string_view text, std::size_t pos, std::size_t* error_length);

// Decodes the code point at text[pos] and advances pos past it. Ill-formed bytes decode as
// U+FFFD, one ill-formed unit at a time, so the loop always terminates.
char32_t next_code_point(std::string_view text, std::size_t& pos);

void append_utf8(std::string& out, char32_t code_point);

bool is_valid_utf8(std::string_view bytes);
// Rust's String::from_utf8_lossy.
std::string from_utf8_lossy(std::string_view bytes);

}  // namespace subbit::tokenization
