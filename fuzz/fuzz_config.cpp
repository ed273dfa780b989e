// config.json as load_llama_config reads it: JSON syntax, types and the Llama-only checks.
#include "fuzz_support.h"
#include "model/config.h"
#include "model/tensors.h"

using namespace subbit;

int subbit::fuzz::run_config(const uint8_t* data, size_t size) {
  const auto path = fuzz::write_scratch("config.json", fuzz::as_text(data, size));
  fuzz::expect_clean_refusal([&] {
    const LlamaConfig c = load_llama_config(path);
    fuzz::check(c.hidden_size > 0 && c.num_layers > 0 && c.num_heads > 0 && c.num_kv_heads > 0 &&
                    c.head_dim > 0 && c.intermediate_size > 0 && c.vocab_size > 0,
                "accepted sizes are positive");
    fuzz::check(c.num_heads % c.num_kv_heads == 0, "heads are a multiple of kv heads");
    for (int i = 0; i < kLinearsPerBlock; ++i) linear_shape(c, i);
  });
  return 0;
}

#ifdef SUBBIT_FUZZ_MAIN
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return subbit::fuzz::run_config(data, size);
}
#endif
