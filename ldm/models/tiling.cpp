#include "ldm/models/tiling.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "ldm/error.h"

namespace ldm {
namespace {

// Tile starts along one axis of length n: stride tile - overlap, the last
// tile flush with the end; starts aligned down to `align`.
std::vector<int64_t> starts(int64_t n, const TileOptions& o) {
  std::vector<int64_t> s;
  if (n <= o.tile) return {0};
  const int64_t stride = std::max<int64_t>(o.align, (o.tile - o.overlap) / o.align * o.align);
  for (int64_t p = 0;; p += stride) {
    const int64_t q = std::min(p, (n - o.tile) / o.align * o.align);
    if (s.empty() || q > s.back()) s.push_back(q);
    if (q + o.tile >= n) break;
  }
  return s;
}

// Blend weight along one tile axis of output length len: ramps over `ramp`
// samples on sides that overlap a neighbour, flat 1 on image borders.
torch::Tensor ramp_weights(int64_t len, double ramp, bool ramp_lo, bool ramp_hi) {
  auto i = torch::arange(len, torch::kFloat32) + 0.5;
  auto w = torch::ones({len});
  if (ramp > 0 && ramp_lo) w = torch::minimum(w, i / ramp);
  if (ramp > 0 && ramp_hi) w = torch::minimum(w, (len - i) / ramp);
  return w;
}

}  // namespace

torch::Tensor tiled_apply(const std::function<torch::Tensor(const torch::Tensor&)>& fn, const torch::Tensor& x,
                          const TileOptions& o) {
  if (o.tile <= 0) return fn(x);
  if (o.overlap < 0 || o.overlap >= o.tile)
    throw Error("tiling: overlap " + std::to_string(o.overlap) + " must be in [0, tile " + std::to_string(o.tile) + ")");
  if (o.tile % o.align) throw Error("tiling: tile " + std::to_string(o.tile) + " must be a multiple of " + std::to_string(o.align));
  const int64_t H = x.size(-2), W = x.size(-1);
  if (H <= o.tile && W <= o.tile) return fn(x);
  const auto ys = starts(H, o), xs = starts(W, o);
  torch::Tensor acc, wsum;
  double s = 0;
  for (size_t a = 0; a < ys.size(); ++a) {
    for (size_t b = 0; b < xs.size(); ++b) {
      const int64_t th = std::min(o.tile, H), tw = std::min(o.tile, W);
      auto out = fn(x.narrow(-2, ys[a], th).narrow(-1, xs[b], tw));
      if (!acc.defined()) {
        s = static_cast<double>(out.size(-1)) / tw;
        acc = torch::zeros({out.size(0), out.size(1), std::llround(H * s), std::llround(W * s)}, out.options());
        wsum = torch::zeros({1, 1, acc.size(2), acc.size(3)}, out.options());
      }
      const int64_t oy = std::llround(ys[a] * s), ox = std::llround(xs[b] * s);
      // ramps only where the neighbouring tile overlaps this one
      const double ry = a > 0 ? (ys[a - 1] + th - ys[a]) * s : 0, ry2 = a + 1 < ys.size() ? (ys[a] + th - ys[a + 1]) * s : 0;
      const double rx = b > 0 ? (xs[b - 1] + tw - xs[b]) * s : 0, rx2 = b + 1 < xs.size() ? (xs[b] + tw - xs[b + 1]) * s : 0;
      auto wy = torch::minimum(ramp_weights(out.size(2), ry, a > 0, false), ramp_weights(out.size(2), ry2, false, a + 1 < ys.size()));
      auto wx = torch::minimum(ramp_weights(out.size(3), rx, b > 0, false), ramp_weights(out.size(3), rx2, false, b + 1 < xs.size()));
      auto w = (wy.view({-1, 1}) * wx.view({1, -1})).to(out.options()).view({1, 1, out.size(2), out.size(3)});
      acc.narrow(2, oy, out.size(2)).narrow(3, ox, out.size(3)).add_(out * w);
      wsum.narrow(2, oy, out.size(2)).narrow(3, ox, out.size(3)).add_(w);
    }
  }
  return acc / wsum;
}

}  // namespace ldm
