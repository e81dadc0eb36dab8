// The bfloat16 element-wise steps of a decoder layer between its matmuls, fused (csrc/cpu/layer_ops.cpp). All
// tensors are bfloat16 bits, row-major and contiguous; the caller (spct.ops.layer_ops) checked shapes and dtypes.
#pragma once

#include <cstdint>

namespace spct {
namespace cpu {

// x (m, h) += delta (m, h) when delta is not null (in place), then out (m, h) = weight (h) * x / rms(x, eps).
void add_rms_norm_bf16(uint16_t* x, const uint16_t* delta, const uint16_t* weight, float eps, int64_t m, int64_t h,
                       uint16_t* out);

// qkv (m, (hq + 2 hkv) d): RoPE (cos, sin: (positions, d), rotate-half) on the q and k heads at positions (m); q
// to q_out (m, hq, d), k and v to row slots[r] of k_cache and v_cache (num_slots, hkv, d). Returns -1, or (writing
// nothing) the first row r whose positions[r] is outside [0, num_positions) or slots[r] outside [0, num_slots).
int64_t rope_qkv_bf16(const uint16_t* qkv, int64_t m, int64_t hq, int64_t hkv, int64_t d, const uint16_t* cos,
                      const uint16_t* sin, int64_t num_positions, const int64_t* positions, int64_t num_slots,
                      const int64_t* slots, uint16_t* q_out, uint16_t* k_cache, uint16_t* v_cache);

// out (m, n) = silu(gate) * up, gate_up (m, 2n) = [gate | up] per row.
void silu_mul_bf16(const uint16_t* gate_up, int64_t m, int64_t n, uint16_t* out);

// out (m, n) = gelu_tanh(gate) * up (Gemma's GeGLU: GELU with the tanh approximation), gate_up as silu_mul_bf16's.
void gelu_tanh_mul_bf16(const uint16_t* gate_up, int64_t m, int64_t n, uint16_t* out);

}  // namespace cpu
}  // namespace spct
