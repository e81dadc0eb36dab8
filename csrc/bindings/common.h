// Shared by the per-op binding files (csrc/bindings/<op>.cpp): numpy views of host buffers, the error helper,
// device pointers and the View of a device buffer. Bindings only marshal: the Python op wrappers check the
// arguments, and the kernels check the data values they read (each op's module docstring says which).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

namespace spct_bind {

namespace py = pybind11;

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

[[noreturn]] inline void fail(const std::string& msg) { throw py::value_error(msg); }

// Builds the message only on failure.
#define SPCT_CHECK(cond, msg) \
  do {                        \
    if (!(cond)) ::spct_bind::fail(msg);   \
  } while (0)

template <typename T>
py::array_t<T> empty(std::initializer_list<py::ssize_t> shape) {
  return py::array_t<T>(std::vector<py::ssize_t>(shape));
}

template <typename T>
T* dptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// A buffer handed over by address (a CUDA tensor, or a host tensor on a hot path), built in Python by
// spct.ops._views.view(tensor): its address, dtype name (torch's, e.g. "float32"), shape and strides in
// elements, and device index (-1: host).
struct View {
  uintptr_t data = 0;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  int device = -1;

  template <typename T>
  T* ptr() const {
    return reinterpret_cast<T*>(data);
  }
  int64_t size(int d) const { return shape.at(static_cast<size_t>(d)); }
  int64_t stride(int d) const { return strides.at(static_cast<size_t>(d)); }
};

inline void cuda_check(const std::string& err) {
  if (!err.empty()) throw std::runtime_error("spct CUDA kernel failed: " + err);
}

void bind_view(py::module_& m);
void bind_extract_scores(py::module_& m);
void bind_vote(py::module_& m);
void bind_sample(py::module_& m);
void bind_prefix_attention(py::module_& m);
void bind_linear(py::module_& m);
void bind_score_group(py::module_& m);

}  // namespace spct_bind
