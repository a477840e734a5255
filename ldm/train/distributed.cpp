#include "ldm/train/distributed.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "ldm/error.h"

namespace ldm {
namespace {

int env_int(const char* name, int def, int lo) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*end || x < lo || x > 1 << 20)
    throw Error(std::string("environment ") + name + "=\"" + v + "\": expected an integer >= " + std::to_string(lo));
  return static_cast<int>(x);
}

// A local process that is gone: no such pid, or a zombie not yet reaped.
bool process_gone(int pid) {
  if (kill(pid, 0) != 0) return errno == ESRCH;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(f, line);
  auto paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && (line[paren + 2] == 'Z' || line[paren + 2] == 'X');
}

std::string hostname() {
  char buf[256] = {0};
  gethostname(buf, sizeof buf - 1);
  return buf;
}

}  // namespace

DistEnv dist_env_from_environment() {
  DistEnv e;
  e.world = env_int("WORLD_SIZE", 1, 1);
  e.rank = env_int("RANK", 0, 0);
  e.local_rank = env_int("LOCAL_RANK", e.rank, 0);
  if (e.rank >= e.world)
    throw Error("environment RANK=" + std::to_string(e.rank) + ": must be below WORLD_SIZE=" + std::to_string(e.world));
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", 29500, 1);
  if (e.master_port > 65535) throw Error("environment MASTER_PORT: expected a port number below 65536");
  return e;
}

struct Distributed::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  std::chrono::milliseconds timeout;
  std::vector<std::pair<std::string, int>> peers;  // host, pid of every rank (for naming the dead)
};

Distributed::Distributed(const DistEnv& e, std::chrono::milliseconds timeout) : env_(e), impl_(new Impl) {
  impl_->timeout = timeout;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(e.master_port);
    so.isServer = e.rank == 0;
    so.numWorkers = e.world;
    so.waitWorkers = true;
    so.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(e.master_addr, so);
    impl_->store = c10::make_intrusive<c10d::PrefixStore>("ldm", tcp);
    auto o = c10d::ProcessGroupGloo::Options::create(timeout);
    // the interface Gloo binds: GLOO_SOCKET_IFNAME as PyTorch, loopback for a
    // local job, else the address this host's name resolves to
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    const bool local = e.master_addr == "localhost" || e.master_addr.rfind("127.", 0) == 0;
    o->devices.push_back(ifname && *ifname ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                         : local           ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                           : c10d::ProcessGroupGloo::createDefaultDevice());
    impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, e.rank, e.world, o);
    const std::string me = hostname() + " " + std::to_string(getpid());
    impl_->store->set("peer/" + std::to_string(e.rank), std::vector<uint8_t>(me.begin(), me.end()));
    for (int r = 0; r < e.world; ++r) {
      auto v = impl_->store->get("peer/" + std::to_string(r));
      std::string s(v.begin(), v.end());
      auto sp = s.rfind(' ');
      impl_->peers.emplace_back(s.substr(0, sp), std::atoi(s.c_str() + sp + 1));
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& ex) {
    std::string msg = ex.what();
    msg = msg.substr(0, msg.find('\n'));
    throw Error("distributed: rank " + std::to_string(e.rank) + " of " + std::to_string(e.world) +
                " could not join the group at " + e.master_addr + ":" + std::to_string(e.master_port) + " within " +
                std::to_string(timeout.count() / 1000) + " s: " + msg);
  }
}

Distributed::~Distributed() = default;

void Distributed::fail(const std::string& what, const std::exception& ex) {
  // Name the ranks that are gone: local peers are probed by pid; a remote one
  // cannot be told apart from a hang.
  // A peer's sockets close while it is still exiting, before it is a
  // zombie: give it up to 2 s to be seen gone.
  std::string gone;
  const std::string host = hostname();
  for (int attempt = 0; attempt < 40 && gone.empty(); ++attempt) {
    if (attempt) usleep(50000);
    for (int r = 0; r < env_.world; ++r) {
      if (r == env_.rank || r >= static_cast<int>(impl_->peers.size())) continue;
      const auto& [h, pid] = impl_->peers[r];
      if (h == host && pid > 0 && process_gone(pid)) gone += (gone.empty() ? "" : ", ") + std::to_string(r);
    }
  }
  std::string msg = ex.what();
  msg = msg.substr(0, msg.find('\n'));
  throw Error("distributed: rank " + std::to_string(env_.rank) + ": " + what + " failed (" +
              (gone.empty() ? "a peer rank died or hung" : "rank " + gone + " exited") + "): " + msg);
}

void Distributed::broadcast(const std::vector<torch::Tensor>& tensors, int root) {
  try {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& t : tensors) {
      std::vector<at::Tensor> v{t};
      c10d::BroadcastOptions bo;
      bo.rootRank = root;
      works.push_back(impl_->pg->broadcast(v, bo));
    }
    for (auto& w : works) w->wait(impl_->timeout);
  } catch (const std::exception& e) {
    fail("broadcast", e);
  }
}

void Distributed::allreduce_sum(torch::Tensor& t) {
  try {
    std::vector<at::Tensor> v{t};
    impl_->pg->allreduce(v)->wait(impl_->timeout);
  } catch (const std::exception& e) {
    fail("allreduce", e);
  }
}

void Distributed::barrier() {
  try {
    impl_->pg->barrier()->wait(impl_->timeout);
  } catch (const std::exception& e) {
    fail("barrier", e);
  }
}

}  // namespace ldm

namespace ldm {

struct GradSync::Bucket {
  std::vector<size_t> members;  // indices into params_
  torch::Tensor flat;
  std::vector<bool> filled;
  size_t n_filled = 0;
  c10::intrusive_ptr<c10d::Work> work;
};

GradSync::GradSync(Distributed& d, std::vector<torch::Tensor> params, double bucket_mb)
    : d_(d), params_(std::move(params)) {
  const size_t cap = static_cast<size_t>(bucket_mb * 1048576);
  bucket_of_.resize(params_.size());
  slot_of_.resize(params_.size());
  size_t bytes = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const auto& p = params_[k];
    if (buckets_.empty() || bytes + p.nbytes() > cap ||
        params_[buckets_.back()->members.front()].scalar_type() != p.scalar_type()) {
      buckets_.push_back(std::make_unique<Bucket>());
      bytes = 0;
    }
    bucket_of_[k] = buckets_.size() - 1;
    slot_of_[k] = buckets_.back()->members.size();
    buckets_.back()->members.push_back(k);
    bytes += p.nbytes();
  }
  // each parameter's slice of its bucket, shaped like the parameter
  slice_of_.resize(params_.size());
  for (auto& b : buckets_) {
    int64_t n = 0;
    for (size_t k : b->members) n += params_[k].numel();
    b->flat = torch::zeros({n}, params_[b->members.front()].options());
    b->filled.assign(b->members.size(), false);
    int64_t off = 0;
    for (size_t k : b->members) {
      slice_of_[k] = b->flat.narrow(0, off, params_[k].numel()).view(params_[k].sizes());
      off += params_[k].numel();
    }
  }
  for (size_t k = 0; k < params_.size(); ++k)
    hooks_.push_back(params_[k].register_hook([this, k](const torch::Tensor& g) { on_grad(k, g); }));
}

GradSync::~GradSync() {
  for (size_t k = 0; k < params_.size(); ++k) params_[k].remove_hook(hooks_[k]);
}

void GradSync::arm() {
  armed_ = true;
  next_ = 0;
  for (auto& b : buckets_) {
    b->filled.assign(b->members.size(), false);
    b->n_filled = 0;
    b->work.reset();
  }
}

// The hook sees this backward's gradient before it is added to p.grad: the
// final gradient is both together.
void GradSync::on_grad(size_t k, const torch::Tensor& g) {
  if (!armed_) return;
  auto& b = *buckets_[bucket_of_[k]];
  const size_t s = slot_of_[k];
  if (b.filled[s]) return;
  auto& dst = slice_of_[k];
  torch::NoGradGuard ng;
  dst.copy_(g);
  if (params_[k].grad().defined()) dst.add_(params_[k].grad());
  b.filled[s] = true;
  ++b.n_filled;
  launch_ready();
}

void GradSync::launch_ready() {
  try {
    while (next_ < buckets_.size() && buckets_[next_]->n_filled == buckets_[next_]->members.size()) {
      std::vector<at::Tensor> v{buckets_[next_]->flat};
      buckets_[next_]->work = d_.impl_->pg->allreduce(v);
      ++next_;
    }
  } catch (const std::exception& e) {
    d_.fail("gradient allreduce", e);
  }
}

void GradSync::finish() {
  if (!armed_) throw Error("GradSync::finish without arm");
  torch::NoGradGuard ng;
  // parameters whose hook did not run (no gradient this step, or a
  // gradient only from earlier micro-batches): their p.grad or zero
  for (auto& b : buckets_) {
    for (size_t j = 0; j < b->members.size(); ++j) {
      if (b->filled[j]) continue;
      const size_t k = b->members[j];
      if (params_[k].grad().defined()) slice_of_[k].copy_(params_[k].grad());
      else slice_of_[k].zero_();
      b->filled[j] = true;
      ++b->n_filled;
    }
  }
  launch_ready();
  armed_ = false;
  try {
    for (auto& b : buckets_) b->work->wait(d_.impl_->timeout);
  } catch (const std::exception& e) {
    d_.fail("gradient allreduce", e);
  }
  for (auto& b : buckets_) b->flat.div_(d_.world());
  for (size_t k = 0; k < params_.size(); ++k) {
    auto& p = params_[k];
    if (p.grad().defined()) p.mutable_grad().copy_(slice_of_[k]);
    else p.mutable_grad() = slice_of_[k].clone();
  }
}

}  // namespace ldm
