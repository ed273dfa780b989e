#pragma once
// Post-training compression's checkpoint: one GGUF file per finished block in a folder
// (default OUTPUT.ckpt), so that an interrupted run resumes at the first block not written and
// ends with the same bytes as an uninterrupted one. Each file names the run that wrote it; a
// folder of another run (other method, bpw, source, ...) is refused, never mixed in.
#include <array>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "formats/linear.h"
#include "model/config.h"
#include "model/tensors.h"

namespace subbit {
class GgufFile;
}

namespace subbit::compress {

class BlockCheckpoint {
 public:
  using BlockLinears = std::array<std::unique_ptr<Linear>, kLinearsPerBlock>;

  // `run`: everything the built layers depend on (method, options, source). Throws Error naming
  // `folder` when it exists but is not such a checkpoint, or was written by another run.
  BlockCheckpoint(std::filesystem::path folder, std::string run);

  // Blocks 0..n-1 are all saved (what a resumed run skips).
  int64_t saved_blocks(int64_t num_layers) const;
  // Block `layer`'s linear layers as saved, or nothing when not saved. The layers read from the
  // file's memory map, which `keep_alive` receives.
  std::optional<BlockLinears> load(int64_t layer, const LlamaConfig& c,
                                   std::shared_ptr<const GgufFile>& keep_alive) const;
  void save(int64_t layer, const BlockLinears& linears) const;
  // After the output is written: the block files, and the folder when nothing else is in it.
  void remove(int64_t num_layers) const;

 private:
  std::filesystem::path block_file(int64_t layer) const;

  std::filesystem::path folder_;
  std::string run_;
};

}  // namespace subbit::compress
