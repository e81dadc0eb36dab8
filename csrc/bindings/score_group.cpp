// spct._C bindings of score_group.
#include "common.h"

#include <algorithm>

#include "spct/score_group.h"

namespace spct_bind {
namespace {


void check_table(const CArray<uint8_t>& data, const CArray<int64_t>& offsets) {
  SPCT_CHECK(offsets.ndim() == 1 && offsets.shape(0) >= 1, "offsets must be 1-D with vocab + 1 entries");
  SPCT_CHECK(data.ndim() == 1, "data must be 1-D");
  const int64_t* off = offsets.data();
  SPCT_CHECK(off[0] == 0 && off[offsets.shape(0) - 1] == data.shape(0), "offsets must start at 0 and end at len(data)");
}

// Token t's bytes lie inside data (checked per token used, so a call costs what it reads).
void check_token(const CArray<int64_t>& offsets, int64_t t, const char* what) {
  const int64_t vocab = offsets.shape(0) - 1;
  SPCT_CHECK(0 <= t && t < vocab, std::string(what) + " token id " + std::to_string(t) + " outside [0, " +
                                      std::to_string(vocab) + ")");
  const int64_t* off = offsets.data();
  SPCT_CHECK(0 <= off[t] && off[t] <= off[t + 1] && off[t + 1] <= off[vocab],
             "offsets of token " + std::to_string(t) + " are out of order");
}

}  // namespace

void bind_score_group(py::module_& m) {
  m.def(
      "score_group_candidates",
      [](const CArray<uint8_t>& data, const CArray<int64_t>& offsets) {
        check_table(data, offsets);
        const int64_t vocab = offsets.shape(0) - 1;
        for (int64_t t = 0; t < vocab; ++t) check_token(offsets, t, "table");
        std::vector<int32_t> ids = spct::cpu::score_group_candidates(data.data(), offsets.data(), vocab);
        py::array_t<int32_t> out(static_cast<py::ssize_t>(ids.size()));
        std::copy(ids.begin(), ids.end(), out.mutable_data());
        return out;
      },
      py::arg("data"), py::arg("offsets"),
      "Ids of the non-empty tokens made only of digits, ',', ' ' and '}' (spct/score_group.h).");
  m.def(
      "score_group_allowed",
      [](const CArray<uint8_t>& data, const CArray<int64_t>& offsets, const CArray<int32_t>& candidates,
         const CArray<int64_t>& group, int64_t n, int64_t lo, int64_t hi) {
        check_table(data, offsets);
        SPCT_CHECK(candidates.ndim() == 1 && group.ndim() == 1, "candidates and group must be 1-D");
        SPCT_CHECK(n >= 1, "n must be >= 1, got " + std::to_string(n));
        SPCT_CHECK(0 <= lo && lo <= hi && hi < 1000000000000000000LL,
                   "need 0 <= lo <= hi < 10**18, got lo = " + std::to_string(lo) + ", hi = " + std::to_string(hi));
        for (int64_t i = 0; i < group.shape(0); ++i) check_token(offsets, group.data()[i], "group");
        for (int64_t i = 0; i < candidates.shape(0); ++i) check_token(offsets, candidates.data()[i], "candidate");
        spct::cpu::ScoreGroupResult r;
        {
          py::gil_scoped_release nogil;
          r = spct::cpu::score_group_allowed(data.data(), offsets.data(), candidates.data(), candidates.shape(0),
                                             group.data(), group.shape(0), n, lo, hi);
        }
        py::array_t<int32_t> allowed(static_cast<py::ssize_t>(r.allowed.size()));
        std::copy(r.allowed.begin(), r.allowed.end(), allowed.mutable_data());
        return py::make_tuple(allowed, r.viable, r.closed);
      },
      py::arg("data"), py::arg("offsets"), py::arg("candidates"), py::arg("group"), py::arg("n"), py::arg("lo"),
      py::arg("hi"),
      "(allowed token ids, viable, closed) for a score group of n integers in [lo, hi] (spct/score_group.h).");
}

}  // namespace spct_bind
