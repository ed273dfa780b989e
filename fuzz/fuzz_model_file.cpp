// A whole subbit model file as `subbit run` opens it: the GGUF container, subbit.config, the
// embedded tokenizer, and every layer through its weight format's loader (dense, littlebit,
// sketch, sign, rtn). An accepted model then runs one token, so a loader that accepts
// inconsistent tensors shows up as a sanitizer report in the forward pass.
#include <vector>

#include "fuzz_support.h"
#include "model/llama.h"
#include "model/model_file.h"

using namespace subbit;

int subbit::fuzz::run_model_file(const uint8_t* data, size_t size) {
  const auto path = fuzz::write_scratch("model.gguf", fuzz::as_text(data, size));
  fuzz::expect_clean_refusal([&] {
    const ModelBundle bundle = load_model_file(path);
    const LlamaConfig& config = bundle.model->config();
    RunState state(config, 1);
    std::vector<float> logits(config.vocab_size);
    const int32_t token = 0;
    bundle.model->forward({&token, 1}, 0, state, logits.data(), false);
    bundle.tokenizer->decode(bundle.tokenizer->encode("a b", true));
  });
  return 0;
}

#ifdef SUBBIT_FUZZ_MAIN
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return subbit::fuzz::run_model_file(data, size);
}
#endif
