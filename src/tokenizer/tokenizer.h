#pragma once
// Hugging Face tokenizer.json: byte-level BPE (GPT-2 / Llama-3 / SmolLM style) and
// SentencePiece-style BPE with byte fallback and Metaspace (Llama-2 style).
// Encoding matches the `tokenizers` library token for token.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace subbit {

class Tokenizer {
 public:
  static Tokenizer from_file(const std::filesystem::path& tokenizer_json);  // throws Error
  // The same from tokenizer.json text (embedded in a model file); `source` names it in errors.
  static Tokenizer from_json_text(std::string_view json_text, const std::string& source);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // add_special_tokens=false matches tokenizers' encode(text, add_special_tokens=False);
  // true also applies the post-processor template (e.g. a leading <s>).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // Same as tokenizers' decode(ids, skip_special_tokens=False).
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t vocab_size() const;  // largest id + 1, added tokens included
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;  // raw vocabulary string

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace subbit
