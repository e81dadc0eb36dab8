// spct._C bindings of sample.
#include "common.h"

#include "spct/philox.h"
#include "spct/sample.h"

namespace spct_bind {
namespace {

spct::sample::Params sample_params(int64_t rows, const CArray<float>& temperature, const CArray<int64_t>& top_k,
                                   const CArray<float>& top_p, const CArray<float>& min_p,
                                   const CArray<int64_t>& seed, const CArray<int64_t>& offset) {
  auto check = [rows](const py::array& a, const char* name) {
    SPCT_CHECK(a.ndim() == 1 && a.shape(0) == rows,
               std::string(name) + " must have shape (N,) with N = " + std::to_string(rows));
  };
  check(temperature, "temperature");
  check(top_k, "top_k");
  check(top_p, "top_p");
  check(min_p, "min_p");
  check(seed, "seed");
  check(offset, "offset");
  return {temperature.data(), top_k.data(), top_p.data(), min_p.data(), seed.data(), offset.data()};
}

// logits: (N, V) float32, or bfloat16 as its 16-bit pattern (int16/uint16) with bf16 = true; unit stride along
// V. returns (tokens (N,) int64, status (N,) int32).
py::tuple sample_cpu(const py::array& logits, bool bf16, const CArray<float>& temperature,
                     const CArray<int64_t>& top_k, const CArray<float>& top_p, const CArray<float>& min_p,
                     const CArray<int64_t>& seed, const CArray<int64_t>& offset) {
  const py::ssize_t item = bf16 ? 2 : 4;
  const bool dtype_ok = bf16 ? (logits.dtype().is(py::dtype::of<int16_t>()) ||
                                logits.dtype().is(py::dtype::of<uint16_t>()))
                             : logits.dtype().is(py::dtype::of<float>());
  SPCT_CHECK(dtype_ok, bf16 ? "bfloat16 logits must come as int16/uint16 bits" : "logits must be float32");
  SPCT_CHECK(logits.ndim() == 2, "logits must be 2-D (N, V)");
  const int64_t rows = logits.shape(0), vocab = logits.shape(1);
  SPCT_CHECK(rows == 0 || vocab <= 1 || logits.strides(1) == item, "logits rows must be contiguous");
  SPCT_CHECK(logits.strides(0) % item == 0 && logits.strides(0) >= 0, "logits row stride must be non-negative");
  SPCT_CHECK(vocab < (int64_t(1) << 31), "the vocabulary must have fewer than 2^31 tokens");
  const spct::sample::Params params = sample_params(rows, temperature, top_k, top_p, min_p, seed, offset);
  auto tokens = empty<int64_t>({rows});
  auto status = empty<int32_t>({rows});
  {
    py::gil_scoped_release nogil;
    spct::cpu::sample_rows(logits.data(), bf16, rows, vocab, logits.strides(0) / item, params,
                           tokens.mutable_data(), status.mutable_data());
  }
  return py::make_tuple(tokens, status);
}

py::array_t<float> philox_uniform_cpu(const CArray<int64_t>& seed, const CArray<int64_t>& offset) {
  SPCT_CHECK(seed.ndim() == 1 && offset.ndim() == 1 && seed.shape(0) == offset.shape(0),
             "seed and offset must be 1-D of one length");
  const int64_t n = seed.shape(0);
  auto out = empty<float>({n});
  {
    py::gil_scoped_release nogil;
    spct::cpu::philox_uniform(seed.data(), offset.data(), n, out.mutable_data());
  }
  return out;
}

}  // namespace

void bind_sample(py::module_& m) {
  m.def("sample", &sample_cpu, py::arg("logits"), py::arg("bf16"), py::arg("temperature"), py::arg("top_k"),
        py::arg("top_p"), py::arg("min_p"), py::arg("seed"), py::arg("offset"),
        "Sample one token per row of (N, V) logits; returns (tokens (N,) int64, status (N,) int32).");
  m.def("philox_uniform", &philox_uniform_cpu, py::arg("seed"), py::arg("offset"),
        "The sampler's uniforms (N,) float32 for per-row seed and offset (N,) int64.");
  m.def("philox4x32", [](const py::sequence& counter, const py::sequence& key) {
    SPCT_CHECK(counter.size() == 4 && key.size() == 2, "philox4x32 takes a counter of 4 words and a key of 2");
    uint32_t c[4], k[2], out[4];
    for (int i = 0; i < 4; ++i) c[i] = counter[i].cast<uint32_t>();
    for (int i = 0; i < 2; ++i) k[i] = key[i].cast<uint32_t>();
    spct::philox::philox4x32_10(c, k, out);
    return py::make_tuple(out[0], out[1], out[2], out[3]);
  }, py::arg("counter"), py::arg("key"), "Philox4x32-10 of one counter (4 words) and key (2 words).");
  m.def("sample_exp_weight", [](const CArray<float>& z) {
    auto out = empty<float>({z.size()});
    spct::cpu::exp_weights(z.data(), z.size(), out.mutable_data());
    return out;
  }, py::arg("z"), "exp as the sampler computes its weights (flattened), for the bitwise cross-backend tests.");
#if defined(SPCT_WITH_CUDA)
  m.def("sample_cuda", [](uintptr_t logits, bool bf16, int64_t rows, int64_t vocab, int64_t row_stride,
                          const py::tuple& params, uintptr_t tokens, uintptr_t status, uintptr_t stream) {
    SPCT_CHECK(params.size() == 6, "params: (temperature, top_k, top_p, min_p, seed, offset) device pointers");
    const spct::sample::Params p{dptr<const float>(params[0].cast<uintptr_t>()),
                                 dptr<const int64_t>(params[1].cast<uintptr_t>()),
                                 dptr<const float>(params[2].cast<uintptr_t>()),
                                 dptr<const float>(params[3].cast<uintptr_t>()),
                                 dptr<const int64_t>(params[4].cast<uintptr_t>()),
                                 dptr<const int64_t>(params[5].cast<uintptr_t>())};
    cuda_check(spct::cuda::launch_sample(dptr<const void>(logits), bf16, rows, vocab, row_stride, p,
                                         dptr<int64_t>(tokens), dptr<int32_t>(status), dptr<void>(stream)));
  });
  m.def("philox_uniform_cuda", [](uintptr_t seed, uintptr_t offset, int64_t n, uintptr_t out, uintptr_t stream) {
    cuda_check(spct::cuda::launch_philox_uniform(dptr<const int64_t>(seed), dptr<const int64_t>(offset), n,
                                                 dptr<float>(out), dptr<void>(stream)));
  });
#endif
}

}  // namespace spct_bind
