// Encoding follows the `tokenizers` library's pipeline: added (special) tokens are cut out of
// the raw text first, each remaining segment is normalized, pre-tokenized into words and each
// word is encoded by the BPE model.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "common/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pipeline.h"
#include "tokenizer/unicode.h"

namespace subbit {

namespace {

using nlohmann::json;
using tokenization::BpeModel;
using tokenization::Decoder;
using tokenization::Normalizer;
using tokenization::PostProcessor;
using tokenization::PreTokenizer;
using tokenization::StringMap;

struct AddedToken {
  std::string content;
  int32_t id;
  bool lstrip;
  bool rstrip;
  bool normalized;  // matched in normalized text rather than in the raw input
};

// Finds added tokens the way tokenizers' aho-corasick search does: leftmost match first,
// longest on ties, non-overlapping; lstrip/rstrip widen a match over adjacent whitespace.
class AddedTokenMatcher {
 public:
  void add(std::string pattern, const AddedToken& token) {
    auto& bucket = by_first_byte_[static_cast<unsigned char>(pattern.front())];
    bucket.push_back(Entry{std::move(pattern), &token});
    std::stable_sort(bucket.begin(), bucket.end(), [](const Entry& a, const Entry& b) {
      return a.pattern.size() > b.pattern.size();
    });
    empty_ = false;
  }

  template <typename OnText, typename OnToken>
  void split(std::string_view text, OnText&& on_text, OnToken&& on_token) const {
    if (empty_) {
      on_text(text);
      return;
    }
    std::size_t text_start = 0;  // start of the text not yet handed out
    for (std::size_t pos = 0; pos < text.size();) {
      const Entry* match = longest_match_at(text, pos);
      if (match == nullptr) {
        ++pos;
        continue;
      }
      std::size_t start = pos;
      std::size_t stop = pos + match->pattern.size();
      pos = stop;  // the search resumes after the bare match, as aho-corasick's find_iter does
      if (match->token->lstrip) {
        start =
            std::max(tokenization::trailing_whitespace_start(text.substr(0, start)), text_start);
      }
      if (match->token->rstrip) stop += tokenization::leading_whitespace_end(text.substr(stop));
      if (text_start < start) on_text(text.substr(text_start, start - text_start));
      on_token(match->token->id);
      text_start = stop;
    }
    if (text_start < text.size()) on_text(text.substr(text_start));
  }

 private:
  struct Entry {
    std::string pattern;
    const AddedToken* token;
  };
  const Entry* longest_match_at(std::string_view text, std::size_t pos) const {
    for (const Entry& entry : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
      if (text.substr(pos).starts_with(entry.pattern)) return &entry;
    }
    return nullptr;
  }

  std::array<std::vector<Entry>, 256> by_first_byte_;  // each longest first
  bool empty_ = true;
};

std::string read_file(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) fail("{}: tokenizer file does not exist", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open tokenizer file", path.string());
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

// Validates the top level before any component is built, so an unsupported model is reported
// as such rather than as a complaint about one of its parts.
void check_top_level(const json& root, const std::string& path) {
  if (!root.is_object()) fail("{}: tokenizer.json must hold a JSON object", path);
  for (const char* key : {"truncation", "padding"}) {
    if (root.contains(key) && !root.at(key).is_null())
      fail("{}: {} is not supported (set it to null)", path, key);
  }
  const json& model = root.at("model");
  if (!model.is_object() || !model.contains("type")) fail("{}: model has no \"type\"", path);
  const std::string type = model.at("type").get<std::string>();
  if (type != "BPE") fail("{}: unsupported model type '{}' (only BPE is supported)", path, type);
}

const json& member_or_null(const json& root, const char* key) {
  static const json null_json;
  auto it = root.find(key);
  return it == root.end() ? null_json : *it;
}

}  // namespace

struct Tokenizer::Impl {
  Impl(const json& root, const std::string& path)
      : normalizer(member_or_null(root, "normalizer"), path),
        pre_tokenizer(member_or_null(root, "pre_tokenizer"), path),
        model(root.at("model"), path),
        decoder(member_or_null(root, "decoder"), path),
        post_processor(member_or_null(root, "post_processor"), path) {
    load_added_tokens(member_or_null(root, "added_tokens"), path);
  }

  void load_added_tokens(const json& list, const std::string& path) {
    if (list.is_null()) return;
    for (const json& entry : list) {
      const std::string content = entry.at("content").get<std::string>();
      if (entry.value("single_word", false))
        fail("{}: added token '{}' uses single_word, which is not supported", path, content);
      if (content.empty()) continue;  // tokenizers ignores empty added tokens
      added_tokens.push_back(AddedToken{
          content, tokenization::read_token_id(entry.at("id"), path, "an added token's id"),
          entry.value("lstrip", false), entry.value("rstrip", false),
          entry.value("normalized", true)});
    }
    // Matchers and maps point into added_tokens, so fill them only once it is complete.
    for (const AddedToken& token : added_tokens) {
      added_by_id.emplace(token.id, &token);
      added_by_content.emplace(token.content, token.id);
      if (token.normalized) {
        // Normalized tokens are searched for in normalized text, so their pattern is too.
        std::string pattern = normalizer.normalize(token.content);
        if (!pattern.empty()) normalized_matcher.add(std::move(pattern), token);
      } else {
        raw_matcher.add(token.content, token);
      }
    }
  }

  void encode_segment(std::string_view segment, std::vector<int32_t>& ids) const {
    const std::string normalized = normalizer.normalize(segment);
    const auto add_id = [&](int32_t id) { ids.push_back(id); };
    const auto encode_word = [&](std::string_view word) { model.tokenize(word, ids); };
    normalized_matcher.split(
        normalized, [&](std::string_view text) { pre_tokenizer.split(text, encode_word); }, add_id);
  }

  std::vector<AddedToken> added_tokens;
  std::unordered_map<int32_t, const AddedToken*> added_by_id;
  StringMap<int32_t> added_by_content;
  AddedTokenMatcher raw_matcher;
  AddedTokenMatcher normalized_matcher;
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  BpeModel model;
  Decoder decoder;
  PostProcessor post_processor;
};

Tokenizer Tokenizer::from_file(const std::filesystem::path& tokenizer_json) {
  return from_json_text(read_file(tokenizer_json), tokenizer_json.string());
}

Tokenizer Tokenizer::from_json_text(std::string_view json_text, const std::string& source) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", source, e.what());
  }
  try {
    check_top_level(root, source);
    return Tokenizer(std::make_unique<Impl>(root, source));
  } catch (const json::exception& e) {
    fail("{}: malformed tokenizer.json: {}", source, e.what());
  }
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  impl_->raw_matcher.split(
      text, [&](std::string_view segment) { impl_->encode_segment(segment, ids); },
      [&](int32_t id) { ids.push_back(id); });
  if (add_special_tokens) return impl_->post_processor.apply(ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end()) {
      tokens.push_back(it->second->content);
    } else if (const std::string* token = impl_->model.id_to_token(id)) {
      tokens.push_back(*token);
    }
    // Like tokenizers, ids that name no token are skipped.
  }
  return impl_->decoder.decode(std::move(tokens));
}

int32_t Tokenizer::vocab_size() const {
  int32_t max_id = impl_->model.max_id();
  for (const AddedToken& token : impl_->added_tokens) max_id = std::max(max_id, token.id);
  return max_id + 1;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end())
    return it->second;
  return impl_->model.token_to_id(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end())
    return it->second->content;
  if (const std::string* token = impl_->model.id_to_token(id)) return *token;
  fail("token id {} is not in the vocabulary ({} entries)", id, vocab_size());
}

}  // namespace subbit
