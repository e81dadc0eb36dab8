// decoder_forward_bf16: a step's rows through every layer of a Llama-style decoder in one native call, bfloat16 on
// the CPU: per layer the same kernels, in the same order, on the same values as the Python loop of
// spct.engine.llama.LlamaRunner.forward_paged (so the same bits, tested): add_rms_norm, linear qkv, add_rms_norm over
// each q and k head (Qwen3's and Gemma 3's q_norm and k_norm, where the layer has them), rope_qkv (k and v into the
// paged cache; the layer's own RoPE table), paged_attention (the layer's layout: one per window size), linear o,
// add_rms_norm (Gemma's norm of the attention's output first, where the layer has it), linear gate_up, silu_mul or
// gelu_tanh_mul, linear down, add_rms_norm (Gemma's norm of the MLP's output first). Why: the Python loop makes 9
// calls per layer, each through a wrapper that checks its arguments and allocates its output; at k = 1 that was
// about a sixth of a SmolLM2 decode step. Here the arguments are checked once (spct.engine.native_decoder) and the
// work buffers are kept from one step to the next (one set per calling thread: engines that share a runner step it
// from their own threads at once).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spct/linear.h"
#include "spct/paged_attention.h"

namespace spct {
namespace cpu {

struct PackedLinear {  // a weight packed for linear_bf16 (spct/linear.h); n % 16 == 0, k % 32 == 0
  const uint16_t* packed = nullptr;
  const uint16_t* bias = nullptr;  // (n,) or null
  int64_t n = 0, k = 0;
};

struct DecoderLayer {
  PackedLinear qkv, o, gate_up, down;  // (Hq + 2 Hkv) D x H, H x Hq D, 2 I x H, H x I
  const uint16_t* in_norm = nullptr;   // (H,)
  const uint16_t* post_norm = nullptr;  // (H,)
  const uint16_t* q_norm = nullptr;     // (D,) or null: RMSNorm over each q head before RoPE (Qwen3)
  const uint16_t* k_norm = nullptr;     // (D,), null when q_norm is
  const uint16_t* attn_out_norm = nullptr;  // (H,) or null: RMSNorm of the attention's output (Gemma's sandwich)
  const uint16_t* mlp_out_norm = nullptr;   // (H,) or null: RMSNorm of the MLP's output (Gemma's sandwich)
  const uint16_t* cos = nullptr;            // (num_positions, D): the layer's RoPE table (Gemma 3: by layer type)
  const uint16_t* sin = nullptr;
  int64_t layout = 0;  // which of the step's paged_attention layouts the layer takes (one per window size)
};

struct Decoder {
  std::vector<DecoderLayer> layers;
  const uint16_t* final_norm = nullptr;  // (H,)
  int64_t num_layouts = 1;                // 1 + the layers' largest layout index
  bool gelu_tanh = false;                 // the MLP's gate: gelu_tanh_mul (Gemma's GeGLU), else silu_mul
  int64_t num_positions = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0;
  float eps = 0.0f;
  LinearBF16 linear = nullptr;  // the build of linear_bf16 to run (spct/linear.h)
};

// x (rows, H): the rows' embeddings, then their residual stream (in place); positions, slots (rows,): each row's
// position and KV slot (block * block_size + offset); kv: (layers, 2, num_blocks, block_size, Hkv, D); layouts
// (d.num_layouts): the step's paged_attention layouts (q, caches and out are filled in per layer), each checked at
// the first layer that takes it; out (rows, H): the final norm of the residual stream. Returns "" or the first bad
// value (a position or slot out of range, a bad index of a layout).
std::string decoder_forward_bf16(const Decoder& d, const attn::PagedAttention* layouts, uint16_t* x, int64_t rows,
                                 const int64_t* positions, const int64_t* slots, uint16_t* kv, int64_t num_blocks,
                                 int64_t block_size, uint16_t* out);

}  // namespace cpu
}  // namespace spct
