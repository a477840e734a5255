#include "ldm/train/distributed.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "ldm/error.h"
#include "ldm/train/shm_mean.h"

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

// This machine as its processes see it: host name, boot and network
// namespace (ranks in separate network namespaces count as separate hosts,
// as the multi-host tests run them).
std::string machine_identity() {
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(boot, id);
  char ns[128] = {0};
  if (readlink("/proc/self/ns/net", ns, sizeof ns - 1) < 0) ns[0] = 0;
  return hostname() + "|" + id + "|" + ns;
}

bool is_loopback(const std::string& addr) { return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1"; }

// The local address of the route to `host` (the address a socket connected to
// it gets; a UDP connect sends nothing). Empty when there is no route.
std::string local_address_towards(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res) return "";
  std::string out;
  int fd = socket(res->ai_family, SOCK_DGRAM, 0);
  sockaddr_storage local{};
  socklen_t len = sizeof local;
  if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
    char buf[INET6_ADDRSTRLEN] = {0};
    const void* a = local.ss_family == AF_INET ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr)
                                               : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr);
    if (inet_ntop(local.ss_family, a, buf, sizeof buf)) out = buf;
  }
  if (fd >= 0) close(fd);
  freeaddrinfo(res);
  return out;
}

}  // namespace

GlooInterface choose_gloo_interface(const std::string& master_addr, int master_port) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
    return {"", ifname, std::string("GLOO_SOCKET_IFNAME=") + ifname};
  if (is_loopback(master_addr)) return {"127.0.0.1", "", "loopback: a local job"};
  auto addr = local_address_towards(master_addr, master_port);
  if (addr.empty())
    throw Error("distributed: no route from this host to MASTER_ADDR=" + master_addr +
                " (set MASTER_ADDR to an address of rank 0's host, or GLOO_SOCKET_IFNAME to the interface to use)");
  return {addr, "", "the route to MASTER_ADDR " + master_addr};
}

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
  bool one_machine = false;  // every rank on this machine (its shared memory reaches them all)
  int grad_syncs = 0;        // GradSyncs made so far (every rank makes them in the same order)
};

Distributed::Distributed(const DistEnv& e, std::chrono::milliseconds timeout, std::chrono::milliseconds rendezvous)
    : env_(e), impl_(new Impl) {
  impl_->timeout = timeout;
  const std::string at = e.master_addr + ":" + std::to_string(e.master_port);
  const std::string secs = std::to_string(rendezvous.count() / 1000) + " s";
  const std::string me = "rank " + std::to_string(e.rank) + " on " + hostname();
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(e.master_port);
    so.isServer = e.rank == 0;
    so.numWorkers = e.world;
    so.waitWorkers = false;  // arrivals are awaited below, so a missing rank can be named
    so.timeout = rendezvous;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(e.master_addr, so);
    impl_->store = c10::make_intrusive<c10d::PrefixStore>("ldm", tcp);
  } catch (const std::exception& ex) {
    std::string msg = ex.what();
    throw Error("distributed: " + me + " could not reach rank 0's rendezvous at " + at + " within " + secs + ": " +
                msg.substr(0, msg.find('\n')));
  }
  wait_for_arrivals(rendezvous);
  try {
    auto o = c10d::ProcessGroupGloo::Options::create(rendezvous);
    // the address Gloo binds and advertises: GLOO_SOCKET_IFNAME as PyTorch,
    // loopback for a local job, else the one the route to MASTER_ADDR uses
    // (not what the host name resolves to: Debian maps it to 127.0.1.1)
    const auto gi = choose_gloo_interface(e.master_addr, e.master_port);
    o->devices.push_back(gi.ifname.empty() ? c10d::ProcessGroupGloo::createDeviceForHostname(gi.address)
                                           : c10d::ProcessGroupGloo::createDeviceForInterface(gi.ifname));
    if (e.world > 1 && !is_loopback(e.master_addr))  // one write: the ranks may share a stderr
      std::cerr << "distributed: rank " + std::to_string(e.rank) + " on " + hostname() + " uses " +
                       (gi.ifname.empty() ? gi.address : "interface " + gi.ifname) + " (" + gi.why + ")\n";
    impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, e.rank, e.world, o);
    const std::string peer = hostname() + " " + std::to_string(getpid());
    impl_->store->set("peer/" + std::to_string(e.rank), std::vector<uint8_t>(peer.begin(), peer.end()));
    const std::string machine = machine_identity();
    impl_->store->set("machine/" + std::to_string(e.rank), std::vector<uint8_t>(machine.begin(), machine.end()));
    impl_->one_machine = true;
    for (int r = 0; r < e.world; ++r) {
      auto v = impl_->store->get("peer/" + std::to_string(r));
      std::string s(v.begin(), v.end());
      auto sp = s.rfind(' ');
      impl_->peers.emplace_back(s.substr(0, sp), std::atoi(s.c_str() + sp + 1));
      auto m = impl_->store->get("machine/" + std::to_string(r));
      impl_->one_machine = impl_->one_machine && std::string(m.begin(), m.end()) == machine;
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& ex) {
    std::string msg = ex.what(), hosts;
    for (int r = 0; r < e.world; ++r) hosts += (r ? ", " : "") + std::to_string(r) + " " + arrival(r);
    throw Error("distributed: " + me + " could not connect its Gloo group to the other ranks within " + secs +
                " (ranks: " + hosts + "; GLOO_SOCKET_IFNAME chooses the interface): " + msg.substr(0, msg.find('\n')));
  }
}

// Every rank announces itself (host, address) and waits for the others, at
// most `limit`; on timeout the missing ranks are named, on every rank alike.
void Distributed::wait_for_arrivals(std::chrono::milliseconds limit) {
  const auto gi = choose_gloo_interface(env_.master_addr, env_.master_port);
  const std::string mine = hostname() + " (" + (gi.ifname.empty() ? gi.address : gi.ifname) + ")";
  impl_->store->set("arrived/" + std::to_string(env_.rank), std::vector<uint8_t>(mine.begin(), mine.end()));
  std::vector<std::string> keys;
  for (int r = 0; r < env_.world; ++r) keys.push_back("arrived/" + std::to_string(r));
  try {
    impl_->store->wait(keys, limit);
  } catch (const std::exception&) {
    std::string missing;
    for (int r = 0; r < env_.world; ++r)
      if (!impl_->store->check({keys[r]})) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    throw Error("distributed: rank " + std::to_string(env_.rank) + " on " + hostname() + ": rank " + missing +
                " never arrived at the rendezvous " + env_.master_addr + ":" + std::to_string(env_.master_port) +
                " within " + std::to_string(limit.count() / 1000) + " s (started? same MASTER_ADDR/MASTER_PORT?)");
  }
}

std::string Distributed::arrival(int r) {
  try {
    auto v = impl_->store->get("arrived/" + std::to_string(r));
    return std::string(v.begin(), v.end());
  } catch (const std::exception&) {
    return "(unknown)";
  }
}

Distributed::~Distributed() = default;

// The local peers that exited, as "1, 3" (a remote one cannot be told apart from a hang).
std::string Distributed::gone_ranks() {
  std::string gone;
  const std::string host = hostname();
  for (int r = 0; r < env_.world; ++r) {
    if (r == env_.rank || r >= static_cast<int>(impl_->peers.size())) continue;
    const auto& [h, pid] = impl_->peers[r];
    if (h == host && pid > 0 && process_gone(pid)) gone += (gone.empty() ? "" : ", ") + std::to_string(r);
  }
  return gone;
}

void Distributed::fail(const std::string& what, const std::exception& ex) {
  // A peer's sockets close while it is still exiting, before it is a
  // zombie: give it up to 2 s to be seen gone.
  std::string gone;
  for (int attempt = 0; attempt < 40 && gone.empty(); ++attempt) {
    if (attempt) usleep(50000);
    gone = gone_ranks();
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

void Distributed::allreduce_sum(torch::Tensor& t) { allreduce_sum_async(t)(); }

std::function<void()> Distributed::allreduce_sum_async(torch::Tensor& t) {
  c10::intrusive_ptr<c10d::Work> work;
  try {
    std::vector<at::Tensor> v{t};
    work = impl_->pg->allreduce(v);
  } catch (const std::exception& e) {
    fail("allreduce", e);
  }
  return [this, work] {
    try {
      work->wait(impl_->timeout);
    } catch (const std::exception& e) {
      fail("allreduce", e);
    }
  };
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
  if (shared_memory_applies()) shm_ = open_shared_memory();
  ++d_.impl_->grad_syncs;
  int64_t shm_offset = 0;
  for (auto& b : buckets_) {
    int64_t n = 0;
    for (size_t k : b->members) n += params_[k].numel();
    if (shm_) {  // the buckets are this rank's slot of the shared segment (zeros, as ftruncate made it)
      b->flat = torch::from_blob(shm_->slot() + shm_offset, {n}, params_[b->members.front()].options());
      shm_offset += n;
    } else {
      b->flat = torch::zeros({n}, params_[b->members.front()].options());
    }
    b->filled.assign(b->members.size(), false);
    int64_t off = 0;
    for (size_t k : b->members) {
      slice_of_[k] = b->flat.narrow(0, off, params_[k].numel()).view(params_[k].sizes());
      off += params_[k].numel();
    }
  }
  if (!shm_)  // shared memory: backward accumulates into the slot itself (grads_as_slices)
    for (size_t k = 0; k < params_.size(); ++k)
      hooks_.push_back(params_[k].register_hook([this, k](const torch::Tensor& g) { on_grad(k, g); }));
}

// Every rank's slot in one segment for this parameter list (the store's key
// numbered by GradSync, as every rank makes them in the same order); none
// where a rank could not map it.
std::unique_ptr<ShmMean> GradSync::open_shared_memory() {
  int64_t total = 0;
  for (auto& p : params_) total += p.numel();
  const std::string key = "shm/" + std::to_string(d_.impl_->grad_syncs);
  auto* store = d_.impl_->store.get();
  auto shm = std::make_unique<ShmMean>(
      d_.rank(), d_.world(), static_cast<size_t>(total),
      [store, key](const std::string& name) { store->set(key, std::vector<uint8_t>(name.begin(), name.end())); },
      [store, key] {
        auto v = store->get(key);
        return std::string(v.begin(), v.end());
      },
      [store, key, this](bool mapped) {
        store->set(key + "/mapped/" + std::to_string(d_.rank()), std::vector<uint8_t>{uint8_t(mapped)});
        bool all = true;
        for (int r = 0; r < d_.world(); ++r) all = all && store->get(key + "/mapped/" + std::to_string(r))[0];
        return all;
      },
      [this] {
        const std::string gone = d_.gone_ranks();
        if (!gone.empty())
          throw Error("distributed: rank " + std::to_string(d_.rank()) + ": gradient mean failed (rank " + gone +
                      " exited)");
      },
      d_.impl_->timeout);
  if (shm->ok()) return shm;
  if (d_.rank() == 0)
    std::cerr << "distributed: no shared memory for the gradients' mean (/dev/shm full or missing?): Gloo it is\n";
  return nullptr;
}

GradSync::~GradSync() {
  for (size_t k = 0; k < hooks_.size(); ++k) params_[k].remove_hook(hooks_[k]);
  if (!shm_) return;
  for (size_t k = 0; k < params_.size(); ++k) {  // a slice of the shared slot must outlive its mapping
    auto& g = params_[k].mutable_grad();
    if (g.defined() && g.data_ptr() == slice_of_[k].data_ptr()) g = g.clone();
  }
}

void GradSync::arm() {
  armed_ = true;
  next_ = 0;
  for (auto& b : buckets_) {
    b->filled.assign(b->members.size(), false);
    b->n_filled = 0;
    b->work.reset();
  }
  if (shm_) grads_as_slices();
}

// Shared memory: every p.grad becomes its slice of this rank's slot (what
// it held so far copied in, zero where it had none), so backward's
// AccumulateGrad adds into the slot itself: no hook copies, no copies back
// after the mean (DDP's gradient_as_bucket_view).
void GradSync::grads_as_slices() {
  torch::NoGradGuard ng;
  for (auto& b : buckets_) {
    bool any = false;
    for (size_t k : b->members) any = any || params_[k].grad().defined();
    if (!any) b->flat.zero_();
    for (size_t k : b->members) {
      auto& p = params_[k];
      auto& slice = slice_of_[k];
      if (!p.grad().defined()) {
        if (any) slice.zero_();
      } else if (p.grad().data_ptr() != slice.data_ptr()) {
        slice.copy_(p.grad());
      }
      p.mutable_grad() = slice;
    }
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

// Where the ranks' shared memory averages the gradients: one machine, all
// float32, not turned off by LDM_SHM_GRADS=0.
bool GradSync::shared_memory_applies() const {
  const char* env = std::getenv("LDM_SHM_GRADS");
  if (d_.world() < 2 || !d_.impl_->one_machine || (env && std::string(env) == "0")) return false;
  return std::all_of(params_.begin(), params_.end(),
                     [](const torch::Tensor& p) { return p.scalar_type() == torch::kFloat32 && p.device().is_cpu(); });
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
  armed_ = false;
  if (shm_) {  // the gradients are in the slot already (grads_as_slices)
    shm_->mean();
    return;
  }
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
