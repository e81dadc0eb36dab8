// philox: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the Random123
// and curand constants) and the one uniform that spct's sampler draws per row (vote's tie-break draws the same
// bits). Host/device, framework-free; the torch reference (python/spct/ops/ref/philox.py) and the Triton kernels
// (python/spct/ops/triton/philox.py) compute the same words bit for bit. The launchers of philox_uniform (the
// uniforms alone) are declared at the end and live beside the sampler's (csrc/cpu/sample.cpp, csrc/cuda/sample.cu).
#pragma once

#include <cstdint>
#include <string>

#include "spct/common.h"

namespace spct {
namespace philox {

constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kWeyl1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kRounds = 10;

SPCT_HD uint32_t mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// out = Philox4x32-10(counter, key): ten rounds, the key bumped by the Weyl constants between rounds.
SPCT_HD void philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < kRounds; ++round) {
    if (round > 0) {
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    const uint32_t hi0 = mulhi(kMul0, c0), lo0 = kMul0 * c0;
    const uint32_t hi1 = mulhi(kMul1, c2), lo1 = kMul1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// The sampler's uniform u in [0, 1) and its 24 bits: key = (seed low, seed high), counter = (offset low,
// offset high, 0, 0), bits = first output word >> 8, u = bits * 2^-24 (exact in float32).
SPCT_HD uint32_t uniform_bits(uint64_t seed, uint64_t offset) {
  const uint32_t key[2] = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  const uint32_t counter[4] = {static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32), 0u, 0u};
  uint32_t out[4];
  philox4x32_10(counter, key, out);
  return out[0] >> 8;
}
SPCT_HD float uniform(uint64_t seed, uint64_t offset) {
  return static_cast<float>(uniform_bits(seed, offset)) * 5.9604644775390625e-08f;  // 2^-24
}

}  // namespace philox

namespace cpu {
// out[i] = philox::uniform(seed[i], offset[i]) for i < n (seed and offset as two's complement bits).
void philox_uniform(const int64_t* seed, const int64_t* offset, int64_t n, float* out);
}  // namespace cpu

namespace cuda {
// The same on device pointers; returns "" or the CUDA error.
std::string launch_philox_uniform(const int64_t* seed, const int64_t* offset, int64_t n, float* out, void* stream);
}  // namespace cuda

}  // namespace spct
