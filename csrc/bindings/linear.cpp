// spct._C bindings of linear.
#include "common.h"

#include "spct/linear.h"

namespace spct_bind {
void bind_linear(py::module_& m) {
#if defined(SPCT_X86_VARIANTS)
  m.def("gemm_bf16_supported", &spct::cpu::gemm_bf16_supported, "True when the CPU has AVX-512 BF16.");
  m.def(
      "gemm_bf16",
      [](uintptr_t x, int64_t rows, int64_t k, uintptr_t packed, int64_t n, uintptr_t bias, uintptr_t y) {
        SPCT_CHECK(spct::cpu::gemm_bf16_supported(), "gemm_bf16 needs AVX-512 BF16");
        SPCT_CHECK(n % 16 == 0 && k % 2 == 0 && rows >= 0, "gemm_bf16 needs N % 16 == 0 and an even K");
        const auto p = [](uintptr_t a) { return reinterpret_cast<const uint16_t*>(a); };
        py::gil_scoped_release nogil;
        spct::cpu::gemm_bf16(p(x), rows, k, p(packed), n, p(bias), reinterpret_cast<uint16_t*>(y));
      },
      py::arg("x"), py::arg("rows"), py::arg("k"), py::arg("packed"), py::arg("n"), py::arg("bias"), py::arg("y"),
      "y (M, N) = x (M, K) W^T (+ bias) in bfloat16 with W packed (spct/linear.h); host addresses.");
#else
  m.def("gemm_bf16_supported", []() { return false; }, "True when the CPU has AVX-512 BF16.");
#endif
}

}  // namespace spct_bind
