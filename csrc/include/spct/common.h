// What every framework-free kernel header shares: the host/device function macro and a NaN that needs no <cmath>
// on the device.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SPCT_HD __host__ __device__ __forceinline__
#else
#define SPCT_HD inline
#endif

namespace spct {

SPCT_HD double quiet_nan() {
  const uint64_t bits = 0x7ff8000000000000ull;
  double d;
  memcpy(&d, &bits, sizeof d);
  return d;
}

}  // namespace spct
