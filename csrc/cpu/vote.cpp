// CPU vote: OpenMP over items, one fused pass per item that checks the values (finite scores, perm a
// permutation, meta scores not NaN) while it sums, so the Python side skips its torch checks. The host sorts the
// same rank rule as the device, in branch-free loops.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "spct/vote_cpu.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

#if defined(__SSE2__)
// SSE2 (every x86-64 CPU) for 2..8 responses with a perm: the sums live in L = ceil(N / 4) registers, and each
// sample adds one vector w with w[r] = v[pos] for the pos where perm[pos] = r, built by compare-and-select against
// (0, 1, 2, 3) instead of a runtime-indexed scatter (whose store-to-load forwarding chain bounded the scalar loop).
// The per-response addition order is the sample order, as in the reference, so the sums are bit-identical. The
// same compares check the perm: each response lane is hit exactly once iff perm[0..N) is a permutation of
// range(N), given that its high dwords are all zero.
namespace sse {

template <int64_t N>
inline __m128 load_floats(const float* s, int64_t g) {  // floats g*4 .. min(N, g*4 + 4), zero above
  const int64_t rem = N - g * 4;
  s += g * 4;
  if (rem >= 4) return _mm_loadu_ps(s);
  if (rem == 1) return _mm_load_ss(s);
  double pair;  // two floats; memcpy, as s need not be 8-byte aligned
  memcpy(&pair, s, sizeof pair);
  const __m128 lo = _mm_castpd_ps(_mm_set_sd(pair));
  if (rem == 2) return lo;
  return _mm_movelh_ps(lo, _mm_load_ss(s + 2));
}

template <int64_t N>
inline void load_perm(const int64_t* p, int64_t g, __m128i* lo, __m128i* hi) {  // low / high dwords, zero above N
  const int64_t rem = N - g * 4;
  p += g * 4;
  const __m128i a = rem >= 2 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))
                             : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i b = rem >= 4   ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2))
                    : rem == 3 ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 2))
                               : _mm_setzero_si128();
  *lo = _mm_castps_si128(_mm_shuffle_ps(_mm_castsi128_ps(a), _mm_castsi128_ps(b), _MM_SHUFFLE(2, 0, 2, 0)));
  *hi = _mm_castps_si128(_mm_shuffle_ps(_mm_castsi128_ps(a), _mm_castsi128_ps(b), _MM_SHUFFLE(3, 1, 3, 1)));
}

// Position P's value in every lane whose response index (iota) perm[P] names, or'ed into w; m counts the hits.
template <int64_t N, int P>
inline void place(__m128 v, __m128i lo, __m128i iota, __m128* w, __m128i* hits) {
  if constexpr (P < N) {
    constexpr int lane = P & 3;
    const __m128i m = _mm_cmpeq_epi32(_mm_shuffle_epi32(lo, _MM_SHUFFLE(lane, lane, lane, lane)), iota);
    const __m128 val = _mm_shuffle_ps(v, v, _MM_SHUFFLE(lane, lane, lane, lane));
    *w = _mm_or_ps(*w, _mm_and_ps(_mm_castsi128_ps(m), val));
    *hits = _mm_add_epi32(*hits, m);  // minus the hit count
  }
}

// One sample's values in response order for the responses 4R .. 4R + 3, from the positions of group G.
template <int64_t N, int G>
inline void place_group(__m128 v, __m128i lo, __m128i iota, __m128* w, __m128i* hits) {
  place<N, 4 * G + 0>(v, lo, iota, w, hits);
  place<N, 4 * G + 1>(v, lo, iota, w, hits);
  place<N, 4 * G + 2>(v, lo, iota, w, hits);
  place<N, 4 * G + 3>(v, lo, iota, w, hits);
}

// The accumulators are named locals, not an array: GCC kept an array of two __m128 in memory, which brought the
// store-to-load forwarding chain back.
template <int64_t N>
bool accumulate_perm(const vote::Item& it, const uint8_t* used, float* rewards, int32_t* num_used) {
  constexpr bool two = N > 4;
  const __m128i iota0 = _mm_setr_epi32(0, 1, 2, 3), iota1 = _mm_setr_epi32(4, 5, 6, 7);
  // (minus) hit counts a permutation gives: responses below N exactly once, padding lanes above N never
  const __m128i want0 = _mm_cmplt_epi32(iota0, _mm_set1_epi32(int(N)));
  const __m128i want1 = _mm_cmplt_epi32(iota1, _mm_set1_epi32(int(N)));
  const __m128i exponent = _mm_set1_epi32(0x7F800000);
  __m128 acc0 = _mm_setzero_ps(), acc1 = _mm_setzero_ps();
  __m128i bad = _mm_setzero_si128();
  int32_t count = 0;
  bool bad_meta = false;
  for (int64_t j = 0; j < it.k; ++j) {
    const bool valid = it.valid[j] != 0, use = used[j] != 0;
    count += use;
    if (it.meta != nullptr) bad_meta |= valid & std::isnan(it.meta[j]);
    const __m128i valid_mask = _mm_set1_epi32(-int32_t(valid));
    const __m128 use_mask = _mm_castsi128_ps(_mm_set1_epi32(-int32_t(use)));
    const float* s = it.scores + j * it.n;
    const int64_t* p = it.perm + j * it.n;
    const __m128 raw0 = load_floats<N>(s, 0);
    const __m128 raw1 = two ? load_floats<N>(s, 1) : _mm_setzero_ps();
    const __m128i e0 = _mm_and_si128(_mm_castps_si128(raw0), exponent);
    const __m128i e1 = _mm_and_si128(_mm_castps_si128(raw1), exponent);
    bad = _mm_or_si128(bad, _mm_and_si128(valid_mask, _mm_or_si128(_mm_cmpeq_epi32(e0, exponent),
                                                                    _mm_cmpeq_epi32(e1, exponent))));
    const __m128 v0 = _mm_and_ps(raw0, use_mask), v1 = _mm_and_ps(raw1, use_mask);
    __m128i lo0, hi0, lo1 = _mm_setzero_si128(), hi1 = _mm_setzero_si128();
    load_perm<N>(p, 0, &lo0, &hi0);
    if (two) load_perm<N>(p, 1, &lo1, &hi1);
    bad = _mm_or_si128(bad, _mm_or_si128(hi0, hi1));
    __m128 w0 = _mm_setzero_ps(), w1 = _mm_setzero_ps();
    __m128i hits0 = _mm_setzero_si128(), hits1 = _mm_setzero_si128();
    place_group<N, 0>(v0, lo0, iota0, &w0, &hits0);
    place_group<N, 1>(v1, lo1, iota0, &w0, &hits0);
    if (two) {
      place_group<N, 0>(v0, lo0, iota1, &w1, &hits1);
      place_group<N, 1>(v1, lo1, iota1, &w1, &hits1);
    }
    acc0 = _mm_add_ps(acc0, w0);  // unused samples add +0: exact (a sum from +0 never becomes -0)
    acc1 = _mm_add_ps(acc1, w1);
    bad = _mm_or_si128(bad, _mm_or_si128(_mm_xor_si128(hits0, want0), _mm_xor_si128(hits1, want1)));
  }
  float out[8];
  _mm_storeu_ps(out, acc0);
  _mm_storeu_ps(out + 4, acc1);
  for (int64_t i = 0; i < it.n; ++i) rewards[i] = i < N ? out[i] : 0.0f;
  *num_used = count;
  return _mm_movemask_epi8(_mm_cmpeq_epi8(bad, _mm_setzero_si128())) == 0xFFFF && !bad_meta;  // every bit clear
}

}  // namespace sse
#endif

// Dispatch to a compile-time response count for the common small items.
bool accumulate_any(const vote::Item& it, const uint8_t* used, std::vector<uint8_t>* seen, float* rewards,
                    int32_t* num_used) {
#if defined(__SSE2__)
  if (it.perm != nullptr) {
    switch (it.n_item) {
      case 2: return sse::accumulate_perm<2>(it, used, rewards, num_used);
      case 3: return sse::accumulate_perm<3>(it, used, rewards, num_used);
      case 4: return sse::accumulate_perm<4>(it, used, rewards, num_used);
      case 5: return sse::accumulate_perm<5>(it, used, rewards, num_used);
      case 6: return sse::accumulate_perm<6>(it, used, rewards, num_used);
      case 7: return sse::accumulate_perm<7>(it, used, rewards, num_used);
      case 8: return sse::accumulate_perm<8>(it, used, rewards, num_used);
      default: break;
    }
  }
#endif
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
      vote::finish_item(it, num_used[i], b.seed, vote::item_number(b, i), rewards + i * b.n, best + i);
    }
  }
  if (first_bad == b.items) return "";
  std::vector<uint8_t> seen;
  return item_error(vote::item_of(b, first_bad), first_bad, &seen);
}

}  // namespace cpu
}  // namespace spct
