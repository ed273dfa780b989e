// Encoding and decoding arbitrary bytes (valid and invalid UTF-8) with one real tokenizer: the
// fuzz_encode_byte_level target uses sb-8m's byte-level BPE, fuzz_encode_sentencepiece the
// SentencePiece-style BPE of stories260K (SUBBIT_FUZZ_TOKENIZER). The input is the text to
// encode, and also read as a list of ids to decode.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_support.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

using namespace subbit;

int subbit::fuzz::run_encode(const Tokenizer& tokenizer, bool byte_level, const uint8_t* data,
                             size_t size) {
  const std::string_view text = fuzz::as_text(data, size);
  const int32_t vocab = tokenizer.vocab_size();
  for (bool special : {false, true}) {
    const std::vector<int32_t> ids = tokenizer.encode(text, special);
    for (int32_t id : ids) fuzz::check(id >= 0 && id < vocab, "encoded ids are in the vocabulary");
    const std::string decoded = tokenizer.decode(ids);
    // Byte-level BPE maps every byte to a token, so plain text comes back exactly (the
    // SentencePiece-style decoder normalises spaces, like tokenizers does).
    if (byte_level && !special && tokenization::is_valid_utf8(text))
      fuzz::check(decoded == text, "byte-level decode(encode(text)) == text");
  }
  std::vector<int32_t> ids(size / 4);
  if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * 4);
  tokenizer.decode(ids);
  return 0;
}

#ifdef SUBBIT_FUZZ_MAIN
namespace {
std::unique_ptr<Tokenizer> tokenizer;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_file(SUBBIT_FUZZ_TOKENIZER));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return subbit::fuzz::run_encode(*tokenizer, SUBBIT_FUZZ_BYTE_LEVEL, data, size);
}
#endif
