#include "ldm/train/shm_mean.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "ldm/error.h"

namespace ldm {
namespace {
constexpr size_t kHeader = 4096;  // the barrier's counter, alone on its page
std::atomic<unsigned long long>* counter(void* map) { return static_cast<std::atomic<unsigned long long>*>(map); }

std::string unique_name() {
  std::random_device rd;
  return "/ldm-grads-" + std::to_string(getpid()) + "-" + std::to_string(rd());
}
}  // namespace

ShmMean::ShmMean(int rank, int world, size_t floats, const std::function<void(const std::string&)>& publish,
                 const std::function<std::string()>& fetch, const std::function<bool(bool)>& agree,
                 std::function<void()> check, std::chrono::milliseconds timeout)
    : rank_(rank), world_(world), n_(floats), check_(std::move(check)), timeout_(timeout) {
  bytes_ = kHeader + (static_cast<size_t>(world) + 1) * floats * sizeof(float);
  std::string name;
  int fd = -1;
  if (rank == 0) {
    name = unique_name();
    fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd >= 0 && ftruncate(fd, static_cast<off_t>(bytes_)) != 0) {
      close(fd);
      shm_unlink(name.c_str());
      fd = -1;
    }
    publish(fd >= 0 ? name : std::string());  // the others must not wait for a segment that is not there
  } else {
    name = fetch();
    if (!name.empty()) fd = shm_open(name.c_str(), O_RDWR, 0600);
  }
  if (fd >= 0) {
    map_ = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map_ == MAP_FAILED) map_ = nullptr;
  }
  const bool all = agree(map_ != nullptr);  // every rank has tried: rank 0 takes the name away
  if (rank == 0 && !name.empty()) shm_unlink(name.c_str());
  if (!all && map_) {
    munmap(map_, bytes_);
    map_ = nullptr;
  }
  if (map_) base_ = reinterpret_cast<float*>(static_cast<char*>(map_) + kHeader);
}

ShmMean::~ShmMean() {
  if (map_) munmap(map_, bytes_);
}

// Every rank adds one to the counter; the k-th barrier is passed when it
// reads k * world. Spins briefly (the ranks arrive within milliseconds of
// each other), then yields, then sleeps.
void ShmMean::barrier(const char* where) {
  auto* c = counter(map_);
  const unsigned long long target = (passed_ + 1) * static_cast<unsigned long long>(world_);
  c->fetch_add(1, std::memory_order_acq_rel);
  const auto t0 = std::chrono::steady_clock::now();
  auto next_check = t0 + std::chrono::milliseconds(100);
  for (long spin = 0; c->load(std::memory_order_acquire) < target; ++spin) {
    if (spin < 4000) continue;
    const auto now = std::chrono::steady_clock::now();
    if (now - t0 < std::chrono::milliseconds(2)) {
      sched_yield();
      continue;
    }
    if (now >= next_check) {
      if (check_) check_();
      next_check = now + std::chrono::milliseconds(100);
    }
    if (now - t0 > timeout_)
      throw Error("shared-memory gradient mean: rank " + std::to_string(rank_) + " waited " +
                  std::to_string(timeout_.count()) + " ms at the " + where +
                  " barrier for the other ranks (a peer rank hung?)");
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  ++passed_;
}

// out[i] = (slot 0 + slot 1 + ...)[lo + i] / world, in that order, 4 lanes at
// a time (the baseline's SSE; the loop is bound by memory, not arithmetic).
void ShmMean::reduce_share(float* out, size_t m, size_t lo) const {
  typedef float v4 __attribute__((vector_size(16)));
  const v4 w = {float(world_), float(world_), float(world_), float(world_)};
  size_t i = 0;
  for (; i + 4 <= m; i += 4) {
    v4 s, b;
    std::memcpy(&s, base_ + lo + i, sizeof s);
    for (int r = 1; r < world_; ++r) {
      std::memcpy(&b, base_ + static_cast<size_t>(r) * n_ + lo + i, sizeof b);
      s += b;
    }
    s /= w;
    std::memcpy(out + i, &s, sizeof s);
  }
  for (; i < m; ++i) {
    float s = base_[lo + i];
    for (int r = 1; r < world_; ++r) s += base_[static_cast<size_t>(r) * n_ + lo + i];
    out[i] = s / float(world_);
  }
}

void ShmMean::mean() {
  barrier("write");  // every slot written
  const size_t lo = n_ * rank_ / world_, hi = n_ * (rank_ + 1) / world_;
  float* out = base_ + static_cast<size_t>(world_) * n_;
  reduce_share(out + lo, hi - lo, lo);
  barrier("reduce");  // every share reduced; the slots are free until the next write barrier
  std::memcpy(slot(), out, n_ * sizeof(float));
}

}  // namespace ldm
