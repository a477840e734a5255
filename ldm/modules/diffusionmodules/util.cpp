#include "ldm/modules/diffusionmodules/util.h"

#include "ldm/modules/layers.h"

#include <torch/torch.h>

#include <cmath>

#include "ldm/error.h"
#include "ldm/modules/fast_conv.h"

namespace ldm {

torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int64_t dim, double max_period) {
  int64_t half = dim / 2;
  auto opt = torch::TensorOptions().dtype(torch::kFloat32).device(timesteps.device());
  auto freqs = torch::exp(-std::log(max_period) * torch::arange(0, half, opt) / static_cast<double>(half));
  auto args = timesteps.to(torch::kFloat32).unsqueeze(1) * freqs.unsqueeze(0);
  auto emb = torch::cat({torch::cos(args), torch::sin(args)}, -1);
  if (dim % 2) emb = torch::cat({emb, torch::zeros_like(emb.narrow(1, 0, 1))}, -1);
  return emb;
}

torch::Tensor make_beta_schedule(const std::string& schedule, int64_t n, double ls, double le, double cs) {
  auto f64 = torch::kFloat64;
  if (schedule == "linear")
    return torch::linspace(std::sqrt(ls), std::sqrt(le), n, f64).pow(2);
  if (schedule == "cosine") {
    auto t = torch::arange(n + 1, f64) / static_cast<double>(n) + cs;
    auto alphas = (t / (1 + cs) * M_PI / 2).cos().pow(2);
    alphas = alphas / alphas[0];
    auto betas = 1 - alphas.slice(0, 1) / alphas.slice(0, 0, n);
    return betas.clamp(0, 0.999);
  }
  if (schedule == "sqrt_linear") return torch::linspace(ls, le, n, f64);
  if (schedule == "sqrt") return torch::linspace(ls, le, n, f64).pow(0.5);
  throw Error("beta_schedule: unknown schedule \"" + schedule + "\" (accepted: linear, cosine, sqrt_linear, sqrt)");
}

std::vector<int64_t> make_ddim_timesteps(const std::string& method, int64_t S, int64_t T) {
  if (S <= 0 || S > T) throw Error("ddim: steps must be in 1.." + std::to_string(T) + ", got " + std::to_string(S));
  std::vector<int64_t> out;
  if (method == "uniform") {
    int64_t c = T / S;
    for (int64_t t = 0; t < T; t += c) out.push_back(t + 1);
  } else if (method == "quad") {
    // numpy: ((np.linspace(0, np.sqrt(T * .8), S)) ** 2).astype(int) + 1
    double hi = std::sqrt(T * 0.8);
    for (int64_t i = 0; i < S; ++i) {
      double v = S == 1 ? 0.0 : hi * static_cast<double>(i) / static_cast<double>(S - 1);
      out.push_back(static_cast<int64_t>(v * v) + 1);
    }
  } else {
    throw Error("ddim discretize: unknown method \"" + method + "\" (accepted: uniform, quad)");
  }
  return out;
}

namespace {
struct FnHolder : torch::CustomClassHolder {
  CheckpointFn fn;
  std::vector<bool> defined;  // which of the original inputs were defined
  size_t n_inputs = 0;
};

std::vector<torch::Tensor> expand(const FnHolder& h, const torch::autograd::variable_list& xs) {
  std::vector<torch::Tensor> full;
  size_t k = 0;
  for (bool d : h.defined) full.push_back(d ? xs[k++] : torch::Tensor());
  return full;
}

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, c10::IValue holder,
                                                torch::TensorList all) {
    auto h = c10::static_intrusive_pointer_cast<FnHolder>(holder.toCapsule());
    std::vector<torch::Tensor> inputs(all.begin(), all.begin() + h->n_inputs);
    torch::Tensor out;
    {
      torch::NoGradGuard ng;
      nn::FastConvOff off;  // training weights: no inference caches
      out = h->fn(expand(*h, inputs));
    }
    ctx->saved_data["fn"] = holder;
    ctx->save_for_backward(all.vec());
    return {out};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto h = c10::static_intrusive_pointer_cast<FnHolder>(ctx->saved_data["fn"].toCapsule());
    auto saved = ctx->get_saved_variables();
    std::vector<torch::Tensor> inputs, wrt;
    std::vector<size_t> wrt_index;
    for (size_t i = 0; i < saved.size(); ++i) {
      torch::Tensor t = saved[i];
      if (i < h->n_inputs) {
        t = t.detach();
        if (t.is_floating_point()) t.requires_grad_(saved[i].requires_grad());
        inputs.push_back(t);
      }
      if (t.requires_grad()) {
        wrt.push_back(t);
        wrt_index.push_back(i);
      }
    }
    torch::Tensor out;
    {
      torch::AutoGradMode g(true);
      out = h->fn(expand(*h, inputs));
    }
    torch::autograd::variable_list result(saved.size() + 1);  // +1: the holder argument
    if (wrt.empty() || !out.requires_grad()) return result;
    auto grads = torch::autograd::grad({out}, wrt, {grad_out[0]}, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t k = 0; k < wrt.size(); ++k) result[wrt_index[k] + 1] = grads[k];
    return result;
  }
};
}  // namespace

torch::Tensor checkpoint(const CheckpointFn& fn, const std::vector<torch::Tensor>& inputs, torch::nn::Module& owner,
                         bool enabled) {
  if (!enabled || !torch::GradMode::is_enabled()) return fn(inputs);
  auto h = c10::make_intrusive<FnHolder>();
  h->fn = fn;
  std::vector<torch::Tensor> all;
  for (const auto& t : inputs) {
    h->defined.push_back(t.defined());
    if (t.defined()) all.push_back(t);
  }
  h->n_inputs = all.size();
  for (auto& p : nn::parameters_with_adapters(owner)) all.push_back(p);
  return CheckpointFunction::apply(c10::IValue::make_capsule(h), torch::TensorList(all))[0];
}

}  // namespace ldm
