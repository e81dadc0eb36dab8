// The AMX build of linear_bf16 (see spct/linear.h); compiled with -mamx-tile -mamx-bf16 -mavx512bf16, entered only
// after linear_bf16_amx_supported(). Why: on a 2-core Xeon with AMX, the AVX-512 BF16 kernel tops out near 140
// GFLOP/s, so a 16-row decode step spends 3x the weights' read time in the dot products (7.7 ms for the 49,152 x
// 576 LM head at M = 16 against 2.1 ms at M = 1); one tile multiply does 16 x 16 x 32 products, and the same step
// becomes bound by reading the weights again.
//
// The packed weight is already the layout of a tile of B: 16 pairs along K (rows) by 16 outputs (64 bytes), so a
// tile of 32 values of K for 16 outputs is 1 KiB, contiguous. x is read as tiles of 16 rows by 32 values of K; a
// last partial tile of rows is a tile of fewer rows (the tiles are configured again for it: a decode step of one
// row multiplies one row, and reads nothing past x). Each output's sum runs over K in tiles of 32, in
// order, into a float32 tile that starts at zero; the bias is added after, before the rounding to bfloat16. None of
// that depends on M or on the other rows, so a row's result does not depend on the batch (tested), and every M runs
// this same kernel on a machine that has AMX (one kernel per machine: a row must not change with the batch size).
//
// Work: one task per group of output blocks (16 outputs each), groups sized so that the tasks split evenly over
// the threads; a task walks the tiles of rows, and for each the whole of K for its group (the group's weights stay
// in L2 across the tiles of rows of a prefill chunk).
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "amx_tiles.h"
#include "spct/linear.h"

namespace spct {
namespace cpu {
namespace {

constexpr int kTileRows = 16;  // rows of x (and of the float32 result) per tile
constexpr int kTileK = 32;     // values of K per tile multiply
constexpr int kMaxGroup = 4;   // output blocks per task: 4 result tiles + 1 of x + 3 of weights = the 8 tiles

// tmm0-3 results and tmm4 x: `rows` rows; tmm5-7 weights: 16 rows (pairs along K); all 64 bytes wide.
void configure_tiles(int rows) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = uint8_t(t < 5 ? rows : kTileRows);
  }
  tile_loadconfig(cfg);
}

// The weight tile of output block nb at K tile kc into tmm T, multiplied into result tile C.
#define SPCT_AMX_STEP(C, T, nb)                                                        \
  do {                                                                                 \
    const uint16_t* w = packed + ((nb) * pairs + kc * (kTileK / 2)) * 32;              \
    prefetch_tile(w + kPrefetch * kTileK * 16, w_end);                                 \
    _tile_loadd(T, w, 64);                                                             \
    _tile_dpbf16ps(C, 4, T);                                                           \
  } while (0)

constexpr int kPrefetch = 4;  // weight tiles ahead: a tile load from memory stalls on its 16 lines otherwise

// The 1 KiB weight tile at w into L1, unless it lies past the weights' end.
inline void prefetch_tile(const uint16_t* w, const uint16_t* w_end) {
  if (w >= w_end) return;
  const char* p = reinterpret_cast<const char*>(w);
  for (int line = 0; line < 16; ++line) _mm_prefetch(p + line * 64, _MM_HINT_T0);
}

// Result tiles of `group` output blocks from nb for the 16 rows of xt (row stride k), into out (group x 16 x 16).
void tile_rows(const uint16_t* xt, int64_t k, const uint16_t* packed, const uint16_t* w_end, int64_t nb, int group,
               float* out) {
  const int64_t pairs = k / 2, ktiles = k / kTileK;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kc = 0; kc < ktiles; ++kc) {
    _tile_loadd(4, xt + kc * kTileK, k * 2);
    SPCT_AMX_STEP(0, 5, nb);
    if (group > 1) SPCT_AMX_STEP(1, 6, nb + 1);
    if (group > 2) SPCT_AMX_STEP(2, 7, nb + 2);
    if (group > 3) SPCT_AMX_STEP(3, 5, nb + 3);
  }
  _tile_stored(0, out, 64);
  if (group > 1) _tile_stored(1, out + 256, 64);
  if (group > 2) _tile_stored(2, out + 512, 64);
  if (group > 3) _tile_stored(3, out + 768, 64);
}

#undef SPCT_AMX_STEP

// Rows [r0, r0 + rows) of y for output block nb from one result tile: + bias, rounded to nearest even.
void write_tile(const float* acc, int64_t rows, const uint16_t* bias, int64_t nb, uint16_t* y, int64_t n) {
  __m512 b = _mm512_setzero_ps();
  if (bias != nullptr) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + nb * 16));
    b = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
  for (int64_t r = 0; r < rows; ++r) {
    const __m256bh out = _mm512_cvtneps_pbh(_mm512_add_ps(_mm512_loadu_ps(acc + r * 16), b));
    memcpy(y + r * n + nb * 16, &out, sizeof out);
  }
}

// Output blocks per task: the largest group up to kMaxGroup whose task count splits evenly over the threads (a
// 576-output matrix has 36 blocks: 9 tasks of 4 leave one of 2 threads idle a ninth of the time, 18 of 2 do not).
int group_size(int64_t n_blocks, int threads) {
  for (int g = kMaxGroup; g > 1; --g) {
    const int64_t tasks = (n_blocks + g - 1) / g;
    if (tasks % threads == 0 || tasks >= 16 * threads) return g;
  }
  return 1;
}

}  // namespace

bool linear_bf16_amx_supported() {
  static const bool ok = [] {
    if (!__builtin_cpu_supports("avx512bf16")) return false;
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    if (!((d >> 22) & 1) || !((d >> 24) & 1)) return false;  // AMX-BF16, AMX-TILE
    // Linux hands out the tile registers' state only on request, once per process (ARCH_REQ_XCOMP_PERM, 0x1023,
    // for XFEATURE_XTILEDATA, 18).
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return ok;
}

void linear_bf16_amx(const uint16_t* x, int64_t m, int64_t k, const uint16_t* packed, int64_t n,
                     const uint16_t* bias, uint16_t* y) {
  const int64_t full = m / kTileRows, rest = m % kTileRows;
  const int64_t n_blocks = n / 16;
  const uint16_t* w_end = packed + n * k;
  const int group = group_size(n_blocks, omp_get_max_threads());
  const int64_t tasks = (n_blocks + group - 1) / group;
#pragma omp parallel
  {
    alignas(64) float acc[kMaxGroup * 256];
    int configured = 0;  // the rows the tiles are configured for (a last partial tile of rows has fewer)
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t nb = t * group;
      const int g = int(n_blocks - nb < group ? n_blocks - nb : group);
      for (int64_t mt = 0; mt < full + (rest ? 1 : 0); ++mt) {
        const int rows = int(mt == full ? rest : kTileRows);
        if (rows != configured) configure_tiles(configured = rows);
        tile_rows(x + mt * kTileRows * k, k, packed, w_end, nb, g, acc);
        for (int j = 0; j < g; ++j) write_tile(acc + j * 256, rows, bias, nb + j, y + mt * kTileRows * n, n);
      }
    }
    if (configured) _tile_release();
  }
}

}  // namespace cpu
}  // namespace spct
