// CPU kernel of spct::sample, OpenMP over rows. Per row: one pass for the max and the NaN/inf checks; then
//  - with top-k (k < V): a streaming selection (select_top) skips the vocabulary 16 logits at a time while
//    none beats the k-th best so far; top-p, min-p and the draw then work on those k tokens only;
//  - without: weights over the whole vocabulary, and top-p finds its last token by a radix search on the
//    logits' order keys (histograms of mass, 11 + 11 + 10 bits), no sort.
// Masses are exact int64 sums (spct/sample.h), so every order of summation gives the reference's tokens.

// The weights must round op by op (spct/sample.h): no contraction into FMA, also where the target has FMA.
// No trapping math lets GCC turn the selects of exp_weight into blends and vectorize the weight loop (it only
// drops floating-point exception flags, never changes a value). Before the includes: it covers their inlines.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "spct/sample.h"

namespace spct {
namespace cpu {

#if defined(SPCT_X86_VARIANTS)
// sample_avx512.cpp: where the CPU has AVX-512 F and DQ, sample_full's weights and masses (the same bits) -> the
// row's total mass; sample_avx2.cpp: the same 8 lanes at a time where it has AVX2.
bool sample_avx512_supported();
int64_t weights_masses_avx512(const float* x, int64_t vocab, float m, float t, float* w, int64_t* q);
bool sample_avx2_supported();
int64_t weights_masses_avx2(const float* x, int64_t vocab, float m, float t, float* w, int64_t* q);
#endif

namespace {

int64_t weights_masses_baseline(const float* x, int64_t vocab, float m, float t, float* w, int64_t* q) {
  for (int64_t i = 0; i < vocab; ++i) w[i] = sample::weight(x[i], m, t);
  int64_t mass = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    q[i] = sample::mass(w[i]);
    mass += q[i];
  }
  return mass;
}

}  // namespace

int64_t weights_masses(const float* x, int64_t vocab, float m, float t, float* w, int64_t* q) {
#if defined(SPCT_X86_VARIANTS)
  if (sample_avx512_supported()) return weights_masses_avx512(x, vocab, m, t, w, q);
  if (sample_avx2_supported()) return weights_masses_avx2(x, vocab, m, t, w, q);
#endif
  return weights_masses_baseline(x, vocab, m, t, w, q);
}

bool weights_masses_build(const std::string& build, const float* x, int64_t vocab, float m, float t, float* w,
                          int64_t* q, int64_t* total) {
  if (build == "auto") {
    *total = weights_masses(x, vocab, m, t, w, q);
  } else if (build == "baseline") {
    *total = weights_masses_baseline(x, vocab, m, t, w, q);
#if defined(SPCT_X86_VARIANTS)
  } else if (build == "avx512" && sample_avx512_supported()) {
    *total = weights_masses_avx512(x, vocab, m, t, w, q);
  } else if (build == "avx2" && sample_avx2_supported()) {
    *total = weights_masses_avx2(x, vocab, m, t, w, q);
#endif
  } else {
    return false;
  }
  return true;
}

namespace {

using sample::Status;

// 4-lane vectors (GCC/Clang vector extensions; SSE2 on the x86-64 baseline, NEON on arm64).
using f32x4 = float __attribute__((vector_size(16)));
using i32x4 = int32_t __attribute__((vector_size(16)));

inline f32x4 load4(const float* p) {
  f32x4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
#if defined(__SSE2__)
// One movmskps; OR-ing the four lanes cost a quarter of the greedy row scan (measured).
inline bool any(i32x4 m) { return _mm_movemask_ps(reinterpret_cast<__m128>(m)) != 0; }
#else
inline bool any(i32x4 m) { return (m[0] | m[1] | m[2] | m[3]) != 0; }
#endif

constexpr float kInf = __builtin_inff();

struct Cand {
  float logit;
  int32_t index;
  float weight;
  int64_t mass;
};

// a comes before b in the order (logit desc, index asc).
inline bool before(const Cand& a, const Cand& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.index < b.index);
}
inline bool by_index(const Cand& a, const Cand& b) { return a.index < b.index; }

struct Workspace {
  std::vector<float> logits;   // a bfloat16 row converted to float32
  std::vector<float> weights;  // (V,) without top-k
  std::vector<int64_t> masses;
  std::vector<Cand> cands;
  std::vector<uint32_t> keys;  // top-p radix search: order keys, the tokens still in range, histograms
  std::vector<int32_t> index;
  std::vector<int64_t> hist;
  std::vector<int32_t> count;
};

// Row max and status (NaN first, then +inf, then all -inf).
Status scan_row(const float* x, int64_t vocab, float* max_out) {
  const f32x4 inf = {kInf, kInf, kInf, kInf};
  f32x4 m0 = -inf, m1 = -inf;
  i32x4 nan = {0, 0, 0, 0}, pinf = nan;
  int64_t i = 0;
  for (; i + 8 <= vocab; i += 8) {
    const f32x4 a = load4(x + i), b = load4(x + i + 4);
    m0 = a > m0 ? a : m0;
    m1 = b > m1 ? b : m1;
    nan |= (a != a) | (b != b);
    pinf |= (a == inf) | (b == inf);
  }
  m0 = m1 > m0 ? m1 : m0;
  float m = std::max(std::max(m0[0], m0[1]), std::max(m0[2], m0[3]));
  bool any_nan = any(nan), any_pinf = any(pinf);
  for (; i < vocab; ++i) {
    m = x[i] > m ? x[i] : m;
    any_nan |= x[i] != x[i];
    any_pinf |= x[i] == kInf;
  }
  *max_out = m;
  if (any_nan) return sample::kNaN;
  if (any_pinf) return sample::kPosInf;
  return m == -kInf ? sample::kAllNegInf : sample::kOk;
}

int64_t first_index_of(const float* x, int64_t vocab, float value) {
  const f32x4 v = {value, value, value, value};
  int64_t i = 0;
  for (; i + 8 <= vocab; i += 8) {
    if (any((load4(x + i) == v) | (load4(x + i + 4) == v))) break;
  }
  for (; i < vocab; ++i) {
    if (x[i] == value) return i;
  }
  return vocab - 1;  // unreachable for a row's own maximum
}

// The first c tokens in the order (logit desc, index asc), sorted in that order. Tokens that beat the c-th best
// so far are appended to a buffer; a full buffer is cut back to the best c (nth_element), which raises the bar.
// Scanning in index order, a token beats the c-th best only with a strictly larger logit (on a tie the earlier
// index wins). The vector test skips 16 logits at a time; on real logits few pass it (about c ln(V/c)).
// Measured at V = 49,152 against a heap of the best c: 10% slower at c = 50, 25% faster at c = 1000.
void select_top(const float* x, int64_t vocab, int64_t c, std::vector<Cand>* out) {
  std::vector<Cand>& buf = *out;
  const int64_t cap = std::max<int64_t>(8 * c, 256);
  const int64_t first = std::min(vocab, cap);
  buf.resize(first);
  for (int64_t i = 0; i < first; ++i) buf[i] = {x[i], static_cast<int32_t>(i), 0.0f, 0};
  float bar = -kInf;
  auto cut = [&] {
    std::nth_element(buf.begin(), buf.begin() + (c - 1), buf.end(), before);
    buf.resize(c);
    bar = buf[c - 1].logit;
  };
  cut();
  auto offer = [&](int64_t i) {
    if (x[i] > bar) {
      buf.push_back({x[i], static_cast<int32_t>(i), 0.0f, 0});
      if (static_cast<int64_t>(buf.size()) >= cap) cut();
    }
  };
  int64_t i = first;
  for (; i + 16 <= vocab; i += 16) {
    const f32x4 b = {bar, bar, bar, bar};
    if (!any((load4(x + i) > b) | (load4(x + i + 4) > b) | (load4(x + i + 8) > b) | (load4(x + i + 12) > b))) {
      continue;
    }
    for (int j = 0; j < 16; ++j) offer(i + j);
  }
  for (; i < vocab; ++i) offer(i);
  if (static_cast<int64_t>(buf.size()) > c) cut();
  std::sort(buf.begin(), buf.end(), before);
}

// top-p over candidates listed in the order: the kept prefix (every candidate whose mass ahead is below
// top_p * total). Comparisons in float64, as the reference: double(ahead) < double(top_p) * double(total).
size_t top_p_prefix(const std::vector<Cand>& cands, float top_p) {
  int64_t total = 0;
  for (const Cand& c : cands) total += c.mass;
  const double threshold = static_cast<double>(top_p) * static_cast<double>(total);
  int64_t ahead = 0;
  size_t keep = 0;
  while (keep < cands.size() && static_cast<double>(ahead) < threshold) ahead += cands[keep++].mass;
  return keep;
}

// top-k < V: everything after the selection works on the k candidates.
int64_t sample_top_k(const float* x, int64_t vocab, int64_t k, float t, float top_p, float min_p, uint32_t bits,
                     Workspace* ws) {
  std::vector<Cand>& cands = ws->cands;
  select_top(x, vocab, k, &cands);
  const float m = cands.front().logit;
  for (Cand& c : cands) {
    c.weight = sample::weight(c.logit, m, t);
    c.mass = sample::mass(c.weight);
  }
  if (top_p < 1.0f) cands.resize(top_p_prefix(cands, top_p));
  cands.erase(std::remove_if(cands.begin(), cands.end(),
                             [&](const Cand& c) { return !(c.weight >= min_p && c.mass > 0); }),
              cands.end());
  std::sort(cands.begin(), cands.end(), by_index);
  int64_t total = 0;
  for (const Cand& c : cands) total += c.mass;
  const int64_t target = sample::draw_target(bits, total);
  int64_t running = 0;
  for (const Cand& c : cands) {
    running += c.mass;
    if (running > target) return c.index;
  }
  return cands.back().index;  // unreachable: running ends at total > target
}

struct Last {
  float logit;
  int64_t index;
};

// One digit of the top-p radix search: the digit (bits [shift, shift + width) of the order key) holding the
// last kept key, i.e. the smallest digit present whose mass above (*above plus the mass of the larger digits)
// is under the threshold; *above grows by the mass of the larger digits. tokens(f) calls f(key, mass) for every
// token still in range.
template <typename Tokens>
uint32_t top_p_digit(const Tokens& tokens, int shift, int width, double threshold, int64_t* above, Workspace* ws) {
  const uint32_t bins = 1u << width;
  int64_t* hist = (ws->hist.assign(bins, 0), ws->hist.data());
  int32_t* count = (ws->count.assign(bins, 0), ws->count.data());
  tokens([&](uint32_t key, int64_t q) {
    const uint32_t d = (key >> shift) & (bins - 1);
    hist[d] += q;
    count[d] += q > 0;
  });
  uint32_t chosen = bins - 1;
  int64_t chosen_above = *above;
  for (int64_t d = bins - 1, acc = *above; d >= 0 && static_cast<double>(acc) < threshold; acc += hist[d--]) {
    if (count[d] > 0) {
      chosen = static_cast<uint32_t>(d);
      chosen_above = acc;
    }
  }
  *above = chosen_above;
  return chosen;
}

// The last token of the top-p prefix over the whole vocabulary (tokens of mass 0 left out: never drawn), by a
// radix search on the order keys, 11 + 11 + 10 bits. G(k) = mass of the tokens with a key above k; the last
// kept key is the smallest key present with G(k) < threshold; inside its group, indices ascend until the mass
// ahead reaches the threshold. The first digit histograms the whole row, the others the tokens left in range.
Last top_p_last(const float* x, const int64_t* q, int64_t vocab, double threshold, Workspace* ws) {
  ws->keys.resize(vocab);
  uint32_t* keys = ws->keys.data();
  for (int64_t i = 0; i < vocab; ++i) keys[i] = sample::order_key(x[i]);
  int64_t above = 0;  // mass of the tokens above the keys still in range; always below the threshold
  const uint32_t top = top_p_digit([&](auto f) { for (int64_t i = 0; i < vocab; ++i) f(keys[i], q[i]); }, 21, 11,
                                   threshold, &above, ws);
  std::vector<int32_t>& list = ws->index;
  list.clear();
  for (int64_t i = 0; i < vocab; ++i) {
    if ((keys[i] >> 21) == top && q[i] > 0) list.push_back(static_cast<int32_t>(i));
  }
  uint32_t prefix = top << 21;
  for (const auto& [shift, width] : {std::pair{10, 11}, std::pair{0, 10}}) {
    auto in_range = [&](auto f) { for (int32_t i : list) f(keys[i], q[i]); };
    prefix |= top_p_digit(in_range, shift, width, threshold, &above, ws) << shift;
    const uint32_t fixed = ~((1u << shift) - 1u);
    list.erase(std::remove_if(list.begin(), list.end(), [&](int32_t i) { return (keys[i] & fixed) != prefix; }),
               list.end());
  }
  // The list holds one key, its tokens in index order; the first of them is kept (above < threshold).
  int64_t last = list.front();
  for (int32_t i : list) {
    if (static_cast<double>(above) >= threshold) break;
    last = i;
    above += q[i];
  }
  return {x[last], last};
}

int64_t sample_full(const float* x, int64_t vocab, float m, float t, float top_p, float min_p, uint32_t bits,
                    Workspace* ws) {
  ws->weights.resize(vocab);
  ws->masses.resize(vocab);
  float* w = ws->weights.data();
  int64_t* q = ws->masses.data();
  const int64_t mass = weights_masses(x, vocab, m, t, w, q);
  Last last{-kInf, vocab};  // top-p off: every token is in the prefix
  if (top_p < 1.0f) last = top_p_last(x, q, vocab, static_cast<double>(top_p) * static_cast<double>(mass), ws);
  int64_t total = mass;
  if (top_p < 1.0f || min_p > 0.0f) {  // q becomes the kept mass: 0 outside top-p and min-p
    total = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      const bool in_p = (x[i] > last.logit) | ((x[i] == last.logit) & (i <= last.index));
      q[i] = in_p & (w[i] >= min_p) ? q[i] : 0;
      total += q[i];
    }
  }
  // The draw, 16 tokens at a time until the block that crosses the target (integer sums: any grouping is exact).
  const int64_t target = sample::draw_target(bits, total);
  int64_t running = 0, i = 0;
  for (; i + 16 <= vocab; i += 16) {
    int64_t block = 0;
    for (int j = 0; j < 16; ++j) block += q[i + j];
    if (running + block > target) break;
    running += block;
  }
  for (; i < vocab; ++i) {
    running += q[i];
    if (running > target) return i;
  }
  return vocab - 1;  // unreachable: running ends at total > target
}

int64_t sample_row(const float* x, int64_t vocab, int64_t r, const sample::Params& p, Workspace* ws,
                   int32_t* status) {
  float m;
  *status = scan_row(x, vocab, &m);
  if (*status != sample::kOk) return -1;
  const float t = p.temperature[r];
  if (t == 0.0f) return first_index_of(x, vocab, m);
  const uint32_t bits = philox::uniform_bits(static_cast<uint64_t>(p.seed[r]), static_cast<uint64_t>(p.offset[r]));
  const int64_t k = p.top_k[r];
  if (k > 0 && k < vocab) return sample_top_k(x, vocab, k, t, p.top_p[r], p.min_p[r], bits, ws);
  return sample_full(x, vocab, m, t, p.top_p[r], p.min_p[r], bits, ws);
}

}  // namespace

void sample_rows(const void* logits, bool bf16, int64_t rows, int64_t vocab, int64_t row_stride,
                 const sample::Params& params, int64_t* tokens, int32_t* status) {
#pragma omp parallel
  {
    Workspace ws;
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < rows; ++r) {
      const float* x;
      if (bf16) {
        const uint16_t* src = static_cast<const uint16_t*>(logits) + r * row_stride;
        ws.logits.resize(vocab);
        for (int64_t i = 0; i < vocab; ++i) ws.logits[i] = sample::bf16_to_float(src[i]);
        x = ws.logits.data();
      } else {
        x = static_cast<const float*>(logits) + r * row_stride;
      }
      tokens[r] = sample_row(x, vocab, r, params, &ws, &status[r]);
    }
  }
}

void philox_uniform(const int64_t* seed, const int64_t* offset, int64_t n, float* out) {
#pragma omp parallel for schedule(static) if (n > 4096)
  for (int64_t i = 0; i < n; ++i) {
    out[i] = philox::uniform(static_cast<uint64_t>(seed[i]), static_cast<uint64_t>(offset[i]));
  }
}

void exp_weights(const float* z, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = sample::exp_weight(z[i]);
}

}  // namespace cpu
}  // namespace spct
