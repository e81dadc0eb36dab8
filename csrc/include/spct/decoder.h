// decoder_forward_bf16: a step's rows through every layer of a Llama-style decoder in one native call, bfloat16 on
// the CPU: per layer the same kernels, in the same order, on the same values as the Python loop of
// spct.engine.llama.LlamaRunner.forward_paged (so the same bits, tested): add_rms_norm, linear qkv, add_rms_norm over
// each q and k head (Qwen3's q_norm and k_norm, where the layer has them), rope_qkv (k and v into the paged cache),
// paged_attention, linear o, add_rms_norm, linear gate_up, silu_mul, linear down, add_rms_norm. Why: the Python
// loop makes 9 calls per layer, each through a wrapper that checks its arguments and allocates its output; at k = 1
// that was about a sixth of a SmolLM2 decode step. Here the arguments are checked once (spct.engine.native_decoder)
// and the work buffers are kept from one step to the next (one set per calling thread: engines that share a runner
// step it from their own threads at once).
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
};

struct Decoder {
  std::vector<DecoderLayer> layers;
  const uint16_t* final_norm = nullptr;  // (H,)
  const uint16_t* cos = nullptr;         // (num_positions, D)
  const uint16_t* sin = nullptr;
  int64_t num_positions = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0;
  float eps = 0.0f;
  LinearBF16 linear = nullptr;  // the build of linear_bf16 to run (spct/linear.h)
};

// x (rows, H): the rows' embeddings, then their residual stream (in place); positions, slots (rows,): each row's
// position and KV slot (block * block_size + offset); kv: (layers, 2, num_blocks, block_size, Hkv, D); layout: the
// step's paged_attention layout (q, caches and out are filled in per layer); out (rows, H): the final norm of the
// residual stream. Returns "" or the first bad value (a position or slot out of range, a bad index of layout).
std::string decoder_forward_bf16(const Decoder& d, attn::PagedAttention layout, uint16_t* x, int64_t rows,
                                 const int64_t* positions, const int64_t* slots, uint16_t* kv, int64_t num_blocks,
                                 int64_t block_size, uint16_t* out);

}  // namespace cpu
}  // namespace spct
