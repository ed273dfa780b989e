// One .safetensors file: the length field, the JSON header, dtypes, shapes, offsets and the
// exact-cover rule. Every accepted tensor must lie inside the file and match its shape.
#include <cstring>
#include <vector>

#include "fuzz_support.h"
#include "io/safetensors.h"

using namespace subbit;

int subbit::fuzz::run_safetensors(const uint8_t* data, size_t size) {
  const auto path = fuzz::write_scratch("model.safetensors", fuzz::as_text(data, size));
  fuzz::expect_clean_refusal([&] {
    const SafetensorsArchive archive = SafetensorsArchive::open_file(path);
    size_t total = 0;
    for (const auto& [name, view] : archive.tensors()) {
      fuzz::check(view.nbytes == static_cast<size_t>(view.numel()) * dtype_size(view.dtype),
                  "tensor byte size matches its shape");
      total += view.nbytes;
      fuzz::check(total <= size, "tensors fit in the file");
      // Touch the bytes: a view reaching past the map would fault here.
      std::vector<uint8_t> copy(view.data, view.data + view.nbytes);
    }
  });
  return 0;
}

#ifdef SUBBIT_FUZZ_MAIN
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return subbit::fuzz::run_safetensors(data, size);
}
#endif
