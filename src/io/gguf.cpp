#include "io/gguf.h"

#include <fcntl.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <span>
#include <string_view>
#include <system_error>
#include <type_traits>

#include "common/error.h"
#include "common/shape.h"
#include "io/atomic_file.h"

namespace subbit {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kWrittenVersion = 3;
// Version 2 differs from 3 only in that 3 may also be big-endian; the little-endian layout is
// the same, so both are read.
constexpr uint32_t kOldestReadableVersion = 2;
constexpr uint64_t kDefaultAlignment = 32;  // the spec's default, and what the writer uses
constexpr std::string_view kAlignmentKey = "general.alignment";
constexpr uint32_t kMaxDims = 4;
// llama.cpp refuses names that do not fit its 64-byte, NUL-terminated name buffer.
constexpr size_t kMaxTensorNameBytes = 63;
// Smallest encodings of one KV pair (key length, value type, a one-byte value) and of one
// tensor info (name length, n_dims, one dimension, type, offset): counts read from the file are
// checked against them before anything is reserved, so a hostile count cannot make us
// allocate, or loop, beyond what the file's size allows.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;

constexpr GgmlType kSupportedTypes[] = {GgmlType::F32, GgmlType::F16, GgmlType::BF16,
                                        GgmlType::I8,  GgmlType::I16, GgmlType::I32};

std::optional<GgmlType> supported_type(uint32_t raw) {
  for (GgmlType t : kSupportedTypes)
    if (static_cast<uint32_t>(t) == raw) return t;
  return std::nullopt;
}

// Names of the ggml types llama.cpp currently defines, so a refused file says what it holds
// ("Q4_K") rather than only a number. Gaps are ids ggml has retired.
std::string_view ggml_id_name(uint32_t raw) {
  static constexpr std::string_view kNames[] = {
      "F32",     "F16",    "Q4_0",    "Q4_1",  "",       "",      "Q5_0",  "Q5_1",
      "Q8_0",    "Q8_1",   "Q2_K",    "Q3_K",  "Q4_K",   "Q5_K",  "Q6_K",  "Q8_K",
      "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
      "I8",      "I16",    "I32",     "I64",   "F64",    "IQ1_M", "BF16",  "",
      "",        "",       "TQ1_0",   "TQ2_0", "",       "",      "",      "MXFP4"};
  if (raw >= std::size(kNames) || kNames[raw].empty()) return "unknown to subbit";
  return kNames[raw];
}

bool is_integer(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8:
    case GgufValueType::INT8:
    case GgufValueType::UINT16:
    case GgufValueType::INT16:
    case GgufValueType::UINT32:
    case GgufValueType::INT32:
    case GgufValueType::UINT64:
    case GgufValueType::INT64:
      return true;
    default:
      return false;
  }
}

bool is_signed_integer(GgufValueType t) {
  return t == GgufValueType::INT8 || t == GgufValueType::INT16 || t == GgufValueType::INT32 ||
         t == GgufValueType::INT64;
}

// Encoded size of one value of a non-array type; for STRING, the size of its length field,
// i.e. the least an element can take.
uint64_t min_encoded_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8:
    case GgufValueType::INT8:
    case GgufValueType::BOOL:
      return 1;
    case GgufValueType::UINT16:
    case GgufValueType::INT16:
      return 2;
    case GgufValueType::UINT32:
    case GgufValueType::INT32:
    case GgufValueType::FLOAT32:
      return 4;
    default:
      return 8;
  }
}

// Bounds-checked little-endian cursor over the mapped file. `context` arguments say what is
// being read, for the truncation message.
class Reader {
 public:
  Reader(std::span<const uint8_t> bytes, const std::string& where) : bytes_(bytes), where_(where) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  uint64_t read_uint(size_t width, std::string_view context) {
    need(width, context);
    uint64_t value = 0;
    for (size_t i = width; i-- > 0;) value = (value << 8) | bytes_[pos_ + i];
    pos_ += width;
    return value;
  }
  uint8_t u8(std::string_view context) { return static_cast<uint8_t>(read_uint(1, context)); }
  uint32_t u32(std::string_view context) { return static_cast<uint32_t>(read_uint(4, context)); }
  uint64_t u64(std::string_view context) { return read_uint(8, context); }

  std::string string(std::string_view context) {
    const uint64_t length = u64(context);
    if (length > remaining())
      fail(
          "{}: {}: string length {} at offset {} runs past the end of the file ({} bytes; "
          "truncated?)",
          where_, context, length, pos_ - 8, bytes_.size());
    std::string text(reinterpret_cast<const char*>(bytes_.data() + pos_), length);
    pos_ += length;
    return text;
  }

 private:
  void need(uint64_t n, std::string_view context) const {
    if (n > remaining())
      fail("{}: truncated: {} needs {} bytes at offset {}, but the file ends at {}", where_,
           context, n, pos_, bytes_.size());
  }

  std::span<const uint8_t> bytes_;
  const std::string& where_;
  uint64_t pos_ = 0;
};

// One integer of type `t`; signed values come back sign-extended in the uint64_t's bits.
uint64_t read_integer_bits(Reader& in, GgufValueType t, std::string_view context) {
  const uint64_t bits = in.read_uint(min_encoded_size(t), context);
  switch (t) {
    case GgufValueType::INT8:
      return static_cast<uint64_t>(static_cast<int64_t>(static_cast<int8_t>(bits)));
    case GgufValueType::INT16:
      return static_cast<uint64_t>(static_cast<int64_t>(static_cast<int16_t>(bits)));
    case GgufValueType::INT32:
      return static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(bits)));
    default:
      return bits;
  }
}

double read_float(Reader& in, GgufValueType t, std::string_view context) {
  if (t == GgufValueType::FLOAT32) return std::bit_cast<float>(in.u32(context));
  return std::bit_cast<double>(in.u64(context));
}

// The spec allows only 0 and 1; anything else means a corrupt file or a misparse.
bool read_bool(Reader& in, const std::string& where, std::string_view context) {
  const uint8_t byte = in.u8(context);
  if (byte > 1) fail("{}: {}: invalid bool byte {} (must be 0 or 1)", where, context, byte);
  return byte == 1;
}

GgufValueType read_value_type(Reader& in, const std::string& where, std::string_view context) {
  const uint32_t raw = in.u32(context);
  if (raw > static_cast<uint32_t>(GgufValueType::FLOAT64))
    fail("{}: {}: unknown value type {} (GGUF defines 0 to 12)", where, context, raw);
  return static_cast<GgufValueType>(raw);
}

GgufValue read_array(Reader& in, const std::string& where, const std::string& context) {
  const GgufValueType element = read_value_type(in, where, context + " (array element type)");
  if (element == GgufValueType::ARRAY)
    fail("{}: {}: nested arrays are not supported", where, context);
  const uint64_t count = in.u64(context + " (array length)");
  if (count > in.remaining() / min_encoded_size(element))
    fail(
        "{}: {}: array length {} cannot fit in the {} bytes left in the file (truncated or "
        "corrupt)",
        where, context, count, in.remaining());

  if (element == GgufValueType::STRING) {
    std::vector<std::string> strings;
    strings.reserve(count);
    for (uint64_t i = 0; i < count; ++i) strings.push_back(in.string(context));
    return strings;
  }
  if (element == GgufValueType::FLOAT32 || element == GgufValueType::FLOAT64) {
    std::vector<double> floats;
    floats.reserve(count);
    for (uint64_t i = 0; i < count; ++i) floats.push_back(read_float(in, element, context));
    return floats;
  }
  // Integers of every width, and bools as 0/1: the variant has no array of bool, and no file
  // subbit cares about uses one.
  std::vector<int64_t> integers;
  integers.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    if (element == GgufValueType::BOOL) {
      integers.push_back(read_bool(in, where, context));
      continue;
    }
    const uint64_t bits = read_integer_bits(in, element, context);
    if (!is_signed_integer(element) && bits > uint64_t(std::numeric_limits<int64_t>::max()))
      fail("{}: {}: array element {} = {} does not fit in int64", where, context, i, bits);
    integers.push_back(static_cast<int64_t>(bits));
  }
  return integers;
}

GgufValue read_value(Reader& in, const std::string& where, GgufValueType type,
                     const std::string& context) {
  if (is_integer(type)) {
    const uint64_t bits = read_integer_bits(in, type, context);
    if (is_signed_integer(type)) return static_cast<int64_t>(bits);
    return bits;
  }
  switch (type) {
    case GgufValueType::FLOAT32:
    case GgufValueType::FLOAT64:
      return read_float(in, type, context);
    case GgufValueType::BOOL:
      return read_bool(in, where, context);
    case GgufValueType::STRING:
      return in.string(context);
    default:
      return read_array(in, where, context);
  }
}

// The data section's alignment: general.alignment when present, else the default.
uint64_t alignment_of(const std::map<std::string, GgufValue>& metadata, const std::string& where) {
  const auto it = metadata.find(std::string(kAlignmentKey));
  if (it == metadata.end()) return kDefaultAlignment;
  if (const auto* u = std::get_if<uint64_t>(&it->second); u && std::has_single_bit(*u)) return *u;
  if (const auto* s = std::get_if<int64_t>(&it->second);
      s && *s > 0 && std::has_single_bit(uint64_t(*s)))
    return uint64_t(*s);
  fail("{}: {} must be a power of two", where, kAlignmentKey);
}

struct TensorInfo {
  std::string name;
  GgmlType type;
  std::vector<int64_t> shape;
  uint64_t offset;  // relative to the data section
};

TensorInfo read_tensor_info(Reader& in, const std::string& where, uint64_t index) {
  TensorInfo info;
  info.name = in.string(fmt::format("name of tensor info {}", index));
  const std::string context = fmt::format("tensor '{}'", info.name);
  const uint32_t n_dims = in.u32(context);
  if (n_dims < 1 || n_dims > kMaxDims)
    fail("{}: {}: {} dimensions (GGUF allows 1 to {})", where, context, n_dims, kMaxDims);
  info.shape.resize(n_dims);
  // ne[0] is the fastest-varying dimension, so it is the last one in PyTorch order.
  for (uint32_t i = 0; i < n_dims; ++i) {
    const uint64_t dim = in.u64(context);
    if (dim > uint64_t(std::numeric_limits<int64_t>::max()))
      fail("{}: {}: dimension ne[{}] = {} is too large", where, context, i, dim);
    info.shape[n_dims - 1 - i] = static_cast<int64_t>(dim);
  }
  const uint32_t raw_type = in.u32(context);
  const std::optional<GgmlType> type = supported_type(raw_type);
  if (!type)
    fail("{}: {}: unsupported ggml type {} ({}); subbit reads F32, F16, BF16, I8, I16 and I32",
         where, context, raw_type, ggml_id_name(raw_type));
  info.type = *type;
  info.offset = in.u64(context);
  return info;
}

// Turns relative offsets into validated ranges of the file: aligned, inside it, sized to match
// the shape, and not overlapping one another. Gaps are allowed, as in the spec.
std::vector<GgufTensor> place_tensors(std::vector<TensorInfo>& infos, std::span<const uint8_t> file,
                                      uint64_t data_start, uint64_t alignment,
                                      const std::string& where) {
  struct Range {
    uint64_t begin, end;
    size_t tensor;  // index into `tensors`
  };
  std::vector<Range> ranges;
  std::vector<GgufTensor> tensors;
  ranges.reserve(infos.size());
  tensors.reserve(infos.size());
  for (TensorInfo& info : infos) {
    const std::optional<uint64_t> nbytes = checked_nbytes(info.shape, ggml_type_size(info.type));
    if (!nbytes)
      fail("{}: tensor '{}': shape {} is too large (byte size overflows)", where, info.name,
           shape_string(info.shape));
    if (info.offset % alignment != 0)
      fail("{}: tensor '{}': data offset {} is not a multiple of the alignment {}", where,
           info.name, info.offset, alignment);
    uint64_t begin = 0, end = 0;
    if (__builtin_add_overflow(data_start, info.offset, &begin) ||
        __builtin_add_overflow(begin, *nbytes, &end) || end > file.size())
      fail(
          "{}: tensor '{}': data (offset {}, {} bytes) runs past the end of the file ({} "
          "bytes; truncated?)",
          where, info.name, info.offset, *nbytes, file.size());
    ranges.push_back({begin, end, tensors.size()});
    tensors.push_back(GgufTensor{std::move(info.name), info.type, std::move(info.shape),
                                 file.data() + begin, static_cast<size_t>(*nbytes)});
  }

  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  const Range* furthest = nullptr;  // of the ranges so far, the one reaching furthest
  for (const Range& r : ranges) {
    if (r.begin == r.end) continue;  // an empty tensor occupies no bytes
    if (furthest != nullptr && r.begin < furthest->end)
      fail("{}: tensor '{}' (file bytes [{}, {})) overlaps tensor '{}' (file bytes [{}, {}))",
           where, tensors[r.tensor].name, r.begin, r.end, tensors[furthest->tensor].name,
           furthest->begin, furthest->end);
    if (furthest == nullptr || r.end > furthest->end) furthest = &r;
  }
  return tensors;
}

std::string_view value_kind(const GgufValue& value) {
  return std::visit(
      [](const auto& v) -> std::string_view {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>)
          return "a bool";
        else if constexpr (std::is_same_v<T, int64_t>)
          return "a signed integer";
        else if constexpr (std::is_same_v<T, uint64_t>)
          return "an unsigned integer";
        else if constexpr (std::is_same_v<T, double>)
          return "a float";
        else if constexpr (std::is_same_v<T, std::string>)
          return "a string";
        else if constexpr (std::is_same_v<T, std::vector<int64_t>>)
          return "an integer array";
        else if constexpr (std::is_same_v<T, std::vector<double>>)
          return "a float array";
        else
          return "a string array";
      },
      value);
}

uint64_t padded(uint64_t size, uint64_t alignment) {
  return (size + alignment - 1) / alignment * alignment;
}

// Little-endian serialisation of the header into memory; tensor data is streamed separately.
class Encoder {
 public:
  void u8(uint8_t v) { bytes_.push_back(v); }
  void u32(uint32_t v) { uint(v, 4); }
  void u64(uint64_t v) { uint(v, 8); }
  void type(GgufValueType t) { u32(static_cast<uint32_t>(t)); }
  void string(std::string_view s) {
    u64(s.size());
    bytes_.insert(bytes_.end(), s.begin(), s.end());
  }
  void pad_to(uint64_t alignment) { bytes_.resize(padded(bytes_.size(), alignment)); }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  void uint(uint64_t v, size_t width) {
    for (size_t i = 0; i < width; ++i) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  std::vector<uint8_t> bytes_;
};

void encode_value(Encoder& out, const GgufValue& value, GgufValueType type) {
  out.type(type);
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) {
          out.u8(v ? 1 : 0);
        } else if constexpr (std::is_same_v<T, int64_t>) {
          out.u64(static_cast<uint64_t>(v));
        } else if constexpr (std::is_same_v<T, uint64_t>) {
          if (type == GgufValueType::UINT32)
            out.u32(static_cast<uint32_t>(v));
          else
            out.u64(v);
        } else if constexpr (std::is_same_v<T, double>) {
          if (type == GgufValueType::FLOAT32)
            out.u32(std::bit_cast<uint32_t>(static_cast<float>(v)));
          else
            out.u64(std::bit_cast<uint64_t>(v));
        } else if constexpr (std::is_same_v<T, std::string>) {
          out.string(v);
        } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
          out.type(GgufValueType::INT64);
          out.u64(v.size());
          for (int64_t x : v) out.u64(static_cast<uint64_t>(x));
        } else if constexpr (std::is_same_v<T, std::vector<double>>) {
          out.type(GgufValueType::FLOAT64);
          out.u64(v.size());
          for (double x : v) out.u64(std::bit_cast<uint64_t>(x));
        } else {
          out.type(GgufValueType::STRING);
          out.u64(v.size());
          for (const std::string& s : v) out.string(s);
        }
      },
      value);
}

GgufValueType natural_type(const GgufValue& value) {
  return std::visit(
      [](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>)
          return GgufValueType::BOOL;
        else if constexpr (std::is_same_v<T, int64_t>)
          return GgufValueType::INT64;
        else if constexpr (std::is_same_v<T, uint64_t>)
          return GgufValueType::UINT64;
        else if constexpr (std::is_same_v<T, double>)
          return GgufValueType::FLOAT64;
        else if constexpr (std::is_same_v<T, std::string>)
          return GgufValueType::STRING;
        else
          return GgufValueType::ARRAY;
      },
      value);
}

}  // namespace

std::string ggml_type_name(GgmlType type) {
  return std::string(ggml_id_name(static_cast<uint32_t>(type)));
}

size_t ggml_type_size(GgmlType type) {
  switch (type) {
    case GgmlType::F32:
    case GgmlType::I32:
      return 4;
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::I16:
      return 2;
    case GgmlType::I8:
      return 1;
  }
  fail("ggml type {} is not supported", static_cast<uint32_t>(type));
}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

GgufFile GgufFile::open(const fs::path& path) {
  GgufFile gguf{MappedFile(path)};
  const std::string where = path.string();
  const std::span<const uint8_t> bytes = gguf.file_.bytes();
  Reader in(bytes, where);

  if (in.u32("magic") != kMagic)
    fail("{}: not a GGUF file (bad magic: it does not start with \"GGUF\")", where);
  const uint32_t version = in.u32("version");
  if (version < kOldestReadableVersion || version > kWrittenVersion) {
    // A big-endian file stores its version byte-swapped.
    if (version == (kWrittenVersion << 24) || version == (kOldestReadableVersion << 24))
      fail("{}: big-endian GGUF files are not supported", where);
    fail("{}: unsupported GGUF version {} (subbit reads versions {} and {})", where, version,
         kOldestReadableVersion, kWrittenVersion);
  }
  const uint64_t tensor_count = in.u64("tensor_count");
  const uint64_t kv_count = in.u64("metadata_kv_count");
  if (tensor_count > in.remaining() / kMinTensorInfoBytes)
    fail("{}: tensor_count {} cannot fit in the {} bytes after the header (truncated or corrupt?)",
         where, tensor_count, in.remaining());
  if (kv_count > (in.remaining() - tensor_count * kMinTensorInfoBytes) / kMinKvBytes)
    fail(
        "{}: metadata_kv_count {} cannot fit in the {} bytes after the header (truncated or "
        "corrupt?)",
        where, kv_count, in.remaining());

  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string key = in.string(fmt::format("key of metadata entry {}", i));
    const std::string context = fmt::format("metadata key '{}'", key);
    const GgufValueType type = read_value_type(in, where, context);
    GgufValue value = read_value(in, where, type, context);
    if (!gguf.metadata_.emplace(std::move(key), std::move(value)).second)
      fail("{}: duplicate {}", where, context);
  }

  std::vector<TensorInfo> infos;
  infos.reserve(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    infos.push_back(read_tensor_info(in, where, i));
    if (!gguf.tensor_index_.emplace(infos.back().name, i).second)
      fail("{}: duplicate tensor name '{}'", where, infos.back().name);
  }

  const uint64_t alignment = alignment_of(gguf.metadata_, where);
  uint64_t data_start = 0;
  if (__builtin_add_overflow(in.pos(), alignment - 1, &data_start))
    fail("{}: {} {} is too large", where, kAlignmentKey, alignment);
  data_start -= data_start % alignment;
  gguf.tensors_ = place_tensors(infos, bytes, data_start, alignment, where);
  return gguf;
}

const GgufTensor* GgufFile::find_tensor(const std::string& name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::tensor(const std::string& name) const {
  const GgufTensor* t = find_tensor(name);
  if (t == nullptr) fail("{}: no tensor named '{}'", path().string(), name);
  return *t;
}

template <typename T>
const T& GgufFile::get_as(const std::string& key, const char* type_name) const {
  const auto it = metadata_.find(key);
  if (it == metadata_.end()) fail("{}: metadata key '{}' is missing", path().string(), key);
  const T* value = std::get_if<T>(&it->second);
  if (value == nullptr)
    fail("{}: metadata key '{}' is {}, not {}", path().string(), key, value_kind(it->second),
         type_name);
  return *value;
}

std::string GgufFile::get_string(const std::string& key) const {
  return get_as<std::string>(key, "a string");
}

int64_t GgufFile::get_int(const std::string& key) const {
  const auto it = metadata_.find(key);
  if (it != metadata_.end()) {
    if (const auto* u = std::get_if<uint64_t>(&it->second)) {
      if (*u > uint64_t(std::numeric_limits<int64_t>::max()))
        fail("{}: metadata key '{}' = {} does not fit in int64", path().string(), key, *u);
      return static_cast<int64_t>(*u);
    }
  }
  return get_as<int64_t>(key, "an integer");
}

double GgufFile::get_float(const std::string& key) const { return get_as<double>(key, "a float"); }

bool GgufFile::get_bool(const std::string& key) const { return get_as<bool>(key, "a bool"); }

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  return get_as<std::vector<std::string>>(key, "a string array");
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  return get_as<std::vector<int64_t>>(key, "an integer array");
}

std::vector<double> GgufFile::get_float_array(const std::string& key) const {
  return get_as<std::vector<double>>(key, "a float array");
}

void GgufWriter::put(const std::string& key, GgufValue value, GgufValueType type) {
  if (key == kAlignmentKey)
    fail("GGUF metadata key '{}' is reserved: the writer sets it ({})", key, kDefaultAlignment);
  const auto it =
      std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.key == key; });
  if (it != entries_.end()) {
    it->value = std::move(value);
    it->type = type;
  } else {
    entries_.push_back({key, std::move(value), type});
  }
}

void GgufWriter::set(const std::string& key, GgufValue value) {
  const GgufValueType type = natural_type(value);
  put(key, std::move(value), type);
}

void GgufWriter::set_u32(const std::string& key, uint32_t value) {
  put(key, uint64_t{value}, GgufValueType::UINT32);
}

void GgufWriter::set_f32(const std::string& key, float value) {
  put(key, double{value}, GgufValueType::FLOAT32);
}

void GgufWriter::add_tensor(std::string name, GgmlType type, std::vector<int64_t> shape,
                            std::vector<uint8_t> bytes) {
  if (name.empty() || name.size() > kMaxTensorNameBytes)
    fail("GGUF tensor '{}': name must be 1 to {} bytes long (llama.cpp's limit), not {}", name,
         kMaxTensorNameBytes, name.size());
  if (std::any_of(tensors_.begin(), tensors_.end(),
                  [&](const PendingTensor& t) { return t.name == name; }))
    fail("GGUF tensor '{}' added twice", name);
  if (!supported_type(static_cast<uint32_t>(type)))
    fail("GGUF tensor '{}': unsupported ggml type {}", name, static_cast<uint32_t>(type));
  if (shape.empty() || shape.size() > kMaxDims)
    fail(
        "GGUF tensor '{}': shape {} has {} dimensions; GGUF allows 1 to {} (store a scalar as "
        "shape [1])",
        name, shape_string(shape), shape.size(), kMaxDims);
  if (std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d < 0; }))
    fail("GGUF tensor '{}': negative dimension in shape {}", name, shape_string(shape));
  const std::optional<uint64_t> expected = checked_nbytes(shape, ggml_type_size(type));
  if (!expected || *expected != bytes.size())
    fail("GGUF tensor '{}': {} bytes given, but shape {} of {} needs {}", name, bytes.size(),
         shape_string(shape), ggml_type_name(type),
         expected ? fmt::to_string(*expected) : "more than 2^64");
  tensors_.push_back({std::move(name), type, std::move(shape), std::move(bytes)});
}

void GgufWriter::write(const fs::path& file) const {
  const std::string where = file.string();
  Encoder header;
  header.u32(kMagic);
  header.u32(kWrittenVersion);
  header.u64(tensors_.size());
  header.u64(entries_.size() + 1);  // + general.alignment
  for (const Entry& e : entries_) {
    header.string(e.key);
    encode_value(header, e.value, e.type);
  }
  header.string(kAlignmentKey);
  encode_value(header, uint64_t{kDefaultAlignment}, GgufValueType::UINT32);

  uint64_t offset = 0;
  for (const PendingTensor& t : tensors_) {
    header.string(t.name);
    header.u32(static_cast<uint32_t>(t.shape.size()));
    for (auto dim = t.shape.rbegin(); dim != t.shape.rend(); ++dim)
      header.u64(static_cast<uint64_t>(*dim));
    header.u32(static_cast<uint32_t>(t.type));
    header.u64(offset);
    offset += padded(t.bytes.size(), kDefaultAlignment);
  }
  header.pad_to(kDefaultAlignment);

  AtomicFile out(file);
  out.write(header.bytes().data(), header.bytes().size());
  // Every tensor, the last one included, is padded like llama.cpp's writer does, so the file
  // size is a multiple of the alignment.
  static constexpr uint8_t kZeros[kDefaultAlignment] = {};
  for (const PendingTensor& t : tensors_) {
    out.write(t.bytes.data(), t.bytes.size());
    out.write(kZeros, padded(t.bytes.size(), kDefaultAlignment) - t.bytes.size());
  }
  out.commit();
}

}  // namespace subbit
