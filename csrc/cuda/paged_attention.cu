// CUDA paged_attention (layout and the per-block rule: spct/paged_attention.h). Two steps on the stream:
//
//   row map       the transpose of the segments' row lists, a CSR of each row's segments in segment order, built
//                 in a workspace (cudaMallocAsync): count per row (atomics), one-block scan, fill (atomics: any
//                 order), then each row's few segment ids sorted, so the map does not depend on the atomics' order.
//   attend        one block per (row, KV head, batch of kQueries of the G = Hq / Hkv query heads reading it) walks
//                 the row's segments in order and each segment's blocks in order. Per KV block: its seen tokens'
//                 keys staged in shared memory kTile at a time (a lane scores one token per query), the scores kept
//                 in shared memory, then per query the block's max, p = exp(s - max), the running max, sum and
//                 float32 accumulator updated ONCE, and the values staged and accumulated tile by tile.
//
// A query's arithmetic depends only on q, the blocks the row sees and their token counts: not on the other rows,
// the other queries of its block, how the blocks are split into segments or the grid (the engine's batch
// invariance). Each reading row reads a shared segment's blocks itself (from L2 when rows run together).
// The index values, shapes and head_dim were checked by the Python wrapper.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "spct/paged_attention.h"

namespace spct {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kPerWarp = 4;                  // queries per warp (registers: kPerWarp x columns<D>() accumulators)
constexpr int kQueries = kWarps * kPerWarp;  // queries per block
constexpr int kTile = 32;                    // tokens per shared-memory tile: one per lane
constexpr int kScanThreads = 1024;
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

// ---- the row -> segments map ------------------------------------------------------------------------------------
// row_indptr: (R + 1,) zeroed; row_indptr[r + 1] becomes the number of segments listing row r.
__global__ void count_kernel(attn::PagedAttention a, int32_t* row_indptr) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < a.nnz_rows; e += step) {
    atomicAdd(row_indptr + a.seg_rows[e] + 1, 1);
  }
}

// In place: row_indptr[1 .. R] becomes its inclusive prefix sum (one block, kScanThreads at a time).
__global__ void __launch_bounds__(kScanThreads) scan_kernel(int32_t* row_indptr, int64_t rows) {
  __shared__ int32_t part[kScanThreads];
  int32_t carry = 0;
  for (int64_t base = 1; base <= rows; base += kScanThreads) {
    const int64_t i = base + threadIdx.x;
    part[threadIdx.x] = i <= rows ? row_indptr[i] : 0;
    __syncthreads();
    for (int o = 1; o < kScanThreads; o <<= 1) {  // Hillis-Steele
      const int32_t add = threadIdx.x >= o ? part[threadIdx.x - o] : 0;
      __syncthreads();
      part[threadIdx.x] += add;
      __syncthreads();
    }
    if (i <= rows) row_indptr[i] = carry + part[threadIdx.x];
    carry += part[kScanThreads - 1];
    __syncthreads();  // part is rewritten by the next chunk
  }
}

// Entry e of seg_rows (segment s: the last with seg_row_indptr[s] <= e) goes to a free place of its row.
__global__ void fill_kernel(attn::PagedAttention a, const int32_t* row_indptr, int32_t* cursor, int32_t* row_segs) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < a.nnz_rows; e += step) {
    int64_t lo = 0, hi = a.segments - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (a.seg_row_indptr[mid] <= e) lo = mid;
      else hi = mid - 1;
    }
    const int32_t r = a.seg_rows[e];
    row_segs[row_indptr[r] + atomicAdd(cursor + r, 1)] = int32_t(lo);
  }
}

// Row r's segment ids in increasing order (insertion sort: a row has a few segments).
__global__ void sort_kernel(int64_t rows, const int32_t* row_indptr, int32_t* row_segs) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  int32_t* segs = row_segs + row_indptr[r];
  const int32_t n = row_indptr[r + 1] - row_indptr[r];
  for (int32_t i = 1; i < n; ++i) {
    const int32_t x = segs[i];
    int32_t j = i - 1;
    for (; j >= 0 && segs[j] > x; --j) segs[j + 1] = segs[j];
    segs[j + 1] = x;
  }
}

// ---- attention --------------------------------------------------------------------------------------------------
struct Args {
  attn::PagedAttention a;
  int64_t group;              // G = Hq / Hkv
  const int32_t* row_indptr;  // (R + 1,) the row map
  const int32_t* row_segs;    // (nnz_rows,)
};

// Dynamic shared memory of attend_kernel, in floats: pre-scaled queries, one K or V tile, the block's scores.
template <int D>
int64_t shared_floats(int64_t block_size) {
  return int64_t(kQueries) * D + int64_t(kTile) * (D + 1) + int64_t(kQueries) * block_size;
}

// Accumulator columns per lane: lane holds columns c * 32 + lane < D (D = 8, 16: some lanes idle).
template <int D>
__host__ __device__ constexpr int columns() {
  return (D + 31) / 32;
}
// The column lane's accumulator c reads: a valid one for an idle lane, whose sums are never stored.
template <int D>
__device__ __forceinline__ int column(int c, int lane) {
  return D % 32 == 0 ? c * 32 + lane : min(c * 32 + lane, D - 1);
}

// The per-query state of one warp: running max, sum and sum of p * v.
template <int D>
struct State {
  float m[kPerWarp], l[kPerWarp], acc[kPerWarp][columns<D>()];
};

// Folds the first n (1 <= n <= B) tokens of one KV block (k / v at token 0's head, token stride Hkv * D) into the
// state of the warp's queries i = warp + kWarps * j < nq. Called by every thread of the block.
template <int D, typename T>
__device__ __forceinline__ void attend_block(const T* k, const T* v, int64_t stride, int n, int nq,
                                             int64_t block_size, const float* qs, float* kv, float* sc,
                                             State<D>& st) {
  constexpr int C = columns<D>();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int t0 = 0; t0 < n; t0 += kTile) {  // scores
    const int nt = min(kTile, n - t0);
    __syncthreads();  // the previous tile (or block) is consumed
    for (int e = threadIdx.x; e < nt * D; e += kThreads) {
      kv[(e / D) * (D + 1) + e % D] = load(k, (t0 + e / D) * stride + e % D);
    }
    __syncthreads();
    if (lane < nt) {
      const float* kr = kv + lane * (D + 1);
#pragma unroll
      for (int j = 0; j < kPerWarp; ++j) {
        const int i = warp + kWarps * j;
        if (i >= nq) continue;
        float s = 0.0f;
        for (int d = 0; d < D; ++d) s += qs[i * D + d] * kr[d];
        sc[i * block_size + t0 + lane] = s;
      }
    }
  }
  __syncwarp();  // a warp reads back only its own queries' scores
#pragma unroll
  for (int j = 0; j < kPerWarp; ++j) {  // the once-per-block softmax update
    const int i = warp + kWarps * j;
    if (i >= nq) continue;  // uniform in the warp
    float* s = sc + i * block_size;
    float top = -INFINITY;
    for (int t = lane; t < n; t += 32) top = fmaxf(top, s[t]);
    const float m_new = fmaxf(st.m[j], warp_max(top));  // finite: n >= 1
    float sum = 0.0f;
    for (int t = lane; t < n; t += 32) {
      const float p = expf(s[t] - m_new);
      s[t] = p;
      sum += p;
    }
    const float alpha = expf(st.m[j] - m_new);  // 0 on the row's first block (m = -inf)
    st.l[j] = st.l[j] * alpha + warp_sum(sum);
#pragma unroll
    for (int c = 0; c < C; ++c) st.acc[j][c] *= alpha;
    st.m[j] = m_new;
  }
  for (int t0 = 0; t0 < n; t0 += kTile) {  // values
    const int nt = min(kTile, n - t0);
    __syncthreads();  // kv is free; p is written
    for (int e = threadIdx.x; e < nt * D; e += kThreads) {
      kv[(e / D) * (D + 1) + e % D] = load(v, (t0 + e / D) * stride + e % D);
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kPerWarp; ++j) {
      const int i = warp + kWarps * j;
      if (i >= nq) continue;
      const float* p = sc + i * block_size + t0;
      for (int t = 0; t < nt; ++t) {
#pragma unroll
        for (int c = 0; c < C; ++c) st.acc[j][c] += p[t] * kv[t * (D + 1) + column<D>(c, lane)];
      }
    }
  }
}

// The tokens of segment s that row r sees: all seg_len[s], or for a causal segment those at positions <= q_pos[r].
__device__ __forceinline__ int64_t seen(const attn::PagedAttention& a, int64_t s, int64_t r) {
  int64_t n = a.seg_len[s];
  if (a.causal != nullptr && a.causal[s] != 0) {
    n = min(n, max(int64_t(a.q_pos[r]) - a.seg_start[s] + 1, int64_t(0)));
  }
  return n;
}

// Block (r, h, z): row r, KV head h, query heads h * G + z * kQueries + [0, nq).
template <int D, typename T>
__global__ void __launch_bounds__(kThreads) attend_kernel(Args g) {
  extern __shared__ float shared[];
  const attn::PagedAttention& a = g.a;
  const int64_t r = blockIdx.x, h = blockIdx.y, hq0 = h * g.group + int64_t(blockIdx.z) * kQueries;
  const int nq = int(min(int64_t(kQueries), g.group - int64_t(blockIdx.z) * kQueries));
  float* qs = shared;                   // (kQueries, D), pre-scaled
  float* kv = qs + kQueries * D;        // (kTile, D + 1): the padding keeps the lanes' rows in distinct banks
  float* sc = kv + kTile * (D + 1);     // (kQueries, B): scores, then p
  const T* q = static_cast<const T*>(a.q) + (r * a.heads + hq0) * D;
  for (int e = threadIdx.x; e < kQueries * D; e += kThreads) qs[e] = e / D < nq ? load(q, e) * a.scale : 0.0f;

  State<D> st;
#pragma unroll
  for (int j = 0; j < kPerWarp; ++j) {
    st.m[j] = -INFINITY;
    st.l[j] = 0.0f;
#pragma unroll
    for (int c = 0; c < columns<D>(); ++c) st.acc[j][c] = 0.0f;
  }
  const int64_t stride = a.kv_heads * D, B = a.block_size;
  for (int64_t e = g.row_indptr[r]; e < g.row_indptr[r + 1]; ++e) {
    const int64_t s = g.row_segs[e], n = seen(a, s, r);
    const int32_t* blocks = a.block_ids + a.seg_block_indptr[s];
    for (int64_t j = 0; j * B < n; ++j) {
      const int64_t at = (int64_t(blocks[j]) * B * a.kv_heads + h) * D;
      attend_block<D, T>(static_cast<const T*>(a.k_cache) + at, static_cast<const T*>(a.v_cache) + at, stride,
                         int(min(B, n - j * B)), nq, B, qs, kv, sc, st);
    }
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  T* out = static_cast<T*>(a.out) + (r * a.heads + hq0) * D;
#pragma unroll
  for (int j = 0; j < kPerWarp; ++j) {
    const int i = warp + kWarps * j;
    if (i >= nq) continue;
    const float inv = st.l[j] > 0.0f ? 1.0f / st.l[j] : 0.0f;  // no token at all: zeros
#pragma unroll
    for (int c = 0; c < columns<D>(); ++c) {
      if (D % 32 == 0 || c * 32 + lane < D) store(out, int64_t(i) * D + c * 32 + lane, st.acc[j][c] * inv);
    }
  }
}

const char* last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

// The row map into work: row_indptr (R + 1), cursor (R), row_segs (nnz_rows), all int32.
const char* build_row_map(const attn::PagedAttention& a, int32_t* work, cudaStream_t stream) {
  int32_t* row_indptr = work;
  int32_t* cursor = work + a.rows + 1;
  int32_t* row_segs = cursor + a.rows;
  if (cudaMemsetAsync(work, 0, sizeof(int32_t) * size_t(2 * a.rows + 1), stream) != cudaSuccess) return last_error();
  const unsigned entries = unsigned(std::clamp<int64_t>((a.nnz_rows + 255) / 256, 1, 4096));
  count_kernel<<<entries, 256, 0, stream>>>(a, row_indptr);
  scan_kernel<<<1, kScanThreads, 0, stream>>>(row_indptr, a.rows);
  fill_kernel<<<entries, 256, 0, stream>>>(a, row_indptr, cursor, row_segs);
  sort_kernel<<<unsigned((a.rows + 255) / 256), 256, 0, stream>>>(a.rows, row_indptr, row_segs);
  return last_error();
}

template <int D, typename T>
const char* run(const attn::PagedAttention& a, cudaStream_t stream) {
  const int64_t group = a.heads / a.kv_heads, batches = (group + kQueries - 1) / kQueries;
  if (a.rows > INT_MAX || a.kv_heads > 65535 || batches > 65535 || a.rows + a.nnz_rows > INT_MAX / 2) {
    return "paged_attention: the batch is too large for one CUDA launch (split it)";
  }
  const int64_t smem = int64_t(sizeof(float)) * shared_floats<D>(a.block_size);
  int device = 0, limit = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    return last_error();
  }
  if (smem > limit) return "paged_attention: block_size x head_dim is too large for the CUDA kernel's shared memory";
  if (smem > 48 * 1024) {  // above the default limit: opt in (sm_80 allows 163 KB, sm_90 227 KB)
    cudaFuncSetAttribute(attend_kernel<D, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  }
  int32_t* work = nullptr;
  const size_t work_bytes = sizeof(int32_t) * size_t(2 * a.rows + 1 + a.nnz_rows);
  if (cudaMallocAsync(reinterpret_cast<void**>(&work), work_bytes, stream) != cudaSuccess) return last_error();
  const char* error = build_row_map(a, work, stream);
  if (*error == '\0') {
    const Args g{a, group, work, work + 2 * a.rows + 1};
    const dim3 grid(unsigned(a.rows), unsigned(a.kv_heads), unsigned(batches));
    attend_kernel<D, T><<<grid, kThreads, size_t(smem), stream>>>(g);
    error = last_error();
  }
  cudaFreeAsync(work, stream);
  return *error != '\0' ? error : last_error();
}

}  // namespace

const char* paged_attention(const attn::PagedAttention& a, void* stream) {
  if (a.rows == 0) return "";
  if (a.window > 0 || a.softcap > 0.0f) {  // the Python wrapper runs such calls on the reference instead
    return "paged_attention: window and softcap run on the C++ CPU kernel and the reference; the CUDA kernel lacks "
           "them";
  }
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (a.head_dim) {
#define SPCT_CASE(D) \
  case D:            \
    return a.bf16 ? run<D, __nv_bfloat16>(a, st) : run<D, float>(a, st);
    SPCT_CASE(8)
    SPCT_CASE(16)
    SPCT_CASE(32)
    SPCT_CASE(64)
    SPCT_CASE(128)
    SPCT_CASE(256)
#undef SPCT_CASE
    default:
      return "head_dim has no CUDA kernel (built: 8, 16, 32, 64, 128, 256)";
  }
}

}  // namespace cuda
}  // namespace spct
