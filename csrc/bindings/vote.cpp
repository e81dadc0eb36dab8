// spct._C bindings of vote. They only marshal: spct.ops.vote checks the arguments (shapes, dtypes, ranges) and
// hands over contiguous buffers; the CPU kernel checks the values it reads (spct/vote_cpu.h).
#include "common.h"

#include <optional>

#include "spct/vote_cpu.h"

namespace spct_bind {
namespace {

template <typename T>
const T* data_or_null(const std::optional<CArray<T>>& a) {
  return a ? a->data() : nullptr;
}

template <typename T>
const T* ptr_or_null(const std::optional<View>& v) {
  return v ? v->ptr<const T>() : nullptr;
}

// Host buffers: scores (B, k, n) float32, valid (B, k) bool, perm (B, k, n) int64, meta_scores (B, k) float32,
// num_responses and indices (B,) int64. returns (rewards (B, n) float32, num_used (B,) int32, best (B,) int64).
py::tuple vote_cpu(const CArray<float>& scores, const CArray<bool>& valid, const std::optional<CArray<int64_t>>& perm,
                   const std::optional<CArray<float>>& meta_scores,
                   const std::optional<CArray<int64_t>>& num_responses, const std::optional<CArray<int64_t>>& indices,
                   int64_t k_meta, uint64_t seed) {
  const int64_t items = scores.shape(0), k = scores.shape(1), n = scores.shape(2);
  const spct::VoteBatch batch{scores.data(), reinterpret_cast<const uint8_t*>(valid.data()), data_or_null(perm),
                              data_or_null(meta_scores), data_or_null(num_responses), data_or_null(indices),
                              items, k, n, k_meta, seed};
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

#if defined(SPCT_WITH_CUDA)
// The same buffers as Views of device tensors, and the outputs to write.
void vote_cuda(const View& scores, const View& valid, const std::optional<View>& perm,
               const std::optional<View>& meta_scores, const std::optional<View>& num_responses,
               const std::optional<View>& indices, int64_t k_meta, uint64_t seed, const View& rewards,
               const View& num_used, const View& best, uintptr_t stream) {
  const spct::VoteBatch batch{scores.ptr<const float>(), valid.ptr<const uint8_t>(), ptr_or_null<int64_t>(perm),
                              ptr_or_null<float>(meta_scores), ptr_or_null<int64_t>(num_responses),
                              ptr_or_null<int64_t>(indices), scores.size(0), scores.size(1), scores.size(2),
                              k_meta, seed};
  cuda_check(spct::cuda::vote(batch, rewards.ptr<float>(), num_used.ptr<int32_t>(), best.ptr<int64_t>(),
                              dptr<void>(stream)));
}
#endif

}  // namespace

void bind_vote(py::module_& m) {
  m.def("vote", &vote_cpu, py::arg("scores"), py::arg("valid"), py::arg("perm"), py::arg("meta_scores"),
        py::arg("num_responses"), py::arg("indices"), py::arg("k_meta"), py::arg("seed"),
        "Voting over k samples per item: (rewards (B, n), num_used (B,), best (B,)). k_meta <= 0: all valid.");
#if defined(SPCT_WITH_CUDA)
  m.def("vote_cuda", &vote_cuda, py::arg("scores"), py::arg("valid"), py::arg("perm"), py::arg("meta_scores"),
        py::arg("num_responses"), py::arg("indices"), py::arg("k_meta"), py::arg("seed"), py::arg("rewards"),
        py::arg("num_used"), py::arg("best"), py::arg("stream"),
        "vote on device Views, writing rewards, num_used and best on `stream`.");
#endif
}

}  // namespace spct_bind
