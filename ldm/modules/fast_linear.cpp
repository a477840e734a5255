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

// Float32 only: with bf16 weights (--precision bf16) oneDNN's matmul gained
// nothing measurable on the UNet step (2026-12-03: 5.71 / 5.77 s against
// 5.05-6.24 s) and its first call was 1 s slower (a JIT kernel per shape).
bool applies(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  const auto t = x.scalar_type();
  if (!g_on || !x.device().is_cpu() || t != torch::kFloat32 || w.scalar_type() != t) return false;
  if (w.dim() != 2 || x.dim() < 1 || x.size(-1) != w.size(1) || x.numel() == 0) return false;
  if (b.defined() && (b.scalar_type() != t || b.dim() != 1 || b.size(0) != w.size(0))) return false;
  return inference_call(x, w, b);
}
}  // namespace

torch::Tensor fast_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  if (!applies(x, weight, bias)) return {};
  RECORD_FUNCTION("ldm::linear", std::vector<c10::IValue>({x, weight}));
  using tag = dnnl::memory::format_tag;
  const auto d = dnnl::memory::data_type::f32;
  const int64_t k = weight.size(1), n = weight.size(0), m = x.numel() / k;
  const bool with_bias = bias.defined();
  dnnl::memory::desc ad({m, k}, d, tag::ab), wd({k, n}, d, tag::ba), bd({1, n}, d, tag::ab), yd({m, n}, d, tag::ab);
  auto& eng = dnnl_engine();
  dnnl::matmul prim;
  try {  // oneDNN's primitive cache: built once per shape
    dnnl::matmul::primitive_desc pd(with_bias ? dnnl::matmul::desc(ad, wd, bd, yd) : dnnl::matmul::desc(ad, wd, yd),
                                    eng);
    // its reference kernel (where it has no tuned one) is orders of
    // magnitude slower than libtorch's
    if (std::strstr(pd.impl_info_str(), "ref")) return {};
    prim = dnnl::matmul(pd);
  } catch (const dnnl::error&) {
    return {};
  }
  const auto a = x.contiguous(), w = weight.contiguous(), b = with_bias ? bias.contiguous() : bias;
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = n;
  auto y = torch::empty(out_sizes, x.options().memory_format(torch::MemoryFormat::Contiguous));
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, dnnl::memory(ad, eng, a.data_ptr())},
                                             {DNNL_ARG_WEIGHTS, dnnl::memory(wd, eng, w.data_ptr())},
                                             {DNNL_ARG_DST, dnnl::memory(yd, eng, y.data_ptr())}};
  if (with_bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(bd, eng, b.data_ptr()));
  prim.execute(dnnl_stream(), args);
  dnnl_stream().wait();
  return y;
}
#else
torch::Tensor fast_linear(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) { return {}; }
#endif

}  // namespace ldm::nn
