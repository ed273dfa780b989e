#include "compress/data_parallel.h"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "common/error.h"

namespace subbit::compress {

namespace {

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  char* end = nullptr;
  const long parsed = std::strtol(value, &end, 10);
  if (*end != '\0' || parsed < INT32_MIN || parsed > INT32_MAX)
    fail("environment variable {}=\"{}\" is not an integer", name, value);
  return int(parsed);
}

// One bucket holds at most this many bytes, so that averaging a 7B model's gradients does not
// need a second full-size copy of them.
constexpr int64_t kBucketBytes = int64_t{64} << 20;

}  // namespace

DataParallelOptions resolve_data_parallel(int world_size, int rank, const std::string& master_addr,
                                          int master_port, std::chrono::seconds timeout) {
  DataParallelOptions o;
  o.world_size = world_size > 0 ? world_size : env_int("WORLD_SIZE", 1);
  o.rank = rank >= 0 ? rank : env_int("RANK", 0);
  const char* addr = std::getenv("MASTER_ADDR");
  o.master_addr = !master_addr.empty()               ? master_addr
                  : addr != nullptr && *addr != '\0' ? addr
                                                     : o.master_addr;
  o.master_port = master_port > 0 ? master_port : env_int("MASTER_PORT", o.master_port);
  o.timeout = timeout;
  if (o.world_size < 1)
    fail("--world-size (or WORLD_SIZE) must be at least 1, got {}", o.world_size);
  if (o.rank < 0 || o.rank >= o.world_size)
    fail("--rank (or RANK) must be in [0, {}) for a world of {}, got {}", o.world_size,
         o.world_size, o.rank);
  if (o.master_port < 1 || o.master_port > 65535)
    fail("--master-port (or MASTER_PORT) must be in [1, 65535], got {}", o.master_port);
  if (o.timeout.count() < 1) fail("--dist-timeout must be at least 1 second");
  return o;
}

std::vector<int64_t> rank_window_positions(int64_t step, int64_t batch, int rank, int world_size) {
  std::vector<int64_t> positions(batch);
  const int64_t first = (step * world_size + rank) * batch;
  for (int64_t b = 0; b < batch; ++b) positions[b] = first + b;
  return positions;
}

class DataParallel::Group {
 public:
  explicit Group(const DataParallelOptions& o) : options_(o) {
    c10d::TCPStoreOptions store_options;
    store_options.port = uint16_t(o.master_port);
    store_options.isServer = o.rank == 0;
    store_options.numWorkers = size_t(o.world_size);
    store_options.timeout = o.timeout;
    try {
      auto store = c10::make_intrusive<c10d::TCPStore>(o.master_addr, store_options);
      auto gloo = c10d::ProcessGroupGloo::Options::create(o.timeout);
      // The transport binds to the interface that reaches the others: GLOO_SOCKET_IFNAME as
      // torchrun users set it, loopback for a one-machine run, else this host's name.
      const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
      if (interface != nullptr && *interface != '\0')
        gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
      else if (o.master_addr == "127.0.0.1" || o.master_addr == "localhost")
        gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      else
        gloo->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      group_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world_size, gloo);
    } catch (const std::exception& e) {
      fail("rank {} of {}: could not join the ranks at {}:{} within {} s: {}", o.rank, o.world_size,
           o.master_addr, o.master_port, o.timeout.count(), first_line(e.what()));
    }
  }

  void all_reduce(torch::Tensor& t, c10d::ReduceOp op, const char* what) {
    std::vector<at::Tensor> tensors{t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = op;
    run(what, [&] { group_->allreduce(tensors, opts)->wait(); });
  }

  void broadcast(torch::Tensor& t, int root, const char* what) {
    std::vector<at::Tensor> tensors{t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    run(what, [&] { group_->broadcast(tensors, opts)->wait(); });
  }

 private:
  // Gloo's errors say what the socket saw; the rank and what it was doing come first.
  template <typename F>
  void run(const char* what, F&& collective) {
    try {
      collective();
    } catch (const std::exception& e) {
      fail(
          "rank {} of {}: {} failed: {} (another rank stopped, or waited over --dist-timeout {} s)",
          options_.rank, options_.world_size, what, first_line(e.what()), options_.timeout.count());
    }
  }

  static std::string first_line(const std::string& message) {
    return message.substr(0, message.find('\n'));
  }

  DataParallelOptions options_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group_;
};

DataParallel::DataParallel(const DataParallelOptions& options) : options_(options) {
  if (options.world_size > 1) group_ = std::make_unique<Group>(options);
}

DataParallel::~DataParallel() = default;

void DataParallel::average(const std::vector<torch::Tensor>& grads) {
  if (!group_) return;
  size_t begin = 0;
  while (begin < grads.size()) {
    // The next run of tensors that fits one bucket (a larger tensor goes alone).
    size_t end = begin;
    int64_t elements = 0;
    while (end < grads.size() &&
           (end == begin || (elements + grads[end].numel()) * 4 <= kBucketBytes))
      elements += grads[end++].numel();
    std::vector<torch::Tensor> flat;
    for (size_t i = begin; i < end; ++i)
      flat.push_back(grads[i].detach().to(torch::kCPU, torch::kFloat32).reshape(-1));
    torch::Tensor bucket = torch::cat(flat);
    group_->all_reduce(bucket, c10d::ReduceOp::SUM, "averaging gradients");
    bucket.div_(double(options_.world_size));
    int64_t offset = 0;
    for (size_t i = begin; i < end; ++i) {
      const int64_t n = grads[i].numel();
      grads[i].detach().copy_(bucket.narrow(0, offset, n).view(grads[i].sizes()));
      offset += n;
    }
    begin = end;
  }
}

double DataParallel::sum(double value) {
  if (!group_) return value;
  torch::Tensor t = torch::tensor({value}, torch::kFloat64);
  group_->all_reduce(t, c10d::ReduceOp::SUM, "summing the loss");
  return t.item<double>();
}

double DataParallel::average(double value) { return sum(value) / double(options_.world_size); }

void DataParallel::broadcast(const std::vector<torch::Tensor>& tensors, int root) {
  if (!group_) return;
  for (const torch::Tensor& t : tensors) {
    torch::Tensor cpu = t.detach().to(torch::kCPU).contiguous();
    group_->broadcast(cpu, root, "copying parameters");
    if (rank() != root) t.detach().copy_(cpu);
  }
}

std::string DataParallel::broadcast_from_root(const std::string& bytes) {
  if (!group_) return bytes;
  torch::Tensor size = torch::tensor({int64_t(bytes.size())}, torch::kInt64);
  group_->broadcast(size, 0, "sending rank 0's state");
  torch::Tensor data = torch::empty({size.item<int64_t>()}, torch::kUInt8);
  if (is_root()) std::memcpy(data.data_ptr(), bytes.data(), bytes.size());
  if (data.numel() > 0) group_->broadcast(data, 0, "sending rank 0's state");
  return std::string(static_cast<const char*>(data.data_ptr()), size_t(data.numel()));
}

void DataParallel::check_same_on_every_rank(const std::string& what,
                                            const std::string& fingerprint) {
  if (!group_) return;
  const std::string root = broadcast_from_root(fingerprint);
  torch::Tensor differs = torch::tensor({root == fingerprint ? 0 : 1}, torch::kInt32);
  group_->all_reduce(differs, c10d::ReduceOp::MAX, "comparing options");
  if (differs.item<int32_t>() == 0) return;
  if (root != fingerprint)
    fail("rank {} of {}: {} differ from rank 0's: here \"{}\", rank 0 \"{}\"", rank(), world_size(),
         what, fingerprint, root);
  fail("rank {} of {}: another rank's {} differ from this rank's \"{}\"", rank(), world_size(),
       what, fingerprint);
}

}  // namespace subbit::compress
