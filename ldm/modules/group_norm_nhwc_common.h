// What the channels-last GroupNorm kernels share (8 lanes:
// group_norm_kernel.cpp, 16 lanes: group_norm_nhwc_avx512.cpp): the groups'
// statistics from per-channel sums, and the per-group terms of the gradient.
// Plain C++; the kernels pass their own vector loops in.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace ldm::gn {

struct ChannelStats {
  std::vector<float> mean, rstd;  // the groups' values, per channel
};

// Writes the groups' mean and rstd and returns them per channel.
// sums(center, p, out): per channel, the double sum over the pixels of x
// (p = 1) or (x - center)^2 (p = 2).
template <class Sums>
ChannelStats nhwc_stats(Sums sums_of, int64_t hw, int64_t c, int64_t groups, float eps, float* mean, float* rstd) {
  const int64_t cg = c / groups;
  const double m = double(cg * hw);
  std::vector<double> sums(c);
  ChannelStats st{std::vector<float>(c), std::vector<float>(c)};
  // per group: out[g] = f(sum of its channels' sums), copied to each of its channels
  auto per_group = [&](float* out, std::vector<float>& per_channel, auto f) {
    for (int64_t g = 0; g < groups; ++g) {
      double s = 0;
      for (int64_t k = g * cg; k < (g + 1) * cg; ++k) s += sums[k];
      out[g] = f(s);
      std::fill(per_channel.begin() + g * cg, per_channel.begin() + (g + 1) * cg, out[g]);
    }
  };
  sums_of(nullptr, 1, sums.data());
  per_group(mean, st.mean, [&](double s) { return float(s / m); });
  sums_of(st.mean.data(), 2, sums.data());
  per_group(rstd, st.rstd, [&](double s) { return float(1.0 / std::sqrt(s / m + double(eps))); });
  return st;
}

// From the per-channel sums sg = sum(g), sgx = sum(g xhat): db, dw, and per
// channel its group's A / m and B / m for dx = rstd (w g - (A + xhat B) / m).
inline void nhwc_grad_terms(const float* w, const std::vector<double>& sg, const std::vector<double>& sgx,
                            int64_t hw, int64_t c, int64_t groups, float* dw, float* db, std::vector<float>& am,
                            std::vector<float>& bm) {
  const int64_t cg = c / groups;
  const double m = double(cg * hw);
  am.resize(c), bm.resize(c);
  for (int64_t g = 0; g < groups; ++g) {
    double a = 0, bsum = 0;
    for (int64_t k = g * cg; k < (g + 1) * cg; ++k) a += w[k] * sg[k], bsum += w[k] * sgx[k];
    for (int64_t k = g * cg; k < (g + 1) * cg; ++k) am[k] = float(a / m), bm[k] = float(bsum / m);
  }
  for (int64_t k = 0; k < c; ++k) db[k] = float(sg[k]), dw[k] = float(sgx[k]);
}

}  // namespace ldm::gn
