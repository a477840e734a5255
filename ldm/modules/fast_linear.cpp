#include "ldm/modules/fast_linear.h"

#include <ATen/autocast_mode.h>
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

bool applies(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  if (!g_on || !x.device().is_cpu() || x.scalar_type() != torch::kFloat32 || w.scalar_type() != torch::kFloat32)
    return false;
  if (w.dim() != 2 || x.dim() < 1 || x.size(-1) != w.size(1) || x.numel() == 0) return false;
  if (b.defined() && (b.scalar_type() != torch::kFloat32 || b.dim() != 1 || b.size(0) != w.size(0))) return false;
  if (torch::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad() || (b.defined() && b.requires_grad())))
    return false;
  return !at::autocast::is_cpu_enabled();
}
}  // namespace

torch::Tensor fast_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  if (!applies(x, weight, bias)) return {};
  RECORD_FUNCTION("ldm::linear", std::vector<c10::IValue>({x, weight}));
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  const int64_t k = weight.size(1), n = weight.size(0), m = x.numel() / k;
  auto a = x.contiguous();
  auto w = weight.contiguous();
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = n;
  auto y = torch::empty(out_sizes, x.options().memory_format(torch::MemoryFormat::Contiguous));
  dnnl::memory::desc ad({m, k}, dt::f32, tag::ab), wd({k, n}, dt::f32, tag::ba), yd({m, n}, dt::f32, tag::ab);
  try {
    auto& eng = dnnl_engine();
    const bool with_bias = bias.defined();
    torch::Tensor b = with_bias ? bias.contiguous() : torch::Tensor();
    dnnl::memory::desc bd({1, n}, dt::f32, tag::ab);
    auto desc = with_bias ? dnnl::matmul::desc(ad, wd, bd, yd) : dnnl::matmul::desc(ad, wd, yd);
    dnnl::matmul prim(dnnl::matmul::primitive_desc(desc, eng));  // oneDNN's cache: built once per shape
    dnnl::memory am(ad, eng, a.data_ptr()), wm(wd, eng, w.data_ptr()), ym(yd, eng, y.data_ptr());
    std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}};
    if (with_bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(bd, eng, b.data_ptr()));
    prim.execute(dnnl_stream(), args);
    dnnl_stream().wait();
  } catch (const dnnl::error&) {
    return {};  // a shape oneDNN will not take: libtorch's linear
  }
  return y;
}
#else
torch::Tensor fast_linear(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) { return {}; }
#endif

}  // namespace ldm::nn
