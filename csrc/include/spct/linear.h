// linear_bf16: y (M, N) = x (M, K) W^T (+ bias), bfloat16 in and out, float32 accumulation, for the small M of
// decoding (one row per live sample). W comes pre-packed in pairs along K for 16 outputs at a time (a block), in one
// of two layouts:
//   blocked (N / 16, K / 2, 16, 2): element (n, k) at ((n / 16) * (K / 2) + k / 2) * 32 + (n % 16) * 2 + k % 2
//     (the layout of an AMX tile of B), read by linear_bf16_amx and linear_bf16_avx2;
//   grouped: the blocks in groups of 4 (64 outputs; the last group has the rest), each group (K / 2, blocks, 16, 2)
//     after the ones before it: element (n, k) of block b = n / 16, in the group from g0 = b / 4 * 4 of w =
//     min(4, N / 16 - g0) blocks, at (g0 * (K / 2) + (k / 2) * w + b - g0) * 32 + (n % 16) * 2 + k % 2; read by
//     linear_bf16 (AVX-512 BF16), whose thread reads its share as one stream (csrc/cpu/linear.cpp).
// N must be a multiple of 16 and K of 32 (the caller, spct.ops.linear.Linear, pads the weight so and packs it in its
// kernel's layout).
#pragma once

#include <cstdint>

namespace spct {
namespace cpu {

// True when this CPU has AVX-512 BF16 (the build linear_bf16 runs).
bool linear_bf16_supported();

// All pointers to bfloat16 bits; bias may be null. Each output's sum runs over k in order, whatever M is, so a
// row's result does not depend on the other rows.
void linear_bf16(const uint16_t* x, int64_t m, int64_t k, const uint16_t* packed, int64_t n, const uint16_t* bias,
                 uint16_t* y);

// True when this CPU has AMX-BF16 (and AVX-512 BF16) and the OS granted this process the tile registers.
bool linear_bf16_amx_supported();

// The same product on AMX tiles (csrc/cpu/linear_amx.cpp). Its sums run over K in tiles of 32, so its bits differ
// from linear_bf16's; a row's result still does not depend on M or the other rows.
void linear_bf16_amx(const uint16_t* x, int64_t m, int64_t k, const uint16_t* packed, int64_t n,
                     const uint16_t* bias, uint16_t* y);

// True when this CPU has AVX2 and FMA; the caller uses its BLAS where no build runs.
bool linear_bf16_avx2_supported();

// The same product in float32 FMAs (csrc/cpu/linear_avx2.cpp): each product of two bfloat16 values is exact in
// float32 and each output's sum runs over k in order, so its bits differ from linear_bf16's (whose dot-product
// instruction adds pairs) and a row's result does not depend on M or the other rows.
void linear_bf16_avx2(const uint16_t* x, int64_t m, int64_t k, const uint16_t* packed, int64_t n,
                      const uint16_t* bias, uint16_t* y);

using LinearBF16 = void (*)(const uint16_t* x, int64_t m, int64_t k, const uint16_t* packed, int64_t n,
                            const uint16_t* bias, uint16_t* y);

}  // namespace cpu
}  // namespace spct
