// Diffusion-model helpers: sinusoidal timestep embedding, beta schedules,
// DDIM timestep/coefficient helpers, and gradient checkpointing.
#pragma once
#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

namespace torch::nn { class Module; }

namespace ldm {

// [cos(t f), sin(t f)] with f_i = exp(-ln(max_period) i / half), computed in
// float32 (the reference's order: cos first).
torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int64_t dim, double max_period = 10000);

// make_beta_schedule: "linear" (linear in sqrt(beta), squared), "cosine"
// (Nichol & Dhariwal 2021, clipped to 0.999), "sqrt_linear", "sqrt". Float64.
torch::Tensor make_beta_schedule(const std::string& schedule, int64_t n, double linear_start = 1e-4,
                                 double linear_end = 2e-2, double cosine_s = 8e-3);

// DDIM: "uniform" = range(0, T, T/S) + 1; "quad" = (linspace(0, sqrt(.8 T), S)^2) + 1.
std::vector<int64_t> make_ddim_timesteps(const std::string& method, int64_t num_steps, int64_t T);

// Recomputes `fn` in backward instead of storing its activations (the
// reference's `checkpoint`). Gradients equal the plain forward's. Inputs may
// include undefined tensors (optional context). Plain call when disabled or
// when autograd is off.
using CheckpointFn = std::function<torch::Tensor(const std::vector<torch::Tensor>&)>;
torch::Tensor checkpoint(const CheckpointFn& fn, const std::vector<torch::Tensor>& inputs,
                         torch::nn::Module& owner, bool enabled);

}  // namespace ldm
