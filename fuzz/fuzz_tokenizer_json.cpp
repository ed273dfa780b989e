// tokenizer.json loading: the model (vocab, merges, byte fallback, unk), added tokens,
// normalizer, pre-tokenizer, decoder and post-processor; then a short encode/decode round with
// whatever was accepted.
#include <string>
#include <vector>

#include "fuzz_support.h"
#include "tokenizer/tokenizer.h"

using namespace subbit;

int subbit::fuzz::run_tokenizer_json(const uint8_t* data, size_t size) {
  fuzz::expect_clean_refusal([&] {
    const Tokenizer tokenizer = Tokenizer::from_json_text(fuzz::as_text(data, size), "fuzz");
    for (const char* text : {"Hello world  12345 <s>\n\t", "\xc3\xa9\xe2\x96\x81 \xff\xfe x", ""}) {
      for (bool special : {false, true}) {
        const std::vector<int32_t> ids = tokenizer.encode(text, special);
        tokenizer.decode(ids);
      }
    }
    const int32_t vocab = tokenizer.vocab_size();
    std::vector<int32_t> ids;
    for (int32_t id : {-1, 0, 1, vocab - 1, vocab, 0x7fffffff}) ids.push_back(id);
    tokenizer.decode(ids);
    for (int32_t id = 0; id < vocab && id < 64; ++id)
      fuzz::expect_clean_refusal([&] { tokenizer.id_to_token(id); });
  });
  return 0;
}

#ifdef SUBBIT_FUZZ_MAIN
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return subbit::fuzz::run_tokenizer_json(data, size);
}
#endif
