#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/error.h"
#include "io/gguf.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::error_of;
using testing::expect_contains;
using testing::read_all;
using testing::to_bytes;

namespace fs = std::filesystem;
using testing::temp_dir;
using Bytes = std::vector<uint8_t>;

// Layout of the fixed GGUF header: magic, version, tensor_count, metadata_kv_count.
constexpr size_t kVersionAt = 4;
constexpr size_t kTensorCountAt = 8;
constexpr size_t kKvCountAt = 16;
constexpr size_t kFirstKvAt = 24;

Bytes counting_bytes(size_t n, uint8_t start = 1) {
  Bytes bytes(n);
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<uint8_t>(start + i * 7);
  return bytes;
}

void write_all(const fs::path& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

void put_le(Bytes& bytes, size_t at, uint64_t value, size_t width) {
  ASSERT_LE(at + width, bytes.size());
  for (size_t i = 0; i < width; ++i) bytes[at + i] = static_cast<uint8_t>(value >> (8 * i));
}

uint64_t get_le(const Bytes& bytes, size_t at, size_t width) {
  uint64_t value = 0;
  for (size_t i = width; i-- > 0;) value = (value << 8) | bytes.at(at + i);
  return value;
}

// Offset of the GGUF string `text` (u64 length + bytes) in the file; each name used below
// occurs exactly once.
size_t find_gguf_string(const Bytes& bytes, const std::string& text) {
  Bytes needle(8 + text.size());
  for (size_t i = 0; i < 8; ++i) needle[i] = static_cast<uint8_t>(uint64_t(text.size()) >> (8 * i));
  std::memcpy(needle.data() + 8, text.data(), text.size());
  auto it = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
  EXPECT_NE(it, bytes.end()) << text;
  EXPECT_EQ(std::search(it + 1, bytes.end(), needle.begin(), needle.end()), bytes.end()) << text;
  return static_cast<size_t>(it - bytes.begin());
}

// Where a KV pair's value type sits: right after its key.
size_t value_type_at(const Bytes& bytes, const std::string& key) {
  return find_gguf_string(bytes, key) + 8 + key.size();
}

// Field offsets of one tensor info, found by the tensor's name.
struct TensorInfoFields {
  size_t n_dims, ne, type, offset;
};
TensorInfoFields tensor_info_at(const Bytes& bytes, const std::string& name) {
  const size_t n_dims = find_gguf_string(bytes, name) + 8 + name.size();
  const size_t dims = get_le(bytes, n_dims, 4);
  return {n_dims, n_dims + 4, n_dims + 4 + 8 * dims, n_dims + 4 + 8 * dims + 4};
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Opening `file` must fail with a message naming the file and the problem.
void expect_gguf_rejected(const fs::path& file, std::initializer_list<std::string> problem) {
  const std::string message = error_of([&] { GgufFile::open(file); });
  expect_contains(message, {file.string()});
  expect_contains(message, problem);
}

// A small valid file for the patching tests. The last tensor is a whole number of alignment
// units, so the file ends exactly where its data does and every cut loses data.
struct Sample {
  fs::path file;
  Bytes bytes;
};
Sample write_sample(const fs::path& dir) {
  GgufWriter writer;
  writer.set("test.alpha", int64_t{1});
  writer.set("test.bravo", int64_t{2});
  writer.set("test.flag", true);
  writer.set("test.names", std::vector<std::string>{"x", "yy"});
  writer.add_tensor("tensor.a", GgmlType::F32, {2, 4}, counting_bytes(32));
  writer.add_tensor("tensor.b", GgmlType::F16, {3}, counting_bytes(6, 50));
  writer.add_tensor("tensor.c", GgmlType::F32, {8}, counting_bytes(32, 100));
  Sample sample{dir / "sample.gguf", {}};
  writer.write(sample.file);
  sample.bytes = read_all(sample.file);
  return sample;
}

// Writes a patched copy of the sample next to it and returns its path.
fs::path patched(const Sample& sample, const std::function<void(Bytes&)>& patch,
                 const std::string& name = "patched.gguf") {
  Bytes bytes = sample.bytes;
  patch(bytes);
  const fs::path file = sample.file.parent_path() / name;
  write_all(file, bytes);
  return file;
}

TEST(Gguf, RoundTripMetadataOfEveryType) {
  const fs::path dir = temp_dir("gguf-meta");
  std::string big(2 * 1024 * 1024, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
  const std::vector<std::string> tokens = {"<s>", "", "hello", "\xc3\xa9t\xc3\xa9", "a\nb"};

  GgufWriter writer;
  writer.set("general.architecture", std::string("llama"));
  writer.set("t.true", true);
  writer.set("t.false", false);
  writer.set("t.negative", int64_t{-1234567890123});
  writer.set("t.unsigned", uint64_t{0xfedcba9876543210ull});
  writer.set("t.small_unsigned", uint64_t{7});
  writer.set("t.double", 3.141592653589793);
  writer.set("t.empty_string", std::string());
  writer.set("tokenizer.json", big);
  writer.set("t.tokens", tokens);
  writer.set("t.no_tokens", std::vector<std::string>{});
  writer.set("t.ints", std::vector<int64_t>{-5, 0, 1LL << 62});
  writer.set("t.floats", std::vector<double>{0.5, -1e300, 2.0});
  writer.set_u32("general.file_type", 0xfffffffeu);
  writer.set_f32("llama.rope.freq_base", 10000.5f);
  writer.set("t.replaced", int64_t{1});
  writer.set("t.replaced", std::string("second value wins"));
  const fs::path file = dir / "meta.gguf";
  writer.write(file);

  const GgufFile gguf = GgufFile::open(file);
  EXPECT_EQ(gguf.path(), file);
  EXPECT_TRUE(gguf.tensors().empty());
  EXPECT_EQ(gguf.metadata().size(), 17u);  // 16 keys set + general.alignment
  EXPECT_EQ(gguf.get_string("general.architecture"), "llama");
  EXPECT_TRUE(gguf.get_bool("t.true"));
  EXPECT_FALSE(gguf.get_bool("t.false"));
  EXPECT_EQ(gguf.get_int("t.negative"), -1234567890123);
  EXPECT_EQ(std::get<uint64_t>(gguf.metadata().at("t.unsigned")), 0xfedcba9876543210ull);
  EXPECT_EQ(gguf.get_int("t.small_unsigned"), 7);
  EXPECT_EQ(gguf.get_float("t.double"), 3.141592653589793);
  EXPECT_EQ(gguf.get_string("t.empty_string"), "");
  EXPECT_EQ(gguf.get_string("tokenizer.json"), big);
  EXPECT_EQ(gguf.get_string_array("t.tokens"), tokens);
  EXPECT_TRUE(gguf.get_string_array("t.no_tokens").empty());
  EXPECT_EQ(gguf.get_int_array("t.ints"), (std::vector<int64_t>{-5, 0, 1LL << 62}));
  EXPECT_EQ(gguf.get_float_array("t.floats"), (std::vector<double>{0.5, -1e300, 2.0}));
  EXPECT_EQ(gguf.get_int("general.file_type"), 0xfffffffe);
  EXPECT_EQ(gguf.get_float("llama.rope.freq_base"), 10000.5);
  EXPECT_EQ(gguf.get_string("t.replaced"), "second value wins");
  EXPECT_EQ(gguf.get_int("general.alignment"), 32);
  EXPECT_TRUE(gguf.has("t.true"));
  EXPECT_FALSE(gguf.has("t.absent"));

  // llama.cpp insists on the 32-bit types for these keys.
  const Bytes raw = read_all(file);
  EXPECT_EQ(get_le(raw, value_type_at(raw, "general.file_type"), 4), 4u);     // UINT32
  EXPECT_EQ(get_le(raw, value_type_at(raw, "llama.rope.freq_base"), 4), 6u);  // FLOAT32
  EXPECT_EQ(get_le(raw, value_type_at(raw, "general.alignment"), 4), 4u);     // UINT32
  EXPECT_EQ(get_le(raw, value_type_at(raw, "t.unsigned"), 4), 10u);           // UINT64
  EXPECT_EQ(get_le(raw, kVersionAt, 4), 3u);
}

TEST(Gguf, RoundTripTensorsOfEveryTypeAndRank) {
  const fs::path dir = temp_dir("gguf-tensors");
  struct Input {
    std::string name;
    GgmlType type;
    std::vector<int64_t> shape;
    Bytes bytes;
  };
  const std::vector<Input> inputs = {
      {"f32.1d", GgmlType::F32, {5}, to_bytes(std::vector<float>{1, -2, 3.5f, 0, 1e30f})},
      {"f16.2d",
       GgmlType::F16,
       {2, 3},
       to_bytes(std::vector<uint16_t>{f32_to_f16(0.5f), f32_to_f16(-1), f32_to_f16(2),
                                      f32_to_f16(4), f32_to_f16(8), f32_to_f16(16)})},
      {"bf16.3d", GgmlType::BF16, {2, 1, 3}, counting_bytes(12)},
      {"i8.4d", GgmlType::I8, {2, 3, 1, 5}, counting_bytes(30, 3)},
      {"i16.1d", GgmlType::I16, {33}, counting_bytes(66, 9)},
      {"i32.2d", GgmlType::I32, {4, 8}, counting_bytes(128, 11)},
      {"empty", GgmlType::F32, {0, 4}, {}},
      {"after_empty", GgmlType::I8, {1}, {42}},
  };
  GgufWriter writer;
  writer.set("general.name", std::string("tensors"));
  for (const Input& in : inputs) writer.add_tensor(in.name, in.type, in.shape, in.bytes);
  const fs::path file = dir / "tensors.gguf";
  writer.write(file);

  const GgufFile gguf = GgufFile::open(file);
  ASSERT_EQ(gguf.tensors().size(), inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Input& in = inputs[i];
    const GgufTensor& t = gguf.tensors()[i];  // file order is the order added
    EXPECT_EQ(t.name, in.name);
    EXPECT_EQ(&gguf.tensor(in.name), &t);
    EXPECT_EQ(t.type, in.type) << in.name;
    EXPECT_EQ(t.shape, in.shape) << in.name;
    ASSERT_EQ(t.nbytes, in.bytes.size()) << in.name;
    EXPECT_EQ(Bytes(t.data, t.data + t.nbytes), in.bytes) << in.name;
    EXPECT_EQ(t.numel() * static_cast<int64_t>(ggml_type_size(t.type)),
              static_cast<int64_t>(t.nbytes));
    // The map starts on a page boundary, so this is alignment relative to the file start.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 32, 0u) << in.name;
  }
  EXPECT_EQ(gguf.find_tensor("absent"), nullptr);
  expect_contains(error_of([&] { gguf.tensor("absent"); }), {file.string(), "absent"});

  const Bytes raw = read_all(file);
  EXPECT_EQ(raw.size() % 32, 0u);  // every tensor padded, the last one included
  // ne[0] is the innermost dimension: the PyTorch shape reversed.
  const TensorInfoFields fields = tensor_info_at(raw, "i8.4d");
  EXPECT_EQ(get_le(raw, fields.n_dims, 4), 4u);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_EQ(get_le(raw, fields.ne + 8 * i, 8), uint64_t(inputs[3].shape[3 - i]));
  EXPECT_EQ(get_le(raw, fields.type, 4), 24u);
}

TEST(Gguf, TypeNames) {
  EXPECT_EQ(ggml_type_name(GgmlType::F32), "F32");
  EXPECT_EQ(ggml_type_name(GgmlType::F16), "F16");
  EXPECT_EQ(ggml_type_name(GgmlType::BF16), "BF16");
  EXPECT_EQ(ggml_type_name(GgmlType::I8), "I8");
  EXPECT_EQ(ggml_type_name(GgmlType::I16), "I16");
  EXPECT_EQ(ggml_type_name(GgmlType::I32), "I32");
}

TEST(Gguf, GettersNameFileAndKeyOnMissingOrWrongType) {
  const fs::path dir = temp_dir("gguf-getters");
  GgufWriter writer;
  writer.set("k.string", std::string("text"));
  writer.set("k.int", int64_t{5});
  writer.set("k.huge", uint64_t{1} << 63);
  writer.set("k.ints", std::vector<int64_t>{1});
  const fs::path file = dir / "getters.gguf";
  writer.write(file);
  const GgufFile gguf = GgufFile::open(file);

  expect_contains(error_of([&] { gguf.get_string("k.missing"); }),
                  {file.string(), "k.missing", "missing"});
  expect_contains(error_of([&] { gguf.get_int("k.string"); }),
                  {file.string(), "k.string", "a string", "integer"});
  expect_contains(error_of([&] { gguf.get_string("k.int"); }), {file.string(), "k.int"});
  expect_contains(error_of([&] { gguf.get_float("k.int"); }), {file.string(), "k.int"});
  expect_contains(error_of([&] { gguf.get_bool("k.int"); }), {file.string(), "k.int"});
  expect_contains(error_of([&] { gguf.get_int_array("k.string"); }), {file.string(), "k.string"});
  expect_contains(error_of([&] { gguf.get_string_array("k.ints"); }), {file.string(), "k.ints"});
  expect_contains(error_of([&] { gguf.get_float_array("k.ints"); }), {file.string(), "k.ints"});
  expect_contains(error_of([&] { gguf.get_int("k.huge"); }),
                  {file.string(), "k.huge", "does not fit"});
}

TEST(Gguf, WriterRejectsInvalidInput) {
  GgufWriter writer;
  writer.add_tensor("ok", GgmlType::F32, {2}, Bytes(8));
  expect_contains(error_of([&] { writer.add_tensor("ok", GgmlType::F32, {2}, Bytes(8)); }),
                  {"'ok'", "twice"});
  expect_contains(error_of([&] {
                    writer.add_tensor("short", GgmlType::F16, {2, 3}, Bytes(11));
                  }),
                  {"'short'", "11 bytes", "[2, 3]", "F16", "12"});
  expect_contains(error_of([&] { writer.add_tensor("scalar", GgmlType::F32, {}, Bytes(4)); }),
                  {"'scalar'", "1 to 4"});
  expect_contains(error_of([&] {
                    writer.add_tensor("rank5", GgmlType::I8, {1, 1, 1, 1, 1}, Bytes(1));
                  }),
                  {"'rank5'", "1 to 4"});
  expect_contains(error_of([&] {
                    writer.add_tensor("neg", GgmlType::I8, {-1, -1}, Bytes(1));
                  }),
                  {"'neg'", "negative"});
  expect_contains(
      error_of([&] { writer.add_tensor(std::string(64, 'n'), GgmlType::I8, {1}, Bytes(1)); }),
      {"63 bytes"});
  expect_contains(error_of([&] { writer.add_tensor("", GgmlType::I8, {1}, Bytes(1)); }), {"name"});
  expect_contains(
      error_of([&] { writer.add_tensor("bad", static_cast<GgmlType>(2), {32}, Bytes(18)); }),
      {"'bad'", "unsupported"});
  expect_contains(error_of([&] { writer.set_u32("general.alignment", 64); }),
                  {"general.alignment", "reserved"});
}

TEST(Gguf, WriteIsAtomic) {
  const fs::path dir = temp_dir("gguf-atomic");
  const fs::path file = dir / "model.gguf";
  write_all(file, Bytes{'o', 'l', 'd'});
  GgufWriter writer;
  writer.add_tensor("w", GgmlType::I32, {2}, counting_bytes(8));
  writer.write(file);  // replaces the old file
  EXPECT_EQ(GgufFile::open(file).tensor("w").nbytes, 8u);
  std::vector<fs::path> entries(fs::directory_iterator(dir), fs::directory_iterator{});
  EXPECT_EQ(entries, std::vector<fs::path>{file}) << "temporary file left behind";

  const fs::path missing = dir / "no-such-dir" / "model.gguf";
  expect_contains(error_of([&] { writer.write(missing); }), {missing.string(), "cannot create"});
  EXPECT_FALSE(fs::exists(missing.parent_path()));
  entries.assign(fs::directory_iterator(dir), fs::directory_iterator{});
  EXPECT_EQ(entries, std::vector<fs::path>{file});
}

TEST(Gguf, AcceptsVersion2) {
  const Sample sample = write_sample(temp_dir("gguf-v2"));
  const fs::path file = patched(sample, [](Bytes& b) { put_le(b, kVersionAt, 2, 4); });
  EXPECT_EQ(GgufFile::open(file).tensors().size(), 3u);
}

TEST(Gguf, TruncatedAtEveryByteIsRejected) {
  const Sample sample = write_sample(temp_dir("gguf-truncated"));
  ASSERT_EQ(GgufFile::open(sample.file).tensors().size(), 3u);
  const fs::path cut = sample.file.parent_path() / "cut.gguf";
  for (size_t size = 0; size < sample.bytes.size(); ++size) {
    write_all(cut, Bytes(sample.bytes.begin(), sample.bytes.begin() + size));
    const std::string message = error_of([&] { GgufFile::open(cut); });
    EXPECT_TRUE(contains(message, cut.string())) << "cut at " << size << ": " << message;
    EXPECT_TRUE(contains(message, "truncated") || contains(message, "cannot fit"))
        << "cut at " << size << ": " << message;
  }
}

TEST(Gguf, TruncatedInsideLargeStringIsRejected) {
  const fs::path dir = temp_dir("gguf-truncated-string");
  GgufWriter writer;
  writer.set("tokenizer.json", std::string(2 * 1024 * 1024, 'x'));
  writer.add_tensor("w", GgmlType::F32, {8}, counting_bytes(32));
  const fs::path file = dir / "big.gguf";
  writer.write(file);
  const Bytes bytes = read_all(file);
  const fs::path cut = dir / "cut.gguf";
  for (size_t size : {size_t{100}, size_t{1024 * 1024}, bytes.size() - 200, bytes.size() - 1}) {
    write_all(cut, Bytes(bytes.begin(), bytes.begin() + size));
    const std::string message = error_of([&] { GgufFile::open(cut); });
    EXPECT_TRUE(contains(message, cut.string())) << message;
    EXPECT_TRUE(contains(message, "truncated")) << "cut at " << size << ": " << message;
  }
}

TEST(Gguf, RejectsBadHeader) {
  const Sample sample = write_sample(temp_dir("gguf-bad-header"));
  expect_gguf_rejected(patched(sample, [](Bytes& b) { b[0] = 'X'; }), {"bad magic"});
  expect_gguf_rejected(patched(sample, [](Bytes& b) { put_le(b, kVersionAt, 1, 4); }),
                       {"unsupported GGUF version 1"});
  expect_gguf_rejected(patched(sample, [](Bytes& b) { put_le(b, kVersionAt, 4, 4); }),
                       {"unsupported GGUF version 4"});
  expect_gguf_rejected(patched(sample, [](Bytes& b) { put_le(b, kVersionAt, 3u << 24, 4); }),
                       {"big-endian"});
  expect_gguf_rejected(patched(sample, [](Bytes& b) { put_le(b, kTensorCountAt, 1ull << 62, 8); }),
                       {"tensor_count"});
  expect_gguf_rejected(patched(sample, [](Bytes& b) { put_le(b, kTensorCountAt, ~0ull, 8); }),
                       {"tensor_count"});
  expect_gguf_rejected(patched(sample, [](Bytes& b) { put_le(b, kKvCountAt, ~0ull, 8); }),
                       {"metadata_kv_count"});
}

TEST(Gguf, RejectsBadMetadata) {
  const Sample sample = write_sample(temp_dir("gguf-bad-metadata"));
  const Bytes& b0 = sample.bytes;
  ASSERT_EQ(find_gguf_string(b0, "test.alpha"), kFirstKvAt);

  expect_gguf_rejected(patched(sample, [](Bytes& b) { put_le(b, kFirstKvAt, 1ull << 63, 8); }),
                       {"string length", "past the end"});
  expect_gguf_rejected(
      patched(sample, [&](Bytes& b) { put_le(b, value_type_at(b0, "test.alpha"), 99, 4); }),
      {"test.alpha", "unknown value type 99"});
  // Renaming test.bravo to test.alpha, same length.
  expect_gguf_rejected(patched(sample,
                               [&](Bytes& b) {
                                 const size_t at = find_gguf_string(b0, "test.bravo") + 8;
                                 std::memcpy(&b[at], "test.alpha", 10);
                               }),
                       {"duplicate", "test.alpha"});
  expect_gguf_rejected(
      patched(sample, [&](Bytes& b) { b[value_type_at(b0, "test.flag") + 4] = 2; }),
      {"test.flag", "bool"});
  const size_t names_type = value_type_at(b0, "test.names");
  expect_gguf_rejected(patched(sample, [&](Bytes& b) { put_le(b, names_type + 4, 9, 4); }),
                       {"test.names", "nested arrays"});
  expect_gguf_rejected(patched(sample, [&](Bytes& b) { put_le(b, names_type + 8, 1ull << 61, 8); }),
                       {"test.names", "array length"});
  // The array's second string claims more bytes than the file has.
  expect_gguf_rejected(
      patched(sample, [&](Bytes& b) { put_le(b, names_type + 16 + 9, 1ull << 40, 8); }),
      {"test.names", "string length"});
  const size_t alignment_value = value_type_at(b0, "general.alignment") + 4;
  expect_gguf_rejected(patched(sample, [&](Bytes& b) { put_le(b, alignment_value, 48, 4); }),
                       {"general.alignment", "power of two"});
  expect_gguf_rejected(patched(sample, [&](Bytes& b) { put_le(b, alignment_value, 0, 4); }),
                       {"general.alignment", "power of two"});
}

TEST(Gguf, RejectsBadTensorInfos) {
  const Sample sample = write_sample(temp_dir("gguf-bad-tensors"));
  const Bytes& b0 = sample.bytes;
  const TensorInfoFields a = tensor_info_at(b0, "tensor.a");
  const TensorInfoFields c = tensor_info_at(b0, "tensor.c");

  expect_gguf_rejected(patched(sample, [&](Bytes& b) { put_le(b, c.type, 12, 4); }),
                       {"tensor.c", "unsupported ggml type 12", "Q4_K"});
  expect_gguf_rejected(patched(sample, [&](Bytes& b) { put_le(b, c.type, 1000, 4); }),
                       {"tensor.c", "unsupported ggml type 1000"});
  expect_gguf_rejected(
      patched(sample, [&](Bytes& b) { put_le(b, c.offset, get_le(b0, c.offset, 8) + 4, 8); }),
      {"tensor.c", "not a multiple of the alignment 32"});
  expect_gguf_rejected(patched(sample, [&](Bytes& b) { put_le(b, c.offset, 1ull << 20, 8); }),
                       {"tensor.c", "past the end"});
  expect_gguf_rejected(patched(sample, [&](Bytes& b) { put_le(b, c.offset, ~0ull << 5, 8); }),
                       {"tensor.c", "past the end"});
  expect_gguf_rejected(patched(sample, [&](Bytes& b) { put_le(b, c.offset, 0, 8); }),
                       {"overlaps", "tensor.a", "tensor.c"});
  expect_gguf_rejected(patched(sample, [&](Bytes& b) { put_le(b, a.n_dims, 5, 4); }),
                       {"tensor.a", "5 dimensions"});
  expect_gguf_rejected(patched(sample, [&](Bytes& b) { put_le(b, a.n_dims, 0, 4); }),
                       {"tensor.a", "0 dimensions"});
  expect_gguf_rejected(patched(sample, [&](Bytes& b) { put_le(b, a.ne, 1ull << 63, 8); }),
                       {"tensor.a", "too large"});
  expect_gguf_rejected(patched(sample,
                               [&](Bytes& b) {
                                 put_le(b, a.ne, 1ull << 40, 8);
                                 put_le(b, a.ne + 8, 1ull << 40, 8);
                               }),
                       {"tensor.a", "overflows"});
  expect_gguf_rejected(patched(sample,
                               [&](Bytes& b) {
                                 const size_t at = find_gguf_string(b0, "tensor.c") + 8;
                                 std::memcpy(&b[at], "tensor.a", 8);
                               }),
                       {"duplicate tensor name 'tensor.a'"});
}

// Random corruption of the header area must end in a clean Error or a valid file, never a
// crash, hang or other exception (run under the sanitizers to make this meaningful).
TEST(Gguf, RandomCorruptionNeverCrashes) {
  const Sample sample = write_sample(temp_dir("gguf-fuzz"));
  const size_t header_end = tensor_info_at(sample.bytes, "tensor.c").offset + 8;
  std::mt19937 rng(12345);
  std::uniform_int_distribution<size_t> position(0, header_end - 1);
  std::uniform_int_distribution<int> byte(0, 255), flips(1, 4);
  const fs::path file = sample.file.parent_path() / "fuzz.gguf";
  int rejected = 0;
  for (int iteration = 0; iteration < 1000; ++iteration) {
    Bytes bytes = sample.bytes;
    for (int i = flips(rng); i > 0; --i) bytes[position(rng)] = static_cast<uint8_t>(byte(rng));
    write_all(file, bytes);
    try {
      const GgufFile gguf = GgufFile::open(file);
      for (const GgufTensor& t : gguf.tensors())
        ASSERT_EQ(t.numel() * int64_t(ggml_type_size(t.type)), int64_t(t.nbytes));
    } catch (const Error& e) {
      ASSERT_TRUE(contains(e.what(), file.string())) << e.what();
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace subbit
