// The AVX-512 BF16 build of linear_bf16 (see spct/linear.h); compiled with -mavx512bf16, entered only after
// linear_bf16_supported(). Measured on SmolLM2-135M decode steps: torch's bf16 matmul reads the weights at about
// 9 GB/s at M = 1 and reaches a third of the dot-product peak at M = 16; this kernel streams packed weights once
// per 64 outputs and keeps 6 x 4 accumulators in registers. No standard-library templates in this file (their
// instantiations would be shared with other translation units and could run on a CPU without AVX-512).
#include <immintrin.h>

#include <cstring>

#include "spct/linear.h"

namespace spct {
namespace cpu {
namespace {

constexpr int kRows = 6;    // rows of x per block
constexpr int kBlocks = 4;  // 16-output blocks per task (64 outputs)

inline __m512 bias_block(const uint16_t* bias, int64_t n0) {
  if (bias == nullptr) return _mm512_setzero_ps();
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + n0));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

template <int R>
void block(const uint16_t* x, int64_t k, const uint16_t* packed, int64_t nb, int64_t blocks, const uint16_t* bias,
           uint16_t* y, int64_t n) {
  __m512 acc[R][kBlocks];
  for (int j = 0; j < kBlocks; ++j) {
    const __m512 b = j < blocks ? bias_block(bias, (nb + j) * 16) : _mm512_setzero_ps();
    for (int r = 0; r < R; ++r) acc[r][j] = b;
  }
  const int64_t pairs = k / 2;
  const uint16_t* w = packed + nb * pairs * 32;
  for (int64_t p = 0; p < pairs; ++p) {
    __m512i wv[kBlocks];
    for (int j = 0; j < kBlocks; ++j)
      wv[j] = j < blocks ? _mm512_loadu_si512(w + (j * pairs + p) * 32) : _mm512_setzero_si512();
    for (int r = 0; r < R; ++r) {
      uint32_t pair;
      memcpy(&pair, x + r * k + 2 * p, sizeof pair);
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(int(pair));
      for (int j = 0; j < kBlocks; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], xb, (__m512bh)wv[j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < blocks; ++j) {
      const __m256bh out = _mm512_cvtneps_pbh(acc[r][j]);  // round to nearest even, as torch rounds
      memcpy(y + r * n + (nb + j) * 16, &out, sizeof out);
    }
}

}  // namespace

bool linear_bf16_supported() { return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw"); }

void linear_bf16(const uint16_t* x, int64_t m, int64_t k, const uint16_t* packed, int64_t n, const uint16_t* bias,
                 uint16_t* y) {
  const int64_t n_blocks = n / 16, tasks = (n_blocks + kBlocks - 1) / kBlocks;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t nb = t * kBlocks;
    const int64_t blocks = n_blocks - nb < kBlocks ? n_blocks - nb : kBlocks;
    int64_t r = 0;
    for (; r + kRows <= m; r += kRows) block<kRows>(x + r * k, k, packed, nb, blocks, bias, y + r * n, n);
    switch (m - r) {  // the same sums, fewer rows
      case 5: block<5>(x + r * k, k, packed, nb, blocks, bias, y + r * n, n); break;
      case 4: block<4>(x + r * k, k, packed, nb, blocks, bias, y + r * n, n); break;
      case 3: block<3>(x + r * k, k, packed, nb, blocks, bias, y + r * n, n); break;
      case 2: block<2>(x + r * k, k, packed, nb, blocks, bias, y + r * n, n); break;
      case 1: block<1>(x + r * k, k, packed, nb, blocks, bias, y + r * n, n); break;
      default: break;
    }
  }
}

}  // namespace cpu
}  // namespace spct
