#include "ldm/modules/fast_conv.h"

#include <ATen/record_function.h>
#include <torch/torch.h>

#include <atomic>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "ldm/modules/dnnl_context.h"
#include "ldm/modules/winograd_conv.h"

namespace ldm::nn {

namespace {
FastConv from_env() {
  const char* v = std::getenv("LDM_CONV");
  if (!v || !*v || !std::strcmp(v, "auto")) return FastConv::Auto;
  if (!std::strcmp(v, "direct")) return FastConv::Direct;
  return FastConv::Aten;  // "aten" (anything else: the safe path)
}
// per thread, so that pipelines on other threads are never affected
thread_local FastConv g_mode = from_env();
}  // namespace

void set_fast_conv(FastConv mode) { g_mode = mode; }

namespace {
thread_local int g_off = 0;
}
FastConvOff::FastConvOff() { ++g_off; }
FastConvOff::~FastConvOff() { --g_off; }

namespace {
thread_local PackedHook g_packed_hook;
}  // namespace
void set_fast_conv_packed_hook(PackedHook hook) { g_packed_hook = std::move(hook); }
FastConv fast_conv() { return g_mode; }

bool stored_nhwc(const torch::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

#ifdef LDM_DNNL
bool fast_conv_available() { return true; }

namespace {
using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// Winograd only on maps with >= this many pixels (batch included): on smaller
// ones it gains little (1280 channels at 8x8 x2: 25%; 320 at 32x32 x2: 2.3x).
const int64_t kWinoMinPixels = std::getenv("LDM_WINO_MIN_PIXELS") ? std::atoll(std::getenv("LDM_WINO_MIN_PIXELS")) : 1024;
// Weights up to 640x640x3x3 keep their transformed copy (4x the plain ones:
// 6x6 tiles of 3x3 kernels); larger ones (SD's 32² level at 512²: 960-1920
// channels in) transform theirs per call, block by block, which bounds the
// extra memory: per layer (2 threads, 2026-12-03) direct 109-280 ms, per call
// in 16 MB blocks 47-150, kept 38-96 (kept, the 4-step 512² txt2img peaked
// 377 MB higher, above round one's 4.84 GB; per call, 60 MB lower).
const int64_t kWinoMaxInOut = std::getenv("LDM_WINO_MAX_INOUT") ? std::atoll(std::getenv("LDM_WINO_MAX_INOUT")) : 640 * 640;
// ... and at least this many channels in and out: below, the transforms weigh
// as much as the 36 channel products (the Fashion-MNIST models' 32-64 channels
// ran up to 2x slower than libtorch's conv; SD's VAE has 128 and up).
const int64_t kWinoMinChannels =
    std::getenv("LDM_WINO_MIN_CHANNELS") ? std::atoll(std::getenv("LDM_WINO_MIN_CHANNELS")) : 128;
// The choice depends on the shape alone, never on how often a layer ran:
// the same request gives the same pixels whatever ran before it (a server's
// tenth request, a pipeline after a LoRA was restored). Ours (winograd_conv)
// keeps its transformed weights from a layer's second call on; the pixels are
// the same as the first call's, which transforms them for the call.
// Ours on every CPU, oneDNN's AVX-512 Winograd only with LDM_WINO=onednn:
// oneDNN 2.6 transforms its weights with a scalar reorder (~12 ms per MB, into
// fresh memory) and holds whole-map scratch (VAE decode 512²: peak 4.7 GB
// against 2.5 GB with ours). Measured per layer (2 threads, 2026-12-03, first
// call / steady): VAE 512 ch at 64² 112-144 / 28-33 ms against ours 75-93 /
// 28-33; 128 ch at 512² 353-436 / 153-181 against 242-340 / 212-254.
// oneDNN's is 10x more exact (its interpolation points), ours ~1e-5.
const bool kOnednnWino = [] {
  const char* v = std::getenv("LDM_WINO");
  return v && !std::strcmp(v, "onednn");
}();
// Packed direct kernels pay where the weights outweigh the maps (SD's 1280
// channels at 4x4/8x8: libtorch reorders 59 MB of weights per call there); on
// larger maps libtorch's per-call reorder is amortised and its kernel the same.
// 2048 takes in SD 1.5's 640-channel level at 512x512 (32x32, batch 2): conv
// time 2.96 -> 2.82 s a step, and a one-shot txt2img's peak 134 MB lower (the
// packed copy replaces file pages that libtorch's path keeps mapped).
const int64_t kDirectMaxPixels = std::getenv("LDM_DIRECT_MAX") ? std::atoll(std::getenv("LDM_DIRECT_MAX")) : 2048;

struct Entry {
  std::vector<int64_t> in_sizes;
  bool channels_last = false;  // x and y stored NHWC (bf16 inference on AMX: nn::compute_layout)
  bool wino = false;
  dnnl::convolution_forward prim;
  dnnl::memory::desc user_src, src, user_dst, dst, bias, scratch;
  dnnl::reorder src_reorder, dst_reorder;  // empty when the layouts agree
  std::shared_ptr<dnnl::memory> weights;
};
}  // namespace

struct FastConvCache {
  std::mutex mu;
  const void* wptr = nullptr;
  int64_t wversion = -1;
  int calls = 0;
  bool refused = false;  // oneDNN could not build this conv: libtorch from now on
  bool no_wino = false;  // no oneDNN Winograd kernel on this CPU: ours (winograd_conv)
  bool plain_gone = false;  // the packed hook dropped the weight's values: pack from c.packed
  std::unique_ptr<WinogradConv3x3> own_wino;
  std::vector<Entry> entries;
  std::vector<std::shared_ptr<dnnl::memory>> packed;  // shared by entries with equal layouts
};

namespace {
std::shared_ptr<dnnl::memory> pack_weights(FastConvCache& c, const dnnl::memory::desc& want, const torch::Tensor& w) {
  for (auto& p : c.packed)
    if (p->get_desc() == want) return p;
  dnnl::memory::desc plain(dims_of(w.sizes()), dnnl_dtype(w), tag::oihw);
  dnnl::memory user = c.plain_gone ? *c.packed.front() : dnnl::memory(plain, dnnl_engine(), w.data_ptr());
  auto packed = std::make_shared<dnnl::memory>(want, dnnl_engine());
  dnnl::reorder(user, *packed).execute(dnnl_stream(), user, *packed);
  dnnl_stream().wait();
  c.packed.push_back(packed);
  if (g_packed_hook && !c.plain_gone && g_packed_hook(w)) c.plain_gone = true;
  return packed;
}

Entry build(FastConvCache& c, const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
            const std::vector<int64_t>& stride, int64_t padding, bool wino) {
  const int64_t n = x.size(0), co = w.size(0);
  const auto [oh, ow] = conv_out_hw(x, w, stride, padding);
  const bool has_bias = b.defined();
  const dt t = dnnl_dtype(x);
  Entry e;
  e.in_sizes = x.sizes().vec();
  e.channels_last = stored_nhwc(x);
  e.wino = wino;
  const tag layout = e.channels_last ? tag::nhwc : tag::nchw;
  e.user_src = dnnl::memory::desc(dims_of(x.sizes()), t, layout);
  e.user_dst = dnnl::memory::desc({n, co, oh, ow}, t, layout);
  dnnl::memory::desc any_src(dims_of(x.sizes()), t, tag::any);
  dnnl::memory::desc any_w(dims_of(w.sizes()), t, tag::any);
  dnnl::memory::desc any_dst({n, co, oh, ow}, t, tag::any);
  if (has_bias) e.bias = dnnl::memory::desc({co}, dnnl_dtype(b), tag::x);
  dnnl::memory::dims st{stride[0], stride[1]}, pad{padding, padding};
  auto alg = wino ? dnnl::algorithm::convolution_winograd : dnnl::algorithm::convolution_direct;
  auto d = has_bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, alg, any_src, any_w, e.bias,
                                                      any_dst, st, pad, pad)
                    : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, alg, any_src, any_w,
                                                      any_dst, st, pad, pad);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // from libtorch's allocator per call
  dnnl::convolution_forward::primitive_desc pd(d, attr, dnnl_engine());
  e.scratch = pd.scratchpad_desc();
  e.prim = dnnl::convolution_forward(pd);
  e.src = pd.src_desc();
  e.dst = pd.dst_desc();
  if (e.src != e.user_src) e.src_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(dnnl_engine(), e.user_src, dnnl_engine(), e.src));
  if (e.dst != e.user_dst) e.dst_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(dnnl_engine(), e.dst, dnnl_engine(), e.user_dst));
  e.weights = pack_weights(c, pd.weights_desc(), w);
  return e;
}

// bf16 where the CPU has AMX (dnnl_bf16). bf16 elsewhere stays on libtorch's conv:
// packed oneDNN bf16 kernels were tried on AVX512-BF16 (Zen 4, 2026-12-01):
// x0.88 per UNet step at 256², x1.00 at 512², but a packed copy of weights
// that are not file pages (converted at load) is +0.85 GiB and +2.5 s of fresh
// memory for a 5-step txt2img, and bf16 is the memory-saving precision.
bool applies(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  if (x.dim() != 4 || w.dim() != 4 || !x.device().is_cpu() || !w.device().is_cpu()) return false;
  const auto t = x.scalar_type();
  if (w.scalar_type() != t || !dnnl_dtype_ok(x)) return false;
  if (b.defined() && ((b.scalar_type() != torch::kFloat32 && b.scalar_type() != t) || !b.is_contiguous())) return false;
  if (!w.is_contiguous() || x.size(1) != w.size(1) || x.numel() == 0) return false;
  return inference_call(x, w, b);
}
}  // namespace

namespace {
torch::Tensor fast_conv2d_locked(FastConvCache& c, const torch::Tensor& x, const torch::Tensor& w,
                                 const torch::Tensor& b, const std::vector<int64_t>& stride, int64_t padding) {
  const FastConv mode = fast_conv();
  if (c.wptr != w.data_ptr() || c.wversion != static_cast<int64_t>(w._version())) {
    c.entries.clear();
    c.packed.clear();
    c.own_wino.reset();
    c.plain_gone = false;
    c.calls = 0;
    c.wptr = w.data_ptr();
    c.wversion = w._version();
  }
  ++c.calls;
  bool wino = false, keep = true;
  if (mode == FastConv::Auto) {
    const int64_t pixels = x.size(0) * x.size(2) * x.size(3);
    const bool wino_shape = w.size(2) == 3 && w.size(3) == 3 && stride[0] == 1 && stride[1] == 1 &&
                            padding == 1 && pixels >= kWinoMinPixels && std::min(w.size(0), w.size(1)) >= kWinoMinChannels;
    wino = wino_shape && x.scalar_type() == torch::kFloat32;
    keep = w.size(0) * w.size(1) <= kWinoMaxInOut;
    const auto [oh, ow] = conv_out_hw(x, w, stride, padding);
    // bf16 packs every size: libtorch's bf16 conv reorders NCHW maps around oneDNN's AMX kernels
    if (!wino && x.scalar_type() == torch::kFloat32 && x.size(0) * oh * ow > kDirectMaxPixels) return {};
  }
  if (wino && (c.no_wino || !kOnednnWino || !keep)) {
    if (!c.own_wino) c.own_wino = std::make_unique<WinogradConv3x3>(w, int64_t{8} << 20, keep);
    RECORD_FUNCTION("ldm::conv_winograd", std::vector<c10::IValue>{x});
    const bool was_cached = c.own_wino->cached();
    auto y = (*c.own_wino)(x.contiguous(), b);  // it reads NCHW
    if (!was_cached && c.own_wino->cached() && g_packed_hook) g_packed_hook(w);
    return y;
  }
  auto find = [&]() -> Entry* {
    for (auto& en : c.entries)
      if (en.in_sizes == x.sizes() && en.wino == wino && en.channels_last == stored_nhwc(x)) return &en;
    return nullptr;
  };
  Entry* e = find();
  if (!e) {
    try {
      c.entries.push_back(build(c, x, w, b, stride, padding, wino));
    } catch (const dnnl::error&) {
      if (!wino) {  // a shape oneDNN has no kernel for: libtorch's conv from now on
        c.refused = true;
        return {};
      }
      c.no_wino = true;  // Winograd is AVX-512 only: direct
      --c.calls;         // the retry counts this call again
      return fast_conv2d_locked(c, x, w, b, stride, padding);
    }
    if (wino) {  // Winograd took over this shape: drop its direct entry and unused packings
      std::vector<Entry> keep;
      for (auto& en : c.entries)
        if (en.wino || en.in_sizes != x.sizes()) keep.push_back(std::move(en));
      c.entries = std::move(keep);
    }
    if (c.entries.size() > 4) c.entries.erase(c.entries.begin());  // many shapes (VAE tiles)
    std::vector<std::shared_ptr<dnnl::memory>> used;
    for (auto& en : c.entries)
      if (std::find(used.begin(), used.end(), en.weights) == used.end()) used.push_back(en.weights);
    c.packed = std::move(used);
    e = find();
  }
  RECORD_FUNCTION(e->wino ? "ldm::conv_dnnl_winograd" : "ldm::conv_packed", std::vector<c10::IValue>{x});
  auto xc = e->channels_last ? x : x.contiguous();
  auto out = torch::empty(e->user_dst.dims(), x.options().memory_format(e->channels_last ? at::MemoryFormat::ChannelsLast
                                                                                          : at::MemoryFormat::Contiguous));
  auto& s = dnnl_stream();
  dnnl::memory usrc(e->user_src, dnnl_engine(), xc.data_ptr());
  dnnl::memory udst(e->user_dst, dnnl_engine(), out.data_ptr());
  dnnl::memory src = usrc, dst = udst;
  torch::Tensor src_buf, dst_buf;  // libtorch's allocator keeps these resident
  if (e->src_reorder) {
    src_buf = torch::empty({static_cast<int64_t>(e->src.get_size())}, x.options().dtype(torch::kUInt8));
    src = dnnl::memory(e->src, dnnl_engine(), src_buf.data_ptr());
    e->src_reorder.execute(s, usrc, src);
  }
  if (e->dst_reorder) {
    dst_buf = torch::empty({static_cast<int64_t>(e->dst.get_size())}, x.options().dtype(torch::kUInt8));
    dst = dnnl::memory(e->dst, dnnl_engine(), dst_buf.data_ptr());
  }
  auto scratch_buf = torch::empty({static_cast<int64_t>(e->scratch.get_size())}, x.options().dtype(torch::kUInt8));
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, src},
                                             {DNNL_ARG_WEIGHTS, *e->weights},
                                             {DNNL_ARG_DST, dst},
                                             {DNNL_ARG_SCRATCHPAD, dnnl::memory(e->scratch, dnnl_engine(), scratch_buf.data_ptr())}};
  if (b.defined()) args.emplace(DNNL_ARG_BIAS, dnnl::memory(e->bias, dnnl_engine(), b.data_ptr()));
  e->prim.execute(s, args);
  if (e->dst_reorder) e->dst_reorder.execute(s, dst, udst);
  s.wait();
  return out;
}
}  // namespace

bool fast_conv_bf16_available() { return dnnl_bf16(); }

namespace {
// Writes the packed copy back into the weight whose values the hook dropped,
// before libtorch's conv (or anything else) reads it.
void restore_plain(FastConvCache& c, const torch::Tensor& w) {
  if (!c.plain_gone || c.wptr != w.data_ptr() || c.packed.empty()) return;
  dnnl::memory::desc plain(dims_of(w.sizes()), dnnl_dtype(w), dnnl::memory::format_tag::oihw);
  dnnl::memory user(plain, dnnl_engine(), w.data_ptr());
  dnnl::reorder(*c.packed.front(), user).execute(dnnl_stream(), *c.packed.front(), user);
  dnnl_stream().wait();
  c.plain_gone = false;
}
}  // namespace

torch::Tensor fast_conv2d(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                          const std::vector<int64_t>& stride, int64_t padding, std::shared_ptr<FastConvCache>& cache) {
  if (fast_conv() == FastConv::Aten || g_off > 0 || !applies(x, w, b)) {
    if (cache) {
      std::lock_guard<std::mutex> lock(cache->mu);
      restore_plain(*cache, w);
    }
    return {};
  }
  if (!cache) cache = std::make_shared<FastConvCache>();
  std::lock_guard<std::mutex> lock(cache->mu);
  auto y = cache->refused ? torch::Tensor() : fast_conv2d_locked(*cache, x, w, b, stride, padding);
  if (!y.defined()) restore_plain(*cache, w);
  return y;
}

size_t fast_conv_cache_bytes(const std::shared_ptr<FastConvCache>& cache) {
  if (!cache) return 0;
  std::lock_guard<std::mutex> lock(cache->mu);
  size_t n = 0;
  for (auto& p : cache->packed) n += p->get_desc().get_size();
  return n + (cache->own_wino ? cache->own_wino->bytes() : 0);
}

#else  // no oneDNN 2.x headers at build time: libtorch's conv everywhere

bool fast_conv_available() { return false; }
bool fast_conv_bf16_available() { return false; }
struct FastConvCache {};
torch::Tensor fast_conv2d(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const std::vector<int64_t>&,
                          int64_t, std::shared_ptr<FastConvCache>&) {
  return {};
}
size_t fast_conv_cache_bytes(const std::shared_ptr<FastConvCache>&) { return 0; }

#endif

}  // namespace ldm::nn
