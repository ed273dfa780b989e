#include "compress/block_checkpoint.h"

#include <fmt/format.h>

#include "common/error.h"
#include "formats/format_table.h"
#include "io/gguf.h"

namespace subbit::compress {

namespace {

constexpr const char* kRunKey = "subbit.checkpoint.run";

}  // namespace

BlockCheckpoint::BlockCheckpoint(std::filesystem::path folder, std::string run)
    : folder_(std::move(folder)), run_(std::move(run)) {
  std::error_code ec;
  if (std::filesystem::exists(folder_, ec) && !std::filesystem::is_directory(folder_, ec))
    fail(
        "{}: exists and is not a post-training checkpoint folder (a QAT checkpoint?): delete it, "
        "or give another --checkpoint or --no-checkpoint",
        folder_.string());
  if (!std::filesystem::exists(block_file(0))) return;
  const GgufFile first = GgufFile::open(block_file(0));
  const std::string saved = first.has(kRunKey) ? first.get_string(kRunKey) : "";
  if (saved != run_)
    fail(
        "{}: the checkpoint was written by another run (its settings: {}; this run: {}): delete "
        "it to start over, or give another --checkpoint or --no-checkpoint",
        folder_.string(), saved.empty() ? "none" : saved, run_);
}

std::filesystem::path BlockCheckpoint::block_file(int64_t layer) const {
  return folder_ / fmt::format("block-{:04}.gguf", layer);
}

int64_t BlockCheckpoint::saved_blocks(int64_t num_layers) const {
  int64_t n = 0;
  while (n < num_layers && std::filesystem::exists(block_file(n))) ++n;
  return n;
}

std::optional<BlockCheckpoint::BlockLinears> BlockCheckpoint::load(
    int64_t layer, const LlamaConfig& c, std::shared_ptr<const GgufFile>& keep_alive) const {
  if (!std::filesystem::exists(block_file(layer))) return std::nullopt;
  auto file = std::make_shared<const GgufFile>(GgufFile::open(block_file(layer)));
  if (!file->has(kRunKey) || file->get_string(kRunKey) != run_)
    fail("{}: written by another run than the checkpoint's first block; delete {} to start over",
         block_file(layer).string(), folder_.string());
  BlockLinears linears;
  for (int i = 0; i < kLinearsPerBlock; ++i) {
    const auto [n_out, n_in] = linear_shape(c, i);
    const std::string prefix = file_block_tensor(layer, kBlockLinears[i].file_name);
    linears[i] = load_linear(*file, file->get_string(format_key(prefix)), prefix, n_out, n_in);
  }
  keep_alive = std::move(file);
  return linears;
}

void BlockCheckpoint::save(int64_t layer, const BlockLinears& linears) const {
  std::error_code ec;
  std::filesystem::create_directories(folder_, ec);
  if (ec) fail("{}: cannot create the checkpoint folder: {}", folder_.string(), ec.message());
  GgufWriter out;
  out.set(kRunKey, run_);
  for (int i = 0; i < kLinearsPerBlock; ++i) {
    save_linear(out, *linears[i], file_block_tensor(layer, kBlockLinears[i].file_name));
  }
  out.write(block_file(layer));
}

void BlockCheckpoint::remove(int64_t num_layers) const {
  // Only what this class wrote: --checkpoint may name a folder that holds other files too.
  std::error_code ec;
  for (int64_t l = 0; l < num_layers; ++l) std::filesystem::remove(block_file(l), ec);
  std::filesystem::remove(folder_, ec);  // fails, harmlessly, when other files remain
}

}  // namespace subbit::compress
