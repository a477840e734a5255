#include "ldm/data/loader.h"

#include <torch/torch.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "ldm/error.h"

namespace ldm {

DataLoader::DataLoader(std::shared_ptr<const Dataset> ds, TransformOptions t, LoaderOptions o)
    : ds_(std::move(ds)), t_(std::move(t)), o_(o) {
  if (o_.batch_size < 1) throw Error("batch_size: expected >= 1");
  if (o_.world < 1 || o_.rank < 0 || o_.rank >= o_.world) throw Error("loader: bad rank/world");
  if (batches_per_epoch() < 1)
    throw Error(ds_->describe() + ": fewer samples per rank than batch_size " + std::to_string(o_.batch_size));
  start();
}

DataLoader::~DataLoader() { stop(); }

int64_t DataLoader::batches_per_epoch() const {
  const int64_t per_rank = (ds_->size() + o_.world - 1) / o_.world;  // padded as DistributedSampler
  return o_.drop_last ? per_rank / o_.batch_size : (per_rank + o_.batch_size - 1) / o_.batch_size;
}

std::vector<int64_t> DataLoader::epoch_order(int64_t epoch) const {
  const int64_t n = ds_->size();
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  if (o_.shuffle) {
    std::mt19937_64 rng(o_.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch));
    std::shuffle(idx.begin(), idx.end(), rng);
  }
  const int64_t per_rank = (n + o_.world - 1) / o_.world;
  for (int64_t i = 0; static_cast<int64_t>(idx.size()) < per_rank * o_.world; ++i) idx.push_back(idx[i]);
  std::vector<int64_t> mine;
  for (int64_t i = o_.rank; i < static_cast<int64_t>(idx.size()); i += o_.world) mine.push_back(idx[i]);
  return mine;
}

Batch DataLoader::make(int64_t k) const {
  const int64_t per = batches_per_epoch();
  Batch b;
  b.epoch = k / per;
  b.step_in_epoch = k % per;
  auto order = epoch_order(b.epoch);
  const int64_t from = b.step_in_epoch * o_.batch_size;
  const int64_t to = std::min<int64_t>(from + o_.batch_size, static_cast<int64_t>(order.size()));
  std::vector<torch::Tensor> imgs;
  std::vector<int64_t> labels, index;
  for (int64_t j = from; j < to; ++j) {
    auto e = ds_->get(order[j]);
    // per-example augmentation seed: (seed, epoch, index)
    uint64_t s = o_.seed ^ (static_cast<uint64_t>(b.epoch) * 0x100000001B3ull) ^ (static_cast<uint64_t>(order[j]) << 20);
    imgs.push_back(apply_transforms(e.image, t_, s));
    labels.push_back(e.label);
    index.push_back(order[j]);
    b.caption.push_back(std::move(e.caption));
  }
  try {
    b.image = torch::stack(imgs);
  } catch (const c10::Error&) {
    throw Error(ds_->describe() + ": images of different sizes in one batch; set size and crop in the dataset params");
  }
  b.label = torch::tensor(labels, torch::kInt64);
  b.index = torch::tensor(index, torch::kInt64);
  return b;
}

void DataLoader::worker() {
  while (true) {
    int64_t k;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return stopping_ || error_ || next_to_make_ < next_to_give_ + o_.prefetch;
      });
      if (stopping_ || error_) return;
      k = next_to_make_++;
    }
    try {
      torch::NoGradGuard ng;
      Batch b = make(k);
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      ready_.emplace_back(k, std::move(b));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = std::current_exception();
    }
    cv_.notify_all();
  }
}

void DataLoader::start() {
  stopping_ = false;
  for (int i = 0; i < std::max(1, o_.num_workers); ++i) threads_.emplace_back([this] { worker(); });
}

void DataLoader::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

void DataLoader::seek(int64_t k) {
  stop();
  ready_.clear();
  error_ = nullptr;
  next_to_make_ = next_to_give_ = k;
  start();
}

Batch DataLoader::next() {
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t want = next_to_give_;
  for (;;) {
    auto it = std::find_if(ready_.begin(), ready_.end(), [&](auto& p) { return p.first == want; });
    if (it != ready_.end()) {
      Batch b = std::move(it->second);
      ready_.erase(it);
      ++next_to_give_;
      lock.unlock();
      cv_.notify_all();
      return b;
    }
    if (error_) std::rethrow_exception(error_);
    cv_.wait(lock);
  }
}

}  // namespace ldm
