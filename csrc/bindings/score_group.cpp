// spct._C bindings of score_group. They only marshal: python/spct/ops/score_group.py checks n, lo, hi and the
// group's token ids, the table comes from a TokenBytes (checked when built) and the candidates from
// score_group_candidates of that same table.
#include "common.h"

#include <algorithm>
#include <vector>

#include "spct/score_group.h"

namespace spct_bind {
namespace {

py::array_t<int32_t> int32_array(const std::vector<int32_t>& ids) {
  py::array_t<int32_t> out(static_cast<py::ssize_t>(ids.size()));
  std::copy(ids.begin(), ids.end(), out.mutable_data());
  return out;
}

// data (bytes,) uint8 and offsets (vocab + 1,) int64: the byte table.
py::array_t<int32_t> score_group_candidates(const CArray<uint8_t>& data, const CArray<int64_t>& offsets) {
  return int32_array(spct::cpu::score_group_candidates(data.data(), offsets.data(), offsets.shape(0) - 1));
}

// candidates (C,) int32 from score_group_candidates; group (G,) int64 token ids -> (allowed, viable, closed).
py::tuple score_group_allowed(const CArray<uint8_t>& data, const CArray<int64_t>& offsets,
                              const CArray<int32_t>& candidates, const CArray<int64_t>& group, int64_t n, int64_t lo,
                              int64_t hi) {
  spct::cpu::ScoreGroupResult r;
  {
    py::gil_scoped_release nogil;
    r = spct::cpu::score_group_allowed(data.data(), offsets.data(), candidates.data(), candidates.shape(0),
                                       group.data(), group.shape(0), n, lo, hi);
  }
  return py::make_tuple(int32_array(r.allowed), r.viable, r.closed);
}

}  // namespace

void bind_score_group(py::module_& m) {
  m.def("score_group_candidates", &score_group_candidates, py::arg("data"), py::arg("offsets"),
        "Ids of the non-empty tokens made only of digits, ',', ' ' and '}' (spct/score_group.h).");
  m.def("score_group_allowed", &score_group_allowed, py::arg("data"), py::arg("offsets"), py::arg("candidates"),
        py::arg("group"), py::arg("n"), py::arg("lo"), py::arg("hi"),
        "(allowed token ids, viable, closed) for a score group of n integers in [lo, hi] (spct/score_group.h).");
}

}  // namespace spct_bind
