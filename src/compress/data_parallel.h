#pragma once
// Data-parallel QAT over libtorch's c10d process groups (Gloo over TCP): R processes (ranks) each
// train on their own share of every step's windows, their gradients are averaged with one
// all-reduce per bucket, and every rank applies the same update, so all ranks hold the same
// student. Rendezvous the way torchrun does it: a TCPStore served by rank 0 at
// MASTER_ADDR:MASTER_PORT. docs/distributed.md has launch examples and the memory plan.
#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace subbit::compress {

struct DataParallelOptions {
  int world_size = 1;
  int rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // How long a rank waits for the others (rendezvous, or one collective): a rank that died is
  // noticed at once (its sockets close), one that hangs after this long.
  std::chrono::seconds timeout{1800};
};

// Fills what the command line left unset (world_size 0, rank -1, empty addr, port 0) from
// torchrun's variables WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT, else the defaults above, and
// checks the result (rank in [0, world_size), port in [1, 65535]).
DataParallelOptions resolve_data_parallel(int world_size, int rank, const std::string& master_addr,
                                          int master_port, std::chrono::seconds timeout);

// The windows (indices into the shuffled window order, modulo its length) that `rank` trains on
// at `step`: rank r takes positions [r*batch, (r+1)*batch) of the step's global batch of
// batch*world_size, so R ranks of batch b see exactly what one rank of batch R*b sees.
std::vector<int64_t> rank_window_positions(int64_t step, int64_t batch, int rank, int world_size);

class DataParallel {
 public:
  // Joins the group (blocks until every rank arrived, or fails after the timeout). A world of
  // one opens no sockets and every collective below is a no-op.
  explicit DataParallel(const DataParallelOptions& options);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const { return options_.rank; }
  int world_size() const { return options_.world_size; }
  bool is_root() const { return options_.rank == 0; }

  // Every rank's `grads` replaced by their mean over ranks, in place (any device; the reduction
  // runs on CPU tensors in buckets of at most 64 MiB).
  void average(const std::vector<torch::Tensor>& grads);
  double average(double value);
  double sum(double value);
  // Rank `root`'s values copied into every rank's tensors; rank 0's string to every rank.
  void broadcast(const std::vector<torch::Tensor>& tensors, int root = 0);
  std::string broadcast_from_root(const std::string& bytes);
  // Fails on every rank, naming the option, when `fingerprint` (the options that must agree,
  // e.g. "seq=256 batch=4 ...") differs from rank 0's.
  void check_same_on_every_rank(const std::string& what, const std::string& fingerprint);

 private:
  class Group;
  DataParallelOptions options_;
  std::unique_ptr<Group> group_;  // null for a world of one
};

}  // namespace subbit::compress
