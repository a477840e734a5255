// A prefetching batch loader: background threads assemble batches ahead of
// the training loop (bounded queue), in an order fixed by (seed, epoch), so a
// run resumed at step k sees exactly the batches the uninterrupted run saw.
// With world > 1 each rank reads its own shard, as DistributedSampler.
#pragma once
#include <torch/types.h>

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ldm/data/dataset.h"
#include "ldm/data/transforms.h"

namespace ldm {

struct Batch {
  torch::Tensor image;  // [N, C, H, W] in [-1, 1]
  torch::Tensor label;  // [N] int64 (-1 where none)
  torch::Tensor index;  // [N] dataset indices
  std::vector<std::string> caption;
  int64_t epoch = 0, step_in_epoch = 0;
};

struct LoaderOptions {
  int64_t batch_size = 32;
  bool shuffle = true, drop_last = true;
  uint64_t seed = 0;
  int num_workers = 2;   // threads assembling batches
  int prefetch = 4;      // batches kept ready
  int rank = 0, world = 1;
};

class DataLoader {
 public:
  DataLoader(std::shared_ptr<const Dataset> ds, TransformOptions t, LoaderOptions o);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  int64_t batches_per_epoch() const;
  // Positions the stream at global batch number `k` (epoch = k / per_epoch).
  void seek(int64_t k);
  Batch next();  // blocks until the next batch is ready; rethrows a worker's error

  // Indices of this rank's samples in `epoch`, in order.
  std::vector<int64_t> epoch_order(int64_t epoch) const;

 private:
  void start();
  void stop();
  void worker();
  Batch make(int64_t k) const;

  std::shared_ptr<const Dataset> ds_;
  TransformOptions t_;
  LoaderOptions o_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<int64_t, Batch>> ready_;
  std::exception_ptr error_;
  int64_t next_to_make_ = 0, next_to_give_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace ldm
