// CPU prefix_attention: checks the index values (the one place they are checked on the CPU path), then runs the
// kernel built for the widest instruction set this CPU has (prefix_attention_impl.h, compiled three times on
// x86-64: baseline, AVX2 + FMA, AVX-512). Shapes, dtypes and head_dim were checked by the Python wrapper.
#include <string>

#include "spct/prefix_attention.h"

#define SPCT_ISA base
#include "prefix_attention_impl.h"
#undef SPCT_ISA

namespace spct {
namespace cpu {

#if defined(SPCT_X86_VARIANTS)
namespace avx2 {
bool prefix_attention_run(const attn::PrefixAttention& a);
}
namespace avx512 {
bool prefix_attention_run(const attn::PrefixAttention& a);
}
#endif

namespace {

std::string check_indices(const attn::PrefixAttention& a) {
  const auto at = [](const char* name, int64_t i, int64_t v) {
    return std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(v);
  };
  if (a.prefix_indptr[0] != 0) return at("prefix_indptr", 0, a.prefix_indptr[0]) + " must be 0";
  for (int64_t p = 0; p < a.prompts; ++p) {
    if (a.prefix_indptr[p + 1] < a.prefix_indptr[p] || a.prefix_indptr[p + 1] > a.prefix_tokens) {
      return at("prefix_indptr", p + 1, a.prefix_indptr[p + 1]) + " must be in [prefix_indptr[" + std::to_string(p) +
             "], " + std::to_string(a.prefix_tokens) + "] (non-decreasing, within the " +
             std::to_string(a.prefix_tokens) + " prefix tokens)";
    }
  }
  for (int64_t s = 0; s < a.rows; ++s) {
    if (a.prefix_index[s] < 0 || a.prefix_index[s] >= a.prompts) {
      return at("prefix_index", s, a.prefix_index[s]) + " is outside [0, " + std::to_string(a.prompts) + ")";
    }
    if (a.own_index[s] < 0 || a.own_index[s] >= a.slots) {
      return at("own_index", s, a.own_index[s]) + " is outside [0, " + std::to_string(a.slots) + ")";
    }
    if (a.own_len[s] < 0 || a.own_len[s] > a.capacity) {
      return at("own_len", s, a.own_len[s]) + " is outside [0, " + std::to_string(a.capacity) + "]";
    }
  }
  return "";
}

bool run(const attn::PrefixAttention& a) {
#if defined(SPCT_X86_VARIANTS)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq")) {
    return avx512::prefix_attention_run(a);
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return avx2::prefix_attention_run(a);
#endif
  return base::prefix_attention_run(a);
}

}  // namespace

std::string prefix_attention(const attn::PrefixAttention& a) {
  std::string error = check_indices(a);
  if (!error.empty()) return error;
  if (!run(a)) return "head_dim " + std::to_string(a.head_dim) + " has no CPU kernel (built: 32, 64, 128, 256)";
  return "";
}

}  // namespace cpu
}  // namespace spct
