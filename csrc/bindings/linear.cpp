// spct._C bindings of linear: marshalling only. The Python wrapper (spct.ops.linear.Linear) pads and packs the
// weight (N a multiple of 16, K even), passes bfloat16 host tensors of the right shapes, and uses the kernel only
// where a build runs on this CPU; the kernel reads no index values, so it checks nothing.
//
//   weight = LinearBF16Weight(packed=..., bias=..., n=..., k=...)    once per weight matrix
//   linear_bf16(weight, x, rows, y, kernel)                          per call: host addresses of x and y; kernel:
//                                                                    "amx", "avx512bf16" or "avx2", one this CPU runs
#include "common.h"
#include "linear_kernel.h"

#include "spct/linear.h"

namespace spct_bind {

#if defined(SPCT_X86_VARIANTS)
spct::cpu::LinearBF16 linear_kernel(const std::string& name) {
  using namespace spct::cpu;
  if (name == "amx") {
    // the tile registers exist only after the OS granted them (linear_bf16_amx_supported asks, once)
    SPCT_CHECK(linear_bf16_amx_supported(),
               "kernel 'amx' needs a CPU with AMX-BF16 whose OS grants the tile registers");
    return &linear_bf16_amx;
  }
  if (name == "avx512bf16") {
    SPCT_CHECK(linear_bf16_supported(), "kernel 'avx512bf16' needs a CPU with AVX-512 BF16");
    return &linear_bf16;
  }
  if (name == "avx2") {
    SPCT_CHECK(linear_bf16_avx2_supported(), "kernel 'avx2' needs a CPU with AVX2 and FMA");
    return &linear_bf16_avx2;
  }
  fail("kernel " + name + " is not one of 'amx', 'avx512bf16', 'avx2'");
}
#endif

namespace {

// A packed weight (N / 16, K / 2, 16, 2) and its bias (N,) or none, by address (spct/linear.h).
struct LinearBF16Weight {
  const uint16_t* packed = nullptr;
  const uint16_t* bias = nullptr;
  int64_t n = 0, k = 0;
};

}  // namespace

void bind_linear(py::module_& m) {
#if defined(SPCT_X86_VARIANTS)
  m.def("linear_bf16_supported", &spct::cpu::linear_bf16_supported, "True when the CPU has AVX-512 BF16.");
  m.def("linear_bf16_avx2_supported", &spct::cpu::linear_bf16_avx2_supported, "True when the CPU has AVX2 and FMA.");
  py::class_<LinearBF16Weight>(m, "LinearBF16Weight", "A packed bfloat16 weight and its bias, by address.")
      .def(py::init([](uintptr_t packed, uintptr_t bias, int64_t n, int64_t k) {
             return LinearBF16Weight{dptr<const uint16_t>(packed), dptr<const uint16_t>(bias), n, k};
           }),
           py::arg("packed"), py::arg("bias"), py::arg("n"), py::arg("k"));
  m.def("linear_bf16_amx_supported", &spct::cpu::linear_bf16_amx_supported,
        "True when the CPU has AMX-BF16 and the OS granted this process the tile registers.");
  m.def(
      "linear_bf16",
      [](const LinearBF16Weight& w, uintptr_t x, int64_t rows, uintptr_t y, const std::string& kernel) {
        const spct::cpu::LinearBF16 run = linear_kernel(kernel);
        py::gil_scoped_release nogil;
        run(dptr<const uint16_t>(x), rows, w.k, w.packed, w.n, w.bias, dptr<uint16_t>(y));
      },
      py::arg("weight"), py::arg("x"), py::arg("rows"), py::arg("y"), py::arg("kernel"),
      "y (rows, N) = x (rows, K) W^T (+ bias) in bfloat16 (host addresses; spct/linear.h).");
#else
  m.def("linear_bf16_supported", []() { return false; }, "True when the CPU has AVX-512 BF16.");
  m.def("linear_bf16_amx_supported", []() { return false; }, "True when the CPU has AMX-BF16.");
  m.def("linear_bf16_avx2_supported", []() { return false; }, "True when the CPU has AVX2 and FMA.");
#endif
}

}  // namespace spct_bind
