#pragma once
// GGUF container (the llama.cpp file format, version 3): typed key-value metadata followed by
// tensors, each stored at an aligned offset so it can be used in place from a memory map.
// Only the plain element types below are read or written; quantized ggml block formats are
// refused by name, since subbit stores its own compressed representations as plain tensors.
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "common/dtype.h"
#include "io/mapped_file.h"

namespace subbit {

enum class GgmlType : uint32_t { F32 = 0, F16 = 1, I8 = 24, I16 = 25, I32 = 26, BF16 = 30 };

std::string ggml_type_name(GgmlType type);  // "F32", "BF16", ...
size_t ggml_type_size(GgmlType type);       // bytes per element

// F32, F16 and BF16 are both tensor types and DTypes.
constexpr bool is_float_type(GgmlType type) {
  return type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16;
}
constexpr GgmlType ggml_type_of(DType type) {
  return type == DType::F32 ? GgmlType::F32 : type == DType::F16 ? GgmlType::F16 : GgmlType::BF16;
}
// The DType of a float tensor type (is_float_type).
constexpr DType dtype_of(GgmlType type) {
  return type == GgmlType::F32 ? DType::F32 : type == GgmlType::F16 ? DType::F16 : DType::BF16;
}

// Metadata value types as stored in the file.
enum class GgufValueType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};

// A metadata value. The reader widens integers of every width to int64_t (signed types) or
// uint64_t (unsigned types), floats to double; integer and bool arrays become
// std::vector<int64_t>, float arrays std::vector<double>. Nested arrays are not supported.
using GgufValue = std::variant<bool, int64_t, uint64_t, double, std::string, std::vector<int64_t>,
                               std::vector<double>, std::vector<std::string>>;

struct GgufTensor {
  std::string name;
  GgmlType type;
  std::vector<int64_t> shape;  // outermost first (PyTorch order): the file's ne[] reversed
  const uint8_t* data;         // inside the memory map; valid while the GgufFile lives
  size_t nbytes;

  int64_t numel() const;
};

// Memory-mapped reader. The whole header is validated when the file is opened; tensor data is
// never read by open().
class GgufFile {
 public:
  static GgufFile open(const std::filesystem::path& file);

  const std::filesystem::path& path() const { return file_.path(); }

  const GgufTensor* find_tensor(const std::string& name) const;        // nullptr when absent
  const GgufTensor& tensor(const std::string& name) const;             // throws Error naming it
  const std::vector<GgufTensor>& tensors() const { return tensors_; }  // file order

  // Typed access; each throws Error naming the file and key when the key is missing or holds
  // another type. get_int accepts signed and unsigned integers that fit in int64_t.
  bool has(const std::string& key) const { return metadata_.contains(key); }
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  std::vector<double> get_float_array(const std::string& key) const;
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }

 private:
  explicit GgufFile(MappedFile file) : file_(std::move(file)) {}
  template <typename T>
  const T& get_as(const std::string& key, const char* type_name) const;

  MappedFile file_;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> tensor_index_;  // name -> position in tensors_
};

// Collects metadata and tensors, then writes them as one GGUF v3 file with 32-byte alignment.
// The layout matches llama.cpp's own writer (tensors in the order added, each padded to the
// alignment), so the files load there too.
class GgufWriter {
 public:
  // Stored as BOOL, INT64, UINT64, FLOAT64, STRING, or an ARRAY of INT64, FLOAT64 or STRING.
  // Setting a key again replaces its value. "general.alignment" is reserved for the writer.
  void set(const std::string& key, GgufValue value);
  // For keys llama.cpp requires as 32-bit (general.file_type, <arch>.block_count,
  // <arch>.rope.freq_base, ...): it rejects the 64-bit types for them.
  void set_u32(const std::string& key, uint32_t value);
  void set_f32(const std::string& key, float value);

  // `shape` is outermost first. Throws Error when the name is empty, too long for llama.cpp
  // (63 bytes) or already added, when the shape has not 1 to 4 non-negative dimensions, or
  // when bytes.size() is not numel * ggml_type_size(type).
  void add_tensor(std::string name, GgmlType type, std::vector<int64_t> shape,
                  std::vector<uint8_t> bytes);

  // Atomic: a temporary file in the same folder is fsync'ed and renamed over `file`, and
  // removed again on failure, so an interrupted write never leaves a partial output.
  void write(const std::filesystem::path& file) const;

 private:
  struct Entry {
    std::string key;
    GgufValue value;
    GgufValueType type;  // scalar type in the file; ARRAY for the vector alternatives
  };
  struct PendingTensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  void put(const std::string& key, GgufValue value, GgufValueType type);

  std::vector<Entry> entries_;  // in the order first set
  std::vector<PendingTensor> tensors_;
};

}  // namespace subbit
