// CUDA kernel of spct::sample: one block per row, no sort. Coalesced passes over the row recompute each token's
// order key, weight and mass (spct/sample.h); two radix searches (8-bit digits, shared-memory histograms, four
// passes each) find the top-k boundary by count and the last top-p key by mass; ties inside a key and the draw
// use contiguous per-thread chunks and a block scan, so they walk tokens in index order. Every sum is an exact
// integer sum, so the result is deterministic and equal to the torch reference's and the C++ kernel's.
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <string>

#include "spct/sample.h"

namespace spct {
namespace cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kBins = 256;  // 8-bit digits, 4 passes over a 32-bit key

struct ArgMax {
  float value;
  long long index;
};
struct ArgMaxOp {  // the larger value; on equal values the lower index
  __device__ ArgMax operator()(const ArgMax& a, const ArgMax& b) const {
    return (a.value > b.value || (a.value == b.value && a.index < b.index)) ? a : b;
  }
};
struct MaxOp {
  __device__ long long operator()(long long a, long long b) const { return a > b ? a : b; }
};
struct MinOp {
  __device__ long long operator()(long long a, long long b) const { return a < b ? a : b; }
};

using Scan = cub::BlockScan<long long, kThreads>;
using Reduce = cub::BlockReduce<long long, kThreads>;
using ArgReduce = cub::BlockReduce<ArgMax, kThreads>;

struct Shared {
  union {
    Scan::TempStorage scan;
    Reduce::TempStorage reduce;
    ArgReduce::TempStorage arg;
  } cub;
  unsigned long long count[kBins];
  unsigned long long mass[kBins];
  long long value;  // broadcast slot
  ArgMax best;
};

__device__ float load(const float* row, int64_t i) { return row[i]; }
__device__ float load(const uint16_t* row, int64_t i) { return sample::bf16_to_float(row[i]); }

// The row as every pass sees it: a token's order key, weight and mass.
template <typename T>
struct Row {
  const T* logits;
  int64_t vocab;
  float max, temperature;
  __device__ uint32_t key(int64_t i) const { return sample::order_key(load(logits, i)); }
  __device__ float weight(int64_t i) const { return sample::weight(load(logits, i), max, temperature); }
};

// Is the token (key, i) at or before (last_key, last) in the order (logit desc, index asc)?
__device__ bool in_prefix(uint32_t key, int64_t i, uint32_t last_key, int64_t last) {
  return key > last_key || (key == last_key && i <= last);
}

// Block-wide reductions; every thread gets the result.
template <typename Op>
__device__ long long block_reduce(long long v, Op op, Shared& s) {
  const long long r = Reduce(s.cub.reduce).Reduce(v, op);
  if (threadIdx.x == 0) s.value = r;
  __syncthreads();
  const long long out = s.value;
  __syncthreads();
  return out;
}
__device__ long long block_sum(long long v, Shared& s) {
  const long long r = Reduce(s.cub.reduce).Sum(v);
  if (threadIdx.x == 0) s.value = r;
  __syncthreads();
  const long long out = s.value;
  __syncthreads();
  return out;
}
// Thread `from`'s v, for everyone.
__device__ long long broadcast(long long v, long long from, Shared& s) {
  if (threadIdx.x == from) s.value = v;
  __syncthreads();
  const long long out = s.value;
  __syncthreads();
  return out;
}

// This thread's contiguous chunk [begin, end) of the row: chunks in thread order walk the row in index order.
struct Chunk {
  int64_t begin, end;
  __device__ explicit Chunk(int64_t vocab) {
    const int64_t size = (vocab + kThreads - 1) / kThreads;
    begin = min(vocab, threadIdx.x * size);
    end = min(vocab, begin + size);
  }
};

__device__ void clear_bins(Shared& s) {
  for (int b = threadIdx.x; b < kBins; b += kThreads) s.count[b] = s.mass[b] = 0;
  __syncthreads();
}

// top-k: the key of the k-th token of the order and the number of tokens with a larger key.
template <typename T>
__device__ uint32_t top_k_key(const Row<T>& row, long long k, long long* above_out, Shared& s) {
  uint32_t prefix = 0;
  long long above = 0;  // tokens with a key above the range still searched
  for (int shift = 24; shift >= 0; shift -= 8) {
    const uint32_t high = ~((256u << shift) - 1u);  // bits fixed by earlier passes (0 on the first)
    clear_bins(s);
    for (int64_t i = threadIdx.x; i < row.vocab; i += kThreads) {
      const uint32_t key = row.key(i);
      if ((key & high) == (prefix & high)) atomicAdd(&s.count[(key >> shift) & 255u], 1ull);
    }
    __syncthreads();
    // Thread b looks at digit 255 - b; the inclusive scan counts the tokens at or above that digit.
    const long long c = threadIdx.x < kBins ? static_cast<long long>(s.count[kBins - 1 - threadIdx.x]) : 0;
    long long at_or_above;
    Scan(s.cub.scan).InclusiveSum(c, at_or_above);
    __syncthreads();
    const long long tid = threadIdx.x;
    const long long b = block_reduce(tid < kBins && above + at_or_above >= k ? tid : kBins, MinOp(), s);
    above = broadcast(above + at_or_above - c, b, s);
    prefix |= static_cast<uint32_t>(kBins - 1 - b) << shift;
  }
  *above_out = above;
  return prefix;
}

// The index of the need-th token (in index order) with key `key`.
template <typename T>
__device__ long long cut_by_count(const Row<T>& row, uint32_t key, long long need, Shared& s) {
  const Chunk chunk(row.vocab);
  long long own = 0;
  for (int64_t i = chunk.begin; i < chunk.end; ++i) own += row.key(i) == key;
  long long seen;
  Scan(s.cub.scan).ExclusiveSum(own, seen);
  __syncthreads();
  long long cut = -1;
  for (int64_t i = chunk.begin; i < chunk.end && seen < need; ++i) {
    if (row.key(i) == key && ++seen <= need) cut = i;
  }
  return block_reduce(cut, MaxOp(), s);
}

struct Prefix {
  uint32_t key;
  long long last;
};

// top-p: the smallest key present (mass > 0, in top-k) whose mass above stays under the threshold, and that
// mass above. Thread b looks at digit 255 - b.
template <typename T>
__device__ uint32_t top_p_key(const Row<T>& row, Prefix k, double threshold, long long* above_out, Shared& s) {
  uint32_t prefix = 0;
  long long above = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    const uint32_t high = ~((256u << shift) - 1u);
    clear_bins(s);
    for (int64_t i = threadIdx.x; i < row.vocab; i += kThreads) {
      const uint32_t key = row.key(i);
      if ((key & high) != (prefix & high) || !in_prefix(key, i, k.key, k.last)) continue;
      const int64_t q = sample::mass(row.weight(i));
      if (q == 0) continue;
      atomicAdd(&s.count[(key >> shift) & 255u], 1ull);
      atomicAdd(&s.mass[(key >> shift) & 255u], static_cast<unsigned long long>(q));
    }
    __syncthreads();
    const int d = kBins - 1 - static_cast<int>(threadIdx.x);
    const bool bin = threadIdx.x < kBins;
    const long long mass = bin ? static_cast<long long>(s.mass[d]) : 0;
    const bool present = bin && s.count[d] > 0;
    long long at_or_above;
    Scan(s.cub.scan).InclusiveSum(mass, at_or_above);
    __syncthreads();
    const long long ahead = above + at_or_above - mass;
    const long long tid = threadIdx.x;
    const long long b = block_reduce(present && static_cast<double>(ahead) < threshold ? tid : -1, MaxOp(), s);
    above = broadcast(ahead, b, s);
    prefix |= static_cast<uint32_t>(kBins - 1 - b) << shift;
  }
  *above_out = above;
  return prefix;
}

// The last token of key p_key (index order) whose mass ahead, above + earlier ones of that key, is under the
// threshold.
template <typename T>
__device__ long long cut_by_mass(const Row<T>& row, Prefix k, uint32_t p_key, long long above, double threshold,
                                 Shared& s) {
  const Chunk chunk(row.vocab);
  auto mass_of = [&](int64_t i) -> long long {
    const uint32_t key = row.key(i);
    return key == p_key && in_prefix(key, i, k.key, k.last) ? sample::mass(row.weight(i)) : 0;
  };
  long long own = 0;
  for (int64_t i = chunk.begin; i < chunk.end; ++i) own += mass_of(i);
  long long ahead;
  Scan(s.cub.scan).ExclusiveSum(own, ahead);
  __syncthreads();
  ahead += above;
  long long cut = -1;
  for (int64_t i = chunk.begin; i < chunk.end && static_cast<double>(ahead) < threshold; ++i) {
    const long long q = mass_of(i);
    if (q > 0) {
      cut = i;
      ahead += q;
    }
  }
  return block_reduce(cut, MaxOp(), s);
}

// Pass 1: the row's argmax (lowest index on ties) and status (NaN, +inf, all -inf), the same in every thread.
template <typename T>
__device__ int32_t scan_row(const T* x, int64_t vocab, Shared& s, ArgMax* out) {
  const float inf = __int_as_float(0x7f800000);
  ArgMax best{-inf, vocab};
  int nan = 0, pinf = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    const float v = load(x, i);
    nan |= v != v;
    pinf |= v == inf;
    if (v > best.value || (v == best.value && i < best.index)) best = {v, i};
  }
  best = ArgReduce(s.cub.arg).Reduce(best, ArgMaxOp());
  if (threadIdx.x == 0) s.best = best;
  nan = __syncthreads_or(nan);
  pinf = __syncthreads_or(pinf);
  *out = s.best;
  if (nan) return sample::kNaN;
  if (pinf) return sample::kPosInf;
  if (out->value == -inf) return sample::kAllNegInf;
  return sample::kOk;
}

// The top-p prefix of the top-k prefix k: the last (key, index) whose mass ahead stays below top_p of k's mass.
template <typename T>
__device__ Prefix top_p_prefix(const Row<T>& row, const Prefix& k, float top_p, Shared& s) {
  Prefix last{0u, row.vocab};
  if (!(top_p < 1.0f)) return last;  // 1: off
  long long mass_k = 0;
  for (int64_t i = threadIdx.x; i < row.vocab; i += kThreads) {
    if (in_prefix(row.key(i), i, k.key, k.last)) mass_k += sample::mass(row.weight(i));
  }
  const double threshold = static_cast<double>(top_p) * static_cast<double>(block_sum(mass_k, s));
  long long above;
  last.key = top_p_key(row, k, threshold, &above, s);
  last.last = cut_by_mass(row, k, last.key, above, threshold, s);
  return last;
}

// The draw among the kept tokens (both prefixes, w >= min_p, q > 0): chunks in thread order are the row in index
// order, so the block scan walks the kept masses in index order.
template <typename T>
__device__ long long draw(const Row<T>& row, const Prefix& k, const Prefix& last, float min_p, uint32_t bits,
                          Shared& s) {
  auto kept_mass = [&](int64_t i) -> long long {
    const uint32_t key = row.key(i);
    if (!in_prefix(key, i, k.key, k.last) || !in_prefix(key, i, last.key, last.last)) return 0;
    const float w = row.weight(i);
    return w >= min_p ? sample::mass(w) : 0;
  };
  const Chunk chunk(row.vocab);
  long long own = 0;
  for (int64_t i = chunk.begin; i < chunk.end; ++i) own += kept_mass(i);
  long long running, total;
  Scan(s.cub.scan).ExclusiveSum(own, running, total);
  __syncthreads();
  const long long target = sample::draw_target(bits, total);
  long long token = row.vocab;
  for (int64_t i = chunk.begin; i < chunk.end && running <= target; ++i) {
    const long long q = kept_mass(i);
    running += q;
    if (q > 0 && running > target) token = i;
  }
  return block_reduce(token, MinOp(), s);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sample_kernel(const T* logits, int64_t vocab, int64_t row_stride, sample::Params p, int64_t* tokens,
                  int32_t* status) {
  __shared__ Shared s;
  const int64_t r = blockIdx.x;
  const T* x = logits + r * row_stride;
  ArgMax best;
  const int32_t code = scan_row(x, vocab, s, &best);
  const float t = p.temperature[r];
  if (code != sample::kOk || t == 0.0f) {  // the same in every thread: the block leaves together
    if (threadIdx.x == 0) {
      status[r] = code;
      tokens[r] = code == sample::kOk ? best.index : -1;
    }
    return;
  }
  const Row<T> row{x, vocab, best.value, t};

  Prefix k{0u, vocab};  // top-k off: every token is in the prefix
  const long long top_k = p.top_k[r];
  if (top_k > 0 && top_k < vocab) {
    long long above;
    k.key = top_k_key(row, top_k, &above, s);
    k.last = cut_by_count(row, k.key, top_k - above, s);
  }
  const Prefix last = top_p_prefix(row, k, p.top_p[r], s);
  const uint32_t bits = philox::uniform_bits(static_cast<uint64_t>(p.seed[r]), static_cast<uint64_t>(p.offset[r]));
  const long long token = draw(row, k, last, p.min_p[r], bits, s);
  if (threadIdx.x == 0) {
    status[r] = sample::kOk;
    tokens[r] = token;
  }
}

__global__ void uniform_kernel(const int64_t* seed, const int64_t* offset, int64_t n, float* out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = philox::uniform(static_cast<uint64_t>(seed[i]), static_cast<uint64_t>(offset[i]));
}

std::string status_text() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace

std::string launch_sample(const void* logits, bool bf16, int64_t rows, int64_t vocab, int64_t row_stride,
                          const sample::Params& params, int64_t* tokens, int32_t* status, void* stream) {
  if (rows == 0) return {};
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (bf16) {
    sample_kernel<uint16_t><<<static_cast<unsigned>(rows), kThreads, 0, st>>>(
        static_cast<const uint16_t*>(logits), vocab, row_stride, params, tokens, status);
  } else {
    sample_kernel<float><<<static_cast<unsigned>(rows), kThreads, 0, st>>>(
        static_cast<const float*>(logits), vocab, row_stride, params, tokens, status);
  }
  return status_text();
}

std::string launch_philox_uniform(const int64_t* seed, const int64_t* offset, int64_t n, float* out,
                                  void* stream) {
  if (n == 0) return {};
  constexpr int kBlock = 256;
  uniform_kernel<<<static_cast<unsigned>((n + kBlock - 1) / kBlock), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
      seed, offset, n, out);
  return status_text();
}

}  // namespace cuda
}  // namespace spct
