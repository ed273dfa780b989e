#pragma once
// Hugging Face safetensors reader: one file or a sharded set (model.safetensors.index.json).
// Files are memory-mapped and every header is validated before any tensor data is touched.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "io/mapped_file.h"

namespace subbit {

struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data;  // inside the memory map; valid while the archive lives
  size_t nbytes;

  int64_t numel() const;
};

class SafetensorsArchive {
 public:
  // A model directory: uses model.safetensors.index.json when present, else model.safetensors.
  static SafetensorsArchive open_model_dir(const std::filesystem::path& dir);
  // One .safetensors file.
  static SafetensorsArchive open_file(const std::filesystem::path& file);

  const TensorView* find(const std::string& name) const;  // nullptr when absent
  const TensorView& get(const std::string& name) const;   // throws Error naming the tensor
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  // Maps one file, validates its whole header and returns its tensors (not yet merged into
  // tensors_, so callers can check for names repeated across shards); merges its metadata.
  std::map<std::string, TensorView> load_file(const std::filesystem::path& file);
  std::filesystem::path source_;  // the file or directory opened, for error messages
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors (already in their stored dtype) as one safetensors file, atomically
// (temporary file + rename), so a failed write never leaves a partial output.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
void write_safetensors(const std::filesystem::path& file, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// The same file written tensor by tensor, for files larger than memory: the header comes from
// the specs, then produce(index, write) must pass exactly that tensor's bytes to write(), in
// pieces of any size. Atomic like write_safetensors.
struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};
using ByteSink = std::function<void(const void* data, size_t size)>;
void write_safetensors_streamed(
    const std::filesystem::path& file, const std::vector<TensorSpec>& tensors,
    const std::function<void(size_t index, const ByteSink& write)>& produce,
    const std::map<std::string, std::string>& metadata = {});

}  // namespace subbit
