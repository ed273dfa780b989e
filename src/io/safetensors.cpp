#include "io/safetensors.h"

#include <fcntl.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <system_error>

#include "common/error.h"
#include "common/shape.h"
#include "io/atomic_file.h"

namespace subbit {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// Same limit as the reference implementation (huggingface/safetensors): a larger header is
// far more likely to be a corrupt length field than a real model.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr size_t kLengthFieldBytes = 8;

std::optional<DType> parse_dtype(std::string_view name) {
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    if (dtype_name(t) == name) return t;
  return std::nullopt;
}

// Bytes needed by a tensor of this shape (dimensions already known to be non-negative), or
// nullopt when the product overflows 64 bits: a hostile header must not wrap around to a
// small, plausible size.

// nlohmann parses every non-negative integer literal as number_unsigned, negative ones as
// number_integer and anything with a fraction or exponent as number_float.
std::optional<int64_t> as_non_negative_int64(const json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;
  uint64_t v = value.get<uint64_t>();
  if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return static_cast<int64_t>(v);
}

struct EntryInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin;
  uint64_t end;
};

EntryInfo validate_entry(const std::string& file, const std::string& name, const json& entry,
                         uint64_t data_size) {
  if (!entry.is_object()) fail("{}: tensor '{}': entry is not a JSON object", file, name);
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(key)) fail("{}: tensor '{}': missing \"{}\"", file, name, key);

  const json& dtype_json = entry["dtype"];
  if (!dtype_json.is_string()) fail("{}: tensor '{}': dtype is not a string", file, name);
  const auto dtype_text = dtype_json.get<std::string>();
  const std::optional<DType> dtype = parse_dtype(dtype_text);
  if (!dtype)
    fail("{}: tensor '{}': unsupported dtype {} (supported: F32, F16, BF16)", file, name,
         dtype_text);

  const json& shape_json = entry["shape"];
  if (!shape_json.is_array())
    fail("{}: tensor '{}': shape must be an array of non-negative integers", file, name);
  std::vector<int64_t> shape;
  for (const json& dim : shape_json) {
    const std::optional<int64_t> value = as_non_negative_int64(dim);
    if (!value)
      fail("{}: tensor '{}': shape must be an array of non-negative integers, got {}", file, name,
           shape_json.dump());
    shape.push_back(*value);
  }

  const json& offsets = entry["data_offsets"];
  std::optional<int64_t> begin, end;
  if (offsets.is_array() && offsets.size() == 2) {
    begin = as_non_negative_int64(offsets[0]);
    end = as_non_negative_int64(offsets[1]);
  }
  if (!begin || !end || *begin > *end)
    fail("{}: tensor '{}': data_offsets must be [begin, end] with 0 <= begin <= end, got {}", file,
         name, offsets.dump());
  if (static_cast<uint64_t>(*end) > data_size)
    fail(
        "{}: tensor '{}': data_offsets [{}, {}] out of range: the data section has only {} "
        "bytes (file truncated?)",
        file, name, *begin, *end, data_size);

  const std::optional<uint64_t> expected = checked_nbytes(shape, dtype_size(*dtype));
  if (!expected)
    fail("{}: tensor '{}': shape {} is too large (byte size overflows)", file, name,
         shape_string(shape));
  const uint64_t actual = static_cast<uint64_t>(*end - *begin);
  if (actual != *expected)
    fail("{}: tensor '{}': byte length {} does not match shape {} of {} ({} bytes)", file, name,
         actual, shape_string(shape), dtype_text, *expected);
  return {name, *dtype, std::move(shape), static_cast<uint64_t>(*begin),
          static_cast<uint64_t>(*end)};
}

// The reference implementation requires the tensors, sorted by offset, to tile the data
// section exactly: no overlap, no gap between tensors and no trailing bytes. Matching it means
// every file accepted here also loads in PyTorch/transformers, and unaccounted bytes (often a
// sign of a botched write or concatenation) are reported instead of silently ignored.
void check_exact_cover(const std::string& file, std::vector<EntryInfo>& entries,
                       uint64_t data_size) {
  std::sort(entries.begin(), entries.end(), [](const EntryInfo& a, const EntryInfo& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  uint64_t covered_to = 0;
  const EntryInfo* previous = nullptr;
  for (const EntryInfo& e : entries) {
    if (e.begin < covered_to)
      fail("{}: tensor '{}' (bytes [{}, {})) overlaps tensor '{}' (bytes [{}, {}))", file, e.name,
           e.begin, e.end, previous->name, previous->begin, previous->end);
    if (e.begin > covered_to)
      fail("{}: gap in the data section: bytes [{}, {}) belong to no tensor (before tensor '{}')",
           file, covered_to, e.begin, e.name);
    covered_to = e.end;
    previous = &e;
  }
  if (covered_to != data_size)
    fail("{}: trailing bytes in the data section: bytes [{}, {}) belong to no tensor", file,
         covered_to, data_size);
}

std::map<std::string, std::string> parse_metadata(const std::string& file, const json& value) {
  if (!value.is_object()) fail("{}: __metadata__ must be an object of strings", file);
  std::map<std::string, std::string> metadata;
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string())
      fail("{}: __metadata__ must be an object of strings, but '{}' is {}", file, key, item.dump());
    metadata.emplace(key, item.get<std::string>());
  }
  return metadata;
}

// Shard names come from a file we do not trust; they must not reach outside the model folder.
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find_first_of(std::string_view("/\\\0", 3)) == std::string::npos;
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

std::map<std::string, TensorView> SafetensorsArchive::load_file(const fs::path& file) {
  auto mapped = std::make_unique<MappedFile>(file);
  const std::string where = file.string();
  const std::span<const uint8_t> bytes = mapped->bytes();

  if (bytes.size() < kLengthFieldBytes)
    fail("{}: file too short to be safetensors ({} bytes, need at least {})", where, bytes.size(),
         kLengthFieldBytes);
  uint64_t header_size = 0;
  for (size_t i = kLengthFieldBytes; i-- > 0;) header_size = (header_size << 8) | bytes[i];
  if (header_size > kMaxHeaderBytes)
    fail("{}: header too large: {} bytes (limit {})", where, header_size, kMaxHeaderBytes);
  if (header_size > bytes.size() - kLengthFieldBytes)
    fail("{}: header length {} runs past the end of the file ({} bytes; truncated?)", where,
         header_size, bytes.size());

  const uint8_t* header_begin = bytes.data() + kLengthFieldBytes;
  // nlohmann stops at a NUL byte as if the input ended, so NUL padding or anything hidden after
  // one would slip through; the reference (serde_json) rejects it, and so do we.
  if (std::memchr(header_begin, '\0', header_size) != nullptr)
    fail("{}: header is not valid JSON: it contains a NUL byte", where);
  json header;
  try {
    header = json::parse(header_begin, header_begin + header_size);
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON: {}", where, e.what());
  }
  if (!header.is_object()) fail("{}: header is not a JSON object", where);

  const uint8_t* data = header_begin + header_size;
  const uint64_t data_size = bytes.size() - kLengthFieldBytes - header_size;
  std::map<std::string, std::string> file_metadata;
  std::vector<EntryInfo> entries;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__")
      file_metadata = parse_metadata(where, entry);
    else
      entries.push_back(validate_entry(where, name, entry, data_size));
  }
  check_exact_cover(where, entries, data_size);

  std::map<std::string, TensorView> views;
  for (EntryInfo& e : entries)
    views.emplace(e.name, TensorView{e.name, e.dtype, std::move(e.shape), data + e.begin,
                                     static_cast<size_t>(e.end - e.begin)});
  // Shards of one checkpoint normally repeat the same metadata; the first file's value wins.
  metadata_.insert(file_metadata.begin(), file_metadata.end());
  files_.push_back(std::move(mapped));
  return views;
}

SafetensorsArchive SafetensorsArchive::open_file(const fs::path& file) {
  SafetensorsArchive archive;
  archive.source_ = file;
  archive.tensors_ = archive.load_file(file);
  return archive;
}

SafetensorsArchive SafetensorsArchive::open_model_dir(const fs::path& dir) {
  const fs::path index_path = dir / "model.safetensors.index.json";
  if (!fs::exists(index_path)) {
    if (!fs::exists(dir / "model.safetensors"))
      fail("no model.safetensors or model.safetensors.index.json in {}", dir.string());
    return open_file(dir / "model.safetensors");
  }

  const std::string index_where = index_path.string();
  std::ifstream index_stream(index_path);
  if (!index_stream) fail("{}: cannot open", index_where);
  json index;
  try {
    index = json::parse(index_stream);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", index_where, e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail("{}: missing \"weight_map\" object", index_where);

  std::map<std::string, std::vector<std::string>> tensors_by_shard;
  for (const auto& [tensor, shard] : index["weight_map"].items()) {
    if (!shard.is_string())
      fail("{}: weight_map entry for tensor '{}' is not a file name", index_where, tensor);
    const auto shard_name = shard.get<std::string>();
    if (!is_plain_file_name(shard_name))
      fail(
          "{}: shard '{}' (for tensor '{}') must be a plain file name inside {}, without path "
          "separators or '..'",
          index_where, shard_name, tensor, dir.string());
    tensors_by_shard[shard_name].push_back(tensor);
  }
  if (tensors_by_shard.empty()) fail("{}: weight_map lists no tensors", index_where);

  SafetensorsArchive archive;
  archive.source_ = dir;
  std::map<std::string, std::string> shard_of;  // tensor name -> shard, to report duplicates
  for (const auto& [shard_name, expected] : tensors_by_shard) {
    const fs::path shard_path = dir / shard_name;
    // A name the file system refuses (too long, ...) is a bad index, not an exception to escape.
    std::error_code error;
    if (!fs::exists(shard_path, error))
      fail("{}: shard {} named in weight_map {}", index_where, shard_path.string(),
           error ? "cannot be looked up: " + error.message() : std::string("does not exist"));
    std::map<std::string, TensorView> views = archive.load_file(shard_path);
    for (const std::string& name : expected)
      if (!views.contains(name))
        fail("{}: tensor '{}' is not in {}, although weight_map says it is", index_where, name,
             shard_path.string());
    for (auto& [name, view] : views) {
      const auto [existing, inserted] = shard_of.emplace(name, shard_name);
      if (!inserted)
        fail("{}: tensor '{}' appears in two shards: {} and {}", dir.string(), name,
             existing->second, shard_name);
      archive.tensors_.emplace(name, std::move(view));
    }
  }
  return archive;
}

const TensorView* SafetensorsArchive::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const TensorView& SafetensorsArchive::get(const std::string& name) const {
  const TensorView* view = find(name);
  if (view == nullptr) fail("{}: no tensor named '{}'", source_.string(), name);
  return *view;
}

void write_safetensors(const fs::path& file, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  for (const TensorToWrite& t : tensors) {
    // Checked before the output is created; the streamed writer checks again as it writes.
    const bool valid_shape =
        std::none_of(t.shape.begin(), t.shape.end(), [](int64_t d) { return d < 0; });
    const std::optional<uint64_t> expected =
        valid_shape ? checked_nbytes(t.shape, dtype_size(t.dtype)) : std::nullopt;
    if (valid_shape && (!expected || *expected != t.bytes.size()))
      fail("{}: tensor '{}': {} bytes given, but shape {} of {} needs {}", file.string(), t.name,
           t.bytes.size(), shape_string(t.shape), dtype_name(t.dtype),
           expected ? fmt::to_string(*expected) : "more than 2^64");
    specs.push_back({t.name, t.dtype, t.shape});
  }
  write_safetensors_streamed(
      file, specs,
      [&](size_t index, const ByteSink& write) {
        write(tensors[index].bytes.data(), tensors[index].bytes.size());
      },
      metadata);
}

void write_safetensors_streamed(
    const fs::path& file, const std::vector<TensorSpec>& tensors,
    const std::function<void(size_t index, const ByteSink& write)>& produce,
    const std::map<std::string, std::string>& metadata) {
  const std::string where = file.string();
  // ordered_json keeps the header entries in data order, like the reference writer.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  for (const TensorSpec& t : tensors) {
    if (t.name == "__metadata__") fail("{}: '__metadata__' is not a valid tensor name", where);
    if (header.contains(t.name)) fail("{}: tensor '{}' given twice", where, t.name);
    if (std::any_of(t.shape.begin(), t.shape.end(), [](int64_t d) { return d < 0; }))
      fail("{}: tensor '{}': negative dimension in shape {}", where, t.name, shape_string(t.shape));
    const std::optional<uint64_t> size = checked_nbytes(t.shape, dtype_size(t.dtype));
    if (!size)
      fail("{}: tensor '{}': shape {} needs more than 2^64 bytes", where, t.name,
           shape_string(t.shape));
    nlohmann::ordered_json& entry = header[t.name];
    entry["dtype"] = std::string(dtype_name(t.dtype));
    entry["shape"] = t.shape;
    entry["data_offsets"] = {offset, offset + *size};
    offset += *size;
    sizes.push_back(*size);
  }

  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::ordered_json::type_error& e) {
    fail("{}: tensor names and metadata must be valid UTF-8: {}", where, e.what());
  }
  // Padding with spaces (valid JSON whitespace) keeps the data section 8-byte aligned.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  uint8_t length_field[kLengthFieldBytes];
  for (size_t i = 0; i < kLengthFieldBytes; ++i)
    length_field[i] = static_cast<uint8_t>(static_cast<uint64_t>(header_text.size()) >> (8 * i));

  AtomicFile out(file);
  out.write(length_field, sizeof length_field);
  out.write(header_text.data(), header_text.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    uint64_t written = 0;
    produce(i, [&](const void* data, size_t size) {
      if (written + size > sizes[i])
        fail("{}: tensor '{}': more than its {} bytes given", where, tensors[i].name, sizes[i]);
      out.write(data, size);
      written += size;
    });
    if (written != sizes[i])
      fail("{}: tensor '{}': {} bytes given, but shape {} of {} needs {}", where, tensors[i].name,
           written, shape_string(tensors[i].shape), dtype_name(tensors[i].dtype), sizes[i]);
  }
  out.commit();
}

}  // namespace subbit
