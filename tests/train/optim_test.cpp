// The fused AdamW against libtorch's AdamW (an independent implementation of
// torch.optim.AdamW), several steps, with and without weight decay.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ldm/train/optim.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
std::vector<torch::Tensor> params(int seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> ps;
  for (auto n : {7, 300, 70001}) ps.push_back(torch::randn({n}).requires_grad_());
  ps.push_back(torch::randn({33, 65}).requires_grad_());
  return ps;
}
void run(torch::optim::Optimizer& opt, std::vector<torch::Tensor>& ps, int steps) {
  torch::manual_seed(100);
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    torch::Tensor loss = torch::zeros({});
    for (auto& p : ps) loss = loss + (p * torch::randn_like(p)).pow(2).sum() * 0.5;
    loss.backward();
    opt.step();
  }
}
}  // namespace

TEST(FusedAdamW, MatchesLibtorchAdamW) {
  for (double wd : {0.0, 0.05}) {
    auto a = params(1), b = params(1);
    auto opts = torch::optim::AdamWOptions(3e-2).weight_decay(wd).betas({0.8, 0.95}).eps(1e-6);
    torch::optim::AdamW ref(a, opts);
    FusedAdamW fused(b, opts);
    run(ref, a, 6);
    run(fused, b, 6);
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_LT(test::max_abs_err(a[i], b[i]), 1e-5) << "param " << i << " wd " << wd;
      EXPECT_GT((a[i] - params(1)[i]).abs().max().item<double>(), 1e-2);  // it moved
    }
    // the same state objects: a checkpoint of one resumes the other
    auto& sa = static_cast<torch::optim::AdamWParamState&>(*ref.state().begin()->second);
    EXPECT_EQ(sa.step(), 6);
    for (auto& [k, st] : fused.state()) EXPECT_EQ(static_cast<torch::optim::AdamWParamState&>(*st).step(), 6);
  }
}

TEST(FusedAdamW, NonContiguousParametersTakeTheGeneralPath) {
  auto a = params(2), b = params(2);
  auto base = torch::randn({20, 30});
  auto ta = base.clone().t().requires_grad_(), tb = base.clone().t().requires_grad_();  // transposed views' storage
  a.push_back(ta.detach().t().contiguous().t().requires_grad_());
  b.push_back(tb.detach().t().contiguous().t().requires_grad_());
  ASSERT_FALSE(b.back().is_contiguous());
  torch::optim::AdamW ref(a, torch::optim::AdamWOptions(1e-2));
  FusedAdamW fused(b, torch::optim::AdamWOptions(1e-2));
  run(ref, a, 3);
  run(fused, b, 3);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_LT(test::max_abs_err(a[i], b[i]), 1e-6);
}
