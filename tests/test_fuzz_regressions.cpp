// Every fuzz target's body (fuzz/) run on its committed seed corpus (fuzz/corpus/TARGET) and on
// every input that once found a bug (tests/fuzz_regressions/TARGET, named after the finding; see
// docs/fuzzing.md). Bad input must be refused with subbit::Error: any other exception fails
// the test, and a crash or a sanitizer report (in the ASan + UBSan build) ends it.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>

#include "fuzz_support.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

namespace subbit {
namespace {

namespace fs = std::filesystem;
using RunFn = std::function<int(const uint8_t*, size_t)>;

const Tokenizer& tokenizer_at(const fs::path& file) {
  static std::map<fs::path, std::unique_ptr<Tokenizer>> loaded;
  auto& slot = loaded[file];
  if (!slot) slot = std::make_unique<Tokenizer>(Tokenizer::from_file(file));
  return *slot;
}

const std::map<std::string, RunFn>& targets() {
  static const std::map<std::string, RunFn> all = {
      {"safetensors", fuzz::run_safetensors},
      {"safetensors_index", fuzz::run_safetensors_index},
      {"gguf", fuzz::run_gguf},
      {"config", fuzz::run_config},
      {"tokenizer_json", fuzz::run_tokenizer_json},
      {"model_file", fuzz::run_model_file},
      {"chat_template", fuzz::run_chat_template},
      {"server_request",
       [](const uint8_t* data, size_t size) {
         return fuzz::run_server_request(testing::source_dir(), data, size);
       }},
      {"encode_byte_level",
       [](const uint8_t* data, size_t size) {
         const auto file = testing::source_dir() / "models" / "sb-8m" / "tokenizer.json";
         return fuzz::run_encode(tokenizer_at(file), true, data, size);
       }},
      {"encode_sentencepiece", [](const uint8_t* data, size_t size) {
         const auto file = testing::source_dir() / "fuzz" / "tokenizers" / "stories260K.json";
         return fuzz::run_encode(tokenizer_at(file), false, data, size);
       }}};
  return all;
}

// Runs every file of folder/TARGET through its target; returns how many ran.
int run_folder(const fs::path& folder) {
  int count = 0;
  for (const auto& [name, run] : targets()) {
    if (!fs::is_directory(folder / name)) continue;
    for (const auto& entry : fs::directory_iterator(folder / name)) {
      SCOPED_TRACE(entry.path().string());
      const std::string bytes = testing::file_bytes(entry.path());
      EXPECT_NO_THROW(run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
      ++count;
    }
  }
  return count;
}

TEST(FuzzRegressions, EveryInputThatFoundABugIsNowRefusedCleanly) {
  EXPECT_GT(run_folder(testing::source_dir() / "tests" / "fuzz_regressions"), 0);
}

TEST(FuzzRegressions, EverySeedOfTheCorporaRuns) {
  const fs::path corpus = testing::source_dir() / "fuzz" / "corpus";
  for (const auto& [name, run] : targets())
    EXPECT_TRUE(fs::is_directory(corpus / name)) << "no seed corpus for " << name;
  EXPECT_GT(run_folder(corpus), 0);
}

}  // namespace
}  // namespace subbit
