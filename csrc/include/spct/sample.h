// spct::sample: the per-row pieces every backend computes bit for bit the same way (host/device, no framework),
// and the CPU and CUDA launchers. Semantics are written out in python/spct/ops/sample.py.
//
// A row's weights are w_i = exp_weight((l_i - max) / T) in float32: one correctly rounded subtraction, one
// correctly rounded division and a fixed sequence of float32 multiplies and adds (no fused multiply-add), so the
// torch reference, C++, CUDA and Triton produce identical bits; the largest logit gets weight exactly 1. Every
// mass the sampler compares is an exact int64 sum of q_i = floor(w_i * 2^40), so no summation order (sequential,
// tree, atomics) can change a token: the backends agree exactly and need no sort to sum in a canonical order.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "spct/philox.h"

namespace spct {
namespace sample {

// Per-row status, reported back to Python, which raises for the first bad row.
enum Status : int32_t { kOk = 0, kNaN = 1, kPosInf = 2, kAllNegInf = 3 };

// Scaled logits below this get weight 0: exp(-80) < 2e-35 of the top token's weight. It also keeps 2^n in
// exp_weight a normal float (n >= -115), so no backend meets subnormals.
constexpr float kCutoff = -80.0f;

// Per-row parameters, each an (N,) array (the Python side broadcasts scalars).
struct Params {
  const float* temperature;  // >= 0; 0 = greedy
  const int64_t* top_k;      // 0 or >= V: off
  const float* top_p;        // (0, 1]; 1: off
  const float* min_p;        // [0, 1); 0: off
  const int64_t* seed;       // Philox key (two's complement bits)
  const int64_t* offset;     // Philox counter
};

#if defined(__CUDA_ARCH__)
// Device float ops with round-to-nearest and no contraction into FMA.
SPCT_HD float fmul(float a, float b) { return __fmul_rn(a, b); }
SPCT_HD float fadd(float a, float b) { return __fadd_rn(a, b); }
SPCT_HD float fsub(float a, float b) { return __fsub_rn(a, b); }
SPCT_HD float fdiv(float a, float b) { return __fdiv_rn(a, b); }
#else
// Host: sample.cpp turns FMA contraction off, so each op rounds on its own (as in torch and numpy).
SPCT_HD float fmul(float a, float b) { return a * b; }
SPCT_HD float fadd(float a, float b) { return a + b; }
SPCT_HD float fsub(float a, float b) { return a - b; }
SPCT_HD float fdiv(float a, float b) { return a / b; }
#endif

SPCT_HD float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
SPCT_HD uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}
SPCT_HD float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

// exp(z) for z <= 0 (Cephes expf: Cody-Waite reduction by ln 2, degree-5 polynomial, scale by 2^n), written as
// a fixed sequence of float32 ops so every backend rounds identically; within 1 ulp of exp on [-80, 0]
// (measured on 2M points). z < kCutoff -> 0.
SPCT_HD float exp_weight(float z) {
  const float zc = z < kCutoff ? kCutoff : z;  // also maps -inf to a finite value before the floor
  const float v = fadd(fmul(zc, 1.4426950216293335f), 0.5f);  // in [-115, 0.5]
  const int32_t tv = static_cast<int32_t>(v);                    // floor(v), exactly, without SSE4.1's roundps
  const int32_t ni = tv - (static_cast<float>(tv) > v ? 1 : 0);
  const float n = static_cast<float>(ni);
  float r = fsub(zc, fmul(n, 0.693359375f));
  r = fsub(r, fmul(n, -0.00021219444170128554f));
  const float r2 = fmul(r, r);
  float p = 0.00019875691214110702f;
  p = fadd(fmul(p, r), 0.001398199936375022f);
  p = fadd(fmul(p, r), 0.008333452045917511f);
  p = fadd(fmul(p, r), 0.04166579619050026f);
  p = fadd(fmul(p, r), 0.1666666567325592f);
  p = fadd(fmul(p, r), 0.5f);
  const float y = fadd(fadd(fmul(p, r2), r), 1.0f);
  const float scale = bits_to_float(static_cast<uint32_t>(ni + 127) << 23);
  const float e = fmul(y, scale);
  return z < kCutoff ? 0.0f : e;  // selects only: the loop over a row stays branch-free and vectorizes
}

// The weight of logit l in a row with maximum m at temperature t > 0.
SPCT_HD float weight(float l, float m, float t) { return exp_weight(fdiv(fsub(l, m), t)); }

// Fixed-point mass q = floor(w * 2^40) (w <= 1, so q <= 2^40): the product is exact, the conversion truncates.
// A row's total stays below 2^63 for vocabularies under kMaxVocab. Weights under 2^-40 (1e-12 of the top
// token's) get mass 0 and are never drawn.
constexpr int kMassBits = 40;
constexpr int64_t kMaxVocab = int64_t(1) << 23;
SPCT_HD int64_t mass(float w) { return static_cast<int64_t>(fmul(w, 1099511627776.0f)); }

// floor(u * total) exactly, for u = bits * 2^-24 and 0 <= total < 2^63 (split so no product overflows).
SPCT_HD int64_t draw_target(uint32_t bits, int64_t total) {
  const int64_t b = bits;
  return b * (total >> 24) + ((b * (total & 0xFFFFFF)) >> 24);
}

// Order-preserving key: a > b as floats <=> key(a) > key(b) as uint32; -0 and +0 map to the same key.
SPCT_HD uint32_t order_key(float x) {
  uint32_t u = float_to_bits(x);
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace sample

namespace cpu {

// tokens (N,) int64, status (N,) int32. logits: (N, V) float32, or bfloat16 bits when bf16, rows row_stride
// elements apart. OpenMP over rows; no full sort of the vocabulary.
void sample_rows(const void* logits, bool bf16, int64_t rows, int64_t vocab, int64_t row_stride,
                 const sample::Params& params, int64_t* tokens, int32_t* status);

// out[i] = sample::exp_weight(z[i]), compiled under the kernel's floating-point settings (for tests).
void exp_weights(const float* z, int64_t n, float* out);

// A row's weights w and masses q (the sampler's first pass without top-k; w is exact where q > 0, else any value
// whose mass is 0) for its maximum m and temperature t > 0 -> the total mass. The AVX-512 build where the CPU has
// it (sample_avx512.cpp), else the AVX2 one (sample_avx2.cpp), else the baseline; the same q either way.
int64_t weights_masses(const float* x, int64_t vocab, float m, float t, float* w, int64_t* q);

// The same pass by build, for tests: "auto" (the one weights_masses runs), "avx512", "avx2" or "baseline"; false
// (nothing written) where this CPU or this build of spct has no such build.
bool weights_masses_build(const std::string& build, const float* x, int64_t vocab, float m, float t, float* w,
                          int64_t* q, int64_t* total);

}  // namespace cpu

namespace cuda {

// The same contract as cpu::sample_rows with device pointers; one block per row. Returns "" or the CUDA error.
std::string launch_sample(const void* logits, bool bf16, int64_t rows, int64_t vocab, int64_t row_stride,
                          const sample::Params& params, int64_t* tokens, int32_t* status, void* stream);

}  // namespace cuda
}  // namespace spct
