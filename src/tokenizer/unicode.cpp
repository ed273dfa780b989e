#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>

namespace subbit::tokenization {

namespace {

constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD

// ASCII dominates real text; classify it without the binary search.
constexpr std::array<CharClass, 128> make_ascii_classes() {
  std::array<CharClass, 128> classes{};
  for (char32_t c = 0; c < 128; ++c) {
    classes[c] = CharClass::kOther;
    for (const auto& range : unicode_tables::kClassRanges) {
      if (range.first <= c && c <= range.last) classes[c] = range.cls;
    }
  }
  return classes;
}
constexpr std::array<CharClass, 128> kAsciiClasses = make_ascii_classes();

bool is_continuation(unsigned char byte) { return (byte & 0xC0) == 0x80; }

}  // namespace

CharClass char_class(char32_t code_point) {
  if (code_point < 128) return kAsciiClasses[code_point];
  const auto& ranges = unicode_tables::kClassRanges;
  auto it = std::upper_bound(ranges.begin(), ranges.end(), code_point,
                             [](char32_t cp, const auto& range) { return cp < range.first; });
  if (it == ranges.begin()) return CharClass::kOther;
  --it;
  return code_point <= it->last ? it->cls : CharClass::kOther;
}

std::size_t leading_whitespace_end(std::string_view text) {
  std::size_t end = 0;
  while (end < text.size()) {
    std::size_t next = end;
    if (!is_whitespace(next_code_point(text, next))) break;
    end = next;
  }
  return end;
}

std::size_t trailing_whitespace_start(std::string_view text) {
  // Walks backwards so that stripping stays proportional to the whitespace, not the text.
  std::size_t start = text.size();
  while (start > 0) {
    std::size_t char_start = start - 1;
    while (char_start > 0 && is_continuation(static_cast<unsigned char>(text[char_start])))
      --char_start;
    std::size_t pos = char_start;
    if (!is_whitespace(next_code_point(text, pos))) break;
    start = char_start;
  }
  return start;
}

std::size_t utf8_sequence_length(std::string_view text, std::size_t pos,
                                 std::size_t* error_length) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[pos + i]); };
  const std::size_t available = text.size() - pos;
  const unsigned char lead = byte(0);
  *error_length = 1;
  if (lead < 0x80) return 1;
  std::size_t width = 0;
  unsigned char second_min = 0x80, second_max = 0xBF;  // bounds exclude overlongs, surrogates
  if (lead >= 0xC2 && lead <= 0xDF) {
    width = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    width = 3;
    if (lead == 0xE0) second_min = 0xA0;
    if (lead == 0xED) second_max = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    width = 4;
    if (lead == 0xF0) second_min = 0x90;
    if (lead == 0xF4) second_max = 0x8F;
  } else {
    return 0;
  }
  for (std::size_t i = 1; i < width; ++i) {
    if (i >= available) return 0;
    const unsigned char b = byte(i);
    const bool ok = i == 1 ? (b >= second_min && b <= second_max) : is_continuation(b);
    if (!ok) return 0;
    *error_length = i + 1;
  }
  return width;
}

char32_t next_code_point(std::string_view text, std::size_t& pos) {
  std::size_t error_length = 0;
  const std::size_t length = utf8_sequence_length(text, pos, &error_length);
  if (length == 0) {
    pos += error_length;
    return U'\uFFFD';
  }
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[pos + i]); };
  char32_t cp = 0;
  switch (length) {
    case 1:
      cp = byte(0);
      break;
    case 2:
      cp = (char32_t{byte(0)} & 0x1F) << 6 | (byte(1) & 0x3F);
      break;
    case 3:
      cp = (char32_t{byte(0)} & 0x0F) << 12 | (byte(1) & 0x3F) << 6 | (byte(2) & 0x3F);
      break;
    default:
      cp = (char32_t{byte(0)} & 0x07) << 18 | (byte(1) & 0x3F) << 12 | (byte(2) & 0x3F) << 6 |
           (byte(3) & 0x3F);
  }
  pos += length;
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool is_valid_utf8(std::string_view bytes) {
  std::size_t error_length = 0;
  for (std::size_t pos = 0; pos < bytes.size();) {
    const std::size_t length = utf8_sequence_length(bytes, pos, &error_length);
    if (length == 0) return false;
    pos += length;
  }
  return true;
}

std::string from_utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  std::size_t error_length = 0;
  for (std::size_t pos = 0; pos < bytes.size();) {
    const std::size_t length = utf8_sequence_length(bytes, pos, &error_length);
    if (length == 0) {
      out += kReplacementCharacter;
      pos += error_length;
    } else {
      out.append(bytes.substr(pos, length));
      pos += length;
    }
  }
  return out;
}

}  // namespace subbit::tokenization
