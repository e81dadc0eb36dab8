// spct._C bindings of vote.
#include "common.h"

#include <optional>

#include "spct/vote_cpu.h"

namespace spct_bind {
namespace {

py::tuple vote_cpu(const CArray<float>& scores, const CArray<bool>& valid, const std::optional<CArray<int64_t>>& perm,
                   const std::optional<CArray<float>>& meta, int64_t k_meta,
                   const std::optional<CArray<int64_t>>& num_responses, uint64_t seed) {
  SPCT_CHECK(scores.ndim() == 3, "scores must be (B, k, n)");
  const int64_t items = scores.shape(0), k = scores.shape(1), n = scores.shape(2);
  SPCT_CHECK(valid.ndim() == 2 && valid.shape(0) == items && valid.shape(1) == k, "valid must be (B, k)");
  SPCT_CHECK(!meta || (meta->ndim() == 2 && meta->shape(0) == items && meta->shape(1) == k),
             "meta_scores must be (B, k)");
  SPCT_CHECK(!num_responses || (num_responses->ndim() == 1 && num_responses->shape(0) == items),
             "num_responses must be (B,)");
  const int64_t* nr = num_responses ? num_responses->data() : nullptr;
  for (int64_t i = 0; nr != nullptr && i < items; ++i) {
    SPCT_CHECK(nr[i] >= 1 && nr[i] <= n, "num_responses[" + std::to_string(i) + "] = " + std::to_string(nr[i]) +
                                             " is outside [1, n = " + std::to_string(n) + "]");
  }
  SPCT_CHECK(!perm || (perm->ndim() == 3 && perm->shape(0) == items && perm->shape(1) == k && perm->shape(2) == n),
             "perm must be (B, k, n)");
  spct::VoteBatch batch{scores.data(), reinterpret_cast<const uint8_t*>(valid.data()),
                        perm ? perm->data() : nullptr, meta ? meta->data() : nullptr, nr, items, k, n, k_meta, seed};
  auto rewards = empty<float>({items, n});
  auto used = empty<int32_t>({items});
  auto best = empty<int64_t>({items});
  std::string error;
  {
    py::gil_scoped_release nogil;
    error = spct::cpu::vote(batch, rewards.mutable_data(), used.mutable_data(), best.mutable_data());
  }
  if (!error.empty()) fail(error);
  return py::make_tuple(rewards, used, best);
}

}  // namespace

void bind_vote(py::module_& m) {
  m.def("vote", &vote_cpu, py::arg("scores"), py::arg("valid"), py::arg("perm"), py::arg("meta_scores"),
        py::arg("k_meta"), py::arg("num_responses"), py::arg("seed"),
        "Voting over k samples per item: (rewards (B, n), num_used (B,), best (B,)). k_meta <= 0: all valid.");
#if defined(SPCT_WITH_CUDA)
  m.def("vote_cuda", [](uintptr_t scores, uintptr_t valid, uintptr_t perm, uintptr_t meta, uintptr_t num_responses,
                        int64_t items, int64_t k, int64_t n, int64_t k_meta, uint64_t seed, uintptr_t rewards,
                        uintptr_t used, uintptr_t best, uintptr_t stream) {
    spct::VoteBatch batch{dptr<const float>(scores), dptr<const uint8_t>(valid), dptr<const int64_t>(perm),
                          dptr<const float>(meta), dptr<const int64_t>(num_responses), items, k, n, k_meta, seed};
    cuda_check(spct::cuda::vote(batch, dptr<float>(rewards), dptr<int32_t>(used), dptr<int64_t>(best),
                                dptr<void>(stream)));
  });
#endif
}

}  // namespace spct_bind
