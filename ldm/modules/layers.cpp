#include "ldm/modules/layers.h"

#include "ldm/modules/fast_conv.h"
#include "ldm/modules/fast_linear.h"
#include "ldm/modules/group_norm_fused.h"
#include "ldm/modules/train_conv.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace ldm::nn {

namespace {
thread_local Init g_init = Init::Random;

torch::Tensor blank(const std::vector<int64_t>& shape) {
  auto opt = torch::TensorOptions().dtype(torch::kFloat32);
  if (g_init == Init::Meta) opt = opt.device(torch::kMeta);
  return torch::empty(shape, opt);
}
}  // namespace

Init init_mode() { return g_init; }
InitScope::InitScope(Init m) : prev_(g_init) { g_init = m; }
InitScope::~InitScope() { g_init = prev_; }

torch::Tensor make_param(const std::vector<int64_t>& shape, double bound) {
  auto t = blank(shape);
  if (g_init == Init::Random) {
    torch::NoGradGuard ng;
    t.uniform_(-bound, bound);
  }
  return t;
}
torch::Tensor make_const(const std::vector<int64_t>& shape, double value) {
  auto t = blank(shape);
  if (g_init == Init::Random) t.fill_(value);
  return t;
}
torch::Tensor make_normal(const std::vector<int64_t>& shape) {
  auto t = blank(shape);
  if (g_init == Init::Random) {
    torch::NoGradGuard ng;
    t.normal_();
  }
  return t;
}

// PyTorch's default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), bias the same.
Conv::Conv(int d, int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, bool b)
    : Conv(d, in, out, k, std::vector<int64_t>(d, s), p, b) {}

Conv::Conv(int d, int64_t in, int64_t out, int64_t k, std::vector<int64_t> s, int64_t p, bool b)
    : dims(d), stride(std::move(s)), padding(p) {
  std::vector<int64_t> shape{out, in};
  int64_t fan_in = in;
  for (int i = 0; i < d; ++i) {
    shape.push_back(k);
    fan_in *= k;
  }
  double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  weight = register_parameter("weight", make_param(shape, bound));
  if (b) bias = register_parameter("bias", make_param({out}, bound));
}

namespace {
std::atomic<std::atomic<double>*> g_conv_flops{nullptr};
}
void set_conv_flop_counter(std::atomic<double>* counter) { g_conv_flops = counter; }

namespace {
// bench's FLOP counter: 2 x output elements x (in channels x kernel volume)
void count_flops(int64_t out_elements, const torch::Tensor& weight) {
  if (auto* c = g_conv_flops.load(std::memory_order_relaxed)) {
    double f = 2.0 * static_cast<double>(out_elements) * static_cast<double>(weight.numel() / weight.size(0));
    double cur = c->load();
    while (!c->compare_exchange_weak(cur, cur + f)) {}
  }
}
}  // namespace

torch::Tensor Conv::forward(const torch::Tensor& x) {
  // dilation spelled out: libtorch's profiler (ldm bench) warns on every
  // conv2d whose padding and dilation are not both of size 2
  std::vector<int64_t> pad(dims, padding), dil(dims, 1);
  torch::Tensor y;
  if (dims == 2) y = train_conv2d(x, weight, bias, stride, padding, train);
  if (dims == 2 && !y.defined()) y = fast_conv2d(x, weight, bias, stride, padding, fast);
  if (!y.defined())
    y = dims == 1 ? torch::conv1d(x, weight, bias, stride, pad, dil)
                  : dims == 2 ? torch::conv2d(x, weight, bias, stride, pad, dil)
                              : torch::conv3d(x, weight, bias, stride, pad, dil);
  if (lora) y = y + lora->forward(x);
  count_flops(y.numel(), weight);
  return y;
}

bool Conv::is_plain_1x1() const {
  return dims == 2 && !lora && weight.size(2) == 1 && weight.size(3) == 1 && padding == 0 &&
         std::all_of(stride.begin(), stride.end(), [](int64_t s) { return s == 1; });
}

namespace {
// A map's [B, H*W, C] tokens: a view where it is stored NHWC, a copy otherwise
torch::Tensor tokens_of(const torch::Tensor& x) {
  return x.permute({0, 2, 3, 1}).reshape({x.size(0), x.size(2) * x.size(3), x.size(1)});
}
}  // namespace

torch::Tensor Conv::forward_to_tokens(const torch::Tensor& x) {
  torch::Tensor y;
  if (is_plain_1x1())  // NCHW read as tokens by the matmul; NHWC's tokens are a view: a linear layer
    y = stored_nhwc(x) ? fast_linear(tokens_of(x), weight.view({weight.size(0), weight.size(1)}), bias)
                       : fast_conv1x1_to_tokens(x, weight, bias);
  if (y.defined()) {
    count_flops(y.numel(), weight);
    return y;
  }
  return tokens_of(forward(x));
}

torch::Tensor Conv::forward_from_tokens(const torch::Tensor& h, const torch::Tensor& residual,
                                        c10::MemoryFormat layout) {
  torch::Tensor y;
  if (is_plain_1x1() && stored_nhwc(residual) && h.dim() == 3) {  // NHWC: tokens out are the map, a linear layer
    y = fast_linear(h, weight.view({weight.size(0), weight.size(1)}), bias, tokens_of(residual));
    if (y.defined()) y = y.view({residual.size(0), residual.size(2), residual.size(3), -1}).permute({0, 3, 1, 2});
  } else if (is_plain_1x1()) {
    y = fast_tokens_to_conv1x1(h, weight, bias, residual);
  }
  if (y.defined()) {
    count_flops(y.numel(), weight);
    return y;
  }
  const auto B = residual.size(0), H = residual.size(2), W = residual.size(3);
  return forward(h.transpose(1, 2).reshape({B, -1, H, W}).contiguous(layout)) + residual;
}

void release_fast_conv(torch::nn::Module& m) {
  for (auto& sub : m.modules(/*include_self=*/true))
    if (auto* c = dynamic_cast<Conv*>(sub.get())) c->fast.reset();
}

void Conv::zero_() {
  torch::NoGradGuard ng;
  if (init_mode() != Init::Random) return;
  weight.zero_();
  if (bias.defined()) bias.zero_();
}

Linear::Linear(int64_t in, int64_t out, bool b) {
  double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight = register_parameter("weight", make_param({out, in}, bound));
  if (b) bias = register_parameter("bias", make_param({out}, bound));
}

torch::Tensor Linear::forward(const torch::Tensor& x) {
  auto y = fast_linear(x, weight, bias);
  if (!y.defined() && x.dim() > 2 && bias.defined()) {
    // as rows: one addmm with the bias, where libtorch 1.13 runs a matmul and
    // a separate broadcast add_ (0.6 ms for GEGLU's 64 x 16 x 512 in bf16)
    auto rows = torch::nn::functional::linear(x.reshape({-1, x.size(-1)}), weight, bias);
    auto shape = x.sizes().vec();
    shape.back() = weight.size(0);
    y = rows.view(shape);
  }
  if (!y.defined()) y = torch::nn::functional::linear(x, weight, bias);
  return lora ? y + lora->forward(x) : y;
}

torch::Tensor Linear::forward(const torch::Tensor& x, const torch::Tensor& residual) {
  auto y = lora ? torch::Tensor() : fast_linear(x, weight, bias, residual);
  return y.defined() ? y : forward(x) + residual;
}

std::vector<torch::Tensor> parameters_with_adapters(torch::nn::Module& m) {
  auto v = m.parameters();
  for (auto& mod : m.modules()) {
    std::shared_ptr<LoraAdapter> a;
    if (auto* l = mod->as<Linear>()) a = l->lora;
    if (auto* c = mod->as<Conv>()) a = c->lora;
    if (a)
      for (auto& p : a->parameters()) v.push_back(p);
  }
  return v;
}

LoraAdapter::LoraAdapter(int64_t in, int64_t out, int64_t r, double a, int64_t kernel, std::vector<int64_t> stride,
                         int64_t padding)
    : rank(r), alpha(a), kernel_(kernel), padding_(padding), stride_(std::move(stride)) {
  const int64_t fan_in = in * (kernel ? kernel * kernel : 1);
  torch::NoGradGuard ng;
  down = register_parameter("down", kernel ? torch::empty({r, in, kernel, kernel}) : torch::empty({r, in}));
  down.uniform_(-1.0 / std::sqrt(double(fan_in)), 1.0 / std::sqrt(double(fan_in)));
  up = register_parameter("up", kernel ? torch::zeros({out, r, 1, 1}) : torch::zeros({out, r}));
}

torch::Tensor LoraAdapter::forward(const torch::Tensor& x) {
  const double scale = alpha / static_cast<double>(rank);
  if (!kernel_) return torch::nn::functional::linear(torch::nn::functional::linear(x, down.to(x.dtype())), up.to(x.dtype())) * scale;
  auto h = torch::conv2d(x, down.to(x.dtype()), {}, stride_, {padding_, padding_});
  return torch::conv2d(h, up.to(x.dtype())) * scale;
}

void Linear::zero_() {
  torch::NoGradGuard ng;
  if (init_mode() != Init::Random) return;
  weight.zero_();
  if (bias.defined()) bias.zero_();
}

GroupNorm::GroupNorm(int64_t g, int64_t c, double e) : groups(g), eps(e) {
  weight = register_parameter("weight", make_const({c}, 1.0));
  bias = register_parameter("bias", make_const({c}, 0.0));
}

torch::Tensor GroupNorm::forward(const torch::Tensor& x) { return norm(x, false); }

torch::Tensor GroupNorm::forward_silu(const torch::Tensor& x) { return norm(x, true); }

torch::Tensor GroupNorm::forward_scale_shift_silu(const torch::Tensor& x, const torch::Tensor& scale,
                                                  const torch::Tensor& shift) {
  if (group_norm_fused_applies(x)) return group_norm_fused(x, groups, weight, bias, eps, true, scale, shift);
  return torch::silu(norm(x, false) * (1 + scale) + shift);
}

torch::Tensor GroupNorm::norm(const torch::Tensor& x, bool silu) {
  // float32 and bf16 on an AVX2 CPU: norm and SiLU in one pass (bf16: float32 statistics, no float32 copies)
  if (group_norm_fused_applies(x)) return group_norm_fused(x, groups, weight, bias, eps, silu);
  const auto dt = x.scalar_type();
  if (dt == weight.scalar_type() && dt != torch::kBFloat16 && dt != torch::kHalf) {
    auto y = torch::group_norm(x, groups, weight, bias, eps);
    return silu ? torch::silu(y) : y;
  }
  // reduced precision elsewhere: statistics, and the SiLU, in float32
  auto y = torch::group_norm(x.to(torch::kFloat32), groups, weight.to(torch::kFloat32), bias.to(torch::kFloat32), eps);
  return (silu ? torch::silu(y) : y).to(dt);
}

torch::Tensor compute_layout(const torch::Tensor& x) {
  const bool bf16_amx = !torch::GradMode::is_enabled() && x.scalar_type() == torch::kBFloat16 && fast_conv_bf16_available();
  const bool cl = x.dim() == 4 && x.is_cpu() && (torch::GradMode::is_enabled() || bf16_amx) && group_norm_fused_applies(x);
  return cl ? x.contiguous(at::MemoryFormat::ChannelsLast) : x;
}

torch::Tensor compute_layout(const torch::Tensor& x, const torch::Tensor& weight) {
  const bool to_bf16 = !torch::GradMode::is_enabled() && x.scalar_type() == torch::kFloat32 &&
                       weight.scalar_type() == torch::kBFloat16 && fast_conv_bf16_available();
  return compute_layout(to_bf16 ? x.to(torch::kBFloat16) : x);
}

LayerNorm::LayerNorm(int64_t d, double e) : dim(d), eps(e) {
  weight = register_parameter("weight", make_const({d}, 1.0));
  bias = register_parameter("bias", make_const({d}, 0.0));
}

torch::Tensor LayerNorm::forward(const torch::Tensor& x) {
  // Reduced-precision inputs or weights (bf16/fp16 autocast, bf16 inference;
  // torch 1.13's CPU kernel needs one dtype): normalise in float32, as GroupNorm.
  auto reduced = [](const torch::Tensor& t) { return t.scalar_type() == torch::kBFloat16 || t.scalar_type() == torch::kHalf; };
  if (reduced(x) || reduced(weight))
    return torch::layer_norm(x.to(torch::kFloat32), {dim}, weight.to(torch::kFloat32), bias.to(torch::kFloat32), eps)
        .to(x.scalar_type());
  return torch::layer_norm(x, {dim}, weight, bias, eps);
}

Embedding::Embedding(int64_t num, int64_t dim) { weight = register_parameter("weight", make_normal({num, dim})); }

torch::Tensor Embedding::forward(const torch::Tensor& ids) { return torch::embedding(weight, ids); }

}  // namespace ldm::nn
