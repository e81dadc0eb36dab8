// CPU vote: OpenMP over items, one fused pass per item that checks the values (finite scores, perm a
// permutation, meta scores not NaN) while it sums, so the Python side skips its torch checks. The host sorts the
// same rank rule as the device, in branch-free loops.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "spct/vote_cpu.h"

namespace spct {
namespace cpu {
namespace {

// Marks in `used` the valid samples ranked below k_meta by (meta desc, index asc). Up to 64 samples: the rank
// of each valid sample counted in two compare-and-add loops that the compiler vectorizes (no branches on the
// random meta scores: measured 2x faster than partial_sort at k = 32); more samples: partial_sort.
void select_used(const vote::Item& it, std::vector<int32_t>* order, uint8_t* used) {
  const float* m = it.meta;
  if (it.k <= 64) {
    int32_t valid[64];
    for (int64_t i = 0; i < it.k; ++i) valid[i] = it.valid[i] != 0;
    for (int64_t j = 0; j < it.k; ++j) {
      const float mj = m[j];
      int32_t rank = 0;
      for (int64_t i = 0; i < j; ++i) rank += static_cast<int32_t>(m[i] >= mj) & valid[i];
      for (int64_t i = j + 1; i < it.k; ++i) rank += static_cast<int32_t>(m[i] > mj) & valid[i];
      used[j] = valid[j] && rank < it.k_meta;
    }
    return;
  }
  order->clear();
  for (int64_t j = 0; j < it.k; ++j) {
    used[j] = 0;
    if (it.valid[j]) order->push_back(static_cast<int32_t>(j));
  }
  const int64_t take = std::min<int64_t>(it.k_meta, static_cast<int64_t>(order->size()));
  std::partial_sort(order->begin(), order->begin() + take, order->end(),
                    [m](int32_t a, int32_t b) { return m[a] > m[b] || (m[a] == m[b] && a < b); });
  for (int64_t i = 0; i < take; ++i) used[(*order)[i]] = 1;
}

std::string fmt_float(float v) { return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf"); }

// The first problem of an item's values as the Python checks word it, or "" when the item is fine.
std::string item_error(const vote::Item& it, int64_t i, std::vector<uint8_t>* seen) {
  for (int64_t j = 0; j < it.k; ++j) {
    if (!it.valid[j]) continue;
    for (int64_t p = 0; p < it.n_item; ++p) {
      const float v = it.scores[j * it.n + p];
      if (!std::isfinite(v)) {
        return "scores[" + std::to_string(i) + ", " + std::to_string(j) + ", " + std::to_string(p) + "] = " +
               fmt_float(v) + " is not finite in a valid sample (mark the sample invalid instead)";
      }
    }
    if (it.meta != nullptr && std::isnan(it.meta[j])) {
      return "meta_scores[" + std::to_string(i) + ", " + std::to_string(j) + "] is NaN for a valid sample";
    }
  }
  for (int64_t j = 0; it.perm != nullptr && j < it.k; ++j) {
    const int64_t* p = it.perm + j * it.n;
    seen->assign(size_t(it.n_item), 0);
    bool ok = true;
    for (int64_t q = 0; q < it.n_item && ok; ++q) {
      ok = p[q] >= 0 && p[q] < it.n_item && !(*seen)[size_t(p[q])];
      if (ok) (*seen)[size_t(p[q])] = 1;
    }
    if (!ok) {
      std::string shown = "[";
      for (int64_t q = 0; q < it.n_item; ++q) shown += (q ? ", " : "") + std::to_string(p[q]);
      return "perm[" + std::to_string(i) + ", " + std::to_string(j) + "] = " + shown +
             "] is not a permutation of range(" + std::to_string(it.n_item) + ")";
    }
  }
  return "";
}

}  // namespace

bool not_finite(float v) {  // branch-free isfinite: exponent all ones
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  return (bits & 0x7F800000u) == 0x7F800000u;
}

// keep ? v : +0.0f without a branch: SSE2 has no float select, and a branch on random validity mispredicts.
float masked(float v, bool keep) {
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  bits &= 0u - static_cast<uint32_t>(keep);
  memcpy(&v, &bits, sizeof v);
  return v;
}

// Sums the used samples' scores per original response, checking every valid sample's scores (finite) and every
// sample's perm (a permutation) on the way; false on a bad value (item_error then words it). N > 0: exactly N
// responses, a compile-time count that keeps the sums in a local array and the loop free of branches (unused
// samples add +0, which is exact: a sum that starts at +0 never becomes -0); a bad perm index is clamped, the
// item fails anyway. N = 0: any count.
template <int64_t N>
bool accumulate(const vote::Item& it, const uint8_t* used, std::vector<uint8_t>* seen_big, float* rewards,
                int32_t* num_used) {
  const int64_t n_item = N > 0 ? N : it.n_item;
  int32_t count = 0;
  bool bad = false;
  if (N > 0) {
    float acc[N > 0 ? N : 1] = {};
    for (int64_t j = 0; j < it.k; ++j) {
      const bool valid = it.valid[j] != 0, use = used[j] != 0;
      count += use;
      const float* s = it.scores + j * it.n;
      if (it.meta != nullptr) bad |= valid & std::isnan(it.meta[j]);
      float v[N > 0 ? N : 1];
      for (int64_t pos = 0; pos < N; ++pos) {
        bad |= valid & not_finite(s[pos]);
        v[pos] = masked(s[pos], use);
      }
      if (it.perm == nullptr) {
        for (int64_t pos = 0; pos < N; ++pos) acc[pos] += v[pos];
        continue;
      }
      const int64_t* p = it.perm + j * it.n;
      uint64_t seen = 0;
      for (int64_t pos = 0; pos < N; ++pos) {
        const uint64_t idx = static_cast<uint64_t>(p[pos]);
        const bool out = idx >= static_cast<uint64_t>(N);
        bad |= out | ((seen >> (idx & 63)) & 1);
        seen |= uint64_t(1) << (idx & 63);
        acc[out ? 0 : idx] += v[pos];
      }
    }
    for (int64_t i = 0; i < it.n; ++i) rewards[i] = i < N ? acc[i] : 0.0f;
    *num_used = count;
    return !bad;
  }
  for (int64_t i = 0; i < it.n; ++i) rewards[i] = 0.0f;
  for (int64_t j = 0; j < it.k; ++j) {
    const bool valid = it.valid[j] != 0, use = used[j] != 0;
    count += use;
    const float* s = it.scores + j * it.n;
    if (valid) {
      bad |= it.meta != nullptr && std::isnan(it.meta[j]);
      for (int64_t pos = 0; pos < n_item; ++pos) bad |= not_finite(s[pos]);
    }
    const int64_t* p = it.perm == nullptr ? nullptr : it.perm + j * it.n;
    if (p != nullptr) {
      seen_big->assign(size_t(n_item), 0);
      for (int64_t pos = 0; pos < n_item && !bad; ++pos) {
        const uint64_t idx = static_cast<uint64_t>(p[pos]);
        bad |= idx >= static_cast<uint64_t>(n_item) || (*seen_big)[idx];
        if (!bad) (*seen_big)[idx] = 1;
      }
    }
    if (bad) return false;  // perm indexes rewards below: never with a bad index
    for (int64_t pos = 0; pos < n_item; ++pos) rewards[p == nullptr ? pos : p[pos]] += use ? s[pos] : 0.0f;
  }
  *num_used = count;
  return true;
}

// Dispatch to a compile-time response count for the common small items.
bool accumulate_any(const vote::Item& it, const uint8_t* used, std::vector<uint8_t>* seen, float* rewards,
                    int32_t* num_used) {
  switch (it.n_item) {
    case 1: return accumulate<1>(it, used, seen, rewards, num_used);
    case 2: return accumulate<2>(it, used, seen, rewards, num_used);
    case 3: return accumulate<3>(it, used, seen, rewards, num_used);
    case 4: return accumulate<4>(it, used, seen, rewards, num_used);
    case 5: return accumulate<5>(it, used, seen, rewards, num_used);
    case 6: return accumulate<6>(it, used, seen, rewards, num_used);
    case 7: return accumulate<7>(it, used, seen, rewards, num_used);
    case 8: return accumulate<8>(it, used, seen, rewards, num_used);
    default: return accumulate<0>(it, used, seen, rewards, num_used);
  }
}

std::string vote(const VoteBatch& b, float* rewards, int32_t* num_used, int64_t* best) {
  int64_t first_bad = b.items;
#pragma omp parallel
  {
    std::vector<int32_t> order;
    std::vector<uint8_t> used(size_t(b.k)), seen;
#pragma omp for schedule(static) reduction(min : first_bad)
    for (int64_t i = 0; i < b.items; ++i) {
      const vote::Item it = vote::item_of(b, i);
      const bool select = it.meta != nullptr && it.k_meta > 0;
      if (select) select_used(it, &order, used.data());
      const uint8_t* use = select ? used.data() : it.valid;
      float* out = rewards + i * b.n;
      const bool ok = accumulate_any(it, use, &seen, out, num_used + i);
      if (!ok) {
        first_bad = std::min(first_bad, i);
        continue;
      }
      vote::finish_item(it, num_used[i], b.seed, i, rewards + i * b.n, best + i);
    }
  }
  if (first_bad == b.items) return "";
  std::vector<uint8_t> seen;
  return item_error(vote::item_of(b, first_bad), first_bad, &seen);
}

}  // namespace cpu
}  // namespace spct
