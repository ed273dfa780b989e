#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "io/safetensors.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::error_of;
using testing::expect_contains;
using testing::read_all;
using testing::to_bytes;

namespace fs = std::filesystem;
using testing::shared_dir;
using testing::temp_dir;

std::string le64(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(value >> (8 * i));
  return out;
}

// A hand-made safetensors file: length field, header text exactly as given, then `data_size`
// zero bytes. `header_size` overrides the length field to build inconsistent files.
fs::path write_raw(const fs::path& dir, const std::string& header, size_t data_size,
                   std::optional<uint64_t> header_size = std::nullopt) {
  fs::path path = dir / "bad.safetensors";
  testing::write_file(
      path, le64(header_size.value_or(header.size())) + header + std::string(data_size, '\0'));
  return path;
}

// The Error message of `action`, or a note that it did not throw.
// Opens a raw file and checks the error names the file and the problem.
void expect_safetensors_rejected(const fs::path& file, std::initializer_list<std::string> problem) {
  std::string message = error_of([&] { SafetensorsArchive::open_file(file); });
  expect_contains(message, {file.filename().string()});
  expect_contains(message, problem);
}

TEST(Safetensors, RoundTripAllDtypesScalarAndEmpty) {
  fs::path dir = temp_dir("st-roundtrip");
  std::vector<TensorToWrite> tensors = {
      {"w.f32", DType::F32, {2, 3}, to_bytes(std::vector<float>{1, 2, 3, 4, 5, 6})},
      {"w.f16",
       DType::F16,
       {3},
       to_bytes(std::vector<uint16_t>{f32_to_f16(0.5f), f32_to_f16(-2), f32_to_f16(1024)})},
      {"w.bf16",
       DType::BF16,
       {1, 2},
       to_bytes(std::vector<uint16_t>{f32_to_bf16(3.0f), f32_to_bf16(-0.25f)})},
      {"scalar", DType::F32, {}, to_bytes(std::vector<float>{42.0f})},
      {"empty", DType::BF16, {0, 7}, {}},
  };
  std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "round trip"}};
  fs::path file = dir / "out.safetensors";
  write_safetensors(file, tensors, metadata);

  // Header padded to a multiple of 8 so the data section starts aligned.
  std::vector<uint8_t> raw = read_all(file);
  ASSERT_GE(raw.size(), 8u);
  uint64_t header_size = 0;
  std::memcpy(&header_size, raw.data(), 8);
  EXPECT_EQ(header_size % 8, 0u);
  EXPECT_EQ(raw.size(), 8 + header_size + 24 + 6 + 4 + 4);

  SafetensorsArchive archive = SafetensorsArchive::open_file(file);
  EXPECT_EQ(archive.metadata(), metadata);
  ASSERT_EQ(archive.tensors().size(), tensors.size());
  for (const TensorToWrite& t : tensors) {
    const TensorView& view = archive.get(t.name);
    EXPECT_EQ(view.name, t.name);
    EXPECT_EQ(view.dtype, t.dtype) << t.name;
    EXPECT_EQ(view.shape, t.shape) << t.name;
    ASSERT_EQ(view.nbytes, t.bytes.size()) << t.name;
    EXPECT_EQ(std::vector<uint8_t>(view.data, view.data + view.nbytes), t.bytes) << t.name;
  }
  EXPECT_EQ(archive.get("w.f32").numel(), 6);
  EXPECT_EQ(archive.get("scalar").numel(), 1);
  EXPECT_EQ(archive.get("empty").numel(), 0);
  float scalar;
  std::memcpy(&scalar, archive.get("scalar").data, 4);
  EXPECT_EQ(scalar, 42.0f);

  EXPECT_EQ(archive.find("absent"), nullptr);
  expect_contains(error_of([&] { archive.get("absent"); }), {"absent", "out.safetensors"});

  // Nothing but the output remains: the temporary file was renamed into place.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

TEST(Safetensors, WriterWithoutMetadataOmitsIt) {
  fs::path file = temp_dir("st-nometa") / "x.safetensors";
  write_safetensors(file, {{"a", DType::F32, {1}, to_bytes(std::vector<float>{1})}});
  std::vector<uint8_t> raw = read_all(file);
  EXPECT_EQ(std::string(raw.begin(), raw.end()).find("__metadata__"), std::string::npos);
  EXPECT_TRUE(SafetensorsArchive::open_file(file).metadata().empty());
}

TEST(Safetensors, WriterRejectsSizeMismatchAndKeepsOldFile) {
  fs::path dir = temp_dir("st-writefail");
  fs::path file = dir / "keep.safetensors";
  write_safetensors(file, {{"a", DType::F32, {1}, to_bytes(std::vector<float>{7})}});

  std::string message = error_of([&] {
    write_safetensors(file, {{"a", DType::BF16, {3}, std::vector<uint8_t>(4)}});
  });
  expect_contains(message, {"keep.safetensors", "'a'", "4 bytes"});
  message = error_of([&] { write_safetensors(file, {{"a", DType::F32, {-1}, {}}}); });
  expect_contains(message, {"keep.safetensors", "negative"});
  message = error_of([&] {
    write_safetensors(file, {{"a", DType::F32, {1}, std::vector<uint8_t>(4)},
                             {"a", DType::F32, {1}, std::vector<uint8_t>(4)}});
  });
  expect_contains(message, {"keep.safetensors", "twice"});

  EXPECT_EQ(SafetensorsArchive::open_file(file).get("a").nbytes, 4u);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

TEST(Safetensors, WriterFailureInMissingDirectoryLeavesNothing) {
  fs::path file = temp_dir("st-nodir") / "missing" / "x.safetensors";
  std::string message = error_of([&] {
    write_safetensors(file, {{"a", DType::F32, {}, std::vector<uint8_t>(4)}});
  });
  expect_contains(message, {"x.safetensors", "cannot create"});
  EXPECT_FALSE(fs::exists(file.parent_path()));
}

TEST(Safetensors, ReadsSb8mBf16) {
  fs::path dir = shared_dir() / "models" / "sb-8m";
  SKIP_UNLESS_EXISTS(dir / "model.safetensors");
  SafetensorsArchive archive = SafetensorsArchive::open_model_dir(dir);
  EXPECT_EQ(archive.tensors().size(), 56u);
  EXPECT_EQ(archive.metadata().at("format"), "pt");
  for (const auto& [name, view] : archive.tensors()) {
    EXPECT_EQ(view.dtype, DType::BF16) << name;
    EXPECT_EQ(view.nbytes, static_cast<size_t>(view.numel()) * 2) << name;
  }
  const TensorView& embed = archive.get("model.embed_tokens.weight");
  EXPECT_EQ(embed.shape, (std::vector<int64_t>{8192, 256}));
  EXPECT_EQ(embed.numel(), 8192 * 256);
  // Trained weights: finite and not all zero.
  const uint8_t* first_row = embed.data;
  bool any_nonzero = false;
  for (int i = 0; i < 256; ++i) {
    uint16_t bits;
    std::memcpy(&bits, first_row + 2 * i, 2);
    float value = bf16_to_f32(bits);
    EXPECT_TRUE(std::isfinite(value));
    any_nonzero |= value != 0.0f;
  }
  EXPECT_TRUE(any_nonzero);
}

TEST(Safetensors, ReadsStories260KF32) {
  fs::path file = shared_dir() / "models" / "stories260K" / "model.safetensors";
  SKIP_UNLESS_EXISTS(file);
  SafetensorsArchive archive = SafetensorsArchive::open_file(file);
  for (const auto& [name, view] : archive.tensors()) EXPECT_EQ(view.dtype, DType::F32) << name;
  EXPECT_EQ(archive.get("model.embed_tokens.weight").shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(archive.get("model.layers.0.input_layernorm.weight").shape, (std::vector<int64_t>{64}));
  EXPECT_TRUE(archive.metadata().contains("source"));
}

// Two shards plus an index, as transformers' save_pretrained(max_shard_size=...) writes them.
fs::path write_sharded_model(const std::string& index_json) {
  fs::path dir = temp_dir("st-sharded");
  write_safetensors(dir / "model-00001-of-00002.safetensors",
                    {{"a", DType::F32, {2}, to_bytes(std::vector<float>{1, 2})},
                     {"b", DType::BF16, {1}, to_bytes(std::vector<uint16_t>{f32_to_bf16(3)})}},
                    {{"format", "pt"}});
  write_safetensors(dir / "model-00002-of-00002.safetensors",
                    {{"c", DType::F16, {2, 1}, to_bytes(std::vector<uint16_t>{0x3c00, 0x4000})}},
                    {{"format", "pt"}});
  testing::write_file(dir / "model.safetensors.index.json", index_json);
  return dir;
}

const std::string kGoodIndex = R"({
  "metadata": {"total_size": 14},
  "weight_map": {"a": "model-00001-of-00002.safetensors",
                 "b": "model-00001-of-00002.safetensors",
                 "c": "model-00002-of-00002.safetensors"}})";

TEST(Safetensors, ReadsShardedModelDir) {
  fs::path dir = write_sharded_model(kGoodIndex);
  SafetensorsArchive archive = SafetensorsArchive::open_model_dir(dir);
  ASSERT_EQ(archive.tensors().size(), 3u);
  EXPECT_EQ(archive.metadata().at("format"), "pt");
  float a1;
  std::memcpy(&a1, archive.get("a").data + 4, 4);
  EXPECT_EQ(a1, 2.0f);
  EXPECT_EQ(archive.get("b").dtype, DType::BF16);
  EXPECT_EQ(archive.get("c").shape, (std::vector<int64_t>{2, 1}));
  uint16_t c1;
  std::memcpy(&c1, archive.get("c").data + 2, 2);
  EXPECT_EQ(f16_to_f32(c1), 2.0f);
  expect_contains(error_of([&] { archive.get("zz"); }), {"zz", dir.filename().string()});
}

TEST(Safetensors, ShardedIndexRejections) {
  auto expect_index_error = [](const std::string& index, std::initializer_list<std::string> parts) {
    fs::path dir = write_sharded_model(index);
    std::string message = error_of([&] { SafetensorsArchive::open_model_dir(dir); });
    expect_contains(message, parts);
  };
  expect_index_error(
      R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                        "c": "model-00009-of-00009.safetensors"}})",
      {"model.safetensors.index.json", "model-00009-of-00009.safetensors", "does not exist"});
  expect_index_error(
      R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})",
      {"model.safetensors.index.json", "../model-00001-of-00002.safetensors", "plain file name"});
  expect_index_error(R"({"weight_map": {"a": ".."}})", {"plain file name"});
  expect_index_error(R"({"weight_map": {"c": "model-00001-of-00002.safetensors"}})",
                     {"'c'", "model-00001-of-00002.safetensors", "not in"});
  expect_index_error(R"({"weight_map": {"a": 3}})", {"model.safetensors.index.json", "'a'"});
  expect_index_error(R"({"shards": []})", {"model.safetensors.index.json", "weight_map"});
  expect_index_error("{ nope", {"model.safetensors.index.json", "not valid JSON"});
}

TEST(Safetensors, ShardedRejectsTensorInTwoShards) {
  fs::path dir = write_sharded_model(kGoodIndex);
  write_safetensors(dir / "model-00002-of-00002.safetensors",
                    {{"c", DType::F16, {1}, std::vector<uint8_t>(2)},
                     {"a", DType::F16, {1}, std::vector<uint8_t>(2)}});
  std::string message = error_of([&] { SafetensorsArchive::open_model_dir(dir); });
  expect_contains(message, {"'a'", "two shards", "model-00001-of-00002.safetensors",
                            "model-00002-of-00002.safetensors"});
}

TEST(Safetensors, MissingModelDirFiles) {
  fs::path dir = temp_dir("st-empty");
  std::string message = error_of([&] { SafetensorsArchive::open_model_dir(dir); });
  expect_contains(message, {"no model.safetensors or model.safetensors.index.json", dir.string()});
}

TEST(Safetensors, RejectsTruncatedRealFile) {
  fs::path real = shared_dir() / "models" / "sb-8m" / "model.safetensors";
  SKIP_UNLESS_EXISTS(real);
  std::vector<uint8_t> bytes = read_all(real);
  fs::path cut = temp_dir("st-trunc") / "model.safetensors";
  testing::write_file(cut, std::string(bytes.begin(), bytes.begin() + bytes.size() / 2));
  expect_safetensors_rejected(cut, {"out of range", "truncated"});
  fs::remove_all(cut.parent_path());
}

TEST(Safetensors, RejectsBadFraming) {
  fs::path dir = temp_dir("st-framing");
  fs::path tiny = dir / "tiny.safetensors";
  testing::write_file(tiny, std::string("\x02\0\0\0", 4));
  expect_safetensors_rejected(tiny, {"too short"});

  expect_safetensors_rejected(write_raw(dir, "{}", 0, 4096), {"past the end"});
  expect_safetensors_rejected(write_raw(dir, "{}", 0, 200'000'000), {"header too large"});
  expect_safetensors_rejected(write_raw(dir, "{}", 0, ~uint64_t{0}), {"header too large"});
}

TEST(Safetensors, RejectsBadJson) {
  fs::path dir = temp_dir("st-json");
  expect_safetensors_rejected(write_raw(dir, R"({"a": {"dtype": "F32",)", 0), {"not valid JSON"});
  expect_safetensors_rejected(write_raw(dir, "[1, 2]", 0), {"not a JSON object"});
  expect_safetensors_rejected(write_raw(dir, R"({"__metadata__": {"format": 1}})", 0),
                              {"__metadata__"});
  expect_safetensors_rejected(write_raw(dir, R"({"__metadata__": ["pt"]})", 0), {"__metadata__"});
  expect_safetensors_rejected(write_raw(dir, R"({"a": [1]})", 0), {"'a'", "not a JSON object"});
  expect_safetensors_rejected(write_raw(dir, R"({"a": {"dtype": "F32", "shape": []}})", 4),
                              {"'a'", "data_offsets"});
  // Padding with spaces is legal; padding with anything else is not JSON.
  expect_safetensors_rejected(write_raw(dir, std::string("{}\0\0\0\0\0\0", 8), 0),
                              {"not valid JSON"});
  SafetensorsArchive::open_file(write_raw(dir, "{}      ", 0));
}

TEST(Safetensors, RejectsBadTensorEntries) {
  fs::path dir = temp_dir("st-entries");
  expect_safetensors_rejected(
      write_raw(dir, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}})", 8),
      {"'w'", "out of range"});
  expect_safetensors_rejected(
      write_raw(dir, R"({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 4]}})", 4),
      {"'w'", "does not match"});
  expect_safetensors_rejected(
      write_raw(dir, R"({"w": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}})", 4),
      {"'w'", "unsupported dtype I8"});
  expect_safetensors_rejected(
      write_raw(dir, R"({"w": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}})", 4),
      {"'w'", "unsupported dtype"});
  expect_safetensors_rejected(
      write_raw(dir, R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4),
      {"'w'", "shape", "non-negative integers"});
  expect_safetensors_rejected(
      write_raw(dir, R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4),
      {"'w'", "shape", "non-negative integers"});
  expect_safetensors_rejected(
      write_raw(dir, R"({"w": {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}})", 4),
      {"'w'", "shape"});
  expect_safetensors_rejected(
      write_raw(dir, R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})", 4),
      {"'w'", "data_offsets"});
  expect_safetensors_rejected(
      write_raw(dir, R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 4),
      {"'w'", "data_offsets"});
  // 2^32 * 2^32 elements wraps to 0 in 64 bits; it must not pass as an empty tensor.
  expect_safetensors_rejected(write_raw(dir,
                                        R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296],
                          "data_offsets": [0, 0]}})",
                                        0),
                              {"'w'", "overflows"});
}

TEST(Safetensors, RejectsOverlapsGapsAndTrailingBytes) {
  fs::path dir = temp_dir("st-layout");
  expect_safetensors_rejected(write_raw(dir, R"({
      "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                                        12),
                              {"'b'", "overlaps", "'a'"});
  expect_safetensors_rejected(write_raw(dir, R"({
      "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                                        8),
                              {"overlaps"});
  expect_safetensors_rejected(write_raw(dir, R"({
      "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
                                        12),
                              {"gap", "[4, 8)"});
  expect_safetensors_rejected(
      write_raw(dir, R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 6),
      {"trailing bytes", "[4, 6)"});

  // Entries may be listed in any order, and empty tensors may sit at a shared boundary.
  SafetensorsArchive archive = SafetensorsArchive::open_file(write_raw(dir, R"({
      "z": {"dtype": "F16", "shape": [2], "data_offsets": [4, 8]},
      "e": {"dtype": "BF16", "shape": [0], "data_offsets": [4, 4]},
      "a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}})",
                                                                       8));
  EXPECT_EQ(archive.get("z").data, archive.get("a").data + 4);
  EXPECT_EQ(archive.get("e").nbytes, 0u);
}

}  // namespace
}  // namespace subbit
