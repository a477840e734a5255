// Data-parallel training on PyTorch's c10d: rendezvous through a TCPStore
// (rank 0 hosts it), a Gloo process group, bucketed gradient averaging.
// The environment is torchrun's (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
// MASTER_PORT), so any launcher of PyTorch jobs starts ours.
#pragma once
#include <torch/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ldm {

class ShmMean;

struct DistEnv {
  int rank = 0, world = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};

// torchrun's variables; world 1 when WORLD_SIZE is unset. ldm::Error names
// the variable when a value is malformed or inconsistent.
DistEnv dist_env_from_environment();

// What Gloo binds and advertises to the other ranks: GLOO_SOCKET_IFNAME when
// set (an interface name), loopback when MASTER_ADDR is loopback, else the
// local address of the route to MASTER_ADDR.
struct GlooInterface {
  std::string address, ifname, why;
};
GlooInterface choose_gloo_interface(const std::string& master_addr, int master_port);

// Processes that use it must ignore SIGPIPE (the `ldm` CLI does, as Python
// does for PyTorch): Gloo writes to peers' sockets, and a peer's death would
// otherwise end this process silently instead of with the error below.
class Distributed {
 public:
  // Blocks until all `e.world` ranks joined (or `timeout`). Every collective
  // afterwards fails within `timeout` when a peer dies or hangs, with an
  // ldm::Error naming the ranks that are gone where they can be told.
  // A rank that cannot reach the rendezvous, or a peer that never arrives,
  // ends every rank within `rendezvous`, naming the missing ranks.
  Distributed(const DistEnv& e, std::chrono::milliseconds timeout,
              std::chrono::milliseconds rendezvous = std::chrono::seconds(120));
  ~Distributed();
  int rank() const { return env_.rank; }
  int world() const { return env_.world; }

  // Rank `root`'s values into every rank's tensors, in place.
  void broadcast(const std::vector<torch::Tensor>& tensors, int root = 0);
  // Elementwise sum over ranks, in place (small tensors: losses, statistics).
  void allreduce_sum(torch::Tensor& t);
  // The same, started now and finished by calling the returned function (which
  // fails as allreduce_sum does). Collectives pair by order on every rank, so
  // one started before a backward goes ahead of that backward's gradients.
  std::function<void()> allreduce_sum_async(torch::Tensor& t);
  void barrier();

 private:
  struct Impl;
  DistEnv env_;
  std::unique_ptr<Impl> impl_;
  friend class GradSync;
  [[noreturn]] void fail(const std::string& what, const std::exception& e);
  std::string gone_ranks();
  void wait_for_arrivals(std::chrono::milliseconds limit);
  std::string arrival(int rank);  // "host (address)" a rank announced
};

// DDP's gradient averaging for one parameter list: flat buckets of ~bucket_mb
// in reverse parameter order (the order backward produces them), each
// allreduced as soon as its gradients are final, in bucket order on every
// rank (Gloo pairs collectives by order), while backward goes on. Ranks that
// all share one machine average float32 gradients through shared memory
// instead (shm_mean.h), all at once after backward.
class GradSync {
 public:
  GradSync(Distributed& d, std::vector<torch::Tensor> params, double bucket_mb = 25);
  ~GradSync();
  // Call before the backward that completes the gradients (the last
  // micro-batch of an accumulation); earlier backwards only accumulate.
  void arm();
  // After that backward: reduces what the hooks did not (parameters without
  // a gradient count as zero), waits, and sets p.grad to the mean over ranks.
  void finish();

 private:
  struct Bucket;
  void on_grad(size_t i, const torch::Tensor& g);
  void launch_ready();
  bool shared_memory_applies() const;
  std::unique_ptr<ShmMean> open_shared_memory();
  void grads_as_slices();
  Distributed& d_;
  std::vector<torch::Tensor> params_;
  std::vector<unsigned> hooks_;  // Gloo only
  std::vector<size_t> bucket_of_, slot_of_;
  std::vector<torch::Tensor> slice_of_;  // views into the buckets' flat buffers
  std::vector<std::unique_ptr<Bucket>> buckets_;
  size_t next_ = 0;
  bool armed_ = false;
  std::unique_ptr<ShmMean> shm_;  // ranks on one machine: their mean through shared memory, not Gloo
};

}  // namespace ldm
