// spct._C bindings of decoder_forward_bf16 (spct/decoder.h): marshalling only. spct.engine.native_decoder checks
// the model's shapes when it makes the Decoder, and the step's tensors before each call.
//   Decoder(layers, final_norm, cos, sin, num_positions, hidden, heads, kv_heads, head_dim, intermediate, eps, kernel)
//       layers: per layer 12 host addresses: the packed qkv, o, gate_up and down weights, each followed by its bias
//       (0: none), then in_norm, post_norm, q_norm and k_norm (both 0: none)
//   decoder_forward_bf16(decoder, layout, x, rows, positions, slots, kv, num_blocks, block_size, out)
#include "common.h"
#include "linear_kernel.h"
#include "paged_attention_layout.h"
#include "spct/decoder.h"
#include "spct/linear.h"

namespace spct_bind {
namespace {

#if defined(SPCT_X86_VARIANTS)
spct::cpu::Decoder make_decoder(const std::vector<std::vector<uintptr_t>>& layers, uintptr_t final_norm,
                                uintptr_t cos, uintptr_t sin, int64_t num_positions, int64_t hidden, int64_t heads,
                                int64_t kv_heads, int64_t head_dim, int64_t intermediate, float eps,
                                const std::string& kernel) {
  spct::cpu::Decoder d;
  d.linear = linear_kernel(kernel);
  const int64_t qkv = (heads + 2 * kv_heads) * head_dim;
  for (const auto& l : layers) {
    SPCT_CHECK(l.size() == 12, "each layer takes 12 addresses (4 weights with their biases, 4 norms)");
    SPCT_CHECK((l[10] == 0) == (l[11] == 0), "a layer has both q_norm and k_norm or neither");
    const auto w = [&](int i, int64_t n, int64_t k) {
      return spct::cpu::PackedLinear{dptr<const uint16_t>(l[i]), dptr<const uint16_t>(l[i + 1]), n, k};
    };
    d.layers.push_back({w(0, qkv, hidden), w(2, hidden, heads * head_dim), w(4, 2 * intermediate, hidden),
                        w(6, hidden, intermediate), dptr<const uint16_t>(l[8]), dptr<const uint16_t>(l[9]),
                        dptr<const uint16_t>(l[10]), dptr<const uint16_t>(l[11])});
  }
  SPCT_CHECK(!d.layers.empty(), "a decoder needs at least one layer");
  SPCT_CHECK(kv_heads > 0 && heads % kv_heads == 0, "heads must be a multiple of kv_heads");
  d.final_norm = dptr<const uint16_t>(final_norm);
  d.cos = dptr<const uint16_t>(cos);
  d.sin = dptr<const uint16_t>(sin);
  d.num_positions = num_positions;
  d.hidden = hidden;
  d.heads = heads;
  d.kv_heads = kv_heads;
  d.head_dim = head_dim;
  d.intermediate = intermediate;
  d.eps = eps;
  return d;
}
#endif

}  // namespace

void bind_decoder(py::module_& m) {
#if defined(SPCT_X86_VARIANTS)
  py::class_<spct::cpu::Decoder>(m, "Decoder", "A decoder's packed weights and norms by address (spct/decoder.h).")
      .def(py::init(&make_decoder), py::arg("layers"), py::arg("final_norm"), py::arg("cos"), py::arg("sin"),
           py::arg("num_positions"), py::arg("hidden"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"),
           py::arg("intermediate"), py::arg("eps"), py::arg("kernel"));
  m.def(
      "decoder_forward_bf16",
      [](const spct::cpu::Decoder& d, const PagedAttentionLayout& layout, uintptr_t x, int64_t rows,
         uintptr_t positions, uintptr_t slots, uintptr_t kv, int64_t num_blocks, int64_t block_size, uintptr_t out) {
        SPCT_CHECK(layout.a.bf16 && layout.a.rows == rows && layout.a.heads == d.heads &&
                       layout.a.kv_heads == d.kv_heads && layout.a.head_dim == d.head_dim &&
                       layout.a.num_blocks == num_blocks && layout.a.block_size == block_size,
                   "the layout must be a bfloat16 paged_attention layout for these rows, heads and cache");
        std::string error;
        {
          py::gil_scoped_release nogil;
          error = spct::cpu::decoder_forward_bf16(d, layout.a, dptr<uint16_t>(x), rows,
                                                  dptr<const int64_t>(positions), dptr<const int64_t>(slots),
                                                  dptr<uint16_t>(kv), num_blocks, block_size, dptr<uint16_t>(out));
        }
        if (!error.empty()) fail(error);
      },
      py::arg("decoder"), py::arg("layout"), py::arg("x"), py::arg("rows"), py::arg("positions"), py::arg("slots"),
      py::arg("kv"), py::arg("num_blocks"), py::arg("block_size"), py::arg("out"),
      "A step's rows through every layer (host addresses; spct/decoder.h).");
#endif
}

}  // namespace spct_bind
