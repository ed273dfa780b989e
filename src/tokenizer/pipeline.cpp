#include "tokenizer/pipeline.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tokenizer/unicode.h"

namespace subbit::tokenization {

namespace {

using nlohmann::json;

std::string type_of(const json& config, const std::string& path, std::string_view component) {
  if (!config.is_object() || !config.contains("type"))
    fail("{}: {} has no \"type\"", path, component);
  return config.at("type").get<std::string>();
}

bool bool_or(const json& config, const char* key, bool fallback) {
  auto it = config.find(key);
  return it == config.end() || it->is_null() ? fallback : it->get<bool>();
}

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100 onwards, so every byte string becomes printable text without spaces.
struct ByteLevelAlphabet {
  std::array<std::string, 256> byte_to_utf8;
  static constexpr char32_t kCodePointLimit = 256 + 68;
  std::array<int16_t, kCodePointLimit> code_point_to_byte{};

  ByteLevelAlphabet() {
    code_point_to_byte.fill(-1);
    char32_t next_unprintable = 256;
    for (int byte = 0; byte < 256; ++byte) {
      const bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
                             (byte >= 0xAE && byte <= 0xFF);
      const char32_t cp = printable ? static_cast<char32_t>(byte) : next_unprintable++;
      append_utf8(byte_to_utf8[static_cast<std::size_t>(byte)], cp);
      code_point_to_byte[cp] = static_cast<int16_t>(byte);
    }
  }
};
const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet alphabet;
  return alphabet;
}

std::size_t end_of_class_run(std::string_view text, std::size_t pos, CharClass cls) {
  while (pos < text.size()) {
    std::size_t next = pos;
    if (char_class(next_code_point(text, next)) != cls) break;
    pos = next;
  }
  return pos;
}

// End of the match of GPT-2's pre-tokenizer regex that starts at `pos`:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Every character is matched by some alternative, so consecutive matches tile the text.
std::size_t gpt2_match_end(std::string_view text, std::size_t pos) {
  std::size_t next = pos;
  const char32_t first = next_code_point(text, next);
  if (first == U'\'') {
    const std::string_view rest = text.substr(next);
    for (std::string_view suffix : {"s", "t", "re", "ve", "m", "ll", "d"}) {
      if (rest.starts_with(suffix)) return next + suffix.size();
    }
  }
  // The three " ?<class>+" alternatives: an optional space, then a run of one class.
  std::size_t run_start = pos;
  CharClass run_class = char_class(first);
  if (first == U' ' && next < text.size()) {
    std::size_t after = next;
    run_class = char_class(next_code_point(text, after));
    run_start = next;
  }
  if (run_class != CharClass::kWhitespace) return end_of_class_run(text, run_start, run_class);

  // \s+(?!\S) backtracks to leave the run's last character for a following " ?<class>+";
  // a single whitespace character before non-space falls through to \s+.
  std::size_t last_start = pos;
  std::size_t end = pos;
  while (end < text.size()) {
    std::size_t after = end;
    if (char_class(next_code_point(text, after)) != CharClass::kWhitespace) break;
    last_start = end;
    end = after;
  }
  if (end == text.size() || last_start == pos) return end;
  return last_start;
}

// Parses "<c>", "<c>+" or "<c>{n,}" where <c> is a literal character or \<punctuation>.
// min_repeats is 0 for a bare character, which then behaves as a literal string.
bool parse_repeat_regex(std::string_view regex, std::string& character, std::size_t& min_repeats) {
  constexpr std::string_view kMetacharacters = ".^$|?*+()[]{}\\";
  std::size_t pos = 0;
  if (regex.size() >= 2 && regex[0] == '\\' && std::ispunct(static_cast<unsigned char>(regex[1]))) {
    character = regex.substr(1, 1);
    pos = 2;
  } else if (!regex.empty() && kMetacharacters.find(regex[0]) == std::string_view::npos) {
    next_code_point(regex, pos);
    character = regex.substr(0, pos);
  } else {
    return false;
  }
  const std::string_view quantifier = regex.substr(pos);
  if (quantifier.empty()) {
    min_repeats = 0;
    return true;
  }
  if (quantifier == "+") {
    min_repeats = 1;
    return true;
  }
  if (!quantifier.starts_with('{') || !quantifier.ends_with(",}")) return false;
  const std::string_view digits = quantifier.substr(1, quantifier.size() - 3);
  if (digits.empty() || digits.size() > 6 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  min_repeats = std::stoul(std::string(digits));
  return min_repeats > 0;
}

std::vector<int32_t> template_ids(const json& item, const json& special_tokens,
                                  const std::string& path) {
  const std::string name = item.at("id").get<std::string>();
  auto it = special_tokens.find(name);
  if (it == special_tokens.end())
    fail("{}: TemplateProcessing uses special token '{}' but does not define it", path, name);
  return it->at("ids").get<std::vector<int32_t>>();
}

}  // namespace

// ---- Replacement ---------------------------------------------------------------------------

Replacement::Replacement(const json& config, const std::string& path, std::string_view component) {
  content_ = config.at("content").get<std::string>();
  const json& pattern = config.at("pattern");
  if (pattern.contains("String")) {
    pattern_ = pattern.at("String").get<std::string>();
  } else if (pattern.contains("Regex")) {
    const std::string regex = pattern.at("Regex").get<std::string>();
    if (!parse_repeat_regex(regex, pattern_, min_repeats_))
      fail("{}: {} regex '{}' is not supported (only a single, possibly repeated, character)", path,
           component, regex);
  } else {
    fail("{}: {} pattern must be String or Regex", path, component);
  }
  if (pattern_.empty()) fail("{}: {} has an empty pattern", path, component);
}

std::string Replacement::apply(std::string_view text) const {
  std::string out;
  out.reserve(text.size());
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t found = text.find(pattern_, pos);
    if (found == std::string_view::npos) break;
    std::size_t end = found + pattern_.size();
    std::size_t repeats = 1;
    if (min_repeats_ > 0) {
      while (text.substr(end).starts_with(pattern_)) {
        end += pattern_.size();
        ++repeats;
      }
    }
    out.append(text.substr(pos, found - pos));
    if (repeats >= min_repeats_) {
      out += content_;
    } else {
      out.append(text.substr(found, end - found));
    }
    pos = end;
  }
  out.append(text.substr(pos));
  return out;
}

// ---- Normalizer ----------------------------------------------------------------------------
// Supported: Sequence, Strip, Replace, Prepend.

Normalizer::Normalizer(const json& config, const std::string& path) {
  if (!config.is_null()) add(config, path);
}

void Normalizer::add(const json& config, const std::string& path) {
  const std::string type = type_of(config, path, "normalizer");
  if (type == "Sequence") {
    for (const json& child : config.at("normalizers")) add(child, path);
  } else if (type == "Strip") {
    steps_.emplace_back(
        Strip{bool_or(config, "strip_left", true), bool_or(config, "strip_right", true)});
  } else if (type == "Replace") {
    steps_.emplace_back(Replacement(config, path, "normalizer Replace"));
  } else if (type == "Prepend") {
    steps_.emplace_back(Prepend{config.at("prepend").get<std::string>()});
  } else {
    fail("{}: unsupported normalizer type '{}'", path, type);
  }
}

std::string Normalizer::normalize(std::string_view input) const {
  std::string text(input);
  for (const Step& step : steps_) {
    if (const auto* strip = std::get_if<Strip>(&step)) {
      const std::size_t begin = strip->left ? leading_whitespace_end(text) : 0;
      const std::size_t end = strip->right ? trailing_whitespace_start(text) : text.size();
      text = begin < end ? text.substr(begin, end - begin) : std::string();
    } else if (const auto* replacement = std::get_if<Replacement>(&step)) {
      text = replacement->apply(text);
    } else if (const auto* prepend = std::get_if<Prepend>(&step)) {
      if (!text.empty()) text.insert(0, prepend->prefix);  // tokenizers skips empty strings
    }
  }
  return text;
}

// ---- PreTokenizer --------------------------------------------------------------------------
// Supported: Sequence, Digits, ByteLevel.

PreTokenizer::PreTokenizer(const json& config, const std::string& path) {
  if (!config.is_null()) add(config, path);
}

void PreTokenizer::add(const json& config, const std::string& path) {
  const std::string type = type_of(config, path, "pre_tokenizer");
  if (type == "Sequence") {
    for (const json& child : config.at("pretokenizers")) add(child, path);
  } else if (type == "Digits") {
    steps_.emplace_back(Digits{bool_or(config, "individual_digits", false)});
  } else if (type == "ByteLevel") {
    steps_.emplace_back(
        ByteLevel{bool_or(config, "add_prefix_space", true), bool_or(config, "use_regex", true)});
  } else {
    fail("{}: unsupported pre_tokenizer type '{}'", path, type);
  }
}

void PreTokenizer::split(std::string_view text, const PieceSink& emit) const { run(0, text, emit); }

void PreTokenizer::run(std::size_t step, std::string_view text, const PieceSink& emit) const {
  if (text.empty()) return;
  if (step == steps_.size()) {
    emit(text);
    return;
  }
  if (const auto* digits = std::get_if<Digits>(&steps_[step])) {
    // Numeric characters are isolated one by one, or grouped into runs; the rest stays whole.
    std::size_t piece_start = 0;
    bool piece_numeric = false;
    for (std::size_t pos = 0; pos < text.size();) {
      const std::size_t start = pos;
      const bool numeric = is_numeric(next_code_point(text, pos));
      const bool boundary = numeric ? (digits->individual_digits || !piece_numeric) : piece_numeric;
      if (boundary) {
        run(step + 1, text.substr(piece_start, start - piece_start), emit);
        piece_start = start;
      }
      piece_numeric = numeric;
    }
    run(step + 1, text.substr(piece_start), emit);
    return;
  }
  const auto& byte_level = std::get<ByteLevel>(steps_[step]);
  std::string prefixed;
  if (byte_level.add_prefix_space && !text.starts_with(' ')) {
    prefixed = " " + std::string(text);
    text = prefixed;
  }
  const auto& alphabet = byte_level_alphabet();
  std::string mapped;
  for (std::size_t pos = 0; pos < text.size();) {
    const std::size_t end = byte_level.use_regex ? gpt2_match_end(text, pos) : text.size();
    mapped.clear();
    for (unsigned char byte : text.substr(pos, end - pos)) mapped += alphabet.byte_to_utf8[byte];
    run(step + 1, mapped, emit);
    pos = end;
  }
}

// ---- Decoder -------------------------------------------------------------------------------
// Supported: Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip.

Decoder::Decoder(const json& config, const std::string& path) {
  if (config.is_null()) return;
  present_ = true;
  add(config, path);
}

void Decoder::add(const json& config, const std::string& path) {
  const std::string type = type_of(config, path, "decoder");
  if (type == "Sequence") {
    for (const json& child : config.at("decoders")) add(child, path);
  } else if (type == "ByteLevel") {
    steps_.emplace_back(ByteLevel{});
  } else if (type == "Replace") {
    steps_.emplace_back(Replacement(config, path, "decoder Replace"));
  } else if (type == "ByteFallback") {
    steps_.emplace_back(ByteFallback{});
  } else if (type == "Fuse") {
    steps_.emplace_back(Fuse{});
  } else if (type == "Strip") {
    const std::string content = config.at("content").get<std::string>();
    std::size_t pos = 0;
    const char32_t content_char = content.empty() ? 0 : next_code_point(content, pos);
    if (content.empty() || pos != content.size())
      fail("{}: decoder Strip content must be one character, got '{}'", path, content);
    steps_.emplace_back(Strip{content_char, config.at("start").get<std::size_t>(),
                              config.at("stop").get<std::size_t>()});
  } else {
    fail("{}: unsupported decoder type '{}'", path, type);
  }
}

std::string Decoder::decode(std::vector<std::string> tokens) const {
  if (!present_) {  // tokenizers joins raw tokens with spaces when there is no decoder
    std::string out;
    for (std::size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const Step& step : steps_) {
    if (std::holds_alternative<ByteLevel>(step)) {
      const auto& alphabet = byte_level_alphabet();
      std::string bytes;
      for (const std::string& token : tokens) {
        std::string token_bytes;
        bool mapped = true;
        for (std::size_t pos = 0; pos < token.size() && mapped;) {
          const char32_t cp = next_code_point(token, pos);
          mapped = cp < ByteLevelAlphabet::kCodePointLimit && alphabet.code_point_to_byte[cp] >= 0;
          if (mapped) token_bytes.push_back(static_cast<char>(alphabet.code_point_to_byte[cp]));
        }
        bytes += mapped ? token_bytes : token;  // tokens outside the alphabet pass through raw
      }
      tokens = {from_utf8_lossy(bytes)};
    } else if (const auto* replacement = std::get_if<Replacement>(&step)) {
      for (std::string& token : tokens) token = replacement->apply(token);
    } else if (std::holds_alternative<ByteFallback>(step)) {
      // Runs of <0xXX> tokens become their UTF-8 text, or one U+FFFD per byte if ill-formed.
      std::vector<std::string> out;
      std::string pending;
      std::size_t pending_count = 0;
      const auto flush = [&] {
        if (pending_count == 0) return;
        if (is_valid_utf8(pending)) {
          out.push_back(pending);
        } else {
          for (std::size_t i = 0; i < pending_count; ++i) out.emplace_back("\xEF\xBF\xBD");
        }
        pending.clear();
        pending_count = 0;
      };
      for (std::string& token : tokens) {
        const bool is_byte = token.size() == 6 && token.starts_with("<0x") &&
                             token.ends_with('>') &&
                             std::isxdigit(static_cast<unsigned char>(token[3])) &&
                             std::isxdigit(static_cast<unsigned char>(token[4]));
        if (is_byte) {
          pending.push_back(static_cast<char>(std::stoi(token.substr(3, 2), nullptr, 16)));
          ++pending_count;
        } else {
          flush();
          out.push_back(std::move(token));
        }
      }
      flush();
      tokens = std::move(out);
    } else if (std::holds_alternative<Fuse>(step)) {
      std::string fused;
      for (const std::string& token : tokens) fused += token;
      tokens = {fused};
    } else {
      const auto& strip = std::get<Strip>(step);
      for (std::string& token : tokens) {
        std::u32string chars;
        for (std::size_t pos = 0; pos < token.size();) chars.push_back(next_code_point(token, pos));
        std::size_t first = 0;
        while (first < std::min(strip.start, chars.size()) && chars[first] == strip.content)
          ++first;
        std::size_t last = chars.size();
        while (chars.size() - last < strip.stop && last > first && chars[last - 1] == strip.content)
          --last;
        token.clear();
        for (std::size_t i = first; i < last; ++i) append_utf8(token, chars[i]);
      }
    }
  }
  std::string out;
  for (const std::string& token : tokens) out += token;
  return out;
}

// ---- PostProcessor -------------------------------------------------------------------------
// Supported: TemplateProcessing, ByteLevel (changes offsets only), Sequence.

PostProcessor::PostProcessor(const json& config, const std::string& path) {
  if (!config.is_null()) add(config, path);
}

void PostProcessor::add(const json& config, const std::string& path) {
  const std::string type = type_of(config, path, "post_processor");
  if (type == "Sequence") {
    for (const json& child : config.at("processors")) add(child, path);
  } else if (type == "ByteLevel") {
    return;
  } else if (type == "TemplateProcessing") {
    std::vector<int32_t> before, after;
    bool seen_sequence = false;
    const json& special_tokens = config.at("special_tokens");
    for (const json& item : config.at("single")) {
      if (item.contains("SpecialToken")) {
        auto ids = template_ids(item.at("SpecialToken"), special_tokens, path);
        auto& target = seen_sequence ? after : before;
        target.insert(target.end(), ids.begin(), ids.end());
      } else if (item.contains("Sequence") && !seen_sequence &&
                 item.at("Sequence").at("id").get<std::string>() == "A") {
        seen_sequence = true;
      } else {
        fail("{}: TemplateProcessing single template item {} is not supported", path, item.dump());
      }
    }
    if (!seen_sequence) fail("{}: TemplateProcessing single template lacks $A", path);
    // In a Sequence, each processor wraps the output of the previous one.
    prefix_.insert(prefix_.begin(), before.begin(), before.end());
    suffix_.insert(suffix_.end(), after.begin(), after.end());
  } else {
    fail("{}: unsupported post_processor type '{}'", path, type);
  }
}

std::vector<int32_t> PostProcessor::apply(const std::vector<int32_t>& ids) const {
  std::vector<int32_t> out(prefix_);
  out.insert(out.end(), ids.begin(), ids.end());
  out.insert(out.end(), suffix_.begin(), suffix_.end());
  return out;
}

}  // namespace subbit::tokenization
