// A sharded checkpoint: model.safetensors.index.json and up to three shards, given as one input
// split at fuzz::kPartSeparator (index, a.safetensors, b.safetensors, c.safetensors).
#include <vector>

#include "fuzz_support.h"
#include "io/safetensors.h"

using namespace subbit;

int subbit::fuzz::run_safetensors_index(const uint8_t* data, size_t size) {
  static const char* const kShardNames[] = {"a.safetensors", "b.safetensors", "c.safetensors"};
  fuzz::clear_scratch();
  const std::vector<std::string_view> parts = fuzz::split_parts(fuzz::as_text(data, size), 4);
  fuzz::write_scratch("model.safetensors.index.json", parts[0]);
  for (size_t i = 1; i < parts.size(); ++i) fuzz::write_scratch(kShardNames[i - 1], parts[i]);
  fuzz::expect_clean_refusal([&] {
    const SafetensorsArchive archive = SafetensorsArchive::open_model_dir(fuzz::scratch_dir());
    for (const auto& [name, view] : archive.tensors()) {
      fuzz::check(view.nbytes == static_cast<size_t>(view.numel()) * dtype_size(view.dtype),
                  "tensor byte size matches its shape");
      std::vector<uint8_t> copy(view.data, view.data + view.nbytes);
    }
  });
  return 0;
}

#ifdef SUBBIT_FUZZ_MAIN
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return subbit::fuzz::run_safetensors_index(data, size);
}
#endif
