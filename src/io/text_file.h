#pragma once
#include <filesystem>
#include <string>
#include <string_view>

namespace subbit {

// Reads a UTF-8 text file with CRLF normalised to LF. Throws Error naming the file and the
// byte offset when it is not valid UTF-8.
std::string read_text_file(const std::filesystem::path& path);

// Offset of the first invalid UTF-8 byte, or npos.
size_t find_invalid_utf8(std::string_view text);

// Length of the longest prefix of `s` that does not end inside a UTF-8 sequence, so text
// streamed token by token never splits a character.
size_t complete_utf8_prefix(std::string_view s);

}  // namespace subbit
