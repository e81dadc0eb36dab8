// The bfloat16 element-wise steps of a decoder layer, fused (spct/layer_ops.h). Why: in a 16-row decode step of
// SmolLM2-135M, torch's ops between the matmuls (norms, RoPE, the KV writes, SiLU, the residual adds: about 30 small
// ops a layer) took 23 ms of an 80 ms step, each a dispatch and a pass over a few KiB; here each group is one call.
//
// Each value is rounded to bfloat16 where torch's bfloat16 ops round it (spct.ops.ref.layer_ops, the reference), so
// RoPE and the residual add give torch's bits exactly; the norm's sum of squares and SiLU's exp differ from torch's
// in the last float32 bits, so those two are equal to a bfloat16 tolerance. Rows are independent: a row's result does
// not depend on M. Written on GCC vector types of 16 floats; each function is cloned for AVX-512, AVX2 and the
// baseline and picked at load time (target_clones).
//
// Rows are split over the threads from 8,192 values on (kParallel): a 16-row SmolLM2 decode step (9,216 to 24,576
// values a call) spent 24 us a call in SiLU on one thread, 16 us on two, a fork and join included.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "spct/layer_ops.h"

namespace spct {
namespace cpu {
namespace {

#include "vec_impl.h"  // W, vf/vi, loadv/storev, splat, from_bf16/to_bf16

typedef uint16_t vh __attribute__((vector_size(32)));

inline vf load_bf16(const uint16_t* p) {
  vh h;
  memcpy(&h, p, sizeof h);
  const vi bits = __builtin_convertvector(h, vi) << 16;
  vf f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

// Round to nearest even, as torch rounds float32 to bfloat16 (a NaN stays a quiet NaN).
inline void store_bf16(uint16_t* p, vf f) {
  vi u;
  memcpy(&u, &f, sizeof u);
  const vi rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16;
  const vi out = f != f ? vi{} + 0x7FC0 : rounded;
  const vh h = __builtin_convertvector(out & 0xFFFF, vh);
  memcpy(p, &h, sizeof h);
}

inline vf round_bf16(vf f) {  // f rounded to bfloat16 and back, in registers (a NaN stays a NaN)
  vi u;
  memcpy(&u, &f, sizeof u);
  const vi rounded = (u + 0x7FFF + ((u >> 16) & 1)) & int32_t(0xFFFF0000u);
  vf out;
  memcpy(&out, &rounded, sizeof out);
  return f != f ? f : out;
}

// exp(x) for any x (clamped to [-87, 88]: below, exp(-87) ~ 1.6e-38; above, ~1.7e38).
inline vf vexp_any(vf x) {
  const vf hi = splat(88.0f);
  return vexp(x > hi ? hi : x);
}

}  // namespace

#if defined(__x86_64__) && defined(__GNUC__)
#define SPCT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SPCT_CLONES
#endif

constexpr int64_t kParallel = 1 << 13;

SPCT_CLONES
void add_rms_norm_bf16(uint16_t* x, const uint16_t* delta, const uint16_t* weight, float eps, int64_t m, int64_t h,
                       uint16_t* out) {
  const int64_t body = h / W * W;
#pragma omp parallel for schedule(static) if (m * h >= kParallel)
  for (int64_t r = 0; r < m; ++r) {
    uint16_t* xr = x + r * h;
    if (delta != nullptr) {  // x + delta, rounded: torch's bfloat16 add
      const uint16_t* dr = delta + r * h;
      for (int64_t i = 0; i < body; i += W) store_bf16(xr + i, load_bf16(xr + i) + load_bf16(dr + i));
      for (int64_t i = body; i < h; ++i) xr[i] = to_bf16(from_bf16(xr[i]) + from_bf16(dr[i]));
    }
    vf acc = vf{};
    for (int64_t i = 0; i < body; i += W) {
      const vf v = load_bf16(xr + i);
      acc += v * v;
    }
    float ss = 0.0f;
    for (int i = 0; i < W; ++i) ss += acc[i];
    for (int64_t i = body; i < h; ++i) ss += from_bf16(xr[i]) * from_bf16(xr[i]);
    const float scale = 1.0f / std::sqrt(ss / float(h) + eps);
    uint16_t* o = out + r * h;
    for (int64_t i = 0; i < body; i += W)  // weight * (x * scale rounded), rounded: torch's two bfloat16 steps
      store_bf16(o + i, load_bf16(weight + i) * round_bf16(load_bf16(xr + i) * scale));
    for (int64_t i = body; i < h; ++i)
      o[i] = to_bf16(from_bf16(weight[i]) * from_bf16(to_bf16(from_bf16(xr[i]) * scale)));
  }
}

SPCT_CLONES
int64_t rope_qkv_bf16(const uint16_t* qkv, int64_t m, int64_t hq, int64_t hkv, int64_t d, const uint16_t* cos,
                      const uint16_t* sin, int64_t num_positions, const int64_t* positions, int64_t num_slots,
                      const int64_t* slots, uint16_t* q_out, uint16_t* k_cache, uint16_t* v_cache) {
  for (int64_t r = 0; r < m; ++r)  // every index before any write
    if (positions[r] < 0 || positions[r] >= num_positions || slots[r] < 0 || slots[r] >= num_slots) return r;
  const int64_t width = (hq + 2 * hkv) * d, half = d / 2;
#pragma omp parallel for schedule(static) if (m * width >= kParallel)
  for (int64_t r = 0; r < m; ++r) {
    const uint16_t* row = qkv + r * width;
    const uint16_t* c = cos + positions[r] * d;
    const uint16_t* s = sin + positions[r] * d;
    for (int64_t head = 0; head < hq + hkv; ++head) {
      const uint16_t* in = row + head * d;
      uint16_t* o = head < hq ? q_out + (r * hq + head) * d : k_cache + (slots[r] * hkv + head - hq) * d;
      // out = x * cos + rotate_half(x) * sin, rotate_half(x) = (-x[half:], x[:half]); each product and the sum
      // rounded to bfloat16, as torch computes it
      int64_t i = 0;
      if (half % W == 0) {
        for (; i < d; i += W) {
          const vf x = load_bf16(in + i);
          const vf rot = i < half ? -load_bf16(in + i + half) : load_bf16(in + i - half);
          store_bf16(o + i, round_bf16(x * load_bf16(c + i)) + round_bf16(rot * load_bf16(s + i)));
        }
      }
      for (; i < d; ++i) {
        const float x = from_bf16(in[i]);
        const float rot = i < half ? -from_bf16(in[i + half]) : from_bf16(in[i - half]);
        const float a = from_bf16(to_bf16(x * from_bf16(c[i])));
        const float b = from_bf16(to_bf16(rot * from_bf16(s[i])));
        o[i] = to_bf16(a + b);
      }
    }
    memcpy(v_cache + slots[r] * hkv * d, row + (hq + hkv) * d, size_t(hkv * d) * sizeof(uint16_t));
  }
  return -1;
}

SPCT_CLONES
void silu_mul_bf16(const uint16_t* gate_up, int64_t m, int64_t n, uint16_t* out) {
  const int64_t body = n / W * W;
#pragma omp parallel for schedule(static) if (m * n >= kParallel)
  for (int64_t r = 0; r < m; ++r) {
    const uint16_t* g = gate_up + r * 2 * n;
    const uint16_t* u = g + n;
    uint16_t* o = out + r * n;
    for (int64_t i = 0; i < body; i += W) {  // silu(g) rounded, times up, rounded: torch's two bfloat16 steps
      const vf x = load_bf16(g + i);
      store_bf16(o + i, round_bf16(x / (1.0f + vexp_any(-x))) * load_bf16(u + i));
    }
    for (int64_t i = body; i < n; ++i) {
      const float x = from_bf16(g[i]);
      o[i] = to_bf16(from_bf16(to_bf16(x / (1.0f + std::exp(-x)))) * from_bf16(u[i]));
    }
  }
}

// gelu_tanh(x) = x / 2 * (1 + tanh(y)), y = sqrt(2 / pi) (x + 0.044715 x^3), computed as x / (1 + exp(-2 y)) (the
// same value, without the cancellation of 1 + tanh(y) for y < 0), then rounded; times up, rounded: torch's two
// bfloat16 steps. Equal to torch's to the bfloat16 tolerance (its tanh is not this exp).
constexpr float kGeluTwoC = 1.5957691216057308f;  // 2 sqrt(2 / pi)

SPCT_CLONES
void gelu_tanh_mul_bf16(const uint16_t* gate_up, int64_t m, int64_t n, uint16_t* out) {
  const int64_t body = n / W * W;
#pragma omp parallel for schedule(static) if (m * n >= kParallel)
  for (int64_t r = 0; r < m; ++r) {
    const uint16_t* g = gate_up + r * 2 * n;
    const uint16_t* u = g + n;
    uint16_t* o = out + r * n;
    for (int64_t i = 0; i < body; i += W) {
      const vf x = load_bf16(g + i);
      const vf e = vexp_any(-kGeluTwoC * (x + 0.044715f * x * x * x));
      store_bf16(o + i, round_bf16(x / (1.0f + e)) * load_bf16(u + i));
    }
    for (int64_t i = body; i < n; ++i) {
      const float x = from_bf16(g[i]);
      const float e = std::exp(std::fmin(-kGeluTwoC * (x + 0.044715f * x * x * x), 88.0f));
      o[i] = to_bf16(from_bf16(to_bf16(x / (1.0f + e))) * from_bf16(u[i]));
    }
  }
}

#undef SPCT_CLONES

}  // namespace cpu
}  // namespace spct
