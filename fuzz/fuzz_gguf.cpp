// The GGUF container: header, typed metadata (every value type, arrays), tensor infos, alignment
// and tensor placement; then every typed getter on every key, as the model loader uses them.
#include <vector>

#include "fuzz_support.h"
#include "io/gguf.h"

using namespace subbit;

int subbit::fuzz::run_gguf(const uint8_t* data, size_t size) {
  const auto path = fuzz::write_scratch("model.gguf", fuzz::as_text(data, size));
  fuzz::expect_clean_refusal([&] {
    const GgufFile file = GgufFile::open(path);
    for (const auto& entry : file.metadata()) {
      const std::string& key = entry.first;  // clang 14 cannot capture structured bindings
      // Each getter either returns the value or refuses the type with an Error.
      fuzz::expect_clean_refusal([&] { file.get_string(key); });
      fuzz::expect_clean_refusal([&] { file.get_int(key); });
      fuzz::expect_clean_refusal([&] { file.get_float(key); });
      fuzz::expect_clean_refusal([&] { file.get_bool(key); });
      fuzz::expect_clean_refusal([&] { file.get_string_array(key); });
      fuzz::expect_clean_refusal([&] { file.get_int_array(key); });
      fuzz::expect_clean_refusal([&] { file.get_float_array(key); });
    }
    size_t total = 0;
    for (const GgufTensor& t : file.tensors()) {
      fuzz::check(t.nbytes == static_cast<size_t>(t.numel()) * ggml_type_size(t.type),
                  "tensor byte size matches its shape");
      total += t.nbytes;
      fuzz::check(total <= size, "tensors fit in the file");
      fuzz::check(&file.tensor(t.name) == &t, "the name finds this tensor");
      std::vector<uint8_t> copy(t.data, t.data + t.nbytes);
    }
  });
  return 0;
}

#ifdef SUBBIT_FUZZ_MAIN
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return subbit::fuzz::run_gguf(data, size);
}
#endif
