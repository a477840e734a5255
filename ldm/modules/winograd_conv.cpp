#include "ldm/modules/winograd_conv.h"

#include <torch/torch.h>

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "ldm/modules/dnnl_context.h"
#include "ldm/modules/transpose_kernel.h"
#include "ldm/util/parallel.h"

namespace ldm::nn {

namespace {
// F(4x4, 3x3) on the points 0, 1, -1, 2, -2, inf (Lavin & Gray 2016, eq. 12-14):
// y = A^T [(G g G^T) . (B^T d B)] A for a 6x6 input tile d and 3x3 kernel g.
constexpr int64_t kTile = 6, kOut = 4, kPos = kTile * kTile;
constexpr int64_t kCB = 64;  // channels per inner block: one tile's 36 x 64 floats stay in L1

// The transforms' loops run over contiguous channels: restrict-qualified
// so they vectorize, cloned for AVX2 (the build targets baseline x86-64).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LDM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LDM_CLONES
#endif
#define LDM_R __restrict

// B^T on six vectors of n floats: o_k[c] = sum_a B^T[k][a] d_a[c].
LDM_CLONES void input_rows(const float* LDM_R d0, const float* LDM_R d1, const float* LDM_R d2, const float* LDM_R d3,
                           const float* LDM_R d4, const float* LDM_R d5, float* LDM_R o0, float* LDM_R o1,
                           float* LDM_R o2, float* LDM_R o3, float* LDM_R o4, float* LDM_R o5, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    const float x0 = d0[c], x1 = d1[c], x2 = d2[c], x3 = d3[c], x4 = d4[c], x5 = d5[c];
    o0[c] = 4 * x0 - 5 * x2 + x4;
    o1[c] = -4 * (x1 + x2) + x3 + x4;
    o2[c] = 4 * (x1 - x2) - x3 + x4;
    o3[c] = 2 * (x3 - x1) - x2 + x4;
    o4[c] = 2 * (x1 - x3) - x2 + x4;
    o5[c] = 4 * x1 - 5 * x3 + x5;
  }
}
void input_rows(const float* const d[6], float* const o[6], int64_t n) {
  input_rows(d[0], d[1], d[2], d[3], d[4], d[5], o[0], o[1], o[2], o[3], o[4], o[5], n);
}

// A^T on six vectors: o_k[c] = sum_a A^T[k][a] m_a[c] + b[c].
LDM_CLONES void output_rows(const float* LDM_R m0, const float* LDM_R m1, const float* LDM_R m2,
                            const float* LDM_R m3, const float* LDM_R m4, const float* LDM_R m5, float* LDM_R o0,
                            float* LDM_R o1, float* LDM_R o2, float* LDM_R o3, const float* LDM_R b, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    const float x0 = m0[c], x1 = m1[c], x2 = m2[c], x3 = m3[c], x4 = m4[c], x5 = m5[c], bc = b[c];
    o0[c] = x0 + x1 + x2 + x3 + x4 + bc;
    o1[c] = x1 - x2 + 2 * (x3 - x4) + bc;
    o2[c] = x1 + x2 + 4 * (x3 + x4) + bc;
    o3[c] = x1 - x2 + 8 * (x3 - x4) + x5 + bc;
  }
}
void output_rows(const float* const m[6], float* const o[4], const float* b, int64_t n) {
  output_rows(m[0], m[1], m[2], m[3], m[4], m[5], o[0], o[1], o[2], o[3], b, n);
}

struct Geometry {
  int64_t n, h, w, th, tw;  // batch, map, tiles per column and row
};

// Tiles per column group: a group's input rows (6 x 66 x 64 floats) and
// output rows stay in L2 while they are turned between NCHW and channels-last.
constexpr int64_t kGroup = 16;

// Rows 4i-1 .. 4i+4 of image n, channels [c0, c0 + cb), the columns of tiles
// [j0, j1) with their one-pixel borders, zero outside the map, into
// l[a][col][k]: a small channels-last block of the NCHW input.
void gather(const float* x, const Geometry& g, int64_t c, int64_t n, int64_t i, int64_t c0, int64_t cb, int64_t j0,
            int64_t j1, float* l) {
  const int64_t cols = kOut * (j1 - j0) + 2, x0 = kOut * j0 - 1;
  const int64_t lo = std::max<int64_t>(0, -x0), hi = std::max(lo, std::min(cols, g.w - x0));  // inside the map
  for (int64_t a = 0; a < kTile; ++a) {
    float* la = l + a * cols * kCB;
    const int64_t y = kOut * i - 1 + a;
    if (y < 0 || y >= g.h) {
      std::fill(la, la + cols * kCB, 0.0f);
      continue;
    }
    for (int64_t col = 0; col < cols; ++col)
      if (col < lo || col >= hi) std::fill(la + col * kCB, la + col * kCB + cb, 0.0f);
    // la[col][k] = x[channel c0 + k][row y][column x0 + col]
    transpose_f32(x + ((n * c + c0) * g.h + y) * g.w + x0 + lo, g.h * g.w, la + lo * kCB, kCB, cb, hi - lo);
  }
}

// Tile row `tr` (image tr / th, row tr % th) of the NCHW input x (c channels)
// into rows [row0, row0 + tw) of v: [36][rows][c], B^T d B per tile.
void transform_input_row(const float* x, const Geometry& g, int64_t c, int64_t tr, float* v, int64_t rows,
                         int64_t row0) {
  const int64_t n = tr / g.th, i = tr % g.th;
  // scratch of a fixed size, per thread: not reallocated per tile row (contents never carried over)
  thread_local std::vector<float> l(kTile * (kOut * kGroup + 2) * kCB), mid(kPos * kCB);
  for (int64_t j0 = 0; j0 < g.tw; j0 += kGroup) {
    const int64_t j1 = std::min(j0 + kGroup, g.tw), cols = kOut * (j1 - j0) + 2;
    for (int64_t c0 = 0; c0 < c; c0 += kCB) {
      const int64_t cb = std::min(kCB, c - c0);
      gather(x, g, c, n, i, c0, cb, j0, j1, l.data());
      for (int64_t j = j0; j < j1; ++j) {
        const float* d = l.data() + kOut * (j - j0) * kCB;  // d[a][b] at d + (a * cols + b) * kCB
        for (int64_t b = 0; b < kTile; ++b) {  // columns: mid[k][b] = sum_a B^T[k][a] d[a][b]
          const float* col[6];
          float* out[6];
          for (int64_t a = 0; a < kTile; ++a) col[a] = d + (a * cols + b) * kCB;
          for (int64_t k = 0; k < kTile; ++k) out[k] = mid.data() + (k * kTile + b) * kCB;
          input_rows(col, out, cb);
        }
        for (int64_t k = 0; k < kTile; ++k) {  // rows: v[k][l] = sum_b mid[k][b] B[b][l]
          const float* row[6];
          float* out[6];
          for (int64_t b = 0; b < kTile; ++b) row[b] = mid.data() + (k * kTile + b) * kCB;
          for (int64_t q = 0; q < kTile; ++q) out[q] = v + ((k * kTile + q) * rows + row0 + j) * c + c0;
          input_rows(row, out, cb);
        }
      }
    }
  }
}

// Rows [row0, row0 + tw) of m: [36][rows][co] -> tile row `tr` of the NCHW
// output y, A^T m A per tile, bias added, the map's edges cropped.
void transform_output_row(const float* m, const float* bias, const Geometry& g, int64_t co, int64_t tr,
                          int64_t rows, int64_t row0, float* y) {
  const int64_t n = tr / g.th, i = tr % g.th, ylim = std::min(kOut, g.h - kOut * i);
  static const std::vector<float> zeros(kCB, 0.0f);
  thread_local std::vector<float> mid(kOut * kTile * kCB), o(kOut * kOut * kGroup * kCB);  // as above
  for (int64_t j0 = 0; j0 < g.tw; j0 += kGroup) {
    const int64_t j1 = std::min(j0 + kGroup, g.tw), cols = kOut * (j1 - j0), xlim = std::min(cols, g.w - kOut * j0);
    for (int64_t c0 = 0; c0 < co; c0 += kCB) {
      const int64_t cb = std::min(kCB, co - c0);
      for (int64_t j = j0; j < j1; ++j) {
        for (int64_t b = 0; b < kTile; ++b) {  // columns: mid[r][b] = sum_a A^T[r][a] m[a][b]
          const float* col[6];
          float* out[4];
          for (int64_t a = 0; a < kTile; ++a) col[a] = m + ((a * kTile + b) * rows + row0 + j) * co + c0;
          for (int64_t r = 0; r < kOut; ++r) out[r] = mid.data() + (r * kTile + b) * kCB;
          output_rows(col, out, zeros.data(), cb);
        }
        for (int64_t r = 0; r < kOut; ++r) {  // rows, with the bias: o[r][q] = sum_b mid[r][b] A[b][q]
          const float* row[6];
          float* out[4];
          for (int64_t b = 0; b < kTile; ++b) row[b] = mid.data() + (r * kTile + b) * kCB;
          for (int64_t q = 0; q < kOut; ++q) out[q] = o.data() + (r * cols + kOut * (j - j0) + q) * kCB;
          output_rows(row, out, bias ? bias + c0 : zeros.data(), cb);
        }
      }
      for (int64_t r = 0; r < ylim; ++r)  // channels-last block -> NCHW rows: y[c0 + k][row][col] = o[r][col][k]
        transpose_f32(o.data() + r * cols * kCB, kCB, y + ((n * co + c0) * g.h + kOut * i + r) * g.w + kOut * j0,
                      g.h * g.w, xlim, cb);
    }
  }
}

// Tile rows per chunk: the chunk's transformed input and products (36 floats
// per tile and channel each) take about `bytes` each, reused across chunks
// (in cache where they fit), but a chunk holds at least 256 tiles: the GEMMs
// need the rows.
int64_t chunk_tile_rows(int64_t bytes, int64_t channels, const Geometry& g) {
  const int64_t fit = bytes / (kPos * 4 * channels * g.tw), min_rows = (256 + g.tw - 1) / g.tw;
  return std::clamp<int64_t>(std::max(fit, min_rows), 1, g.n * g.th);
}
}  // namespace

namespace {
constexpr int64_t kLanes = 16;  // output channels transformed together, one vector each

// G g G^T for the 3x3 kernels of kLanes output channels (one input channel):
// g[k][o] is kernel element k of channel o, u[p][o] position p of the 6x6
// result. Lanes run in the innermost loops so that they vectorize.
LDM_CLONES void transform_kernels(const float* LDM_R g, float* LDM_R u) {
  float t[kTile * 3][kLanes];  // G g: the kernels' columns through G's rows
  for (int c = 0; c < 3; ++c)
    for (int64_t o = 0; o < kLanes; ++o) {
      const float a = g[c * kLanes + o], b = g[(3 + c) * kLanes + o], d = g[(6 + c) * kLanes + o];
      t[0 * 3 + c][o] = a / 4;
      t[1 * 3 + c][o] = -(a + b + d) / 6;
      t[2 * 3 + c][o] = -(a - b + d) / 6;
      t[3 * 3 + c][o] = a / 24 + b / 12 + d / 6;
      t[4 * 3 + c][o] = a / 24 - b / 12 + d / 6;
      t[5 * 3 + c][o] = d;
    }
  for (int r = 0; r < kTile; ++r)  // (G g) G^T
    for (int64_t o = 0; o < kLanes; ++o) {
      const float a = t[r * 3][o], b = t[r * 3 + 1][o], d = t[r * 3 + 2][o];
      float* ur = u + r * kTile * kLanes + o;
      ur[0 * kLanes] = a / 4;
      ur[1 * kLanes] = -(a + b + d) / 6;
      ur[2 * kLanes] = -(a - b + d) / 6;
      ur[3 * kLanes] = a / 24 + b / 12 + d / 6;
      ur[4 * kLanes] = a / 24 - b / 12 + d / 6;
      ur[5 * kLanes] = d;
    }
}
}  // namespace

torch::Tensor winograd_weights(const torch::Tensor& w) {
  if (w.dim() != 4 || w.size(2) != 3 || w.size(3) != 3 || w.scalar_type() != torch::kFloat32)
    throw std::invalid_argument("winograd_weights: expected a float32 [Co, Ci, 3, 3] kernel");
  const auto wc = w.contiguous();
  const int64_t co = w.size(0), ci = w.size(1);
  auto u = torch::empty({kPos, ci, co}, w.options());
  const float* src = wc.data_ptr<float>();
  float* dst = u.data_ptr<float>();
  // blocks of kLanes output channels: each reads kLanes rows of w (ci * 9 floats) as it goes
  at::parallel_for(0, (co + kLanes - 1) / kLanes, 1, [&](int64_t lo, int64_t hi) {
    float g[9 * kLanes], r[kPos * kLanes];
    for (int64_t ob = lo; ob < hi; ++ob) {
      const int64_t o0 = ob * kLanes, n = std::min(kLanes, co - o0);
      for (int64_t i = 0; i < ci; ++i) {
        for (int64_t o = 0; o < kLanes; ++o)
          for (int k = 0; k < 9; ++k) g[k * kLanes + o] = o < n ? src[((o0 + o) * ci + i) * 9 + k] : 0.0f;
        transform_kernels(g, r);
        for (int64_t p = 0; p < kPos; ++p) std::copy(r + p * kLanes, r + p * kLanes + n, dst + (p * ci + i) * co + o0);
      }
    }
  });
  return u;
}

namespace {
// The 36 products of a chunk: m[k][:, o0 : o0 + n] = v[k] @ u[k], u [36, Ci, n]
// row-major: all of the output channels (n = Co), or a block of them for a
// layer that transforms its weights per call. One GEMM layout whether u is
// cached or made for this call, so a layer's output never depends on which
// (oneDNN's matmul takes plain weights as fast as its own packing here).
class BatchedGemm {
 public:
  BatchedGemm(int64_t ci, int64_t co) : ci_(ci), co_(co) {}
  void run(const torch::Tensor& v, const torch::Tensor& u, torch::Tensor& m, int64_t o0 = 0) {
#ifdef LDM_DNNL
    Prim& p = prim(v.size(1), u.size(2));
    auto scratch = torch::empty({static_cast<int64_t>(p.scratch.get_size())}, v.options().dtype(torch::kUInt8));
    p.prim.execute(dnnl_stream(), {{DNNL_ARG_SRC, dnnl::memory(p.src, dnnl_engine(), v.data_ptr())},
                                   {DNNL_ARG_WEIGHTS, dnnl::memory(p.w, dnnl_engine(), u.data_ptr())},
                                   {DNNL_ARG_DST, dnnl::memory(p.dst, dnnl_engine(), m.data_ptr<float>() + o0)},
                                   {DNNL_ARG_SCRATCHPAD, dnnl::memory(p.scratch, dnnl_engine(), scratch.data_ptr())}});
    dnnl_stream().wait();
#else
    if (u.size(2) == co_)
      at::bmm_out(m, v, u);
    else
      m.narrow(2, o0, u.size(2)).copy_(at::bmm(v, u));
#endif
  }

 private:
  int64_t ci_, co_;
#ifdef LDM_DNNL
  // oneDNN's matmul, not libtorch's bmm: it runs on the OpenMP threads the
  // transforms use; OpenBLAS's own pool competes with them for the cores.
  struct Prim {
    int64_t rows, n;
    dnnl::matmul prim;
    dnnl::memory::desc src, w, dst, scratch;
  };
  std::vector<Prim> prims_;

  Prim& prim(int64_t rows, int64_t n) {
    for (auto& p : prims_)
      if (p.rows == rows && p.n == n) return p;
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    dnnl::memory::desc src({kPos, rows, ci_}, dt::f32, tag::abc), w({kPos, ci_, n}, dt::f32, tag::abc),
        dst({kPos, rows, n}, dt::f32, dnnl::memory::dims{rows * co_, co_, 1});
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, w, dst), attr, dnnl_engine());
    if (prims_.size() >= 8) prims_.erase(prims_.begin());  // many shapes (VAE tiles, a server's sizes)
    prims_.push_back({rows, n, dnnl::matmul(pd), src, w, dst, pd.scratchpad_desc()});
    return prims_.back();
  }
#endif
};

// Output channels per block of a layer that transforms its weights per call:
// the block's transformed weights take about `bytes` (a multiple of 16 channels).
int64_t stream_block(int64_t bytes, int64_t ci, int64_t co) {
  const int64_t fit = bytes / (kPos * 4 * ci);
  return std::clamp<int64_t>(fit / 16 * 16, 16, co);
}
}  // namespace

struct WinogradConv3x3::Impl {
  torch::Tensor w, u;  // u: the transformed weights, kept from the second call on (where keep)
  int64_t ci, co, chunk_bytes;
  bool keep;
  int64_t calls = 0;
  BatchedGemm gemm;

  // m = v @ u for one chunk; without u, the weights transformed block by block
  void products(const torch::Tensor& v, const torch::Tensor& uk, torch::Tensor& m) {
    if (uk.defined()) return gemm.run(v, uk, m);
    const int64_t cb = stream_block(2 * chunk_bytes, ci, co);
    for (int64_t o0 = 0; o0 < co; o0 += cb)
      gemm.run(v, winograd_weights(w.narrow(0, o0, std::min(cb, co - o0))), m, o0);
  }
};

WinogradConv3x3::WinogradConv3x3(torch::Tensor w, int64_t chunk_bytes, bool keep) {
  if (w.dim() != 4 || w.size(2) != 3 || w.size(3) != 3 || w.scalar_type() != torch::kFloat32)
    throw std::invalid_argument("WinogradConv3x3: expected a float32 [Co, Ci, 3, 3] kernel");
  impl_.reset(new Impl{w.contiguous(), {}, w.size(1), w.size(0), chunk_bytes, keep, 0, BatchedGemm(w.size(1), w.size(0))});
}
WinogradConv3x3::~WinogradConv3x3() = default;
size_t WinogradConv3x3::bytes() const { return impl_->u.defined() ? impl_->u.nbytes() : 0; }
bool WinogradConv3x3::cached() const { return impl_->u.defined(); }

torch::Tensor WinogradConv3x3::operator()(const torch::Tensor& x, const torch::Tensor& bias) {
  const int64_t ci = impl_->ci, co = impl_->co;
  if (x.dim() != 4 || x.scalar_type() != torch::kFloat32 || !x.device().is_cpu() || x.size(1) != ci)
    throw std::invalid_argument("WinogradConv3x3: expected x [N, " + std::to_string(ci) + ", H, W] float32 on the CPU");
  if (bias.defined() && (bias.scalar_type() != torch::kFloat32 || bias.numel() != co))
    throw std::invalid_argument("WinogradConv3x3: expected a float32 bias of " + std::to_string(co) + " values");
  const Geometry g{x.size(0), x.size(2), x.size(3), (x.size(2) + kOut - 1) / kOut, (x.size(3) + kOut - 1) / kOut};
  // A layer that runs once (a one-shot command's VAE decode) transforms its
  // weights for the call: cheap next to the convolution, while keeping 4x its
  // weights in fresh memory costs more than it saves. From the second call on
  // they are kept.
  const torch::Tensor u = impl_->u.defined() ? impl_->u
                          : impl_->keep      ? winograd_weights(impl_->w)
                                             : torch::Tensor();  // per block, in products()
  if (impl_->keep && ++impl_->calls >= 2 && !impl_->u.defined()) {
    impl_->u = u;
    impl_->w = torch::Tensor();
  }
  const auto xc = x.contiguous();
  const auto b = bias.defined() ? bias.contiguous() : bias;
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  auto y = torch::empty({g.n, co, g.h, g.w}, x.options());
  const int64_t tile_rows = g.n * g.th, chunk = chunk_tile_rows(impl_->chunk_bytes, std::max(ci, co), g);
  // every chunk has the same rows (the last one's unused rows are computed and dropped): one GEMM shape
  const int64_t rows = chunk * g.tw;
  auto v = torch::empty({kPos, rows, ci}, x.options()), m = torch::empty({kPos, rows, co}, x.options());
  for (int64_t tr0 = 0; tr0 < tile_rows; tr0 += chunk) {
    const int64_t n = std::min(chunk, tile_rows - tr0);
    at::parallel_for(0, n, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r)
        transform_input_row(xc.data_ptr<float>(), g, ci, tr0 + r, v.data_ptr<float>(), rows, r * g.tw);
    });
    impl_->products(v, u, m);
    at::parallel_for(0, n, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r)
        transform_output_row(m.data_ptr<float>(), bp, g, co, tr0 + r, rows, r * g.tw, y.data_ptr<float>());
    });
  }
  return y;
}

}  // namespace ldm::nn
