#pragma once
// The tokenizer.json components around the model: normalizer, pre-tokenizer, decoder and
// post-processor. Each is built from its JSON object (null meaning "none") and reproduces the
// `tokenizers` library's behaviour for the component types listed in pipeline.cpp; any other
// type is refused with an Error naming the file and the type.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace subbit::tokenization {

// Replace's pattern: a literal string, or a regex of the one shape tokenizer.json files use in
// practice, a single character repeated (`x+`, `x{n,}`), e.g. Llama-2's ' {2,}'.
class Replacement {
 public:
  Replacement(const nlohmann::json& config, const std::string& path, std::string_view component);
  std::string apply(std::string_view text) const;

 private:
  std::string pattern_;          // the literal, or the repeated character
  std::size_t min_repeats_ = 0;  // 0: pattern_ is a literal; otherwise runs of >= this many
  std::string content_;
};

class Normalizer {
 public:
  Normalizer(const nlohmann::json& config, const std::string& path);
  std::string normalize(std::string_view text) const;

 private:
  struct Strip {
    bool left;
    bool right;
  };
  struct Prepend {
    std::string prefix;
  };
  using Step = std::variant<Strip, Replacement, Prepend>;
  void add(const nlohmann::json& config, const std::string& path);

  std::vector<Step> steps_;  // a Sequence, flattened
};

class PreTokenizer {
 public:
  using PieceSink = std::function<void(std::string_view)>;
  PreTokenizer(const nlohmann::json& config, const std::string& path);
  // Calls `emit` with each non-empty piece of `text`, in order.
  void split(std::string_view text, const PieceSink& emit) const;

 private:
  struct Digits {
    bool individual_digits;
  };
  struct ByteLevel {
    bool add_prefix_space;
    bool use_regex;
  };
  using Step = std::variant<Digits, ByteLevel>;
  void add(const nlohmann::json& config, const std::string& path);
  void run(std::size_t step, std::string_view text, const PieceSink& emit) const;

  std::vector<Step> steps_;  // a Sequence, flattened
};

class Decoder {
 public:
  Decoder(const nlohmann::json& config, const std::string& path);
  std::string decode(std::vector<std::string> tokens) const;

 private:
  struct ByteLevel {};
  struct ByteFallback {};
  struct Fuse {};
  struct Strip {
    char32_t content;
    std::size_t start;
    std::size_t stop;
  };
  using Step = std::variant<ByteLevel, Replacement, ByteFallback, Fuse, Strip>;
  void add(const nlohmann::json& config, const std::string& path);

  bool present_ = false;
  std::vector<Step> steps_;  // a Sequence, flattened
};

// What add_special_tokens=true adds around a single sequence.
class PostProcessor {
 public:
  PostProcessor(const nlohmann::json& config, const std::string& path);
  std::vector<int32_t> apply(const std::vector<int32_t>& ids) const;

 private:
  void add(const nlohmann::json& config, const std::string& path);

  std::vector<int32_t> prefix_;
  std::vector<int32_t> suffix_;
};

}  // namespace subbit::tokenization
