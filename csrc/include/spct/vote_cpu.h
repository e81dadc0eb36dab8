// CPU (and CUDA) launcher interface of vote: a batch of B items, each k samples of n scores.
#pragma once

#include <cstdint>
#include <string>

#include "spct/vote.h"

namespace spct {

using vote::VoteBatch;

namespace cpu {
// rewards (B, n) float32, num_used (B,) int32, best (B,) int64. Also checks the values (finite scores and
// meta scores in valid samples, perm a permutation): returns "" or the first problem, worded for the user.
std::string vote(const VoteBatch& batch, float* rewards, int32_t* num_used, int64_t* best);
}  // namespace cpu

namespace cuda {
// Same on device pointers; returns "" or the CUDA error text.
const char* vote(const VoteBatch& batch, float* rewards, int32_t* num_used, int64_t* best, void* stream);
}  // namespace cuda

}  // namespace spct
