#include "ldm/modules/fast_linear.h"

#include <ATen/record_function.h>
#include <torch/torch.h>

#include <cstdlib>
#include <cstring>
#include <unordered_map>

#include "ldm/modules/dnnl_context.h"

namespace ldm::nn {

namespace {
thread_local bool g_on = [] {
  const char* v = std::getenv("LDM_LINEAR");
  return !(v && !std::strcmp(v, "aten"));
}();
}  // namespace
void set_fast_linear(bool on) { g_on = on; }
bool fast_linear_on() { return g_on; }

#ifdef LDM_DNNL
namespace {

// Float32, and bf16 where the CPU has AMX (dnnl_bf16): on AVX512-BF16 alone
// oneDNN's bf16 matmul gained nothing measurable on the UNet step (Zen 4,
// 2026-12-03: 5.71 / 5.77 s against 5.05-6.24 s) and its first call was 1 s
// slower (a JIT kernel per shape).
bool applies(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  const auto t = x.scalar_type();
  if (!g_on || !x.device().is_cpu() || !dnnl_dtype_ok(x) || w.scalar_type() != t) return false;
  if (w.dim() != 2 || x.dim() < 1 || x.size(-1) != w.size(1) || x.numel() == 0) return false;
  if (b.defined() && (!(b.scalar_type() == t || b.scalar_type() == torch::kFloat32) || b.dim() != 1 ||
                      b.size(0) != w.size(0)))
    return false;
  return inference_call(x, w, b);
}

// Runs oneDNN's matmul src x wei (+ bias) -> dst with attr's post-ops, built
// once per shape by oneDNN's primitive cache; false where oneDNN refuses or
// has only its reference kernel (orders of magnitude slower than libtorch's).
// args: every operand's memory but the primitive's own.
bool run_matmul(const dnnl::memory::desc& src, const dnnl::memory::desc& wei, const dnnl::memory::desc* bias,
                const dnnl::memory::desc& dst, const dnnl::primitive_attr& attr,
                const std::unordered_map<int, dnnl::memory>& args) {
  dnnl::matmul prim;
  try {
    dnnl::matmul::primitive_desc pd(bias ? dnnl::matmul::desc(src, wei, *bias, dst) : dnnl::matmul::desc(src, wei, dst),
                                    attr, dnnl_engine());
    if (std::strstr(pd.impl_info_str(), "ref")) return false;
    prim = dnnl::matmul(pd);
  } catch (const dnnl::error&) {
    return false;
  }
  prim.execute(dnnl_stream(), args);
  dnnl_stream().wait();
  return true;
}

dnnl::memory mem(const dnnl::memory::desc& d, const torch::Tensor& t) {
  return dnnl::memory(d, dnnl_engine(), t.data_ptr());
}

// The 1x1 convolutions' shared conditions: float32 (or AMX bf16) CPU tensors, weights
// [out, in, 1, 1] or [out, in], a bias of [out] or none, x NCHW-contiguous.
bool applies_1x1(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  if (!g_on || !x.device().is_cpu() || !dnnl_dtype_ok(x) || w.scalar_type() != x.scalar_type()) return false;
  if (!(w.dim() == 2 || (w.dim() == 4 && w.size(2) == 1 && w.size(3) == 1)) || !w.is_contiguous()) return false;
  if (b.defined() && (!(b.scalar_type() == x.scalar_type() || b.scalar_type() == torch::kFloat32) ||
                      b.numel() != w.size(0) || !b.is_contiguous()))
    return false;
  return x.is_contiguous() && x.numel() > 0 && inference_call(x, w, b);
}
}  // namespace

torch::Tensor fast_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                          const torch::Tensor& residual) {
  if (!applies(x, weight, bias)) return {};
  using tag = dnnl::memory::format_tag;
  const auto d = dnnl_dtype(x);
  const int64_t k = weight.size(1), n = weight.size(0), m = x.numel() / k;
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = n;
  if (residual.defined() &&
      (residual.scalar_type() != x.scalar_type() || !residual.is_contiguous() || residual.sizes() != out_sizes))
    return {};
  RECORD_FUNCTION("ldm::linear", std::vector<c10::IValue>({x, weight}));
  dnnl::memory::desc ad({m, k}, d, tag::ab), wd({k, n}, d, tag::ba), yd({m, n}, d, tag::ab);
  dnnl::memory::desc bd({1, n}, bias.defined() ? dnnl_dtype(bias) : d, tag::ab);
  const auto a = x.contiguous(), w = weight.contiguous(), b = bias.defined() ? bias.contiguous() : bias;
  auto y = torch::empty(out_sizes, x.options().memory_format(torch::MemoryFormat::Contiguous));
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, mem(ad, a)}, {DNNL_ARG_WEIGHTS, mem(wd, w)}, {DNNL_ARG_DST, mem(yd, y)}};
  if (b.defined()) args.emplace(DNNL_ARG_BIAS, mem(bd, b));
  dnnl::primitive_attr attr;
  if (residual.defined()) {  // y + residual as the kernel stores y
    dnnl::post_ops po;
    po.append_binary(dnnl::algorithm::binary_add, yd);
    attr.set_post_ops(po);
    args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, mem(yd, residual));
  }
  if (!run_matmul(ad, wd, b.defined() ? &bd : nullptr, yd, attr, args)) return {};
  return y;
}

torch::Tensor fast_conv1x1_to_tokens(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  if (x.dim() != 4 || !applies_1x1(x, weight, bias) || x.size(1) != weight.size(1)) return {};
  RECORD_FUNCTION("ldm::conv1x1_tokens", std::vector<c10::IValue>({x}));  // bench: conv time, FLOPs from nn::Conv
  using tag = dnnl::memory::format_tag;
  const auto f = dnnl_dtype(x);
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3), O = weight.size(0);
  // x [B, C, P] read as [B, P, C] (tag acb); weights [O, C] read as [1, C, O]
  dnnl::memory::desc sd({B, P, C}, f, tag::acb), wd({1, C, O}, f, tag::acb), yd({B, P, O}, f, tag::abc);
  dnnl::memory::desc bd({1, 1, O}, bias.defined() ? dnnl_dtype(bias) : f, tag::abc);
  auto y = torch::empty({B, P, O}, x.options());
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, mem(sd, x)}, {DNNL_ARG_WEIGHTS, mem(wd, weight)}, {DNNL_ARG_DST, mem(yd, y)}};
  if (bias.defined()) args.emplace(DNNL_ARG_BIAS, mem(bd, bias));
  if (!run_matmul(sd, wd, bias.defined() ? &bd : nullptr, yd, {}, args)) return {};
  return y;
}

torch::Tensor fast_tokens_to_conv1x1(const torch::Tensor& h, const torch::Tensor& weight, const torch::Tensor& bias,
                                     const torch::Tensor& residual) {
  if (h.dim() != 3 || residual.dim() != 4 || !applies_1x1(h, weight, bias) || h.size(2) != weight.size(1)) return {};
  const int64_t B = h.size(0), P = h.size(1), C = h.size(2), O = weight.size(0);
  if (residual.scalar_type() != h.scalar_type() || !residual.is_contiguous() || residual.size(0) != B ||
      residual.size(1) != O || residual.size(2) * residual.size(3) != P)
    return {};
  RECORD_FUNCTION("ldm::conv1x1_tokens", std::vector<c10::IValue>({h}));  // as above
  using tag = dnnl::memory::format_tag;
  const auto f = dnnl_dtype(h);
  // y[b] = W [O, C] h[b]^T (h [B, P, C] read as [B, C, P]: tag acb) + bias per row + residual[b]
  dnnl::memory::desc sd({1, O, C}, f, tag::abc), wd({B, C, P}, f, tag::acb), yd({B, O, P}, f, tag::abc);
  dnnl::memory::desc bd({1, O, 1}, bias.defined() ? dnnl_dtype(bias) : f, tag::abc);
  dnnl::post_ops po;
  if (bias.defined()) po.append_binary(dnnl::algorithm::binary_add, bd);
  po.append_binary(dnnl::algorithm::binary_add, yd);
  dnnl::primitive_attr attr;
  attr.set_post_ops(po);
  auto y = torch::empty_like(residual);
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, mem(sd, weight)}, {DNNL_ARG_WEIGHTS, mem(wd, h)}, {DNNL_ARG_DST, mem(yd, y)}};
  int idx = 0;
  if (bias.defined()) args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(idx++) | DNNL_ARG_SRC_1, mem(bd, bias));
  args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(idx) | DNNL_ARG_SRC_1, mem(yd, residual));
  if (!run_matmul(sd, wd, nullptr, yd, attr, args)) return {};
  return y;
}
#else
torch::Tensor fast_linear(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  return {};
}
torch::Tensor fast_conv1x1_to_tokens(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) { return {}; }
torch::Tensor fast_tokens_to_conv1x1(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                     const torch::Tensor&) {
  return {};
}
#endif

}  // namespace ldm::nn
