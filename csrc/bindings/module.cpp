// The one pybind11 module of spct, spct._C: each op binds itself in csrc/bindings/<op>.cpp. Host buffers come in
// as numpy arrays (zero-copy views of torch tensors) or Views, device buffers as Views plus the CUDA stream.
// Nothing here links libtorch.
#include <omp.h>

#include "common.h"

namespace spct_bind {

void bind_paged_attention(py::module_& m);  // csrc/bindings/paged_attention.cpp
void bind_layer_ops(py::module_& m);        // csrc/bindings/layer_ops.cpp
void bind_decoder(py::module_& m);          // csrc/bindings/decoder.cpp

void bind_view(py::module_& m) {
  py::class_<View>(m, "View", "A buffer by address: data, dtype, shape, strides (elements), device (-1: host).")
      .def(py::init([](uintptr_t data, std::string dtype, std::vector<int64_t> shape, std::vector<int64_t> strides,
                       int device) {
             return View{data, std::move(dtype), std::move(shape), std::move(strides), device};
           }),
           py::arg("data"), py::arg("dtype"), py::arg("shape"), py::arg("strides"), py::arg("device"))
      .def_readonly("data", &View::data)
      .def_readonly("dtype", &View::dtype)
      .def_readonly("shape", &View::shape)
      .def_readonly("strides", &View::strides)
      .def_readonly("device", &View::device);
}

// Why: libgomp keeps one pool of worker threads per thread that starts parallel regions, and once the pools hold
// more threads than the process has CPUs, every barrier spins about 100 times before it sleeps (GOMP's throttled
// spin count) instead of about 300,000. The engine's step loop runs in its own thread, so a caller that had run any
// parallel torch op (loading the model does) left a second pool behind, and every region of every step then ended
// in a futex sleep and wake (spct/engine/threads.py has the measurement).
void bind_thread_pool(py::module_& m) {
  m.def(
      "release_thread_pool", [] { return omp_pause_resource_all(omp_pause_soft) == 0; },
      "Frees the calling thread's OpenMP worker pool (omp_pause_resource_all); the next parallel region it starts "
      "makes a new one. False where it could not (inside a parallel region).");
}

}  // namespace spct_bind

PYBIND11_MODULE(_C, m) {
  m.doc() = "spct native kernels (C++/OpenMP and CUDA), free of libtorch";
#if defined(SPCT_WITH_CUDA)
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
  spct_bind::bind_view(m);
  spct_bind::bind_thread_pool(m);
  spct_bind::bind_extract_scores(m);
  spct_bind::bind_vote(m);
  spct_bind::bind_sample(m);
  spct_bind::bind_prefix_attention(m);
  spct_bind::bind_paged_attention(m);
  spct_bind::bind_linear(m);
  spct_bind::bind_score_group(m);
  spct_bind::bind_layer_ops(m);
  spct_bind::bind_decoder(m);
}
