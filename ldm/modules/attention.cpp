#include "ldm/modules/attention.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ldm/modules/diffusionmodules/util.h"
#include "ldm/modules/flash_attention_kernel.h"
#include "ldm/modules/geglu_kernel.h"
#include "ldm/modules/small_bmm.h"
#include "ldm/util/parallel.h"

namespace ldm {

namespace {
thread_local int64_t g_chunk_elements = kDefaultAttentionChunkElements;

// [B, N, h*d] -> [B*h, N, d]
torch::Tensor split_heads(const torch::Tensor& x, int64_t h) {
  auto B = x.size(0), N = x.size(1), D = x.size(2);
  return x.view({B, N, h, D / h}).permute({0, 2, 1, 3}).reshape({B * h, N, D / h});
}
torch::Tensor merge_heads(const torch::Tensor& x, int64_t h) {
  auto Bh = x.size(0), N = x.size(1), d = x.size(2);
  return x.view({Bh / h, h, N, d}).permute({0, 2, 1, 3}).reshape({Bh / h, N, h * d});
}
}  // namespace

void set_attention_chunk_elements(int64_t n) { g_chunk_elements = std::max<int64_t>(n, 1); }
int64_t attention_chunk_elements() { return g_chunk_elements; }

torch::Tensor attention_plain(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale) {
  auto kt = k.transpose(1, 2);
  if (small_bmm_pays(q, kt))  // many tiny heads (p v has the same work): see small_bmm.h
    return small_bmm(small_bmm(q, kt).mul(scale).softmax(-1), v);
  auto sim = torch::bmm(q, kt) * scale;
  return torch::bmm(sim.softmax(-1), v);
}

bool attention_fused_supports(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const auto t = q.scalar_type();
  const bool kernel = t == torch::kFloat32 ? flash_attention_available()
                                           : t == torch::kBFloat16 && flash_attention_bf16_available();
  return kernel && q.dim() == 3 && k.scalar_type() == t && v.scalar_type() == t && q.device().is_cpu() &&
         q.size(2) % 8 == 0 && v.size(2) == q.size(2) && v.size(1) == k.size(1) && k.size(0) == q.size(0) && v.size(0) == q.size(0) &&
         k.size(1) > 0;
}

namespace {
// Runs a kernel (flash_attention_rows or a bf16 twin) over tasks of 96
// query rows of one head, each thread with its own scratch. q, kt, v: packed
// per head ([B, H] heads; q rows dq long, keys padded to Mp, values to dv
// columns); out: [B, N, H * d], each head's rows H * d apart.
template <class T, class Rows>
void fused_rows(const T* q, const T* kt, const T* v, T* out, int64_t B, int64_t H, int64_t N, int64_t M, int64_t Mp,
                int64_t d, int64_t dq, int64_t dv, int64_t scratch_floats, const Rows& rows_fn) {
  const int64_t rows = 96, tasks_per_head = (N + rows - 1) / rows;
  at::parallel_for(0, B * H * tasks_per_head, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> scratch(scratch_floats);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bh = t / tasks_per_head, r0 = t % tasks_per_head * rows, b = bh / H, head = bh % H;
      rows_fn(q + bh * N * dq, kt + bh * dq * Mp, v + bh * Mp * dv, out + (b * N * H + head) * d, H * d, r0,
              std::min(N, r0 + rows), M, Mp, d, scratch.data());
    }
  });
}

auto u16(const torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

// One view's element (b, h, i, c) as bf16 bits.
struct View16 {
  const uint16_t* p;
  int64_t s0, s1, s2, s3;
  explicit View16(const torch::Tensor& t)
      : p(reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>())),
        s0(t.stride(0)), s1(t.stride(1)), s2(t.stride(2)), s3(t.stride(3)) {}
  uint16_t at(int64_t b, int64_t h, int64_t i, int64_t c) const { return p[b * s0 + h * s1 + i * s2 + c * s3]; }
};

// fused_heads_amx's operands in one pass each, from views in any layout: q
// scaled (in float32, rounded once), zero padding written with the values.
void pack_amx_operands(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, float qscale, uint16_t* qs,
                       uint16_t* kt, uint16_t* vp, int64_t Mp, int64_t dq, int64_t dv) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), M = k.size(2), d = q.size(3);
  const View16 Q(q), K(k), V(v);
  at::parallel_for(0, B * H * N, 256, [&](int64_t r0, int64_t r1) {  // q rows
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / (H * N), h = r / N % H, i = r % N;
      uint16_t* dst = qs + r * dq;
      for (int64_t c = 0; c < d; ++c)
        dst[c] = c10::BFloat16(static_cast<float>(c10::BFloat16(Q.at(b, h, i, c), c10::BFloat16::from_bits())) * qscale).x;
      std::fill(dst + d, dst + dq, uint16_t{0});
    }
  });
  at::parallel_for(0, B * H * (Mp / 16), 8, [&](int64_t p0, int64_t p1) {  // 16-key panels [dq / 2][16][2]
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t bh = p / (Mp / 16), b = bh / H, h = bh % H, j0 = p % (Mp / 16) * 16;
      uint16_t* dst = kt + p * 16 * dq;
      for (int64_t j = 0; j < 16; ++j)
        for (int64_t c = 0; c < dq; ++c)
          dst[(c >> 1) * 32 + j * 2 + (c & 1)] = j0 + j < M && c < d ? K.at(b, h, j0 + j, c) : uint16_t{0};
    }
  });
  at::parallel_for(0, B * H * (Mp / 2), 64, [&](int64_t r0, int64_t r1) {  // key pairs [dv][2]
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bh = r / (Mp / 2), b = bh / H, h = bh % H, j = r % (Mp / 2) * 2;
      uint16_t* dst = vp + r * 2 * dv;
      for (int64_t t = 0; t < 2; ++t)
        for (int64_t c = 0; c < dv; ++c) dst[c * 2 + t] = j + t < M && c < d ? V.at(b, h, j + t, c) : uint16_t{0};
    }
  });
}

// The bf16 operands for AMX tiles: q and keys with d zero-padded to a whole
// 32 (a tile product's depth), values to a whole 16 columns (a tile's width),
// keys to a whole 32 (two 16-key panels, p v's depth); keys as [Mp / 16, dq / 2,
// 16, 2] and values as [Mp / 2, dv, 2], the right operands' pair layout.
void fused_heads_amx(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double qscale,
                     torch::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), M = k.size(2), d = q.size(3);
  const int64_t Mp = (M + 31) / 32 * 32, dq = (d + 31) / 32 * 32, dv = (d + 15) / 16 * 16;
  auto opt = q.options().dtype(torch::kBFloat16);
  auto qs = torch::empty({B, H, N, dq}, opt), kt = torch::empty({B, H, Mp, dq}, opt), vp = torch::empty({B, H, Mp, dv}, opt);
  pack_amx_operands(q, k, v, static_cast<float>(qscale), u16(qs), u16(kt), u16(vp), Mp, dq, dv);
  fused_rows<uint16_t>(u16(qs), u16(kt), u16(vp), u16(out), B, H, N, M, Mp, d, dq, dv, flash_attention_amx_scratch(d),
                       flash_attention_rows_amx);
}

// q [B, H, N, d], k, v [B, H, M, d] (views in any layout) -> [B, N, H * d]:
// each operand packed in one pass (q scaled by scale * log2(e) for the base-2
// softmax; keys and values padded to whole 16-key tiles with zeros, masked in
// the kernel), the output written in place of a merge of the heads.
torch::Tensor fused_heads(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale,
                          bool widest) {
  RECORD_FUNCTION("ldm::attention_fused", std::vector<c10::IValue>{q, k});  // bench's profile: time and FLOPs
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), M = k.size(2), d = q.size(3), Mp = (M + 15) / 16 * 16;
  auto pad = [&](const torch::Tensor& t) { return Mp == M ? t : torch::constant_pad_nd(t, {0, 0, 0, Mp - M}); };
  auto out = torch::empty({B, N, H * d}, q.options());
  const double qscale = scale * M_LOG2E;
  if (q.scalar_type() == torch::kBFloat16 && widest && flash_attention_amx_available()) {
    fused_heads_amx(q, k, v, qscale, out);
    return out;
  }
  if (q.scalar_type() == torch::kBFloat16) {
    // q scaled in float32; keys as [Mp / 16, d / 2, 16, 2] (dimension pairs of
    // 16-key panels), values as [Mp / 2, d, 2] (key pairs): the operand
    // layouts of VDPBF16PS, which sums products of pairs
    auto qs = (q.to(torch::kFloat32) * qscale).to(torch::kBFloat16).contiguous();
    auto kt = pad(k).view({B, H, Mp / 16, 16, d / 2, 2}).permute({0, 1, 2, 4, 3, 5}).contiguous();
    auto vp = pad(v).view({B, H, Mp / 2, 2, d}).permute({0, 1, 2, 4, 3}).contiguous();
    fused_rows<uint16_t>(u16(qs), u16(kt), u16(vp), u16(out), B, H, N, M, Mp, d, d, d, flash_attention_bf16_scratch(d),
                         flash_attention_rows_bf16);
    return out;
  }
  auto qs = torch::empty({B, H, N, d}, q.options());
  torch::mul_out(qs, q, torch::scalar_tensor(qscale, torch::kFloat64));
  auto kt = pad(k).view({B, H, Mp / 16, 16, d}).permute({0, 1, 2, 4, 3}).contiguous();  // [Mp / 16, d, 16] panels
  auto vp = pad(v).contiguous();
  fused_rows<float>(qs.data_ptr<float>(), kt.data_ptr<float>(), vp.data_ptr<float>(), out.data_ptr<float>(), B, H, N, M,
                    Mp, d, d, d, flash_attention_scratch(d),
                    widest && flash_attention_avx512_available() ? flash_attention_rows_avx512 : flash_attention_rows);
  return out;
}

// [B, N, h * d] as [B, h, N, d], a view
torch::Tensor heads_view(const torch::Tensor& x, int64_t h) {
  return x.reshape({x.size(0), x.size(1), h, x.size(2) / h}).transpose(1, 2);
}
}  // namespace

torch::Tensor attention_fused(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale,
                              bool widest) {
  TORCH_CHECK(attention_fused_supports(q, k, v),
              "attention_fused: needs [B, N, d] with d % 8 == 0, fp32 on an AVX2/FMA CPU or bf16 on an AVX512-BF16 one");
  return fused_heads(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale, widest);
}

torch::Tensor attention_chunked(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale) {
  // Chunks over query rows (each row's softmax is independent, so the result
  // is exact) with the scores in two buffers reused by every chunk: the scale
  // rides on the chunk's queries (n x d values, not n x M scores), the softmax
  // writes the second buffer, and the output goes straight into its rows.
  // Fresh 64-128 MB score matrices per call cost page faults. Not baddbmm
  // with beta 0 into the buffer: libtorch 1.13's own kernel (small matrices)
  // still multiplies the uninitialised buffer by 0, and 0 x NaN garbage made
  // Attention.ChunkedEqualsOneShot fail once in a while.
  const int64_t B = q.size(0), N = q.size(1), M = k.size(1);
  auto out = torch::empty({B, N, v.size(2)}, q.options());
  auto kt = k.transpose(1, 2);
  const int64_t rows = std::min(N, std::max<int64_t>(1, g_chunk_elements / (B * M)));
  auto sim_buf = torch::empty({B, rows, M}, q.options()), p_buf = torch::empty({B, rows, M}, q.options());
  for (int64_t s = 0; s < N; s += rows) {
    const int64_t n = std::min(rows, N - s);
    // a shorter last chunk gets buffers of its own: a narrowed [B, n, M] view
    // is not contiguous, and libtorch 1.13's out= kernels here gave wrong rows
    // for it (N not a multiple of the chunk: Attention.ChunkedEqualsOneShot)
    auto sim = n == rows ? sim_buf : torch::empty({B, n, M}, q.options());
    auto p = n == rows ? p_buf : torch::empty({B, n, M}, q.options());
    torch::bmm_out(sim, q.narrow(1, s, n) * scale, kt);
    torch::_softmax_out(p, sim, -1, false);
    auto o = out.narrow(1, s, n);
    torch::bmm_out(o, p, v);
  }
  return out;
}

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  return at::scaled_dot_product_attention(q, k, v, {}, 0.0, false, scale);
#elif TORCH_VERSION_MAJOR == 2
  // torch 2.0's fused kernel has no scale argument: fold it into q.
  return at::scaled_dot_product_attention(q * (scale * std::sqrt(static_cast<double>(q.size(-1)))), k, v);
#else
  const bool needs_grad =
      torch::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  if (needs_grad) return attention_plain(q, k, v, scale);
  if (attention_fused_supports(q, k, v)) return attention_fused(q, k, v, scale);
  return attention_chunked(q, k, v, scale);
#endif
}

torch::Tensor attention_heads(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t heads,
                              double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && heads > 0 && q.size(2) % heads == 0 &&
                  k.size(2) == q.size(2) && v.size(2) == q.size(2),
              "attention_heads: needs q [B, N, h*d], k and v [B, M, h*d] with the same h*d, a multiple of heads");
#if TORCH_VERSION_MAJOR < 2
  const bool needs_grad =
      torch::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  const int64_t d = q.size(2) / heads;
  auto probe = [&](const torch::Tensor& t) { return t.narrow(2, 0, d); };  // one head's [B, N, d]: the kernel's checks
  if (!needs_grad && attention_fused_supports(probe(q), probe(k), probe(v)))
    return fused_heads(heads_view(q, heads), heads_view(k, heads), heads_view(v, heads), scale, true);
#endif
  return merge_heads(attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), scale), heads);
}

CrossAttention::CrossAttention(int64_t query_dim, int64_t context_dim, int64_t h, int64_t d) : heads(h), dim_head(d) {
  int64_t inner = h * d;
  int64_t cdim = context_dim > 0 ? context_dim : query_dim;
  to_q = register_module("to_q", std::make_shared<nn::Linear>(query_dim, inner, false));
  to_k = register_module("to_k", std::make_shared<nn::Linear>(cdim, inner, false));
  to_v = register_module("to_v", std::make_shared<nn::Linear>(cdim, inner, false));
  auto out = register_module("to_out", std::make_shared<nn::Holder>());
  to_out0 = out->add("0", std::make_shared<nn::Linear>(inner, query_dim));
}

torch::Tensor CrossAttention::forward(const torch::Tensor& x, const torch::Tensor& context,
                                      const torch::Tensor& residual) {
  const auto& ctx = context.defined() ? context : x;
  auto o = attention_heads(to_q->forward(x), to_k->forward(ctx), to_v->forward(ctx), heads,
                           1.0 / std::sqrt(static_cast<double>(dim_head)));
  return residual.defined() ? to_out0->forward(o, residual) : to_out0->forward(o);
}

FeedForward::FeedForward(int64_t dim, int64_t mult, bool g) : glu(g) {
  int64_t inner = dim * mult;
  auto net = register_module("net", std::make_shared<nn::Holder>());
  auto n0 = net->add("0", std::make_shared<nn::Holder>());
  // GEGLU keeps its projection as net.0.proj; the plain variant is net.0.0.
  proj_in = n0->add(glu ? "proj" : "0", std::make_shared<nn::Linear>(dim, glu ? inner * 2 : inner));
  proj_out = net->add("2", std::make_shared<nn::Linear>(inner, dim));
}

torch::Tensor FeedForward::forward(const torch::Tensor& x, const torch::Tensor& residual) {
  auto h = proj_in->forward(x);
  const bool inference = !torch::GradMode::is_enabled() || !h.requires_grad();
  const auto t = h.scalar_type();
  if (glu && inference && (t == torch::kFloat32 || t == torch::kBFloat16) && h.is_contiguous() && geglu_available()) {
    const int64_t n = h.size(-1) / 2, rows = h.numel() / (2 * n);
    auto out_sizes = h.sizes().vec();
    out_sizes.back() = n;
    auto g = torch::empty(out_sizes, h.options());
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      if (t == torch::kFloat32) {
        geglu_rows(h.data_ptr<float>() + r0 * 2 * n, 2 * n, g.data_ptr<float>() + r0 * n, r1 - r0, n);
      } else {
        geglu_rows_bf16(u16(h) + r0 * 2 * n, 2 * n, u16(g) + r0 * n, r1 - r0, n);
      }
    });
    h = g;
  } else if (glu) {
    auto parts = h.chunk(2, -1);  // (a, gate): a * GELU(gate), exact erf GELU
    // torch 1.13's GELU on the strided gate half is 3-7x slower (float32, bf16)
    // than a copy and GELU of a contiguous one: its vectorized loop wants the whole tensor contiguous
    auto gate = parts[1].contiguous();
    if (inference) {  // in place, no fresh buffer but the gate's copy, which takes the product: a
      torch::gelu_(gate);  // contiguous GEMM input (our linear would copy the strided half)
      h = torch::mul_out(gate, parts[0], gate);
    } else {
      h = parts[0] * torch::gelu(gate);
    }
  } else if (inference) {
    torch::gelu_(h);
  } else {
    h = torch::gelu(h);
  }
  return residual.defined() ? proj_out->forward(h, residual) : proj_out->forward(h);
}

BasicTransformerBlock::BasicTransformerBlock(int64_t dim, int64_t n_heads, int64_t d_head, int64_t context_dim,
                                             bool ckpt, bool dsa)
    : use_checkpoint(ckpt), disable_self_attn(dsa) {
  attn1 = register_module("attn1", std::make_shared<CrossAttention>(dim, dsa ? context_dim : 0, n_heads, d_head));
  ff = register_module("ff", std::make_shared<FeedForward>(dim, 4, true));
  attn2 = register_module("attn2", std::make_shared<CrossAttention>(dim, context_dim, n_heads, d_head));
  norm1 = register_module("norm1", std::make_shared<nn::LayerNorm>(dim));
  norm2 = register_module("norm2", std::make_shared<nn::LayerNorm>(dim));
  norm3 = register_module("norm3", std::make_shared<nn::LayerNorm>(dim));
}

torch::Tensor BasicTransformerBlock::forward(const torch::Tensor& x_in, const torch::Tensor& context) {
  auto body = [this](const std::vector<torch::Tensor>& in) {
    auto x = in[0];
    const auto& ctx = in[1];
    x = attn1->forward(norm1->forward(x), disable_self_attn ? ctx : torch::Tensor(), x);
    x = attn2->forward(norm2->forward(x), ctx, x);
    return ff->forward(norm3->forward(x), x);
  };
  return checkpoint(body, {x_in, context}, *this, use_checkpoint);
}

SpatialTransformer::SpatialTransformer(int64_t in, int64_t n_heads, int64_t d_head, int64_t depth,
                                       std::vector<int64_t> cdims, bool dsa, bool lin, bool ckpt)
    : use_linear(lin) {
  int64_t inner = n_heads * d_head;
  if (cdims.empty()) cdims = {0};
  if (cdims.size() == 1) cdims.assign(depth, cdims[0]);
  norm = register_module("norm", std::make_shared<nn::GroupNorm>(32, in, 1e-6));
  if (lin)
    proj_in_lin = register_module("proj_in", std::make_shared<nn::Linear>(in, inner));
  else
    proj_in_conv = register_module("proj_in", std::make_shared<nn::Conv>(2, in, inner, 1));
  auto tb = register_module("transformer_blocks", std::make_shared<nn::Holder>());
  for (int64_t d = 0; d < depth; ++d)
    blocks.push_back(tb->add(std::to_string(d),
                             std::make_shared<BasicTransformerBlock>(inner, n_heads, d_head, cdims[d], ckpt, dsa)));
  // The SD2 code builds Linear(in, inner) for proj_out (arguments swapped);
  // shapes agree because the reference only works with in == inner.
  if (lin) {
    proj_out_lin = register_module("proj_out", std::make_shared<nn::Linear>(inner, in));
    proj_out_lin->zero_();
  } else {
    proj_out_conv = register_module("proj_out", std::make_shared<nn::Conv>(2, inner, in, 1));
    proj_out_conv->zero_();
  }
}

torch::Tensor SpatialTransformer::forward(const torch::Tensor& x_in, const torch::Tensor& context) {
  auto B = x_in.size(0), H = x_in.size(2), W = x_in.size(3);
  auto x = norm->forward(x_in);
  // b (h w) c, made contiguous as the reference does: a transposed view here
  // makes every later elementwise result strided, so each linear takes
  // matmul's copying path instead of addmm and each conv copies its input
  // (measured: 30% of an SD 1.5 UNet step)
  // (a view where x is stored channels-last, as in CPU training)
  const auto layout = x.suggest_memory_format();
  if (use_linear) {
    x = proj_in_lin->forward(x.permute({0, 2, 3, 1}).reshape({B, H * W, -1}));
  } else {
    x = proj_in_conv->forward_to_tokens(x);  // the 1x1 conv writes the tokens' layout itself where it can
  }
  for (auto& b : blocks) x = b->forward(x, context);
  if (!use_linear) return proj_out_conv->forward_from_tokens(x, x_in, layout);
  x = proj_out_lin->forward(x);
  return x.transpose(1, 2).reshape({B, -1, H, W}).contiguous(layout) + x_in;
}

LinearAttention::LinearAttention(int64_t dim, int64_t h, int64_t dim_head) : heads(h) {
  int64_t hidden = h * dim_head;
  to_qkv = register_module("to_qkv", std::make_shared<nn::Conv>(2, dim, hidden * 3, 1, 1, 0, false));
  to_out = register_module("to_out", std::make_shared<nn::Conv>(2, hidden, dim, 1));
}

torch::Tensor LinearAttention::forward(const torch::Tensor& x) {
  auto B = x.size(0), H = x.size(2), W = x.size(3);
  auto qkv = to_qkv->forward(x);
  int64_t c = qkv.size(1) / (3 * heads);
  qkv = qkv.view({B, 3, heads, c, H * W});  // b (qkv heads c) h w -> qkv b heads c (h w)
  auto q = qkv.select(1, 0), k = qkv.select(1, 1).softmax(-1), v = qkv.select(1, 2);
  auto ctx = torch::matmul(k, v.transpose(-1, -2));       // b h d e
  auto out = torch::matmul(ctx.transpose(-1, -2), q);     // b h e n
  return to_out->forward(out.reshape({B, heads * c, H, W}));
}

SpatialSelfAttention::SpatialSelfAttention(int64_t in) {
  norm = register_module("norm", std::make_shared<nn::GroupNorm>(32, in, 1e-6));
  q = register_module("q", std::make_shared<nn::Conv>(2, in, in, 1));
  k = register_module("k", std::make_shared<nn::Conv>(2, in, in, 1));
  v = register_module("v", std::make_shared<nn::Conv>(2, in, in, 1));
  proj_out = register_module("proj_out", std::make_shared<nn::Conv>(2, in, in, 1));
}

torch::Tensor SpatialSelfAttention::forward(const torch::Tensor& x) {
  auto B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto h = norm->forward(x);
  auto qq = q->forward(h).view({B, C, H * W}).transpose(1, 2);
  auto kk = k->forward(h).view({B, C, H * W}).transpose(1, 2);
  auto vv = v->forward(h).view({B, C, H * W}).transpose(1, 2);
  auto o = attention(qq, kk, vv, 1.0 / std::sqrt(static_cast<double>(C)));
  return x + proj_out->forward(o.transpose(1, 2).reshape({B, C, H, W}));
}

}  // namespace ldm
