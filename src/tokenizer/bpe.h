#pragma once
// The BPE model of a tokenizer.json, merging exactly as the `tokenizers` library does
// (models/bpe/word.rs): lowest merge rank first, leftmost position on ties.
#include <array>
#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace subbit::tokenization {

// Lets unordered_map<std::string, ...> be searched with a string_view without a copy.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename Value>
using StringMap = std::unordered_map<std::string, Value, StringHash, std::equal_to<>>;

// A token id of tokenizer.json (`what` says where): an integer in 0 .. 2^31 - 1; anything else
// (a float, which nlohmann would convert with undefined behaviour, a negative or huge number) is
// an Error naming `path`.
int32_t read_token_id(const nlohmann::json& value, const std::string& path, std::string_view what);

class BpeModel {
 public:
  // `model` is the "model" object of tokenizer.json; errors name `path`.
  BpeModel(const nlohmann::json& model, const std::string& path);

  // Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<int32_t>& ids) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;  // nullptr when absent
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t pair_key(int32_t left, int32_t right) {
    return uint64_t{static_cast<uint32_t>(left)} << 32 | static_cast<uint32_t>(right);
  }
  std::vector<int32_t> initial_symbols(std::string_view word) const;
  std::vector<int32_t> merge_word(std::string_view word) const;

  StringMap<int32_t> vocab_;
  std::vector<const std::string*> id_to_token_;  // points at vocab_ keys; nullptr for gaps
  std::unordered_map<uint64_t, Merge> merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  bool byte_fallback_ = false;
  std::array<int32_t, 256> byte_token_ids_{};  // id of "<0xXX>", or -1

  // Words repeat constantly in natural text, so results are cached like tokenizers does.
  mutable std::shared_mutex cache_mutex_;
  mutable StringMap<std::vector<int32_t>> cache_;
};

}  // namespace subbit::tokenization
