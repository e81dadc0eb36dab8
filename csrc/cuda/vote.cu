// CUDA kernel of vote: one thread per item running the shared vote_item (spct/vote.h).
#include <cuda_runtime.h>

#include "spct/vote_cpu.h"

namespace spct {
namespace cuda {
namespace {

__global__ void vote_kernel(VoteBatch b, float* rewards, int32_t* num_used, int64_t* best) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= b.items) return;
  const vote::Item it = vote::item_of(b, i);
  num_used[i] = vote::vote_item(it, b.seed, vote::item_number(b, i), rewards + i * b.n, best + i);
}

}  // namespace

const char* vote(const VoteBatch& b, float* rewards, int32_t* num_used, int64_t* best, void* stream) {
  if (b.items == 0) return "";
  constexpr int kThreads = 128;
  const unsigned blocks = static_cast<unsigned>((b.items + kThreads - 1) / kThreads);
  vote_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(b, rewards, num_used, best);
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

}  // namespace cuda
}  // namespace spct
