#pragma once
// Every weight format is one row of this table: its name in the file and the function that
// loads a layer from `prefix.*` tensors. Encoding lives with each format (Linear::save and the
// format's encoder); adding a format never touches model code.
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
  std::string_view name;
  LoadLinearFn load;
};

std::span<const LinearFormat> linear_formats();
// Throws Error naming the file when the format is unknown.
const LinearFormat& find_linear_format(std::string_view name, const GgufFile& file);

}  // namespace subbit
