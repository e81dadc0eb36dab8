// spct._C bindings of prefix_attention.
#include "common.h"

#include "spct/prefix_attention.h"

namespace spct_bind {
namespace {


// Host tensors come as addresses: the op runs 30+ times per decoding step, and the Python wrapper has already
// checked dtypes, shapes and contiguity (the kernel checks the index values).
spct::attn::PrefixAttention prefix_args(uintptr_t q, uintptr_t prefix_k, uintptr_t prefix_v, uintptr_t prefix_indptr,
                                        uintptr_t prefix_index, uintptr_t own_k, uintptr_t own_v, uintptr_t own_index,
                                        uintptr_t own_len, uintptr_t out, const std::vector<int64_t>& sizes,
                                        float scale, bool bf16) {
  SPCT_CHECK(sizes.size() == 8, "sizes must be (rows, heads, kv_heads, head_dim, prompts, prefix_tokens, slots, "
                                "capacity)");
  const auto cptr = [](uintptr_t a) { return reinterpret_cast<const void*>(a); };
  const auto iptr = [](uintptr_t a) { return reinterpret_cast<const int64_t*>(a); };
  return {cptr(q), cptr(prefix_k), cptr(prefix_v), iptr(prefix_indptr), iptr(prefix_index), cptr(own_k), cptr(own_v),
          iptr(own_index), iptr(own_len), reinterpret_cast<void*>(out), sizes[0], sizes[1], sizes[2], sizes[3],
          sizes[4], sizes[5], sizes[6], sizes[7], scale, bf16};
}

}  // namespace

void bind_prefix_attention(py::module_& m) {
  m.def(
      "prefix_attention",
      [](uintptr_t q, uintptr_t prefix_k, uintptr_t prefix_v, uintptr_t prefix_indptr, uintptr_t prefix_index,
         uintptr_t own_k, uintptr_t own_v, uintptr_t own_index, uintptr_t own_len, uintptr_t out,
         const std::vector<int64_t>& sizes, float scale, bool bf16) {
        const spct::attn::PrefixAttention a = prefix_args(q, prefix_k, prefix_v, prefix_indptr, prefix_index, own_k,
                                                          own_v, own_index, own_len, out, sizes, scale, bf16);
        std::string error;
        {
          py::gil_scoped_release nogil;
          error = spct::cpu::prefix_attention(a);
        }
        if (!error.empty()) fail(error);
      },
      py::arg("q"), py::arg("prefix_k"), py::arg("prefix_v"), py::arg("prefix_indptr"), py::arg("prefix_index"),
      py::arg("own_k"), py::arg("own_v"), py::arg("own_index"), py::arg("own_len"), py::arg("out"), py::arg("sizes"),
      py::arg("scale"), py::arg("bf16"),
      "Decode attention over a shared prompt KV plus each row's own KV (host addresses; see prefix_attention.h).");
#if defined(SPCT_WITH_CUDA)
  // Device addresses; the Python wrapper has checked the index values too (the kernel trusts them).
  m.def(
      "prefix_attention_cuda",
      [](uintptr_t q, uintptr_t prefix_k, uintptr_t prefix_v, uintptr_t prefix_indptr, uintptr_t prefix_index,
         uintptr_t own_k, uintptr_t own_v, uintptr_t own_index, uintptr_t own_len, uintptr_t out,
         const std::vector<int64_t>& sizes, float scale, bool bf16, uintptr_t stream) {
        const spct::attn::PrefixAttention a = prefix_args(q, prefix_k, prefix_v, prefix_indptr, prefix_index, own_k,
                                                          own_v, own_index, own_len, out, sizes, scale, bf16);
        const int64_t dim = a.head_dim;
        SPCT_CHECK(dim == 32 || dim == 64 || dim == 128 || dim == 256,
                   "head_dim " + std::to_string(dim) + " has no CUDA kernel (built: 32, 64, 128, 256)");
        SPCT_CHECK(a.kv_heads > 0 && a.heads % a.kv_heads == 0,
                   "heads (" + std::to_string(a.heads) + ") must be a multiple of kv_heads (" +
                       std::to_string(a.kv_heads) + ")");
        cuda_check(spct::cuda::prefix_attention(a, dptr<void>(stream)));
      },
      py::arg("q"), py::arg("prefix_k"), py::arg("prefix_v"), py::arg("prefix_indptr"), py::arg("prefix_index"),
      py::arg("own_k"), py::arg("own_v"), py::arg("own_index"), py::arg("own_len"), py::arg("out"), py::arg("sizes"),
      py::arg("scale"), py::arg("bf16"), py::arg("stream"),
      "prefix_attention on device addresses, launched on `stream` (index values already checked).");
#endif
}

}  // namespace spct_bind
