#pragma once
// Every weight format is one row of this table: its name in the file, the function that loads a
// layer from `prefix.*` tensors, and why its layers may overshoot a bits-per-weight target.
// Encoding lives with each format (Linear::save and the format's encoder); how `subbit compress`
// builds a format is the row of the same name in compress/methods.cpp. Adding a format never
// touches model code (docs/formats.md).
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "formats/linear.h"
#include "io/gguf.h"

namespace subbit {

using LoadLinearFn = std::unique_ptr<Linear> (*)(const GgufFile& file, const std::string& prefix,
                                                 int64_t n_out, int64_t n_in);

struct LinearFormat {
  std::string_view name;  // Linear::format_name(), and `subbit.layer.<prefix>.format` in files
  LoadLinearFn load;
  // Why a layer can store more bits per weight than the compression target asked for (e.g. "minimum
  // rank"); `subbit compress` and `subbit info` mark layers above target · over_target_slack with
  // it. Empty for formats that are not sized by a target.
  std::string_view over_target_reason = {};
  double over_target_slack = 1.0;
};

std::span<const LinearFormat> linear_formats();
// nullptr when no row has this name.
const LinearFormat* find_linear_format(std::string_view name);
// Throws Error naming the file and every known format when no row has this name.
const LinearFormat& find_linear_format(std::string_view name, const GgufFile& file);
// "dense, littlebit, ...": the names of every row, for error messages.
std::string linear_format_names();

// A layer as files hold it (model files and compression checkpoints alike): its tensors under
// `prefix`, and its format's name under format_key(prefix).
std::string format_key(const std::string& prefix);  // "subbit.layer.<prefix>.format"
void save_linear(GgufWriter& out, const Linear& linear, const std::string& prefix);
// The layer under `prefix`, read by the row named `format` (unknown names: an Error naming the
// file).
std::unique_ptr<Linear> load_linear(const GgufFile& file, const std::string& format,
                                    const std::string& prefix, int64_t n_out, int64_t n_in);

}  // namespace subbit
