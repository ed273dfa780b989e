#pragma once
// Shared by the fuzz targets. The parsers under test read files (memory maps, streams), so each
// input is first written to a per-process scratch folder, on tmpfs when there is one.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace subbit {
class Tokenizer;
}

namespace subbit::fuzz {

// The fuzz targets' bodies (fuzz/fuzz_*.cpp). libFuzzer calls them through the entry points
// compiled with SUBBIT_FUZZ_MAIN; the unit tests (tests/test_fuzz_regressions.cpp) call them
// directly on the seed corpora and on every input that once found a bug.
int run_safetensors(const uint8_t* data, size_t size);
int run_safetensors_index(const uint8_t* data, size_t size);
int run_gguf(const uint8_t* data, size_t size);
int run_config(const uint8_t* data, size_t size);
int run_tokenizer_json(const uint8_t* data, size_t size);
int run_model_file(const uint8_t* data, size_t size);
int run_encode(const Tokenizer& tokenizer, bool byte_level, const uint8_t* data, size_t size);
int run_chat_template(const uint8_t* data, size_t size);
// Loads the served model (tokenizer, chat template) from `source_dir` on the first call.
int run_server_request(const std::filesystem::path& source_dir, const uint8_t* data, size_t size);

// Created on first use, removed when the process exits normally.
const std::filesystem::path& scratch_dir();
// Writes bytes to scratch_dir() / name, replacing what was there; returns the path.
std::filesystem::path write_scratch(const std::string& name, std::string_view bytes);
// Empties scratch_dir() (for targets that write several files per input).
void clear_scratch();

// The input as text, and split into at most `max_parts` parts at kPartSeparator (the last part
// keeps any further separators). The separator is in fuzz/subbit.dict, so the fuzzer uses it.
inline constexpr std::string_view kPartSeparator = "\n====\n";
inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}
std::vector<std::string_view> split_parts(std::string_view input, size_t max_parts);

// Runs `parse`. Refusing bad input with subbit::Error is the expected outcome and is swallowed;
// every other exception escapes, and libFuzzer reports it as a crash: the CLI would print it
// without naming the file, so it is a finding too.
template <typename Parse>
void expect_clean_refusal(Parse&& parse) {
  try {
    parse();
  } catch (const Error&) {
  }
}

// Aborts (a finding) when `condition` does not hold: invariants of successfully parsed input.
void check(bool condition, const char* what);

}  // namespace subbit::fuzz
