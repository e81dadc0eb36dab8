// The AVX-512 BF16 build of linear_bf16 (see spct/linear.h); compiled with -mavx512bf16, entered only after
// linear_bf16_supported(). Measured on SmolLM2-135M decode steps: torch's bf16 matmul reads the weights at about
// 9 GB/s at M = 1 and reaches a third of the dot-product peak at M = 16; this kernel streams packed weights once
// per 64 outputs and keeps 6 x 4 accumulators in registers. No standard-library templates in this file (their
// instantiations would be shared with other translation units and could run on a CPU without AVX-512).
#include <immintrin.h>

#include <omp.h>

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

// Rows [0, R) of x for blocks [nb, nb + J). Blocks [pf0, pf1) of the thread's next task (pf: its weights, null:
// none) are prefetched into L2 on the way, one cache line per pair of K and block.
template <int R, int J>
void block(const uint16_t* x, int64_t k, const uint16_t* packed, int64_t nb, const uint16_t* bias, uint16_t* y,
           int64_t n, const uint16_t* pf, int pf0, int pf1) {
  __m512 acc[R][J];
  for (int j = 0; j < J; ++j) {
    const __m512 b = bias_block(bias, (nb + j) * 16);
    for (int r = 0; r < R; ++r) acc[r][j] = b;
  }
  const int64_t pairs = k / 2;
  const uint16_t* w = packed + nb * pairs * 32;
  for (int64_t p = 0; p < pairs; ++p) {
    __m512i wv[J];
    for (int j = 0; j < J; ++j) wv[j] = _mm512_loadu_si512(w + (j * pairs + p) * 32);
    if (pf != nullptr)
      for (int j = pf0; j < pf1; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(pf + (j * pairs + p) * 32), _MM_HINT_T1);
    for (int r = 0; r < R; ++r) {
      uint32_t pair;
      memcpy(&pair, x + r * k + 2 * p, sizeof pair);
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(int(pair));
      for (int j = 0; j < J; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], xb, (__m512bh)wv[j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) {
      const __m256bh out = _mm512_cvtneps_pbh(acc[r][j]);  // round to nearest even, as torch rounds
      memcpy(y + r * n + (nb + j) * 16, &out, sizeof out);
    }
}

// One task: every row of x for blocks [nb, nb + J), kRows rows per pass. The passes after the first prefetch the
// next task's pf_blocks blocks (at pf), shared out among them.
template <int J>
void task(const uint16_t* x, int64_t m, int64_t k, const uint16_t* packed, int64_t nb, const uint16_t* bias,
          uint16_t* y, int64_t n, const uint16_t* pf, int pf_blocks) {
  const int64_t passes = (m + kRows - 1) / kRows;
  const auto lo = [&](int64_t pass) {
    return pass == 0 || passes < 2 ? 0 : int((pass - 1) * pf_blocks / (passes - 1));
  };
  int64_t r = 0, pass = 0;
  for (; r + kRows <= m; r += kRows, ++pass)
    block<kRows, J>(x + r * k, k, packed, nb, bias, y + r * n, n, pf, lo(pass), lo(pass + 1));
  const int a = lo(pass), b = lo(pass + 1);
  switch (m - r) {  // the same sums, fewer rows
    case 5: block<5, J>(x + r * k, k, packed, nb, bias, y + r * n, n, pf, a, b); break;
    case 4: block<4, J>(x + r * k, k, packed, nb, bias, y + r * n, n, pf, a, b); break;
    case 3: block<3, J>(x + r * k, k, packed, nb, bias, y + r * n, n, pf, a, b); break;
    case 2: block<2, J>(x + r * k, k, packed, nb, bias, y + r * n, n, pf, a, b); break;
    case 1: block<1, J>(x + r * k, k, packed, nb, bias, y + r * n, n, pf, a, b); break;
    default: break;
  }
}

}  // namespace

bool linear_bf16_supported() { return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw"); }

void linear_bf16(const uint16_t* x, int64_t m, int64_t k, const uint16_t* packed, int64_t n, const uint16_t* bias,
                 uint16_t* y) {
  // Each thread takes an equal share of the 16-output blocks, in tasks of kBlocks (its last one smaller). Why: tasks
  // of 4 blocks over 2 threads left one thread idle for a task in qkv (15 tasks), o and down (9).
  //
  // More rows than one pass holds (k = 16: passes of 6, 6 and 4 rows over each task's 64 outputs): the first pass
  // reads the weights from memory and the later ones from L2, so memory sat idle for most of the task and the first
  // pass ran at memory speed. The later passes now prefetch the thread's next task into L2. Measured alternately in
  // one process (2-core EPYC, AVX-512 BF16, cold weights, M = 16): gate_up 238 -> 184 us, the LM head 3.51 -> 2.64
  // ms, qkv, o and down 1.1-1.2x; a k = 16 decode step 1.13x. Tried and dropped: cutting K into chunks of 32-128
  // pairs whose weights stay in L1 across the passes (slower: memory still idle while the later passes run).
  const int64_t n_blocks = n / 16;
  const bool prefetch = m > kRows;
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t b0 = n_blocks * id / threads, b1 = n_blocks * (id + 1) / threads;
    for (int64_t nb = b0; nb < b1; nb += kBlocks) {
      const int64_t blocks = b1 - nb < kBlocks ? b1 - nb : kBlocks, after = nb + blocks;
      const int pf_blocks = int(b1 - after < kBlocks ? b1 - after : kBlocks);  // the next task's
      const uint16_t* pf = prefetch && pf_blocks > 0 ? packed + after * (k / 2) * 32 : nullptr;
      switch (blocks) {
        case 4: task<4>(x, m, k, packed, nb, bias, y, n, pf, pf_blocks); break;
        case 3: task<3>(x, m, k, packed, nb, bias, y, n, pf, pf_blocks); break;
        case 2: task<2>(x, m, k, packed, nb, bias, y, n, pf, pf_blocks); break;
        default: task<1>(x, m, k, packed, nb, bias, y, n, pf, pf_blocks); break;
      }
    }
  }
}

}  // namespace cpu
}  // namespace spct
