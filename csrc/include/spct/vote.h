// Framework-free voting over k sampled GRM judgements of one item (docs/method.md section 3), shared by the C++
// and CUDA kernels. Exactness rules (mirrored by python/spct/ops/ref/vote.py):
//   - used samples: the valid ones; with meta scores, the k_meta valid samples ranked first by (meta desc,
//     sample index asc);
//   - rewards: float32 sums, accumulated in ascending sample order, of each original response's scores;
//   - best: the argmax of the rewards; exact ties broken by a Philox4x32-10 draw keyed by (seed, item number):
//     the item's number (indices[i], default i), never its position in the batch.
#pragma once

#include <cstdint>

#include "spct/common.h"
#include "spct/philox.h"

namespace spct {
namespace vote {

struct Item {
  const float* scores;     // (k, n) position order
  const uint8_t* valid;    // (k,)
  const int64_t* perm;     // (k, n) original index of each position, or null (identity)
  const float* meta;       // (k,) or null
  int64_t k, n, n_item;    // samples, padded responses, this item's responses (<= n)
  int64_t k_meta;          // <= 0: all valid samples
};

struct VoteBatch {
  const float* scores;           // (B, k, n)
  const uint8_t* valid;          // (B, k)
  const int64_t* perm;           // (B, k, n) or null
  const float* meta;             // (B, k) or null
  const int64_t* num_responses;  // (B,) or null (all n)
  const int64_t* indices;        // (B,) each item's number (>= 0) keying its tie-break, or null (item i is i)
  int64_t items, k, n, k_meta;   // k_meta <= 0: all valid samples
  uint64_t seed;
};

// The number of item i of the batch: the counter of its tie-break draw.
SPCT_HD uint64_t item_number(const VoteBatch& b, int64_t i) {
  return uint64_t(b.indices == nullptr ? i : b.indices[i]);
}

SPCT_HD Item item_of(const VoteBatch& b, int64_t i) {
  return Item{b.scores + i * b.k * b.n,
              b.valid + i * b.k,
              b.perm == nullptr ? nullptr : b.perm + i * b.k * b.n,
              b.meta == nullptr ? nullptr : b.meta + i * b.k,
              b.k,
              b.n,
              b.num_responses == nullptr ? b.n : b.num_responses[i],
              b.k_meta};
}

// Is valid sample j among the k_meta best by (meta desc, index asc)? Rank = valid samples ordered before j.
SPCT_HD bool ranks_in(const Item& it, int64_t j) {
  if (it.meta == nullptr || it.k_meta <= 0) return true;
  int64_t before = 0;
  const float m = it.meta[j];
  for (int64_t i = 0; i < it.k && before < it.k_meta; ++i) {
    if (it.valid[i] && (it.meta[i] > m || (it.meta[i] == m && i < j))) ++before;
  }
  return before < it.k_meta;
}

// After the sums: NaN for padding (and everywhere when no sample is used); best = argmax with exact ties broken
// by Philox(seed, item number), -1 when no sample is used.
SPCT_HD void finish_item(const Item& it, int32_t used, uint64_t seed, uint64_t number, float* rewards,
                         int64_t* best) {
  const float nan = float(quiet_nan());
  for (int64_t i = 0; i < it.n; ++i) {
    if (used == 0 || i >= it.n_item) rewards[i] = nan;
  }
  *best = -1;
  if (used == 0) return;
  float top = rewards[0];
  int64_t ties = 0;
  for (int64_t i = 0; i < it.n_item; ++i) {
    if (rewards[i] > top) top = rewards[i], ties = 0;
    if (rewards[i] == top) ++ties;
  }
  // The pick among ties: floor(u * ties) with u = bits / 2^24, in exact integer arithmetic.
  // A lone maximum needs no draw (floor(u * 1) = 0): skipping it is the same result, without ten Philox rounds.
  int64_t pick =
      ties == 1 ? 0 : int64_t((uint64_t(philox::uniform_bits(seed, number)) * uint64_t(ties)) >> 24);
  for (int64_t i = 0; i < it.n_item; ++i) {
    if (rewards[i] == top && pick-- == 0) {
      *best = i;
      break;
    }
  }
}

// The whole vote of one item, selecting the used samples by rank (O(k^2): the device's way; the host sorts).
// Writes rewards (n,) and *best; returns the number of used samples.
SPCT_HD int32_t vote_item(const Item& it, uint64_t seed, uint64_t number, float* rewards, int64_t* best) {
  for (int64_t i = 0; i < it.n; ++i) rewards[i] = 0.0f;
  int32_t used = 0;
  for (int64_t j = 0; j < it.k; ++j) {  // ascending sample order: the float32 sums are reproducible
    if (!it.valid[j] || !ranks_in(it, j)) continue;
    ++used;
    const float* s = it.scores + j * it.n;
    const int64_t* p = it.perm == nullptr ? nullptr : it.perm + j * it.n;
    for (int64_t pos = 0; pos < it.n_item; ++pos) rewards[p == nullptr ? pos : p[pos]] += s[pos];
  }
  finish_item(it, used, seed, number, rewards, best);
  return used;
}

}  // namespace vote
}  // namespace spct
