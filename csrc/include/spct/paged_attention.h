// paged_attention: attention of R query rows over KV stored in a paged cache, described by segments (runs of
// blocks read by any set of rows). Layout and index rules: python/spct/ops/paged_attention.py.
//
// Layouts (row-major):
//   q                  (R, Hq, D)
//   k_cache, v_cache   (N, B, Hkv, D)   N blocks of B tokens; token i of block b is [b, i]
//   out                (R, Hq, D)
//   segment s          seg_len[s] tokens in blocks block_ids[seg_block_indptr[s] .. seg_block_indptr[s + 1]),
//                      ceil(seg_len[s] / B) of them, read by rows seg_rows[seg_row_indptr[s] .. [s + 1])
//   causal (optional)  causal[s] != 0: token i of segment s sits at position seg_start[s] + i and row r sees it
//                      only if that position is <= q_pos[r]
//   window (optional)  window = W > 0: token i of EVERY segment s sits at position seg_start[s] + i (causal, q_pos and
//                      seg_start are given) and row r sees it only if that position is > q_pos[r] - W (a row sees
//                      itself and the W - 1 tokens before it at most: transformers' sliding window); blocks wholly
//                      before a lane's window are not read for it, nor at all when no lane of the block sees them
//   softcap (optional) softcap = c > 0: every score x = scale * (q . k) becomes c * tanh(x / c) before the softmax
//                      (Gemma 2's attn_logit_softcapping)
// Query head h reads KV head h / (Hq / Hkv).
//
// The rule every kernel follows (the engine's batch invariance rests on it): a row's output is an online softmax
// over ITS blocks, block by block, in the order of the segments that list the row and, within a segment, in block
// order. For each block: the row's scores over the block's tokens it sees (all tokens of a full block, the first
// seg_len % B of a segment's partial last block, for a causal segment only positions <= q_pos, with a window only
// positions > q_pos - window), then the running max, sum and float32 accumulator updated once; a block the row sees
// no token of leaves its state bit for bit as it is. A row's result thus depends only on q[r], the sequence of
// blocks it sees and which tokens of each: not on the other rows, on how its blocks are split into segments, on the
// number of rows or of threads.
#pragma once

#include <cstdint>
#include <string>

namespace spct {
namespace attn {

struct PagedAttention {
  const void* q;
  const void* k_cache;
  const void* v_cache;
  void* out;
  const int32_t* block_ids;         // (nnz_blocks,) each segment's blocks in order, < num_blocks
  const int32_t* seg_block_indptr;  // (segments + 1,)
  const int32_t* seg_len;           // (segments,) tokens per segment
  const int32_t* seg_row_indptr;    // (segments + 1,)
  const int32_t* seg_rows;          // (nnz_rows,) each segment's distinct rows, < rows
  const uint8_t* causal;            // (segments,) 0 or 1 (torch.bool); null: no causal segment
  const int32_t* q_pos;             // (rows,) null when causal is null
  const int32_t* seg_start;         // (segments,) null when causal is null
  int32_t window = 0;                // > 0: the sliding window (causal, q_pos and seg_start given); 0: none
  float softcap = 0.0f;              // > 0: scores capped to c * tanh(score / c); 0: none
  int64_t rows, heads, kv_heads, head_dim;
  int64_t num_blocks, block_size, segments, nnz_blocks, nnz_rows;
  float scale;  // applied to q . k (usually 1 / sqrt(D))
  bool bf16;    // q, caches and out are bfloat16 (else float32); the arithmetic is float32 either way
  bool amx;     // the CPU kernel's AMX build (bf16, head_dim % 32 == 0, block_size % 16 == 0, a CPU with AMX-BF16
                // whose OS granted the tiles: cpu::linear_bf16_amx_supported); else its vector build
  bool dpbf16 = false;  // (amx false) the vector build on bfloat16 pairs (bf16, head_dim % 32 == 0, block_size % 16
                        // == 0, a CPU with AVX-512 BF16: cpu::linear_bf16_supported)
};

}  // namespace attn

namespace cpu {
// "" or the first bad index value, worded as the Python wrapper words it. check = false skips the index checks for
// a layout already checked (the later layers of one step; spct/decoder.h).
std::string paged_attention(const attn::PagedAttention& a, bool check = true);
}  // namespace cpu

namespace cuda {
// Same on device pointers (index values already checked by the wrapper); "" or the CUDA error text.
const char* paged_attention(const attn::PagedAttention& a, void* stream);
}  // namespace cuda

}  // namespace spct
