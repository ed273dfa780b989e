#pragma once
// What `--embed-type` and `--head-type` name (in the spirit of llama.cpp's
// --token-embedding-type / --output-tensor-type): a row of compress/methods.cpp and, after a
// colon, its number: the target bits per weight of a method sized by --bpw (`littlebit:0.55`;
// without a number the tensor gets the linear layers' target), the value of the row's
// type_number_option otherwise (`rtn:3` is rtn with --bits 3), nothing for `sign`. `dense`
// keeps the tensor as stored.
#include <memory>
#include <string>
#include <string_view>

#include "compress/methods.h"

namespace subbit::compress {

struct TensorType {
  std::string spec;                        // as given, for messages and the file's details
  const CompressMethodRow* row = nullptr;  // nullptr: dense, as stored
  double bpw = 0;                          // for rows sized by --bpw; 0: the linear layers' target
  // The method with the type's options: `shared_method` when the type names --method without a
  // number option (so --method's own options apply), else a fresh one from the row.
  std::shared_ptr<CompressMethod> method;
  bool dense() const { return row == nullptr; }
};

// Throws Error naming `option` and the known types when `spec` is not one.
TensorType parse_tensor_type(std::string_view spec, std::string_view option,
                             std::string_view main_method,
                             const std::shared_ptr<CompressMethod>& shared_method);

}  // namespace subbit::compress
