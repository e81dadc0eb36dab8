// The first pass of the CPU sampler over a whole row (every token's weight and mass) in AVX2, for x86-64 CPUs
// without AVX-512: sample_avx512.cpp's pass 8 lanes at a time, picked at run time after it. The same float32
// operations in the same order as sample::exp_weight (no contraction into FMA: this file is built without -mfma
// and says so below), so the same bits (tests/test_sample.py compares every mass with the reference's). AVX2 has
// no packed float -> int64, so a mass q = floor(s), s = w * 2^40 <= 2^40, is taken in two exact int32 parts:
// hi = floor(s / 2^20) and lo = floor(s - hi * 2^20) (the difference is exact: both terms are multiples of s's
// ulp and it is below 2^20), q = hi * 2^20 + lo. Blocks of 8 logits all more than 28.5 T below the maximum are
// skipped as in the AVX-512 pass (their masses are 0 exactly).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <immintrin.h>

#include <cstdint>

#include "spct/sample.h"

namespace spct {
namespace cpu {
namespace {

inline __m256 set1(float v) { return _mm256_set1_ps(v); }

// sample::exp_weight of 8 scaled logits, operation for operation.
inline __m256 exp_weight8(__m256 z) {
  const __m256 low = _mm256_cmp_ps(z, set1(sample::kCutoff), _CMP_LT_OQ);
  const __m256 zc = _mm256_blendv_ps(z, set1(sample::kCutoff), low);
  const __m256 v = _mm256_add_ps(_mm256_mul_ps(zc, set1(1.4426950216293335f)), set1(0.5f));
  const __m256i tv = _mm256_cvttps_epi32(v);  // in [-115, 0.5]: truncation, as static_cast<int32_t>
  const __m256 above = _mm256_cmp_ps(_mm256_cvtepi32_ps(tv), v, _CMP_GT_OQ);
  const __m256i ni = _mm256_add_epi32(tv, _mm256_castps_si256(above));  // -1 where above
  const __m256 n = _mm256_cvtepi32_ps(ni);
  __m256 r = _mm256_sub_ps(zc, _mm256_mul_ps(n, set1(0.693359375f)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, set1(-0.00021219444170128554f)));
  const __m256 r2 = _mm256_mul_ps(r, r);
  __m256 p = set1(0.00019875691214110702f);
  p = _mm256_add_ps(_mm256_mul_ps(p, r), set1(0.001398199936375022f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), set1(0.008333452045917511f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), set1(0.04166579619050026f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), set1(0.1666666567325592f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), set1(0.5f));
  const __m256 y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, r2), r), set1(1.0f));
  const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
  return _mm256_andnot_ps(low, _mm256_mul_ps(y, scale));
}

}  // namespace

bool sample_avx2_supported() {
  static const bool ok = __builtin_cpu_supports("avx2");
  return ok;
}

int64_t weights_masses_avx2(const float* x, int64_t vocab, float m, float t, float* w, int64_t* q) {
  const __m256 top = set1(m), temperature = set1(t), far = set1(-28.5f * t), unit = set1(1099511627776.0f);
  const __m256 down = set1(1.0f / 1048576.0f), up = set1(1048576.0f);  // 2^-20, 2^20: exact scalings
  __m256i sum = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= vocab; i += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), top);
    if (_mm256_movemask_ps(_mm256_cmp_ps(d, far, _CMP_GE_OQ)) == 0) {
      _mm256_storeu_ps(w + i, _mm256_setzero_ps());
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), _mm256_setzero_si256());
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i + 4), _mm256_setzero_si256());
      continue;
    }
    const __m256 wv = exp_weight8(_mm256_div_ps(d, temperature));
    _mm256_storeu_ps(w + i, wv);
    const __m256 s = _mm256_mul_ps(wv, unit);  // exact: a power of two
    const __m256i hi = _mm256_cvttps_epi32(_mm256_mul_ps(s, down));
    const __m256i lo = _mm256_cvttps_epi32(_mm256_sub_ps(s, _mm256_mul_ps(_mm256_cvtepi32_ps(hi), up)));
    const auto widen = [](__m256i h, __m256i l, int half) {
      const __m128i h4 = half ? _mm256_extracti128_si256(h, 1) : _mm256_castsi256_si128(h);
      const __m128i l4 = half ? _mm256_extracti128_si256(l, 1) : _mm256_castsi256_si128(l);
      return _mm256_add_epi64(_mm256_slli_epi64(_mm256_cvtepi32_epi64(h4), 20), _mm256_cvtepi32_epi64(l4));
    };
    const __m256i q0 = widen(hi, lo, 0), q1 = widen(hi, lo, 1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), q0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i + 4), q1);
    sum = _mm256_add_epi64(sum, _mm256_add_epi64(q0, q1));
  }
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sum);
  int64_t mass = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; i < vocab; ++i) {
    w[i] = sample::weight(x[i], m, t);
    q[i] = sample::mass(w[i]);
    mass += q[i];
  }
  return mass;
}

}  // namespace cpu
}  // namespace spct
