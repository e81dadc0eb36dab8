// spct._C bindings of layer_ops: marshalling only, host addresses of bfloat16 tensors (spct/layer_ops.h). The Python
// wrapper (spct.ops.layer_ops) checks shapes, dtypes and contiguity; rope_qkv_bf16 checks its index values.
#include "common.h"

#include "spct/layer_ops.h"

namespace spct_bind {

void bind_layer_ops(py::module_& m) {
  m.def(
      "add_rms_norm_bf16",
      [](uintptr_t x, uintptr_t delta, uintptr_t weight, float eps, int64_t rows, int64_t h, uintptr_t out) {
        py::gil_scoped_release nogil;
        spct::cpu::add_rms_norm_bf16(dptr<uint16_t>(x), dptr<const uint16_t>(delta), dptr<const uint16_t>(weight),
                                     eps, rows, h, dptr<uint16_t>(out));
      },
      py::arg("x"), py::arg("delta"), py::arg("weight"), py::arg("eps"), py::arg("rows"), py::arg("h"),
      py::arg("out"), "x += delta (if delta), out = weight * x / rms(x) (bfloat16, host addresses).");
  m.def(
      "rope_qkv_bf16",
      [](uintptr_t qkv, int64_t rows, int64_t hq, int64_t hkv, int64_t d, uintptr_t cos, uintptr_t sin,
         int64_t num_positions, uintptr_t positions, int64_t num_slots, uintptr_t slots, uintptr_t q_out,
         uintptr_t k_cache, uintptr_t v_cache) {
        py::gil_scoped_release nogil;
        return spct::cpu::rope_qkv_bf16(dptr<const uint16_t>(qkv), rows, hq, hkv, d, dptr<const uint16_t>(cos),
                                        dptr<const uint16_t>(sin), num_positions, dptr<const int64_t>(positions),
                                        num_slots, dptr<const int64_t>(slots), dptr<uint16_t>(q_out),
                                        dptr<uint16_t>(k_cache), dptr<uint16_t>(v_cache));
      },
      py::arg("qkv"), py::arg("rows"), py::arg("hq"), py::arg("hkv"), py::arg("d"), py::arg("cos"), py::arg("sin"),
      py::arg("num_positions"), py::arg("positions"), py::arg("num_slots"), py::arg("slots"), py::arg("q_out"),
      py::arg("k_cache"), py::arg("v_cache"),
      "RoPE on q and k, q out, k and v to their cache slots (bfloat16, host addresses); -1, or the first row "
      "whose position or slot is out of range (nothing written).");
  m.def(
      "silu_mul_bf16",
      [](uintptr_t gate_up, int64_t rows, int64_t n, uintptr_t out) {
        py::gil_scoped_release nogil;
        spct::cpu::silu_mul_bf16(dptr<const uint16_t>(gate_up), rows, n, dptr<uint16_t>(out));
      },
      py::arg("gate_up"), py::arg("rows"), py::arg("n"), py::arg("out"),
      "out = silu(gate) * up, gate_up = [gate | up] per row (bfloat16, host addresses).");
  m.def(
      "gelu_tanh_mul_bf16",
      [](uintptr_t gate_up, int64_t rows, int64_t n, uintptr_t out) {
        py::gil_scoped_release nogil;
        spct::cpu::gelu_tanh_mul_bf16(dptr<const uint16_t>(gate_up), rows, n, dptr<uint16_t>(out));
      },
      py::arg("gate_up"), py::arg("rows"), py::arg("n"), py::arg("out"),
      "out = gelu_tanh(gate) * up, gate_up = [gate | up] per row (bfloat16, host addresses).");
}

}  // namespace spct_bind
