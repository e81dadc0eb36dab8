// The AVX2 + FMA build of linear_bf16 (spct/linear.h), for x86-64 CPUs without AVX-512 BF16; compiled with -mavx2
// -mfma, entered only after linear_bf16_avx2_supported(). Why: on such CPUs torch's bf16 matmul converts the
// weights on every call and reaches a small part of the FMA peak at the few rows of a decode step; this build reads
// the same packed layout as the AVX-512 one: a 32-bit lane of the layout holds one output's weights at k (low half)
// and k + 1 (high half), so shifts give both as float32 without a shuffle. x is converted to float32 once per call.
// A row block of R rows and J 16-output blocks keeps 2 R J accumulators, 2 J weights and one broadcast in the 16
// vector registers (R = 6, J = 1 for full blocks: 15). Every loop over them is unrolled: GCC otherwise kept the
// array in memory and stored each accumulator on every k (half the speed at M = 16). No standard-library templates
// in this file (their instantiations would be shared with other translation units and could run on a CPU without
// AVX2).
#include <immintrin.h>

#include <cstdlib>
#include <cstring>

#include "spct/linear.h"

namespace spct {
namespace cpu {
namespace {

constexpr int kRows = 6;        // rows of x per block where a step has that many
constexpr int kTaskBlocks = 3;  // 16-output blocks per parallel task (48 outputs)

inline __m256 bf16x8(const uint16_t* p) {  // 8 bfloat16 values as float32
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

// float32 -> bfloat16, round to nearest even with NaN kept a (quiet) NaN, as torch rounds
inline __m128i to_bf16x8(__m256 f) {
  const __m256i b = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC00000), nan);
  r = _mm256_srli_epi32(r, 16);
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);  // lanes 0..7 in the low half
  return _mm256_castsi256_si128(packed);
}

// acc[r][j][h] += x[r][kk] * w(kk) for one k = kk of 16 J outputs, its weights given as float32 by `convert`.
template <int R, int J, typename Convert>
__attribute__((always_inline)) inline void fma_k(__m256 (&acc)[R][J][2], const float* x, int64_t k, int64_t kk,
                                                 const uint16_t* w, int64_t pairs, Convert convert) {
#pragma GCC unroll 8
  for (int j = 0; j < J; ++j) {
    __m256 wv[2];
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h)
      wv[h] = convert(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * pairs * 32 + h * 16)));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 xb = _mm256_broadcast_ss(x + r * k + kk);
      acc[r][j][0] = _mm256_fmadd_ps(xb, wv[0], acc[r][j][0]);
      acc[r][j][1] = _mm256_fmadd_ps(xb, wv[1], acc[r][j][1]);
    }
  }
}

// y[rows, outputs (nb + j) * 16 .. + 16) for j < J; x: float32 rows (stride k); w: the packed weight.
template <int R, int J>
void block(const float* x, int64_t k, const uint16_t* w, int64_t nb, const uint16_t* bias, uint16_t* y, int64_t n) {
  const int64_t pairs = k / 2;
  __m256 acc[R][J][2];
#pragma GCC unroll 8
  for (int j = 0; j < J; ++j)
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m256 b = bias == nullptr ? _mm256_setzero_ps() : bf16x8(bias + (nb + j) * 16 + h * 8);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][j][h] = b;
    }
  const uint16_t* base = w + nb * pairs * 32;
  const auto even = [](__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); };
  // two shifts clear the low half; a mask would take a register
  const auto odd = [](__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_srli_epi32(v, 16), 16)); };
  for (int64_t p = 0; p < pairs; ++p) {  // k = 2p, then 2p + 1: each output's sum runs over k in order
    fma_k<R, J>(acc, x, k, 2 * p, base + p * 32, pairs, even);
    fma_k<R, J>(acc, x, k, 2 * p + 1, base + p * 32, pairs, odd);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j)
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m128i out = to_bf16x8(acc[r][j][h]);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + r * n + (nb + j) * 16 + h * 8), out);
      }
}

// Blocks [nb, nb + count) for R rows, J blocks at a time, the rest one at a time (the same sums).
template <int R, int J>
void blocks(const float* x, int64_t k, const uint16_t* w, int64_t nb, int64_t count, const uint16_t* bias, uint16_t* y,
            int64_t n) {
  int64_t j = 0;
  for (; j + J <= count; j += J) block<R, J>(x, k, w, nb + j, bias, y, n);
  for (; j < count; ++j) block<R, 1>(x, k, w, nb + j, bias, y, n);
}

struct Floats {  // the calling thread's float32 copy of x, kept for its next call
  float* data = nullptr;
  int64_t size = 0;
  ~Floats() { std::free(data); }
  float* at_least(int64_t n) {
    if (n > size) {
      std::free(data);
      data = static_cast<float*>(std::aligned_alloc(64, size_t((n + 15) / 16 * 16) * sizeof(float)));
      if (data == nullptr) std::abort();
      size = n;
    }
    return data;
  }
};

}  // namespace

bool linear_bf16_avx2_supported() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

void linear_bf16_avx2(const uint16_t* x, int64_t m, int64_t k, const uint16_t* packed, int64_t n, const uint16_t* bias,
                      uint16_t* y) {
  thread_local Floats floats;
  float* xf = floats.at_least(m * k);
  for (int64_t i = 0; i + 8 <= m * k; i += 8) _mm256_storeu_ps(xf + i, bf16x8(x + i));  // m * k is a multiple of 32
  const int64_t n_blocks = n / 16, tasks = (n_blocks + kTaskBlocks - 1) / kTaskBlocks;
  const int64_t full = m / kRows * kRows;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t nb = t * kTaskBlocks;
    const int64_t count = n_blocks - nb < kTaskBlocks ? n_blocks - nb : kTaskBlocks;
    // one 16-output block at a time for every 6-row block: the block's weights stay in cache between them
    for (int64_t j = 0; j < count; ++j)
      for (int64_t r = 0; r < full; r += kRows)
        block<kRows, 1>(xf + r * k, k, packed, nb + j, bias, y + r * n, n);
    const float* xr = xf + full * k;
    uint16_t* yr = y + full * n;
    switch (m - full) {  // the same sums, fewer rows: more outputs at a time where the registers allow
      case 5: blocks<5, 1>(xr, k, packed, nb, count, bias, yr, n); break;
      case 4: blocks<4, 1>(xr, k, packed, nb, count, bias, yr, n); break;
      case 3: blocks<3, 1>(xr, k, packed, nb, count, bias, yr, n); break;
      case 2: blocks<2, 2>(xr, k, packed, nb, count, bias, yr, n); break;
      case 1: blocks<1, 3>(xr, k, packed, nb, count, bias, yr, n); break;
      default: break;
    }
  }
}

}  // namespace cpu
}  // namespace spct
