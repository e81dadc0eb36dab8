// decoder_forward_bf16 (spct/decoder.h): the layer loop of a decode or prefill step, on the kernels the Python loop
// calls one by one.
//
// Where a step's time goes (SmolLM2-135M bf16, k = 16 over a 1,000-token prompt, 2-core Xeon with AMX, one process
// timing the same steps with and without the attention call): this loop took 32 ms per step, paged_attention 12.5
// ms of it (40%) and the linears, norms and activation 19.5 ms; the linears stream their weights at 70-80% of the
// measured memory speed. Attention is bound by its per-block work (packing, softmax, tile stores), not by memory:
// the same call on cache-resident KV takes as long. Tried and dropped, both measured in that way:
//   - prefetching the layer's o, gate_up and down weights (and the next qkv) toward L2 during attention, spread over
//     its blocks: slower (45-56 ms against 44-45 for this loop), worse the more was prefetched;
//   - prefetching KV blocks 2-12 blocks ahead into L2 on top of the next block into L1: no change.
#include "spct/decoder.h"

#include <cstring>
#include <string>
#include <vector>

#include "spct/layer_ops.h"
#include "spct/linear.h"

namespace spct {
namespace cpu {
namespace {

struct Buffers {
  uint16_t *h, *qkv, *q, *attn, *delta, *gate_up, *act;
};

// The calling thread's buffers, kept for its next step (engines sharing a runner call from their own threads).
Buffers carve(const Decoder& d, int64_t rows) {
  thread_local std::vector<uint16_t> work;
  const int64_t H = d.hidden, qd = d.heads * d.head_dim, qkv = (d.heads + 2 * d.kv_heads) * d.head_dim;
  const int64_t sizes[] = {H, qkv, qd, qd, H, 2 * d.intermediate, d.intermediate};
  int64_t total = 0;
  for (int64_t s : sizes) total += rows * s;
  if (int64_t(work.size()) < total) work.resize(size_t(total));
  uint16_t* p = work.data();
  uint16_t* parts[7];
  for (int i = 0; i < 7; ++i) {
    parts[i] = p;
    p += rows * sizes[i];
  }
  return {parts[0], parts[1], parts[2], parts[3], parts[4], parts[5], parts[6]};
}

// Qwen3's q and k norms: RMSNorm over each head's D values of qkv (rows, Hq + 2 Hkv, D), in place, as the Python
// loop does it (spct.engine.llama.LlamaRunner._qk_norm): each part's heads gathered into (rows * heads, D), one
// add_rms_norm_bf16 call (in place: with no delta a row's sum of squares is taken before any of its values is
// written, and each output value is its own input's), then copied back. The same call on the same rows, so the
// same bits and the same split over threads. q_scratch holds rows * Hq * D values, k_scratch rows * Hkv * D.
void qk_norm(const Decoder& d, const DecoderLayer& l, uint16_t* qkv, int64_t rows, uint16_t* q_scratch,
             uint16_t* k_scratch) {
  const int64_t D = d.head_dim, width = (d.heads + 2 * d.kv_heads) * D;
  const int64_t parts[2][2] = {{0, d.heads}, {d.heads, d.kv_heads}};  // first head, heads
  uint16_t* scratch[2] = {q_scratch, k_scratch};
  const uint16_t* weight[2] = {l.q_norm, l.k_norm};
  for (int p = 0; p < 2; ++p) {
    const int64_t first = parts[p][0] * D, n = parts[p][1] * D;
    for (int64_t r = 0; r < rows; ++r) std::memcpy(scratch[p] + r * n, qkv + r * width + first, size_t(n) * 2);
    add_rms_norm_bf16(scratch[p], nullptr, weight[p], d.eps, rows * parts[p][1], D, scratch[p]);
    for (int64_t r = 0; r < rows; ++r) std::memcpy(qkv + r * width + first, scratch[p] + r * n, size_t(n) * 2);
  }
}

}  // namespace

std::string decoder_forward_bf16(const Decoder& d, const attn::PagedAttention* layouts, uint16_t* x, int64_t rows,
                                 const int64_t* positions, const int64_t* slots, uint16_t* kv, int64_t num_blocks,
                                 int64_t block_size, uint16_t* out) {
  const LinearBF16 linear = d.linear;
  const auto matmul = [&](const uint16_t* in, const PackedLinear& w, uint16_t* y) {
    linear(in, rows, w.k, w.packed, w.n, w.bias, y);
  };
  const int64_t H = d.hidden, n = int64_t(d.layers.size()), num_slots = num_blocks * block_size;
  const int64_t cache = num_slots * d.kv_heads * d.head_dim;  // one layer's keys (or values)
  const Buffers b = carve(d, rows);
  std::vector<attn::PagedAttention> a(layouts, layouts + d.num_layouts);
  std::vector<bool> checked(size_t(d.num_layouts), false);
  add_rms_norm_bf16(x, nullptr, d.layers[0].in_norm, d.eps, rows, H, b.h);
  for (int64_t i = 0; i < n; ++i) {
    const DecoderLayer& l = d.layers[size_t(i)];
    uint16_t* k_cache = kv + 2 * i * cache;
    matmul(b.h, l.qkv, b.qkv);
    if (l.q_norm != nullptr) qk_norm(d, l, b.qkv, rows, b.q, b.attn);  // b.q and b.attn are free until RoPE
    const int64_t bad = rope_qkv_bf16(b.qkv, rows, d.heads, d.kv_heads, d.head_dim, l.cos, l.sin, d.num_positions,
                                      positions, num_slots, slots, b.q, k_cache, k_cache + cache);
    if (bad >= 0) {
      const bool pos = positions[bad] < 0 || positions[bad] >= d.num_positions;
      return std::string(pos ? "positions[" : "slots[") + std::to_string(bad) + "] = " +
             std::to_string(pos ? positions[bad] : slots[bad]) + " is outside [0, " +
             std::to_string(pos ? d.num_positions : num_slots) + ")";
    }
    attn::PagedAttention& layout = a[size_t(l.layout)];
    layout.q = b.q;
    layout.k_cache = k_cache;
    layout.v_cache = k_cache + cache;
    layout.out = b.attn;
    const std::string error = paged_attention(layout, !checked[size_t(l.layout)]);  // each layout checked once
    if (!error.empty()) return error;
    checked[size_t(l.layout)] = true;
    matmul(b.attn, l.o, b.delta);  // Gemma's norms of the attention's and the MLP's outputs: in place (no delta)
    if (l.attn_out_norm != nullptr) add_rms_norm_bf16(b.delta, nullptr, l.attn_out_norm, d.eps, rows, H, b.delta);
    add_rms_norm_bf16(x, b.delta, l.post_norm, d.eps, rows, H, b.h);
    matmul(b.h, l.gate_up, b.gate_up);
    (d.gelu_tanh ? gelu_tanh_mul_bf16 : silu_mul_bf16)(b.gate_up, rows, d.intermediate, b.act);
    matmul(b.act, l.down, b.delta);
    if (l.mlp_out_norm != nullptr) add_rms_norm_bf16(b.delta, nullptr, l.mlp_out_norm, d.eps, rows, H, b.delta);
    const bool last = i + 1 == n;
    add_rms_norm_bf16(x, b.delta, last ? d.final_norm : d.layers[size_t(i + 1)].in_norm, d.eps, rows, H,
                      last ? out : b.h);
  }
  return "";
}

}  // namespace cpu
}  // namespace spct
