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

// Rows [0, R) of x for blocks [nb, nb + blocks). Blocks [pf0, pf1) of the thread's next task (pf: its weights, null:
// none) are prefetched into L2 on the way, one cache line per pair of K and block.
template <int R>
void block(const uint16_t* x, int64_t k, const uint16_t* packed, int64_t nb, int64_t blocks, const uint16_t* bias,
           uint16_t* y, int64_t n, const uint16_t* pf = nullptr, int pf0 = 0, int pf1 = 0) {
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
    if (pf != nullptr)
      for (int j = pf0; j < pf1; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(pf + (j * pairs + p) * 32), _MM_HINT_T1);
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
  // More rows than one pass holds (k = 16: passes of 6, 6 and 4 rows over each task's 64 outputs): the first pass
  // reads the weights from memory and the later ones from L2, so memory sat idle for most of the task and the first
  // pass ran at memory speed. The later passes now prefetch the thread's next task into L2. Measured alternately in
  // one process (2-core EPYC, AVX-512 BF16, cold weights, M = 16): gate_up 238 -> 184 us, the LM head 3.51 -> 2.64
  // ms, qkv, o and down 1.1-1.2x; a k = 16 decode step 1.13x. Tried and dropped: cutting K into chunks of 32-128
  // pairs whose weights stay in L1 across the passes (slower: memory still idle while the later passes run).
  const int64_t passes = (m + kRows - 1) / kRows;
  const bool prefetch = passes > 1;
#pragma omp parallel
  {
    // the static schedule's contiguous range of tasks for this thread (so its next task is t + 1)
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t per = tasks / threads, extra = tasks % threads;
    const int64_t t0 = id * per + (id < extra ? id : extra), t1 = t0 + per + (id < extra ? 1 : 0);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t nb = t * kBlocks;
      const int64_t blocks = n_blocks - nb < kBlocks ? n_blocks - nb : kBlocks;
      const int64_t next = t + 1 < t1 ? n_blocks - (nb + kBlocks) : 0;  // the next task's blocks
      const uint16_t* pf = prefetch && next > 0 ? packed + (nb + kBlocks) * (k / 2) * 32 : nullptr;
      const int pf_blocks = int(next < kBlocks ? next : kBlocks);
      int64_t r = 0;
      for (int64_t pass = 0; r + kRows <= m; r += kRows, ++pass) {
        // passes after the first prefetch the next task's blocks, shared out among them
        const int lo = pass == 0 ? 0 : int((pass - 1) * pf_blocks / (passes - 1));
        const int hi = pass == 0 ? 0 : int(pass * pf_blocks / (passes - 1));
        block<kRows>(x + r * k, k, packed, nb, blocks, bias, y + r * n, n, pf, lo, hi);
      }
      const int lo = passes > 1 ? int((passes - 2) * pf_blocks / (passes - 1)) : 0, hi = passes > 1 ? pf_blocks : 0;
      switch (m - r) {  // the same sums, fewer rows
        case 5: block<5>(x + r * k, k, packed, nb, blocks, bias, y + r * n, n, pf, lo, hi); break;
        case 4: block<4>(x + r * k, k, packed, nb, blocks, bias, y + r * n, n, pf, lo, hi); break;
        case 3: block<3>(x + r * k, k, packed, nb, blocks, bias, y + r * n, n, pf, lo, hi); break;
        case 2: block<2>(x + r * k, k, packed, nb, blocks, bias, y + r * n, n, pf, lo, hi); break;
        case 1: block<1>(x + r * k, k, packed, nb, blocks, bias, y + r * n, n, pf, lo, hi); break;
        default: break;
      }
    }
  }
}

}  // namespace cpu
}  // namespace spct
