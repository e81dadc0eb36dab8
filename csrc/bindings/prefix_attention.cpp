// spct._C bindings of prefix_attention: marshalling only. The Python wrapper (spct.ops.prefix_attention) checks
// shapes, dtypes, devices, contiguity and head_dim; the CPU kernel checks the index values it reads; for CUDA the
// wrapper checks those too (the kernel cannot report them).
//
// A call comes in two parts, so that the ~30 calls of a decode step (one per layer) pass only what changes:
//   layout = PrefixAttentionLayout(prefix_indptr=..., ..., scale=..., bf16=...)   once per step: indices, sizes
//   prefix_attention(layout, q, prefix_k, prefix_v, own_k, own_v, out)            per layer: host addresses
// (prefix_attention_cuda: the same on device addresses, plus the stream). Each call's tensors have the shapes the
// layout was made for (the wrapper's contract).
#include "common.h"

#include "spct/prefix_attention.h"

namespace spct_bind {
namespace {

// The rows, prompts, own slots and sizes shared by the calls of one step; the tensors are filled in per call.
struct PrefixAttentionLayout {
  spct::attn::PrefixAttention a{};
};

PrefixAttentionLayout make_layout(uintptr_t prefix_indptr, uintptr_t prefix_index, uintptr_t own_index,
                                  uintptr_t own_len, int64_t rows, int64_t heads, int64_t kv_heads, int64_t head_dim,
                                  int64_t prompts, int64_t prefix_tokens, int64_t slots, int64_t capacity,
                                  float scale, bool bf16) {
  PrefixAttentionLayout l;
  spct::attn::PrefixAttention& a = l.a;
  a.prefix_indptr = dptr<const int64_t>(prefix_indptr);
  a.prefix_index = dptr<const int64_t>(prefix_index);
  a.own_index = dptr<const int64_t>(own_index);
  a.own_len = dptr<const int64_t>(own_len);
  a.rows = rows;
  a.heads = heads;
  a.kv_heads = kv_heads;
  a.head_dim = head_dim;
  a.prompts = prompts;
  a.prefix_tokens = prefix_tokens;
  a.slots = slots;
  a.capacity = capacity;
  a.scale = scale;
  a.bf16 = bf16;
  return l;
}

spct::attn::PrefixAttention with_tensors(const PrefixAttentionLayout& l, uintptr_t q, uintptr_t prefix_k,
                                         uintptr_t prefix_v, uintptr_t own_k, uintptr_t own_v, uintptr_t out) {
  spct::attn::PrefixAttention a = l.a;
  a.q = dptr<const void>(q);
  a.prefix_k = dptr<const void>(prefix_k);
  a.prefix_v = dptr<const void>(prefix_v);
  a.own_k = dptr<const void>(own_k);
  a.own_v = dptr<const void>(own_v);
  a.out = dptr<void>(out);
  return a;
}

void bind_layout(py::module_& m) {
  py::class_<PrefixAttentionLayout>(m, "PrefixAttentionLayout",
                                    "The index tensors (addresses) and sizes that the calls of one step share.")
      .def(py::init(&make_layout), py::arg("prefix_indptr"), py::arg("prefix_index"), py::arg("own_index"),
           py::arg("own_len"), py::arg("rows"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"),
           py::arg("prompts"), py::arg("prefix_tokens"), py::arg("slots"), py::arg("capacity"), py::arg("scale"),
           py::arg("bf16"))
      .def_property_readonly("rows", [](const PrefixAttentionLayout& l) { return l.a.rows; })
      .def_property_readonly("head_dim", [](const PrefixAttentionLayout& l) { return l.a.head_dim; });
}

}  // namespace

void bind_prefix_attention(py::module_& m) {
  bind_layout(m);
  m.def(
      "prefix_attention",
      [](const PrefixAttentionLayout& layout, uintptr_t q, uintptr_t prefix_k, uintptr_t prefix_v, uintptr_t own_k,
         uintptr_t own_v, uintptr_t out) {
        const spct::attn::PrefixAttention a = with_tensors(layout, q, prefix_k, prefix_v, own_k, own_v, out);
        std::string error;
        {
          py::gil_scoped_release nogil;
          error = spct::cpu::prefix_attention(a);
        }
        if (!error.empty()) fail(error);
      },
      py::arg("layout"), py::arg("q"), py::arg("prefix_k"), py::arg("prefix_v"), py::arg("own_k"), py::arg("own_v"),
      py::arg("out"), "Decode attention over a shared prompt KV plus each row's own KV (host addresses).");
#if defined(SPCT_WITH_CUDA)
  m.def(
      "prefix_attention_cuda",
      [](const PrefixAttentionLayout& layout, uintptr_t q, uintptr_t prefix_k, uintptr_t prefix_v, uintptr_t own_k,
         uintptr_t own_v, uintptr_t out, uintptr_t stream) {
        const spct::attn::PrefixAttention a = with_tensors(layout, q, prefix_k, prefix_v, own_k, own_v, out);
        cuda_check(spct::cuda::prefix_attention(a, dptr<void>(stream)));
      },
      py::arg("layout"), py::arg("q"), py::arg("prefix_k"), py::arg("prefix_v"), py::arg("own_k"), py::arg("own_v"),
      py::arg("out"), py::arg("stream"),
      "prefix_attention on device addresses, launched on `stream` (index values already checked).");
#endif
}

}  // namespace spct_bind
