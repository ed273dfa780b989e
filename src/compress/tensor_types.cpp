#include "compress/tensor_types.h"

#include <fmt/format.h>

#include <charconv>

#include "common/error.h"

namespace subbit::compress {

TensorType parse_tensor_type(std::string_view spec, std::string_view option,
                             std::string_view main_method,
                             const std::shared_ptr<CompressMethod>& shared_method) {
  TensorType type;
  type.spec = std::string(spec);
  if (spec == "dense") return type;
  const size_t colon = spec.find(':');
  const std::string_view name = spec.substr(0, colon);
  const std::string number =
      colon == std::string_view::npos ? "" : std::string(spec.substr(colon + 1));
  const CompressMethodRow* row = nullptr;
  for (const CompressMethodRow& r : compress_methods())
    if (r.name == name) row = &r;
  if (!row)
    fail("{} \"{}\": unknown type (dense, or one of {}; e.g. littlebit:0.55, rtn:4)", option, spec,
         compress_method_names());
  type.row = row;
  if (row->targets_bpw) {
    if (!number.empty()) {
      const char* end = number.data() + number.size();
      auto [ptr, ec] = std::from_chars(number.data(), end, type.bpw);
      if (ec != std::errc() || ptr != end || !(type.bpw > 0 && type.bpw <= 16))
        fail("{} \"{}\": the bits per weight after the colon must be a number in (0, 16]", option,
             spec);
    }
    type.method =
        name == main_method ? shared_method : std::shared_ptr<CompressMethod>(row->make());
  } else if (row->type_number_option.empty()) {
    if (!number.empty()) fail("{} \"{}\": {} takes no number", option, spec, name);
    type.method =
        name == main_method ? shared_method : std::shared_ptr<CompressMethod>(row->make());
  } else {
    if (number.empty())
      fail("{} \"{}\": {} needs a number ({}:N for {} N)", option, spec, name, name,
           row->type_number_option);
    type.method = row->make();
    CLI::App parser;
    type.method->add_options(parser);
    try {
      // CLI11 parses a reversed argument vector.
      parser.parse(std::vector<std::string>{number, std::string(row->type_number_option)});
    } catch (const CLI::ParseError& e) {
      fail("{} \"{}\": {}", option, spec, e.what());
    }
  }
  type.method->validate();
  return type;
}

}  // namespace subbit::compress
