#include "formats/format_table.h"

#include "common/error.h"
#include "formats/littlebit.h"
#include "formats/rtn.h"
#include "formats/sign.h"
#include "formats/sketch.h"
#include "formats/tensor_io.h"

namespace subbit {

namespace {

std::unique_ptr<Linear> load_dense(const GgufFile& file, const std::string& prefix, int64_t n_out,
                                   int64_t n_in) {
  const GgufTensor& t = file.tensor(prefix + ".weight");
  if ((t.type != GgmlType::F32 && t.type != GgmlType::BF16 && t.type != GgmlType::F16) ||
      t.shape != std::vector<int64_t>{n_out, n_in})
    fail("{}: tensor {}.weight must be F32/F16/BF16 [{}, {}]", file.path().string(), prefix, n_out, n_in);
  const DType dtype = t.type == GgmlType::F32 ? DType::F32 : t.type == GgmlType::F16 ? DType::F16 : DType::BF16;
  return DenseLinear::from_stored(dtype, t.data, n_out, n_in);
}

constexpr LinearFormat kFormats[] = {
    {"dense", load_dense},
    {"littlebit", LittleBitLinear::load},
    {"sign", SignLinear::load},
    {"rtn", RtnLinear::load},
    {"sketch", SketchLinear::load},
};

}  // namespace

std::span<const LinearFormat> linear_formats() { return kFormats; }

const LinearFormat& find_linear_format(std::string_view name, const GgufFile& file) {
  for (const LinearFormat& f : kFormats)
    if (f.name == name) return f;
  fail("{}: unknown weight format \"{}\" (this subbit knows: dense, littlebit, sign, rtn, sketch)",
       file.path().string(), name);
}

}  // namespace subbit
