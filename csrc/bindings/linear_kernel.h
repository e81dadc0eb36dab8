// The linear_bf16 build by name, for the linear and decoder bindings (spct/linear.h).
#pragma once

#include <string>

#include "spct/linear.h"

namespace spct_bind {

#if defined(SPCT_X86_VARIANTS)
// "amx", "avx512bf16" or "avx2"; a ValueError where the name is unknown or this CPU cannot run that build.
spct::cpu::LinearBF16 linear_kernel(const std::string& name);
#endif

}  // namespace spct_bind
