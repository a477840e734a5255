#include "ldm/io/resize.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ldm/error.h"

namespace ldm::io {

namespace {
constexpr double kPi = 3.14159265358979323846;
constexpr double kSupport = 3.0;  // Lanczos-3

double sinc(double x) { return x == 0.0 ? 1.0 : std::sin(kPi * x) / (kPi * x); }
double lanczos(double x) { return std::abs(x) < kSupport ? sinc(x) * sinc(x / kSupport) : 0.0; }
}  // namespace

torch::Tensor lanczos_weights(int64_t in, int64_t out) {
  if (in <= 0 || out <= 0) throw Error("lanczos resize: sizes must be positive, got " + std::to_string(in) + " -> " + std::to_string(out));
  // PIL's precompute_coeffs (Resample.c): the kernel spans `support` input
  // pixels, widened by the scale when shrinking so that it low-passes
  const double scale = static_cast<double>(in) / out;
  const double filterscale = std::max(scale, 1.0);
  const double support = kSupport * filterscale;
  std::vector<double> w(static_cast<size_t>(out * in), 0.0);
  for (int64_t o = 0; o < out; ++o) {
    const double centre = (o + 0.5) * scale;
    const int64_t lo = std::max<int64_t>(static_cast<int64_t>(centre - support + 0.5), 0);
    const int64_t hi = std::min<int64_t>(static_cast<int64_t>(centre + support + 0.5), in);
    double sum = 0;
    for (int64_t i = lo; i < hi; ++i) sum += w[o * in + i] = lanczos((i - centre + 0.5) / filterscale);
    if (sum != 0)
      for (int64_t i = lo; i < hi; ++i) w[o * in + i] /= sum;
  }
  return torch::tensor(w, torch::kFloat64).view({out, in}).to(torch::kFloat32);
}

torch::Tensor resize_lanczos(const torch::Tensor& image, int64_t height, int64_t width) {
  if (image.dim() != 3 && image.dim() != 4)
    throw Error("lanczos resize: expected an image [C, H, W] or [N, C, H, W], got " + std::to_string(image.dim()) + " dims");
  auto x = image.to(torch::kFloat32);
  const int64_t h = x.size(-2), w = x.size(-1);
  if (h == height && w == width) return x.clamp(0, 1);
  // separable: rows (x @ Wx^T) then columns (Wy @ x), horizontal first as PIL
  if (w != width) x = torch::matmul(x, lanczos_weights(w, width).t());
  if (h != height) x = torch::matmul(lanczos_weights(h, height), x);
  return x.clamp(0, 1).contiguous();
}

}  // namespace ldm::io
