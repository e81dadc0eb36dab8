// CUDA kernels of extract_scores: one thread per row runs the same parsing code (spct/extract_scores.h) as the CPU.
// Numbers off the exact fast path set `slow` for the row; the Python launcher re-parses those rows on the host.
// The sizes pass is the one that checks data: token ids outside the vocabulary (reported through `bad`).
#include <cuda_runtime.h>

#include "spct/extract_scores.h"
#include "spct/extract_scores_cuda.h"

namespace spct {
namespace cuda {
namespace {

constexpr int kThreads = 128;

struct NoSlowPath {
  __host__ __device__ bool operator()(const uint8_t*, int64_t, double*) const { return false; }
};

std::string status() {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

unsigned blocks(int64_t rows) { return static_cast<unsigned>((rows + kThreads - 1) / kThreads); }

template <typename Id>
__device__ int64_t token_at(const DeviceTokens& tok, int64_t r, int64_t c) {
  return static_cast<int64_t>(static_cast<const Id*>(tok.ids)[r * tok.row_stride + c]);
}

template <typename Id>
__global__ void sizes_kernel(DeviceTokens tok, int64_t* row_bytes, unsigned long long* bad) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= tok.rows) return;
  int64_t total = 0;
  bool first = true;
  for (int64_t c = 0; c < tok.lengths[r]; ++c) {
    const int64_t t = token_at<Id>(tok, r, c);
    if (t < 0 || t >= tok.vocab) {
      atomicMin(bad, static_cast<unsigned long long>(r * tok.cols + c));
      total = 0;
      break;
    }
    int64_t len = tok.table_offsets[t + 1] - tok.table_offsets[t];
    if (first && len > 0) {
      first = false;
      if (tok.strip_leading_space && tok.table_bytes[tok.table_offsets[t]] == ' ') --len;
    }
    total += len;
  }
  row_bytes[r] = total;
}

template <typename Id>
__device__ void copy_row(const DeviceTokens& tok, int64_t r, uint8_t* out) {
  bool first = true;
  for (int64_t c = 0; c < tok.lengths[r]; ++c) {
    const int64_t t = token_at<Id>(tok, r, c);
    const uint8_t* b = tok.table_bytes + tok.table_offsets[t];
    int64_t len = tok.table_offsets[t + 1] - tok.table_offsets[t];
    if (first && len > 0) {
      first = false;
      if (tok.strip_leading_space && b[0] == ' ') ++b, --len;
    }
    for (int64_t i = 0; i < len; ++i) *out++ = b[i];
  }
}

template <typename Id>
__global__ void parse_kernel(DeviceTokens tok, DeviceParse out) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= tok.rows) return;
  uint8_t* s = out.text + out.row_offsets[r];
  const int64_t n = out.row_offsets[r + 1] - out.row_offsets[r];
  copy_row<Id>(tok, r, s);
  float* scores = out.scores + r * out.n_max;
  const extract_scores::Group g = extract_scores::find_score_group(s, n);
  int ok = 0;
  if (g.start >= 0) {
    ok = extract_scores::parse_group(s, g.begin, g.end, out.num_responses[r], out.lo, out.hi, scores, NoSlowPath{});
  }
  const float nan = __int_as_float(0x7fc00000);
  for (int64_t j = ok == 1 ? out.num_responses[r] : 0; j < out.n_max; ++j) scores[j] = nan;
  out.valid[r] = ok == 1;
  int32_t slow = ok == extract_scores::kNeedsSlowPath;
  const extract_scores::Sections sec = extract_scores::find_sections(s, n, g.start);
  for (int k = 0; k < 2; ++k) {
    out.principle_span[2 * r + k] = sec.principles[k];
    out.critique_span[2 * r + k] = sec.critique[k];
  }
  out.item_counts[r] = extract_scores::for_each_item(
      s, sec.principles[0], sec.principles[1], [&](const extract_scores::Item& it) { slow |= it.slow; },
      NoSlowPath{});
  out.slow[r] = slow;
}

__global__ void items_kernel(DeviceItems items) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= items.rows) return;
  const uint8_t* s = items.text + items.row_offsets[r];
  int64_t k = items.item_starts[r];
  extract_scores::for_each_item(
      s, items.principle_span[2 * r], items.principle_span[2 * r + 1],
      [&](const extract_scores::Item& it) {
        items.item_spans[2 * k] = it.name_begin;
        items.item_spans[2 * k + 1] = it.name_end;
        items.item_weights[k] = it.weight;
        ++k;
      },
      NoSlowPath{});
}

}  // namespace

std::string extract_scores_sizes(const DeviceTokens& tok, int64_t* row_bytes, unsigned long long* bad,
                                 void* stream) {
  if (tok.rows == 0) return "";
  auto st = static_cast<cudaStream_t>(stream);
  if (tok.is_int64) {
    sizes_kernel<int64_t><<<blocks(tok.rows), kThreads, 0, st>>>(tok, row_bytes, bad);
  } else {
    sizes_kernel<int32_t><<<blocks(tok.rows), kThreads, 0, st>>>(tok, row_bytes, bad);
  }
  return status();
}

std::string extract_scores_parse(const DeviceTokens& tok, const DeviceParse& out, void* stream) {
  if (tok.rows == 0) return "";
  auto st = static_cast<cudaStream_t>(stream);
  if (tok.is_int64) {
    parse_kernel<int64_t><<<blocks(tok.rows), kThreads, 0, st>>>(tok, out);
  } else {
    parse_kernel<int32_t><<<blocks(tok.rows), kThreads, 0, st>>>(tok, out);
  }
  return status();
}

std::string extract_scores_items(const DeviceItems& items, void* stream) {
  if (items.rows == 0) return "";
  items_kernel<<<blocks(items.rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(items);
  return status();
}

}  // namespace cuda
}  // namespace spct
