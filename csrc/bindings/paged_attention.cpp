// spct._C bindings of paged_attention: marshalling only. The Python wrapper (spct.ops.paged_attention) checks
// everything first; the CPU kernel checks the index values it reads again, worded the same way.
//
// A call comes in two parts, so that the calls of one step (one per layer) pass only what changes:
//   layout = PagedAttentionLayout(block_ids, ..., seg_start, rows, ..., scale, bf16, amx, dpbf16, window, softcap)
//                                                 once per step: indices, sizes, the CPU build, the options
//   paged_attention(layout, q, k_cache, v_cache, out)  per layer: host addresses
// (paged_attention_cuda: the same on device addresses, plus the stream; the layout made from device tensors.)
// Index arrays are int32 and causal is torch.bool (one byte each), passed by address; causal, q_pos and seg_start
// are 0 (null) together when no segment is causal (a window needs them). Each call's tensors have the shapes the
// layout was made for. window and softcap (0: none) run on the CPU kernel only (the wrapper keeps them off CUDA).
#include <cmath>
#include <cstdint>

#include "common.h"

#include "paged_attention_layout.h"
#include "spct/linear.h"
#include "spct/paged_attention.h"

namespace spct_bind {
namespace {

PagedAttentionLayout make_layout(uintptr_t block_ids, uintptr_t seg_block_indptr, uintptr_t seg_len,
                                 uintptr_t seg_row_indptr, uintptr_t seg_rows, uintptr_t causal, uintptr_t q_pos,
                                 uintptr_t seg_start, int64_t rows, int64_t heads, int64_t kv_heads,
                                 int64_t head_dim, int64_t num_blocks, int64_t block_size, int64_t segments,
                                 int64_t nnz_blocks, int64_t nnz_rows, float scale, bool bf16, bool amx, bool dpbf16,
                                 int64_t window, float softcap) {
  SPCT_CHECK((causal == 0) == (q_pos == 0) && (causal == 0) == (seg_start == 0),
             "causal, q_pos and seg_start go together (all three addresses or none)");
  SPCT_CHECK(!(amx && dpbf16), "amx=True and dpbf16=True exclude each other (one CPU build per layout)");
  SPCT_CHECK(window >= 0 && window <= INT32_MAX, "window must be in [0, 2**31 - 1] (0: no window)");
  SPCT_CHECK(window == 0 || causal != 0, "window needs causal, q_pos and seg_start (every segment's positions)");
  SPCT_CHECK(std::isfinite(softcap) && softcap >= 0.0f, "softcap must be finite and >= 0 (0: none)");
  if (amx) {
    SPCT_CHECK(bf16 && head_dim % 32 == 0 && block_size % 16 == 0,
               "amx=True needs bfloat16, head_dim a multiple of 32 and block_size a multiple of 16");
#if defined(SPCT_X86_VARIANTS)
    // the tile registers exist only after the OS granted them (linear_bf16_amx_supported asks, once)
    SPCT_CHECK(spct::cpu::linear_bf16_amx_supported(),
               "amx=True needs a CPU with AMX-BF16 whose OS grants the tile registers");
#else
    SPCT_CHECK(false, "amx=True needs an x86-64 build");
#endif
  }
  if (dpbf16) {
    SPCT_CHECK(bf16 && head_dim % 32 == 0 && block_size % 16 == 0,
               "dpbf16=True needs bfloat16, head_dim a multiple of 32 and block_size a multiple of 16");
#if defined(SPCT_X86_VARIANTS)
    SPCT_CHECK(spct::cpu::linear_bf16_supported(), "dpbf16=True needs a CPU with AVX-512 BF16");
#else
    SPCT_CHECK(false, "dpbf16=True needs an x86-64 build");
#endif
  }
  PagedAttentionLayout l;
  spct::attn::PagedAttention& a = l.a;
  a.block_ids = dptr<const int32_t>(block_ids);
  a.seg_block_indptr = dptr<const int32_t>(seg_block_indptr);
  a.seg_len = dptr<const int32_t>(seg_len);
  a.seg_row_indptr = dptr<const int32_t>(seg_row_indptr);
  a.seg_rows = dptr<const int32_t>(seg_rows);
  a.causal = dptr<const uint8_t>(causal);
  a.q_pos = dptr<const int32_t>(q_pos);
  a.seg_start = dptr<const int32_t>(seg_start);
  a.rows = rows;
  a.heads = heads;
  a.kv_heads = kv_heads;
  a.head_dim = head_dim;
  a.num_blocks = num_blocks;
  a.block_size = block_size;
  a.segments = segments;
  a.nnz_blocks = nnz_blocks;
  a.nnz_rows = nnz_rows;
  a.scale = scale;
  a.bf16 = bf16;
  a.amx = amx;
  a.dpbf16 = dpbf16;
  a.window = int32_t(window);
  a.softcap = softcap;
  return l;
}

void bind_layout(py::module_& m) {
  py::class_<PagedAttentionLayout>(m, "PagedAttentionLayout",
                                   "The index arrays (addresses) and sizes that the calls of one step share.")
      .def(py::init(&make_layout), py::arg("block_ids"), py::arg("seg_block_indptr"), py::arg("seg_len"),
           py::arg("seg_row_indptr"), py::arg("seg_rows"), py::arg("causal"), py::arg("q_pos"), py::arg("seg_start"),
           py::arg("rows"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("num_blocks"),
           py::arg("block_size"), py::arg("segments"), py::arg("nnz_blocks"), py::arg("nnz_rows"), py::arg("scale"),
           py::arg("bf16"), py::arg("amx") = false, py::arg("dpbf16") = false, py::arg("window") = 0,
           py::arg("softcap") = 0.0f)
      .def_property_readonly("rows", [](const PagedAttentionLayout& l) { return l.a.rows; })
      .def_property_readonly("head_dim", [](const PagedAttentionLayout& l) { return l.a.head_dim; });
}

}  // namespace

void bind_paged_attention(py::module_& m) {
  bind_layout(m);
  m.def(
      "paged_attention",
      [](const PagedAttentionLayout& layout, uintptr_t q, uintptr_t k_cache, uintptr_t v_cache, uintptr_t out) {
        spct::attn::PagedAttention a = layout.a;
        a.q = dptr<const void>(q);
        a.k_cache = dptr<const void>(k_cache);
        a.v_cache = dptr<const void>(v_cache);
        a.out = dptr<void>(out);
        std::string error;
        {
          py::gil_scoped_release nogil;
          error = spct::cpu::paged_attention(a);
        }
        if (!error.empty()) fail(error);
      },
      py::arg("layout"), py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("out"),
      "Attention over a paged KV cache described by segments (host addresses).");
#if defined(SPCT_WITH_CUDA)
  m.def(
      "paged_attention_cuda",
      [](const PagedAttentionLayout& layout, uintptr_t q, uintptr_t k_cache, uintptr_t v_cache, uintptr_t out,
         uintptr_t stream) {
        spct::attn::PagedAttention a = layout.a;
        a.q = dptr<const void>(q);
        a.k_cache = dptr<const void>(k_cache);
        a.v_cache = dptr<const void>(v_cache);
        a.out = dptr<void>(out);
        cuda_check(spct::cuda::paged_attention(a, dptr<void>(stream)));
      },
      py::arg("layout"), py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("out"), py::arg("stream"),
      "paged_attention on device addresses (a layout made from device index tensors), launched on `stream` (index "
      "values already checked).");
#endif
}

}  // namespace spct_bind
