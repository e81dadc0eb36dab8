// CPU paged_attention: checks the index values (worded as the Python wrapper's checks, which run first: a caller of
// the binding gets the same message for the same first bad value), then runs the kernel built for the widest
// instruction set this CPU has (paged_attention_impl.h, compiled three times on x86-64: baseline, AVX2 + FMA,
// AVX-512), or the bfloat16 builds the caller chose (AMX, AVX-512 BF16). Shapes, dtypes and sizes were checked by
// the Python wrapper.
#include <string>
#include <vector>

#include "spct/paged_attention.h"

#define SPCT_ISA base
#include "paged_attention_impl.h"
#undef SPCT_ISA

namespace spct {
namespace cpu {

#if defined(SPCT_X86_VARIANTS)
namespace avx2 {
bool paged_attention_run(const attn::PagedAttention& a);
}
namespace avx512 {
bool paged_attention_run(const attn::PagedAttention& a);
}
namespace avx512bf16 {
bool paged_attention_run(const attn::PagedAttention& a);
}
namespace amx {
bool paged_attention_run(const attn::PagedAttention& a);
}
#endif

namespace {

std::string at(const char* name, int64_t i, int64_t v) {
  return std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(v);
}

// indptr (n + 1 entries): starts at 0, never decreases, ends at nnz (the length of `items`).
std::string check_indptr(const char* name, const int32_t* indptr, int64_t n, const char* items, int64_t nnz) {
  if (indptr[0] != 0) return at(name, 0, indptr[0]) + " must be 0";
  for (int64_t i = 1; i <= n; ++i) {
    if (indptr[i] < indptr[i - 1]) {
      return at(name, i, indptr[i]) + " is below the entry before it (must be non-decreasing)";
    }
  }
  if (indptr[n] != nnz) {
    return std::string(name) + "[-1] = " + std::to_string(indptr[n]) + " must equal len(" + items + ") = " +
           std::to_string(nnz);
  }
  return "";
}

std::string check_blocks(const attn::PagedAttention& a) {
  std::string error = check_indptr("seg_block_indptr", a.seg_block_indptr, a.segments, "block_ids", a.nnz_blocks);
  if (!error.empty()) return error;
  for (int64_t i = 0; i < a.nnz_blocks; ++i) {
    if (a.block_ids[i] < 0 || a.block_ids[i] >= a.num_blocks) {
      return at("block_ids", i, a.block_ids[i]) + " is outside [0, " + std::to_string(a.num_blocks) + ")";
    }
  }
  for (int64_t s = 0; s < a.segments; ++s) {
    if (a.seg_len[s] < 0) return at("seg_len", s, a.seg_len[s]) + " must be >= 0";
  }
  for (int64_t s = 0; s < a.segments; ++s) {
    const int64_t n = a.seg_len[s], need = (n + a.block_size - 1) / a.block_size;
    const int64_t have = int64_t(a.seg_block_indptr[s + 1]) - a.seg_block_indptr[s];
    if (need != have) {
      return at("seg_len", s, n) + " needs ceil(" + std::to_string(n) + " / " + std::to_string(a.block_size) +
             ") = " + std::to_string(need) + " blocks, segment " + std::to_string(s) + " has " +
             std::to_string(have) + " in block_ids";
    }
  }
  return "";
}

std::string check_rows(const attn::PagedAttention& a) {
  std::string error = check_indptr("seg_row_indptr", a.seg_row_indptr, a.segments, "seg_rows", a.nnz_rows);
  if (!error.empty()) return error;
  for (int64_t i = 0; i < a.nnz_rows; ++i) {
    if (a.seg_rows[i] < 0 || a.seg_rows[i] >= a.rows) {
      return at("seg_rows", i, a.seg_rows[i]) + " is outside [0, " + std::to_string(a.rows) + ") (R rows of q)";
    }
  }
  // A row listed twice in a segment: the wrapper names, in the first such segment, the smallest such row at its
  // second listing.
  std::vector<int64_t> mark(size_t(a.rows), -1);
  for (int64_t s = 0; s < a.segments; ++s) {
    int64_t twice = -1;
    for (int64_t i = a.seg_row_indptr[s]; i < a.seg_row_indptr[s + 1]; ++i) {
      const int32_t r = a.seg_rows[i];
      if (mark[size_t(r)] != s) {
        mark[size_t(r)] = s;  // its first listing in segment s
      } else if (twice < 0 || r < a.seg_rows[twice]) {
        twice = i;  // a second (or later: r is then not smaller) listing
      }
    }
    if (twice >= 0) {
      const int32_t r = a.seg_rows[twice];
      return at("seg_rows", twice, r) + " lists row " + std::to_string(r) + " twice in segment " +
             std::to_string(s) + " (a segment's rows must be distinct)";
    }
  }
  return "";
}

// Every row is in a segment and sees at least one token (q_pos and seg_start >= 0 when given).
std::string check_visible(const attn::PagedAttention& a) {
  std::vector<int64_t> listed(size_t(a.rows), 0), seen(size_t(a.rows), 0);
  for (int64_t i = 0; i < a.nnz_rows; ++i) ++listed[size_t(a.seg_rows[i])];
  for (int64_t r = 0; r < a.rows; ++r) {
    if (listed[size_t(r)] == 0) {
      return "row " + std::to_string(r) + " of q is in no segment (every row needs one, in seg_rows)";
    }
  }
  if (a.causal != nullptr) {
    for (int64_t r = 0; r < a.rows; ++r) {
      if (a.q_pos[r] < 0) return at("q_pos", r, a.q_pos[r]) + " must be >= 0";
    }
    for (int64_t s = 0; s < a.segments; ++s) {
      if (a.seg_start[s] < 0) return at("seg_start", s, a.seg_start[s]) + " must be >= 0";
    }
  }
  for (int64_t s = 0; s < a.segments; ++s) {
    for (int64_t i = a.seg_row_indptr[s]; i < a.seg_row_indptr[s + 1]; ++i) {
      const int32_t r = a.seg_rows[i];
      int64_t n = a.seg_len[s];
      if (a.causal != nullptr && a.causal[s] != 0) {
        const int64_t upto = int64_t(a.q_pos[r]) - a.seg_start[s] + 1;
        n = upto < 0 ? 0 : (upto < n ? upto : n);
      }
      if (a.window > 0) {  // tokens from index q_pos - window + 1 - seg_start on
        const int64_t from = int64_t(a.q_pos[r]) - a.window + 1 - a.seg_start[s];
        n = from <= 0 ? n : (from < n ? n - from : 0);
      }
      seen[size_t(r)] += n;
    }
  }
  for (int64_t r = 0; r < a.rows; ++r) {
    if (seen[size_t(r)] == 0) {
      std::string error = "row " + std::to_string(r) + " of q sees no token: its segments are empty";
      if (a.causal != nullptr) {
        error += std::string(a.window > 0 ? ", " : " or ") + "start after q_pos[" + std::to_string(r) + "] = " +
                 std::to_string(a.q_pos[r]);
      }
      if (a.window > 0) {
        error += " or end before its window of " + std::to_string(a.window) + " (positions > " +
                 std::to_string(int64_t(a.q_pos[r]) - a.window) + ")";
      }
      return error;
    }
  }
  return "";
}

std::string check_indices(const attn::PagedAttention& a) {
  std::string error = check_blocks(a);
  if (error.empty()) error = check_rows(a);
  if (error.empty()) error = check_visible(a);
  return error;
}

bool run(const attn::PagedAttention& a) {
#if defined(SPCT_X86_VARIANTS)
  if (a.amx) return amx::paged_attention_run(a);  // the binding checked what it needs
  if (a.dpbf16) return avx512bf16::paged_attention_run(a);
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq")) {
    return avx512::paged_attention_run(a);
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return avx2::paged_attention_run(a);
#endif
  return base::paged_attention_run(a);
}

}  // namespace

std::string paged_attention(const attn::PagedAttention& a, bool check) {
  std::string error = check ? check_indices(a) : "";
  if (!error.empty()) return error;
  if (!run(a)) return "head_dim " + std::to_string(a.head_dim) + " has no CPU kernel (built: 8, 16, 32, 64, 128, 256)";
  return "";
}

}  // namespace cpu
}  // namespace spct
