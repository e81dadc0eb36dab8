// prefix_attention: decode attention of S query rows (one new token per sample) over the KV of the prompt they
// share plus each sample's own KV, merged by log-sum-exp. The prompt's KV is stored once for all its samples.
//
// Layouts (row-major, "NHD" like FlashInfer):
//   q        (S, Hq, D)          one query per sample row
//   prefix_k (T, Hkv, D)         the prompts' tokens, packed: prompt p holds rows indptr[p] .. indptr[p + 1]
//   own_k    (C, M, Hkv, D)      per-sample slots of capacity M; row s reads slot own_index[s], first own_len[s]
//   out      (S, Hq, D)
// Query head h reads KV head h / (Hq / Hkv) (grouped-query attention). All tokens are visible (the engine
// appends the current token to the sample's own KV before it attends).
#pragma once

#include <cstdint>
#include <string>

namespace spct {
namespace attn {

struct PrefixAttention {
  const void* q;
  const void* prefix_k;
  const void* prefix_v;
  const int64_t* prefix_indptr;  // (P + 1,)
  const int64_t* prefix_index;   // (S,) the prompt of each row
  const void* own_k;
  const void* own_v;
  const int64_t* own_index;  // (S,) the slot of each row
  const int64_t* own_len;    // (S,) own tokens each row attends to, <= M
  void* out;
  int64_t rows, heads, kv_heads, head_dim;
  int64_t prompts, prefix_tokens, slots, capacity;
  float scale;  // applied to q . k (usually 1 / sqrt(D))
  bool bf16;    // q, k, v and out are bfloat16 (else float32); the arithmetic is float32 either way
};

// Prefix tokens per work unit. Fixed (not derived from the batch or the thread count), so a row's result does not
// depend on which other rows share the call: the engine's batch invariance rests on it.
constexpr int64_t kChunk = 256;

}  // namespace attn

namespace cpu {
// "" or the first bad index, worded for the user.
std::string prefix_attention(const attn::PrefixAttention& a);
}  // namespace cpu

namespace cuda {
// Same on device pointers; "" or the CUDA error text.
const char* prefix_attention(const attn::PrefixAttention& a, void* stream);
}  // namespace cuda

}  // namespace spct
