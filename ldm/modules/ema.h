// ema.LitEma: exponential moving average of a model's trainable parameters,
// stored as buffers named like the reference ("decay", "num_updates", and
// each parameter name with its dots removed) so EMA weights load from
// CompVis checkpoints (model_ema.*).
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

namespace ldm {

// LitEma's warm-up rule: the n-th update (n from 1) uses min(decay, (1 + n) / (10 + n)).
double lit_ema_decay(double decay, double n);
// One update of a shadow toward the live tensor as LitEma: shadow -= (1 - d) (shadow - live).
void lit_ema_step(torch::Tensor& shadow, const torch::Tensor& live, double d);

class LitEma : public torch::nn::Module {
 public:
  explicit LitEma(torch::nn::Module& model, double decay = 0.9999, bool use_num_updates = true);
  // One update: decay = min(decay, (1 + n) / (10 + n)) while counting updates.
  void update(torch::nn::Module& model);
  void copy_to(torch::nn::Module& model);  // EMA weights into the model
  void reset(torch::nn::Module& model);    // shadows = the model's weights, no updates yet
  void store(torch::nn::Module& model);    // remember the model's weights
  void restore(torch::nn::Module& model);  // put them back
  static std::string shadow_name(const std::string& param_name);
  torch::Tensor decay, num_updates;

 private:
  std::map<std::string, std::string> m2s_;
  std::vector<torch::Tensor> collected_;
};

// Swaps EMA weights in for a scope (sampling with EMA), and back out.
class EmaScope {
 public:
  EmaScope(LitEma* ema, torch::nn::Module& model);
  ~EmaScope();

 private:
  LitEma* ema_;
  torch::nn::Module& model_;
};

}  // namespace ldm
