#include "spct/vote_cpu.h"

namespace spct {
namespace cpu {

void vote(const VoteBatch& b, float* rewards, int32_t* num_used, int64_t* best) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < b.items; ++i) {
    const vote::Item it = vote::item_of(b, i);
    num_used[i] = vote::vote_item(it, b.seed, i, rewards + i * b.n, best + i);
  }
}

}  // namespace cpu
}  // namespace spct
