#include "tokenizer/bpe.h"

#include <fmt/format.h>

#include <algorithm>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>

#include "common/error.h"
#include "tokenizer/unicode.h"

namespace subbit::tokenization {

int32_t read_token_id(const nlohmann::json& value, const std::string& path, std::string_view what) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > INT32_MAX)
    fail("{}: {} must be an integer from 0 to 2^31 - 1, got {}", path, what, value.dump());
  return int32_t(value.get<int64_t>());
}

namespace {

// Long words (a whole document when there is no pre-tokenizer) would only bloat the cache.
constexpr std::size_t kMaxCachedWordBytes = 256;
constexpr std::size_t kMaxCacheEntries = 200'000;

std::optional<std::string> optional_string(const nlohmann::json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::nullopt;
  return it->get<std::string>();
}

bool flag(const nlohmann::json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && !it->is_null() && it->get<bool>();
}

}  // namespace

BpeModel::BpeModel(const nlohmann::json& model, const std::string& path) {
  if (auto dropout = model.find("dropout");
      dropout != model.end() && !dropout->is_null() && dropout->get<double>() != 0.0) {
    fail("{}: BPE dropout is not supported (it makes encoding random)", path);
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (optional_string(model, key)) fail("{}: BPE option {} is not supported", path, key);
  }
  fuse_unk_ = flag(model, "fuse_unk");
  ignore_merges_ = flag(model, "ignore_merges");
  byte_fallback_ = flag(model, "byte_fallback");

  const auto& vocab = model.at("vocab");
  if (!vocab.is_object()) fail("{}: model.vocab must be an object", path);
  int32_t max_id = -1;
  for (const auto& [token, id_json] : vocab.items()) {
    const int32_t id = read_token_id(id_json, path, fmt::format("the id of token '{}'", token));
    vocab_.emplace(token, id);
    max_id = std::max(max_id, id);
  }
  // The id -> token table is dense: a few ids far beyond the entry count would make it any size.
  if (int64_t(max_id) >= 4 * int64_t(vocab.size()) + 1024)
    fail("{}: model.vocab has {} tokens but ids up to {}; ids that sparse are not supported", path,
         vocab.size(), max_id);
  id_to_token_.assign(static_cast<std::size_t>(max_id + 1), nullptr);
  for (const auto& [token, id] : vocab_) id_to_token_[static_cast<std::size_t>(id)] = &token;

  const auto lookup = [&](std::string_view token, std::string_view what) {
    auto it = vocab_.find(token);
    if (it == vocab_.end()) fail("{}: {} '{}' is not in the vocabulary", path, what, token);
    return it->second;
  };
  if (auto unk = optional_string(model, "unk_token")) unk_id_ = lookup(*unk, "unk_token");

  const auto& merges = model.at("merges");
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& merge = merges[rank];
    std::string left, right;
    if (merge.is_string()) {  // legacy "left right"
      const auto text = merge.get<std::string>();
      const auto space = text.find(' ');
      if (space == std::string::npos) fail("{}: merge {} ('{}') has no space", path, rank, text);
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      fail("{}: merge {} is neither \"a b\" nor [\"a\", \"b\"]", path, rank);
    }
    // Later duplicates overwrite earlier ones, as in tokenizers' HashMap construction.
    merges_[pair_key(lookup(left, "merge token"), lookup(right, "merge token"))] =
        Merge{static_cast<int32_t>(rank), lookup(left + right, "merged token")};
  }

  byte_token_ids_.fill(-1);
  if (byte_fallback_) {
    for (int byte = 0; byte < 256; ++byte) {
      if (auto it = vocab_.find(fmt::format("<0x{:02X}>", byte)); it != vocab_.end())
        byte_token_ids_[static_cast<std::size_t>(byte)] = it->second;
    }
  }
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= id_to_token_.size()) return nullptr;
  return id_to_token_[static_cast<std::size_t>(id)];
}

// One symbol per character; characters outside the vocabulary become byte tokens or <unk>.
// Mirrors BPE::merge_word, including where a pending fused <unk> lands relative to byte tokens.
std::vector<int32_t> BpeModel::initial_symbols(std::string_view word) const {
  std::vector<int32_t> symbols;
  symbols.reserve(word.size());
  bool unk_pending = false;
  for (std::size_t pos = 0; pos < word.size();) {
    const std::size_t start = pos;
    next_code_point(word, pos);
    const std::string_view character = word.substr(start, pos - start);
    if (auto it = vocab_.find(character); it != vocab_.end()) {
      if (unk_pending) symbols.push_back(*unk_id_);
      unk_pending = false;
      symbols.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all_bytes_known = true;
      for (unsigned char byte : character) all_bytes_known &= byte_token_ids_[byte] >= 0;
      if (all_bytes_known) {
        for (unsigned char byte : character) symbols.push_back(byte_token_ids_[byte]);
        continue;
      }
    }
    if (!unk_id_) continue;  // tokenizers drops unknown characters when there is no <unk>
    if (unk_pending && !fuse_unk_) symbols.push_back(*unk_id_);
    unk_pending = true;
  }
  if (unk_pending) symbols.push_back(*unk_id_);
  return symbols;
}

std::vector<int32_t> BpeModel::merge_word(std::string_view word) const {
  struct Symbol {
    int32_t id;
    int32_t prev;  // -1: none
    int32_t next;  // -1: none
    bool removed;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
    // std::priority_queue pops the largest; the best candidate has the lowest rank, then pos.
    bool operator<(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : pos > other.pos;
    }
  };

  const std::vector<int32_t> initial = initial_symbols(word);
  const auto count = static_cast<int32_t>(initial.size());
  std::vector<Symbol> symbols(initial.size());
  for (int32_t i = 0; i < count; ++i) {
    symbols[i] = Symbol{initial[i], i - 1, i + 1 < count ? i + 1 : -1, false};
  }
  const auto find_merge = [&](int32_t left, int32_t right) -> const Merge* {
    auto it = merges_.find(pair_key(left, right));
    return it == merges_.end() ? nullptr : &it->second;
  };

  std::vector<Candidate> storage;
  storage.reserve(initial.size());
  std::priority_queue<Candidate> queue(std::less<Candidate>{}, std::move(storage));
  for (int32_t i = 0; i + 1 < count; ++i) {
    if (const Merge* m = find_merge(symbols[i].id, symbols[i + 1].id))
      queue.push(Candidate{m->rank, i, m->new_id});
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.removed || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // Entries go stale when a neighbour merged first; the pair must still produce new_id.
    const Merge* current = find_merge(left.id, right.id);
    if (current == nullptr || current->new_id != top.new_id) continue;

    left.id = top.new_id;
    right.removed = true;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const Merge* m = find_merge(symbols[left.prev].id, left.id))
        queue.push(Candidate{m->rank, left.prev, m->new_id});
    }
    if (left.next >= 0) {
      if (const Merge* m = find_merge(left.id, symbols[left.next].id))
        queue.push(Candidate{m->rank, top.pos, m->new_id});
    }
  }

  std::vector<int32_t> ids;
  for (const Symbol& symbol : symbols) {
    if (!symbol.removed) ids.push_back(symbol.id);
  }
  return ids;
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::shared_lock lock(cache_mutex_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> word_ids = merge_word(word);
  ids.insert(ids.end(), word_ids.begin(), word_ids.end());
  if (cacheable) {
    std::unique_lock lock(cache_mutex_);
    if (cache_.size() < kMaxCacheEntries) cache_.emplace(word, std::move(word_ids));
  }
}

}  // namespace subbit::tokenization
