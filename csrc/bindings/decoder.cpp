// spct._C bindings of decoder_forward_bf16 (spct/decoder.h): marshalling only. spct.engine.native_decoder checks
// the model's shapes when it makes the Decoder, and the step's tensors before each call.
//   Decoder(layers, layouts, final_norm, num_positions, hidden, heads, kv_heads, head_dim, intermediate, eps,
//           gelu_tanh, kernel)
//       layers: per layer 16 host addresses: the packed qkv, o, gate_up and down weights, each followed by its bias
//       (0: none), then in_norm, post_norm, q_norm and k_norm (both 0: none), attn_out_norm and mlp_out_norm (0:
//       none), cos and sin; layouts: per layer, the index of its paged_attention layout in a step's list
//   decoder_forward_bf16(decoder, layouts, x, rows, positions, slots, kv, num_blocks, block_size, out)
#include <algorithm>

#include "common.h"
#include "linear_kernel.h"
#include "paged_attention_layout.h"
#include "spct/decoder.h"
#include "spct/linear.h"

namespace spct_bind {
namespace {

#if defined(SPCT_X86_VARIANTS)
spct::cpu::Decoder make_decoder(const std::vector<std::vector<uintptr_t>>& layers, const std::vector<int64_t>& layouts,
                                uintptr_t final_norm, int64_t num_positions, int64_t hidden, int64_t heads,
                                int64_t kv_heads, int64_t head_dim, int64_t intermediate, float eps, bool gelu_tanh,
                                const std::string& kernel) {
  spct::cpu::Decoder d;
  d.linear = linear_kernel(kernel);
  SPCT_CHECK(layouts.size() == layers.size(), "one layout index per layer");
  const int64_t qkv = (heads + 2 * kv_heads) * head_dim;
  const auto at = [](uintptr_t a) { return dptr<const uint16_t>(a); };
  d.num_layouts = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    SPCT_CHECK(l.size() == 16, "each layer takes 16 addresses (4 weights with their biases, 6 norms, cos, sin)");
    SPCT_CHECK((l[10] == 0) == (l[11] == 0), "a layer has both q_norm and k_norm or neither");
    SPCT_CHECK(l[14] != 0 && l[15] != 0, "every layer needs its RoPE tables");
    SPCT_CHECK(layouts[i] >= 0, "a layout index must be >= 0");
    const auto w = [&](int j, int64_t n, int64_t k) { return spct::cpu::PackedLinear{at(l[j]), at(l[j + 1]), n, k}; };
    d.layers.push_back({w(0, qkv, hidden), w(2, hidden, heads * head_dim), w(4, 2 * intermediate, hidden),
                        w(6, hidden, intermediate), at(l[8]), at(l[9]), at(l[10]), at(l[11]), at(l[12]), at(l[13]),
                        at(l[14]), at(l[15]), layouts[i]});
    d.num_layouts = std::max(d.num_layouts, layouts[i] + 1);
  }
  SPCT_CHECK(!d.layers.empty(), "a decoder needs at least one layer");
  SPCT_CHECK(kv_heads > 0 && heads % kv_heads == 0, "heads must be a multiple of kv_heads");
  d.final_norm = at(final_norm);
  d.gelu_tanh = gelu_tanh;
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
      .def(py::init(&make_decoder), py::arg("layers"), py::arg("layouts"), py::arg("final_norm"),
           py::arg("num_positions"), py::arg("hidden"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"),
           py::arg("intermediate"), py::arg("eps"), py::arg("gelu_tanh"), py::arg("kernel"));
  m.def(
      "decoder_forward_bf16",
      [](const spct::cpu::Decoder& d, const std::vector<const PagedAttentionLayout*>& layouts, uintptr_t x,
         int64_t rows, uintptr_t positions, uintptr_t slots, uintptr_t kv, int64_t num_blocks, int64_t block_size,
         uintptr_t out) {
        SPCT_CHECK(int64_t(layouts.size()) == d.num_layouts,
                   "the decoder takes " + std::to_string(d.num_layouts) + " layouts, got " +
                       std::to_string(layouts.size()));
        std::vector<spct::attn::PagedAttention> a;
        for (const PagedAttentionLayout* layout : layouts) {
          SPCT_CHECK(layout != nullptr && layout->a.bf16 && layout->a.rows == rows && layout->a.heads == d.heads &&
                         layout->a.kv_heads == d.kv_heads && layout->a.head_dim == d.head_dim &&
                         layout->a.num_blocks == num_blocks && layout->a.block_size == block_size,
                     "each layout must be a bfloat16 paged_attention layout for these rows, heads and cache");
          a.push_back(layout->a);
        }
        std::string error;
        {
          py::gil_scoped_release nogil;
          error = spct::cpu::decoder_forward_bf16(d, a.data(), dptr<uint16_t>(x), rows,
                                                  dptr<const int64_t>(positions), dptr<const int64_t>(slots),
                                                  dptr<uint16_t>(kv), num_blocks, block_size, dptr<uint16_t>(out));
        }
        if (!error.empty()) fail(error);
      },
      py::arg("decoder"), py::arg("layouts"), py::arg("x"), py::arg("rows"), py::arg("positions"), py::arg("slots"),
      py::arg("kv"), py::arg("num_blocks"), py::arg("block_size"), py::arg("out"),
      "A step's rows through every layer (host addresses; spct/decoder.h).");
#endif
}

}  // namespace spct_bind
