#include "ldm/modules/ema.h"

#include <torch/torch.h>

#include "ldm/error.h"

namespace ldm {

std::string LitEma::shadow_name(const std::string& n) {
  std::string s;
  for (char c : n)
    if (c != '.') s += c;
  return s;
}

LitEma::LitEma(torch::nn::Module& model, double d, bool use_num_updates) {
  decay = register_buffer("decay", torch::tensor(static_cast<float>(d)));
  num_updates = register_buffer("num_updates", torch::tensor(use_num_updates ? 0 : -1, torch::kInt32));
  for (auto& p : model.named_parameters()) {
    if (!p.value().requires_grad()) continue;
    auto s = shadow_name(p.key());
    m2s_[p.key()] = s;
    register_buffer(s, p.value().detach().clone());
  }
}

double lit_ema_decay(double decay, double n) { return std::min(decay, (1 + n) / (10 + n)); }

void lit_ema_step(torch::Tensor& shadow, const torch::Tensor& live, double d) {
  shadow.sub_((1.0 - d) * (shadow - live));
}

void LitEma::update(torch::nn::Module& model) {
  torch::NoGradGuard ng;
  double d = decay.item<double>();
  if (num_updates.item<int>() >= 0) {
    num_updates.add_(1);
    d = lit_ema_decay(d, num_updates.item<int>());
  }
  auto bufs = named_buffers(false);
  for (auto& p : model.named_parameters()) {
    auto it = m2s_.find(p.key());
    if (it == m2s_.end() || !p.value().requires_grad()) continue;
    lit_ema_step(bufs[it->second], p.value(), d);
  }
}

void LitEma::copy_to(torch::nn::Module& model) {
  torch::NoGradGuard ng;
  auto bufs = named_buffers(false);
  for (auto& p : model.named_parameters()) {
    auto it = m2s_.find(p.key());
    if (it != m2s_.end()) p.value().copy_(bufs[it->second]);
  }
}

void LitEma::reset(torch::nn::Module& model) {
  torch::NoGradGuard ng;
  auto bufs = named_buffers(false);
  for (auto& p : model.named_parameters()) {
    auto it = m2s_.find(p.key());
    if (it != m2s_.end()) bufs[it->second].copy_(p.value());
  }
  if (num_updates.item<int>() > 0) num_updates.zero_();
}

void LitEma::store(torch::nn::Module& model) {
  collected_.clear();
  for (auto& p : model.parameters()) collected_.push_back(p.detach().clone());
}

void LitEma::restore(torch::nn::Module& model) {
  torch::NoGradGuard ng;
  auto params = model.parameters();
  if (params.size() != collected_.size()) throw Error("LitEma::restore: store() was not called for this model");
  for (size_t i = 0; i < params.size(); ++i) params[i].copy_(collected_[i]);
}

EmaScope::EmaScope(LitEma* ema, torch::nn::Module& model) : ema_(ema), model_(model) {
  if (!ema_) return;
  ema_->store(model_);
  ema_->copy_to(model_);
}

EmaScope::~EmaScope() {
  if (ema_) ema_->restore(model_);
}

}  // namespace ldm
