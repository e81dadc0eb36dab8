// spct._C bindings of sample and philox (the sampler's uniforms). They only marshal: spct.ops.sample checks the
// arguments (logits' shape, dtype and row layout, every parameter's range and length) and hands over (N,) buffers;
// the kernels report each row's logits status (NaN, +inf, all -inf), which the wrapper raises.
#include "common.h"

#include "spct/philox.h"
#include "spct/sample.h"

namespace spct_bind {
namespace {

// Host: logits (N, V) float32, or bfloat16 as its 16-bit pattern (int16) with bf16 = true, unit stride along V;
// the parameters (N,) arrays. returns (tokens (N,) int64, status (N,) int32).
py::tuple sample_cpu(const py::array& logits, bool bf16, const CArray<float>& temperature,
                     const CArray<int64_t>& top_k, const CArray<float>& top_p, const CArray<float>& min_p,
                     const CArray<int64_t>& seed, const CArray<int64_t>& offset) {
  const int64_t rows = logits.shape(0), vocab = logits.shape(1), row_stride = logits.strides(0) / (bf16 ? 2 : 4);
  const spct::sample::Params params{temperature.data(), top_k.data(), top_p.data(),
                                    min_p.data(),       seed.data(),  offset.data()};
  auto tokens = empty<int64_t>({rows});
  auto status = empty<int32_t>({rows});
  {
    py::gil_scoped_release nogil;
    spct::cpu::sample_rows(logits.data(), bf16, rows, vocab, row_stride, params, tokens.mutable_data(),
                           status.mutable_data());
  }
  return py::make_tuple(tokens, status);
}

py::array_t<float> philox_uniform_cpu(const CArray<int64_t>& seed, const CArray<int64_t>& offset) {
  const int64_t n = seed.shape(0);
  auto out = empty<float>({n});
  {
    py::gil_scoped_release nogil;
    spct::cpu::philox_uniform(seed.data(), offset.data(), n, out.mutable_data());
  }
  return out;
}

py::tuple philox4x32(const py::sequence& counter, const py::sequence& key) {
  SPCT_CHECK(counter.size() == 4 && key.size() == 2, "philox4x32 takes a counter of 4 words and a key of 2");
  uint32_t c[4], k[2], out[4];
  for (int i = 0; i < 4; ++i) c[i] = counter[i].cast<uint32_t>();
  for (int i = 0; i < 2; ++i) k[i] = key[i].cast<uint32_t>();
  spct::philox::philox4x32_10(c, k, out);
  return py::make_tuple(out[0], out[1], out[2], out[3]);
}

#if defined(SPCT_WITH_CUDA)
// Device: logits (N, V) float32 or bfloat16 (its dtype says which), rows strides(0) elements apart; the
// parameters (N,) Views; tokens (N,) int64 and status (N,) int32 written on `stream`.
void sample_cuda(const View& logits, const View& temperature, const View& top_k, const View& top_p,
                 const View& min_p, const View& seed, const View& offset, const View& tokens, const View& status,
                 uintptr_t stream) {
  const spct::sample::Params params{temperature.ptr<const float>(), top_k.ptr<const int64_t>(),
                                    top_p.ptr<const float>(),       min_p.ptr<const float>(),
                                    seed.ptr<const int64_t>(),      offset.ptr<const int64_t>()};
  cuda_check(spct::cuda::launch_sample(logits.ptr<const void>(), logits.dtype == "bfloat16", logits.size(0),
                                       logits.size(1), logits.stride(0), params, tokens.ptr<int64_t>(),
                                       status.ptr<int32_t>(), dptr<void>(stream)));
}

void philox_uniform_cuda(const View& seed, const View& offset, const View& out, uintptr_t stream) {
  cuda_check(spct::cuda::launch_philox_uniform(seed.ptr<const int64_t>(), offset.ptr<const int64_t>(),
                                               seed.size(0), out.ptr<float>(), dptr<void>(stream)));
}
#endif

}  // namespace

void bind_sample(py::module_& m) {
  m.def("sample", &sample_cpu, py::arg("logits"), py::arg("bf16"), py::arg("temperature"), py::arg("top_k"),
        py::arg("top_p"), py::arg("min_p"), py::arg("seed"), py::arg("offset"),
        "Sample one token per row of (N, V) logits; returns (tokens (N,) int64, status (N,) int32).");
  m.def("philox_uniform", &philox_uniform_cpu, py::arg("seed"), py::arg("offset"),
        "The sampler's uniforms (N,) float32 for per-row seed and offset (N,) int64.");
  m.def("philox4x32", &philox4x32, py::arg("counter"), py::arg("key"),
        "Philox4x32-10 of one counter (4 words) and key (2 words).");
  m.def("sample_exp_weight", [](const CArray<float>& z) {
    auto out = empty<float>({z.size()});
    spct::cpu::exp_weights(z.data(), z.size(), out.mutable_data());
    return out;
  }, py::arg("z"), "exp as the sampler computes its weights (flattened), for the bitwise cross-backend tests.");
  m.def("sample_masses", [](const CArray<float>& x, float m, float t, const std::string& build) {
    auto w = empty<float>({x.size()});
    auto q = empty<int64_t>({x.size()});
    int64_t total = 0;
    SPCT_CHECK(spct::cpu::weights_masses_build(build, x.data(), x.size(), m, t, w.mutable_data(), q.mutable_data(),
                                               &total),
               "build " + build + " does not run here (one of 'auto', 'avx512', 'avx2', 'baseline' this CPU has)");
    return py::make_tuple(q, total);
  }, py::arg("x"), py::arg("m"), py::arg("t"), py::arg("build") = "auto",
        "The masses (flattened) and their total of one row with maximum m at temperature t, as the sampler's first "
        "pass computes them (build: 'auto' or a named one), for the bitwise tests.");
#if defined(SPCT_WITH_CUDA)
  m.def("sample_cuda", &sample_cuda, py::arg("logits"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"),
        py::arg("min_p"), py::arg("seed"), py::arg("offset"), py::arg("tokens"), py::arg("status"),
        py::arg("stream"), "sample on device Views, writing tokens and status on `stream`.");
  m.def("philox_uniform_cuda", &philox_uniform_cuda, py::arg("seed"), py::arg("offset"), py::arg("out"),
        py::arg("stream"), "philox_uniform on device Views, writing out (N,) float32 on `stream`.");
#endif
}

}  // namespace spct_bind
