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

// Rows [0, R) of x for the J blocks whose pair p starts at w + p * stride (block j 32 elements on: the grouped
// layout of spct/linear.h), outputs from nb * 16. On the way, cache lines [pf0, pf1) from pf (the thread's next task;
// an empty range: none) are prefetched into L2, pf_step of them per pair.
template <int R, int J>
void block(const uint16_t* x, int64_t k, const uint16_t* w, int64_t stride, int64_t nb, const uint16_t* bias,
           uint16_t* y, int64_t n, const uint16_t* pf, int64_t pf0, int64_t pf1, int64_t pf_step) {
  __m512 acc[R][J];
  for (int j = 0; j < J; ++j) {
    const __m512 b = bias_block(bias, (nb + j) * 16);
    for (int r = 0; r < R; ++r) acc[r][j] = b;
  }
  const int64_t pairs = k / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    __m512i wv[J];
    for (int j = 0; j < J; ++j) wv[j] = _mm512_loadu_si512(w + p * stride + j * 32);
    for (int64_t line = pf0 + p * pf_step, i = 0; i < pf_step && line < pf1; ++i, ++line)
      _mm_prefetch(reinterpret_cast<const char*>(pf + line * 32), _MM_HINT_T1);
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

// Block b's pair 0 in the grouped layout, and the stride from one pair to the next (its group's blocks times 32).
struct At {
  const uint16_t* w;
  int64_t stride;
};
inline At at(const uint16_t* packed, int64_t n_blocks, int64_t pairs, int64_t b) {
  const int64_t g0 = b / kBlocks * kBlocks, width = n_blocks - g0 < kBlocks ? n_blocks - g0 : kBlocks;
  return {packed + (g0 * pairs + (b - g0)) * 32, width * 32};
}

// One task: every row of x for blocks [nb, nb + J) (within one group), kRows rows per pass. The passes after the
// first prefetch the next task's group (pf: its lines, one after another, 0: none), shared out among them in
// consecutive runs of lines.
template <int J>
void task(const uint16_t* x, int64_t m, int64_t k, At w, int64_t nb, const uint16_t* bias, uint16_t* y, int64_t n,
          At pf) {
  const int64_t passes = (m + kRows - 1) / kRows, pairs = k / 2, lines = pf.w == nullptr ? 0 : pairs * pf.stride / 32;
  const int64_t step = passes < 2 ? 0 : (lines + (passes - 1) * pairs - 1) / ((passes - 1) * pairs);  // per pair
  const auto from = [&](int64_t pass) { return pass == 0 ? lines : (pass - 1) * pairs * step; };  // pass 0: none
  int64_t r = 0, pass = 0;
  for (; r + kRows <= m; r += kRows, ++pass)
    block<kRows, J>(x + r * k, k, w.w, w.stride, nb, bias, y + r * n, n, pf.w, from(pass), lines, step);
  const int64_t f = from(pass);
  switch (m - r) {  // the same sums, fewer rows
    case 5: block<5, J>(x + r * k, k, w.w, w.stride, nb, bias, y + r * n, n, pf.w, f, lines, step); break;
    case 4: block<4, J>(x + r * k, k, w.w, w.stride, nb, bias, y + r * n, n, pf.w, f, lines, step); break;
    case 3: block<3, J>(x + r * k, k, w.w, w.stride, nb, bias, y + r * n, n, pf.w, f, lines, step); break;
    case 2: block<2, J>(x + r * k, k, w.w, w.stride, nb, bias, y + r * n, n, pf.w, f, lines, step); break;
    case 1: block<1, J>(x + r * k, k, w.w, w.stride, nb, bias, y + r * n, n, pf.w, f, lines, step); break;
    default: break;
  }
}

}  // namespace

bool linear_bf16_supported() { return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw"); }

void linear_bf16(const uint16_t* x, int64_t m, int64_t k, const uint16_t* packed, int64_t n, const uint16_t* bias,
                 uint16_t* y) {
  // Each thread takes an equal share of the 16-output blocks, in tasks of up to kBlocks that end where their group
  // does (the first and last may be smaller). Why: tasks of 4 blocks over 2 threads left one thread idle for a task
  // in qkv (15 tasks), o and down (9).
  //
  // More rows than one pass holds (k = 16: passes of 6, 6 and 4 rows over each task's 64 outputs): the first pass
  // reads the weights from memory and the later ones from L2, so memory sat idle for most of the task and the first
  // pass ran at memory speed. The later passes now prefetch the thread's next task into L2. Measured alternately in
  // one process (2-core EPYC, AVX-512 BF16, cold weights, M = 16): gate_up 238 -> 184 us, the LM head 3.51 -> 2.64
  // ms, qkv, o and down 1.1-1.2x; a k = 16 decode step 1.13x. Tried and dropped: cutting K into chunks of 32-128
  // pairs whose weights stay in L1 across the passes (slower: memory still idle while the later passes run).
  //
  // The weight is grouped (spct/linear.h): a task's blocks lie in one group, whose pairs follow one another, so each
  // thread reads its share as one stream. Why: with the blocks one after another, a task read 4 streams 18 KB apart
  // (K = 576) and a thread's share restarted them every 64 outputs. Measured alternately in one process (2-core
  // EPYC, 2 threads, cold copies of SmolLM2-135M's matrices, the same bits): at M = 1 qkv 1.10-1.21x, gate_up 1.12-
  // 1.14x, the LM head 1.12-1.24x, o and down 0.93-1.04x; at M = 16 0.92-1.05x (a pass's prefetch of the next task
  // is a run of its group's lines: as 2 of every 4 lines, M = 16 was 0.87-0.97x).
  const int64_t n_blocks = n / 16, pairs = k / 2;
  const bool prefetch = m > kRows;
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t b0 = n_blocks * id / threads, b1 = n_blocks * (id + 1) / threads;
    const auto end = [&](int64_t nb) {  // the task from block nb: to its group's end or the thread's last block
      const int64_t e = (nb / kBlocks + 1) * kBlocks;
      return e < b1 ? e : b1;
    };
    for (int64_t nb = b0; nb < b1; nb = end(nb)) {
      const int64_t blocks = end(nb) - nb, after = end(nb);
      const At w = at(packed, n_blocks, pairs, nb);
      const At pf = prefetch && after < b1 ? at(packed, n_blocks, pairs, after) : At{nullptr, 0};
      switch (blocks) {
        case 4: task<4>(x, m, k, w, nb, bias, y, n, pf); break;
        case 3: task<3>(x, m, k, w, nb, bias, y, n, pf); break;
        case 2: task<2>(x, m, k, w, nb, bias, y, n, pf); break;
        default: task<1>(x, m, k, w, nb, bias, y, n, pf); break;
      }
    }
  }
}

}  // namespace cpu
}  // namespace spct
