#include "io/text_file.h"

#include <fstream>
#include <sstream>

#include "common/error.h"

namespace subbit {

size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    size_t length;
    uint32_t min_code;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      length = 2;
      min_code = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      length = 3;
      min_code = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      length = 4;
      min_code = 0x10000;
    } else
      return i;
    if (i + length > s.size()) return i;
    uint32_t code = c & (0x7F >> length);
    for (size_t k = 1; k < length; ++k) {
      const unsigned char cc = s[i + k];
      if ((cc & 0xC0) != 0x80) return i;
      code = (code << 6) | (cc & 0x3F);
    }
    // Overlong forms, UTF-16 surrogates and code points past U+10FFFF are invalid.
    if (code < min_code || (code >= 0xD800 && code <= 0xDFFF) || code > 0x10FFFF) return i;
    i += length;
  }
  return std::string_view::npos;
}

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open text file", path.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string raw = buffer.str();
  if (const size_t bad = find_invalid_utf8(raw); bad != std::string_view::npos)
    fail("{}: not valid UTF-8 (first bad byte at offset {})", path.string(), bad);
  std::string text;
  text.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i)
    if (!(raw[i] == '\r' && i + 1 < raw.size() && raw[i + 1] == '\n')) text.push_back(raw[i]);
  return text;
}

size_t complete_utf8_prefix(std::string_view s) {
  size_t lead = s.size();
  int continuation_bytes = 0;
  while (lead > 0 && continuation_bytes < 4 &&
         (static_cast<unsigned char>(s[lead - 1]) & 0xC0) == 0x80) {
    --lead;
    ++continuation_bytes;
  }
  if (lead == 0) return s.size();
  const unsigned char c = s[lead - 1];
  const int sequence_length = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
  return continuation_bytes + 1 >= sequence_length ? s.size() : lead - 1;
}

}  // namespace subbit
