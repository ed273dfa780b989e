#include "formats/format_table.h"

#include <fmt/format.h>

#include "common/error.h"
#include "formats/littlebit.h"
#include "formats/rtn.h"
#include "formats/sign.h"
#include "formats/sketch.h"

namespace subbit {

namespace {

constexpr LinearFormat kFormats[] = {
    {"dense", DenseLinear::load},
    // littlebit_rank_for_bpw never goes below one rank step, which small layers cannot afford.
    {"littlebit", LittleBitLinear::load, "minimum rank", 1.001},
    {"sign", SignLinear::load},
    {"rtn", RtnLinear::load},
    // sketch_params_for_bpw keeps one bucket per hash row even where seeds, scales and the
    // header alone exceed the target.
    {"sketch", SketchLinear::load, "fixed costs", 1.01},
};

}  // namespace

std::span<const LinearFormat> linear_formats() { return kFormats; }

const LinearFormat* find_linear_format(std::string_view name) {
  for (const LinearFormat& f : kFormats)
    if (f.name == name) return &f;
  return nullptr;
}

const LinearFormat& find_linear_format(std::string_view name, const GgufFile& file) {
  if (const LinearFormat* f = find_linear_format(name)) return *f;
  fail("{}: unknown weight format \"{}\" (this subbit knows: {})", file.path().string(), name,
       linear_format_names());
}

std::string linear_format_names() {
  std::vector<std::string_view> names;
  for (const LinearFormat& f : kFormats) names.push_back(f.name);
  return fmt::format("{}", fmt::join(names, ", "));
}

std::string format_key(const std::string& prefix) { return "subbit.layer." + prefix + ".format"; }

void save_linear(GgufWriter& out, const Linear& linear, const std::string& prefix) {
  linear.save(out, prefix);
  out.set(format_key(prefix), linear.format_name());
}

std::unique_ptr<Linear> load_linear(const GgufFile& file, const std::string& format,
                                    const std::string& prefix, int64_t n_out, int64_t n_in) {
  return find_linear_format(format, file).load(file, prefix, n_out, n_in);
}

}  // namespace subbit
