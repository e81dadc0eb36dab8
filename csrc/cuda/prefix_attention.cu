// CUDA prefix_attention (layouts: spct/prefix_attention.h). Split-K over kChunk-token chunks, then a merge:
//
//   prefix_kernel  one block per (prompt chunk, KV head, batch of kQueries queries of that prompt): the queries
//                  are the prompt's rows x the G = Hq / Hkv heads reading that KV head, so a chunk is read by
//                  ceil(rows x G / kQueries) blocks (once for up to 16 queries, the rest from L2).
//   own_kernel     one block per (row, own chunk, KV head): the row's G queries.
//   merge_kernel   one warp per (row, query head): log-sum-exp of the row's partials, prompt chunks first.
//
// A block stages kTile tokens of keys and values in shared memory as float32; each warp owns up to kPerWarp
// queries, a lane scores one token of the tile, and the partial (max, sum, sum of p * v) is updated online tile by
// tile. Partials go to a workspace (cudaMallocAsync on the stream) at a fixed slot per (row, chunk, query head):
// prompt chunk c at c, own chunk c at ceil(T / kChunk) + c. The host does not know the prompt lengths (no sync),
// so a row is given room for ceil(T / kChunk) prompt chunks; rows are processed in waves that keep the workspace
// under kWorkspaceBytes.
//
// Chunks start at the prompt's first token and a query's arithmetic does not depend on the other queries of its
// block, so a row's output does not depend on the batch (as on the CPU). Prompt chunks are found without a
// prefix sum: prompt p's chunks take the block indices [floor(indptr[p] / K) + p, floor(indptr[p + 1] / K) + p + 1),
// which hold ceil(len / K) of them and do not overlap; the spare ones (at most one per prompt) exit at once.
// The index values, shapes and head_dim were checked by the Python wrapper.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "spct/prefix_attention.h"

namespace spct {
namespace cuda {
namespace {

using attn::kChunk;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kPerWarp = 4;                     // queries per warp (registers: kPerWarp x D / 32 accumulators)
constexpr int kQueries = kWarps * kPerWarp;     // queries per block
constexpr int kTile = 32;                       // tokens per shared-memory tile: one per lane
constexpr int64_t kWorkspaceBytes = 64 << 20;  // partials of one wave of rows
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ int64_t chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

// What every kernel needs; pointers are typed by the kernel (T = float or __nv_bfloat16).
struct Args {
  attn::PrefixAttention a;
  int64_t group;       // G = Hq / Hkv
  int64_t row_begin;   // the wave: rows [row_begin, row_end)
  int64_t row_end;
  int64_t parts;       // partial slots per row: prompt_chunks + ceil(M / kChunk)
  int64_t prompt_chunks;  // ceil(T / kChunk)
  float* work;         // (rows of the wave, parts, Hq, D + 2): max, sum, sum of p * v
};

// The partial of (row, chunk slot, query head): D + 2 floats.
__device__ __forceinline__ float* part_slot(const Args& g, int64_t row, int64_t slot, int64_t hq, int dim) {
  return g.work + (((row - g.row_begin) * g.parts + slot) * g.a.heads + hq) * (dim + 2);
}

// Dynamic shared memory of the attention kernels, in floats.
template <int D>
constexpr int shared_floats() {
  return kQueries * D + kTile * (D + 1) + kTile * D;
}

// Partials of queries [q_lo, min(q_lo + kQueries, nq)) over the n tokens at k / v (KV head h, token stride
// Hkv * D). Query i is head h * G + i % G of row rows[i / G - r_lo]. Partials go to chunk slot `slot`.
// Called by every thread of the block.
template <int D, typename T>
__device__ void attend(const Args& g, const int64_t* rows, int64_t r_lo, int64_t q_lo, int64_t nq, int64_t h,
                       const T* k, const T* v, int64_t n, int64_t slot, float* shared) {
  constexpr int C = D / 32;  // accumulator columns per lane
  float* qs = shared;                   // (kQueries, D), pre-scaled
  float* ks = qs + kQueries * D;        // (kTile, D + 1): the padding keeps the lanes' rows in distinct banks
  float* vs = ks + kTile * (D + 1);     // (kTile, D)
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t hq_base = h * g.group, stride = g.a.kv_heads * D;
  const T* q = static_cast<const T*>(g.a.q);

  __syncthreads();  // the previous batch is done with qs, ks, vs
  for (int e = threadIdx.x; e < kQueries * D; e += kThreads) {
    const int64_t i = q_lo + e / D;
    float x = 0.0f;
    if (i < nq) {
      const int64_t row = rows[i / g.group - r_lo], hq = hq_base + i % g.group;
      x = load(q, (row * g.a.heads + hq) * D + e % D) * g.a.scale;
    }
    qs[e] = x;
  }
  float m[kPerWarp], l[kPerWarp], acc[kPerWarp][C];
#pragma unroll
  for (int j = 0; j < kPerWarp; ++j) {
    m[j] = -INFINITY;
    l[j] = 0.0f;
#pragma unroll
    for (int c = 0; c < C; ++c) acc[j][c] = 0.0f;
  }
  for (int64_t t0 = 0; t0 < n; t0 += kTile) {
    const int nt = static_cast<int>(min(int64_t(kTile), n - t0));
    __syncthreads();  // qs written; the previous tile is consumed
    for (int e = threadIdx.x; e < nt * D; e += kThreads) {
      const int t = e / D, d = e % D;
      ks[t * (D + 1) + d] = load(k, (t0 + t) * stride + d);
      vs[t * D + d] = load(v, (t0 + t) * stride + d);
    }
    __syncthreads();
    float s[kPerWarp];  // lane = token: q . k for each of the warp's queries
#pragma unroll
    for (int j = 0; j < kPerWarp; ++j) s[j] = 0.0f;
    if (lane < nt) {
      const float* kr = ks + lane * (D + 1);
      for (int d = 0; d < D; ++d) {
        const float kd = kr[d];
#pragma unroll
        for (int j = 0; j < kPerWarp; ++j) s[j] += qs[(warp + kWarps * j) * D + d] * kd;
      }
    }
#pragma unroll
    for (int j = 0; j < kPerWarp; ++j) {
      if (q_lo + warp + kWarps * j >= nq) continue;  // uniform in the warp
      const float sj = lane < nt ? s[j] : -INFINITY;
      const float m_new = fmaxf(m[j], warp_max(sj));
      const float p = lane < nt ? expf(sj - m_new) : 0.0f;
      const float alpha = expf(m[j] - m_new);  // 0 on the first tile (m = -inf)
      l[j] = l[j] * alpha + warp_sum(p);
#pragma unroll
      for (int c = 0; c < C; ++c) acc[j][c] *= alpha;
      for (int t = 0; t < nt; ++t) {
        const float pt = __shfl_sync(kFull, p, t);
#pragma unroll
        for (int c = 0; c < C; ++c) acc[j][c] += pt * vs[t * D + c * 32 + lane];
      }
      m[j] = m_new;
    }
  }
#pragma unroll
  for (int j = 0; j < kPerWarp; ++j) {
    const int64_t i = q_lo + warp + kWarps * j;
    if (i >= nq) continue;
    float* out = part_slot(g, rows[i / g.group - r_lo], slot, hq_base + i % g.group, D);
    if (lane == 0) {
      out[0] = m[j];
      out[1] = l[j];
    }
#pragma unroll
    for (int c = 0; c < C; ++c) out[2 + c * 32 + lane] = acc[j][c];
  }
}

// Block (b, h, z): chunk b - start(p) of prompt p (start(p) = floor(indptr[p] / K) + p, p the last prompt with
// start(p) <= b), KV head h, query batch z of the prompt's rows in the wave (in row order) x G heads.
template <int D, typename T>
__global__ void __launch_bounds__(kThreads) prefix_kernel(Args g) {
  extern __shared__ float shared[];
  __shared__ int64_t rows[kQueries + 1];
  __shared__ int warp_rows[kWarps];
  const int64_t* indptr = g.a.prefix_indptr;
  const int64_t b = blockIdx.x, h = blockIdx.y;
  const auto start = [&](int64_t p) { return indptr[p] / kChunk + p; };
  int64_t lo = 0, hi = g.a.prompts - 1;  // start(0) = 0 <= b; start is strictly increasing
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (start(mid) <= b) lo = mid;
    else hi = mid - 1;
  }
  const int64_t p = lo, c = b - start(p);
  const int64_t first = indptr[p] + c * kChunk, n = min(kChunk, indptr[p + 1] - first);
  if (n <= 0) return;  // a spare block index (uniform in the block)

  // This batch's rows: ranks [r_lo, r_lo + kQueries] among the prompt's rows in the wave.
  const int64_t q_lo = int64_t(blockIdx.z) * kQueries, r_lo = q_lo / g.group;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int64_t seen = 0;  // rows of p before this segment (the same in every thread)
  for (int64_t base = g.row_begin; base < g.row_end; base += kThreads) {
    const int64_t s = base + threadIdx.x;
    const bool mine = s < g.row_end && g.a.prefix_index[s] == p;
    const unsigned ballot = __ballot_sync(kFull, mine);
    if (lane == 0) warp_rows[warp] = __popc(ballot);
    __syncthreads();
    int64_t before = 0, total = 0;
    for (int w = 0; w < kWarps; ++w) {
      before += w < warp ? warp_rows[w] : 0;
      total += warp_rows[w];
    }
    const int64_t rank = seen + before + __popc(ballot & ((1u << lane) - 1u));
    if (mine && rank >= r_lo && rank <= r_lo + kQueries) rows[rank - r_lo] = s;
    seen += total;
    __syncthreads();  // warp_rows is rewritten by the next segment
  }
  const int64_t nq = seen * g.group;
  if (q_lo >= nq) return;  // uniform: every thread counted the same rows
  const T* k = static_cast<const T*>(g.a.prefix_k) + (first * g.a.kv_heads + h) * D;
  const T* v = static_cast<const T*>(g.a.prefix_v) + (first * g.a.kv_heads + h) * D;
  attend<D, T>(g, rows, r_lo, q_lo, nq, h, k, v, n, c, shared);
}

// Block (x, h): own chunk x % C_own of row row_begin + x / C_own, KV head h; its G queries, kQueries at a time.
template <int D, typename T>
__global__ void __launch_bounds__(kThreads) own_kernel(Args g, int64_t own_chunks) {
  extern __shared__ float shared[];
  __shared__ int64_t rows[1];
  const int64_t s = g.row_begin + int64_t(blockIdx.x) / own_chunks, c = int64_t(blockIdx.x) % own_chunks;
  const int64_t h = blockIdx.y;
  const int64_t n = min(kChunk, g.a.own_len[s] - c * kChunk);
  if (n <= 0) return;
  if (threadIdx.x == 0) rows[0] = s;  // attend() syncs before reading it
  const int64_t first = g.a.own_index[s] * g.a.capacity + c * kChunk;
  const T* k = static_cast<const T*>(g.a.own_k) + (first * g.a.kv_heads + h) * D;
  const T* v = static_cast<const T*>(g.a.own_v) + (first * g.a.kv_heads + h) * D;
  for (int64_t q_lo = 0; q_lo < g.group; q_lo += kQueries) {
    attend<D, T>(g, rows, 0, q_lo, g.group, h, k, v, n, g.prompt_chunks + c, shared);
  }
}

// Warp (row, hq): out = sum_c e^(m_c - top) acc_c / sum_c e^(m_c - top) l_c over the row's partials, prompt
// chunks then own chunks (the CPU kernel's order); zeros for a row without any token.
template <int D, typename T>
__global__ void __launch_bounds__(kThreads) merge_kernel(Args g) {
  constexpr int C = D / 32;
  const int lane = threadIdx.x % 32;
  const int64_t w = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (w >= (g.row_end - g.row_begin) * g.a.heads) return;
  const int64_t s = g.row_begin + w / g.a.heads, hq = w % g.a.heads;
  const int64_t p = g.a.prefix_index[s];
  const int64_t n_prompt = chunks(g.a.prefix_indptr[p + 1] - g.a.prefix_indptr[p]);
  const int64_t n_parts = n_prompt + chunks(g.a.own_len[s]);
  const auto slot_of = [&](int64_t i) { return i < n_prompt ? i : g.prompt_chunks + i - n_prompt; };
  float top = -INFINITY;
  for (int64_t i = 0; i < n_parts; ++i) top = fmaxf(top, part_slot(g, s, slot_of(i), hq, D)[0]);
  float total = 0.0f, acc[C];
#pragma unroll
  for (int c = 0; c < C; ++c) acc[c] = 0.0f;
  for (int64_t i = 0; i < n_parts; ++i) {
    const float* part = part_slot(g, s, slot_of(i), hq, D);
    const float weight = expf(part[0] - top);
    total += weight * part[1];
#pragma unroll
    for (int c = 0; c < C; ++c) acc[c] += weight * part[2 + c * 32 + lane];
  }
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  T* out = static_cast<T*>(g.a.out) + (s * g.a.heads + hq) * D;
#pragma unroll
  for (int c = 0; c < C; ++c) store(out, c * 32 + lane, acc[c] * inv);
}

const char* last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

template <int D, typename T>
const char* run(const attn::PrefixAttention& a, cudaStream_t stream) {
  const int64_t rows = a.rows, group = a.heads / a.kv_heads;
  const int64_t prompt_chunks = (a.prefix_tokens + kChunk - 1) / kChunk;
  const int64_t own_chunks = (a.capacity + kChunk - 1) / kChunk;
  const int64_t parts = prompt_chunks + own_chunks;
  const int64_t row_bytes = parts * a.heads * (D + 2) * int64_t(sizeof(float));
  const int64_t wave = row_bytes == 0 ? rows : std::min(rows, std::max<int64_t>(1, kWorkspaceBytes / row_bytes));
  const int64_t prefix_blocks = a.prefix_tokens / kChunk + a.prompts;  // see start(p) above
  const int64_t batches = (wave * group + kQueries - 1) / kQueries;
  if (prefix_blocks > INT_MAX || a.kv_heads > 65535 || batches > 65535 || wave * own_chunks > INT_MAX ||
      (wave * a.heads + kWarps - 1) / kWarps > INT_MAX) {
    return "prefix_attention: the batch is too large for one CUDA launch (split it)";
  }
  const size_t smem = sizeof(float) * shared_floats<D>();
  if (smem > 48 * 1024) {  // above the default limit: opt in (sm_80 allows 163 KB, sm_90 227 KB)
    cudaFuncSetAttribute(prefix_kernel<D, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    cudaFuncSetAttribute(own_kernel<D, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  }
  float* work = nullptr;
  if (row_bytes > 0 && cudaMallocAsync(&work, size_t(wave * row_bytes), stream) != cudaSuccess) return last_error();
  const char* error = "";
  for (int64_t s0 = 0; s0 < rows && *error == '\0'; s0 += wave) {
    const int64_t s1 = std::min(rows, s0 + wave);
    const Args g{a, group, s0, s1, parts, prompt_chunks, work};
    const unsigned heads = unsigned(a.kv_heads);
    if (prefix_blocks > 0 && prompt_chunks > 0) {
      const dim3 grid(unsigned(prefix_blocks), heads, unsigned(((s1 - s0) * group + kQueries - 1) / kQueries));
      prefix_kernel<D, T><<<grid, kThreads, smem, stream>>>(g);
    }
    if (own_chunks > 0) {
      own_kernel<D, T><<<dim3(unsigned((s1 - s0) * own_chunks), heads), kThreads, smem, stream>>>(g, own_chunks);
    }
    merge_kernel<D, T><<<unsigned(((s1 - s0) * a.heads + kWarps - 1) / kWarps), kThreads, 0, stream>>>(g);
    error = last_error();
  }
  if (work != nullptr) cudaFreeAsync(work, stream);
  return *error != '\0' ? error : last_error();
}

}  // namespace

const char* prefix_attention(const attn::PrefixAttention& a, void* stream) {
  if (a.rows == 0) return "";
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (a.head_dim) {
#define SPCT_CASE(D) \
  case D:            \
    return a.bf16 ? run<D, __nv_bfloat16>(a, st) : run<D, float>(a, st);
    SPCT_CASE(32)
    SPCT_CASE(64)
    SPCT_CASE(128)
    SPCT_CASE(256)
#undef SPCT_CASE
    default:
      return "head_dim has no CUDA kernel (built: 32, 64, 128, 256)";
  }
}

}  // namespace cuda
}  // namespace spct
