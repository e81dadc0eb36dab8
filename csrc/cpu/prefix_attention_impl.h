// The CPU prefix_attention kernel, compiled once per instruction set: prefix_attention.cpp (baseline),
// prefix_attention_avx2.cpp and prefix_attention_avx512.cpp include this file with SPCT_ISA naming the namespace,
// and prefix_attention.cpp picks one at run time. The code is written on GCC vector types of 16 floats, which each
// build lowers to its widest registers.
//
// Work: for every (prompt, KV head, chunk of kChunk prompt tokens) the queries of ALL the prompt's sample rows
// (rows x Hq/Hkv heads) form one block that reads the chunk's keys and values once, converted to float32 (keys
// transposed); every (row, KV head, chunk of own tokens) likewise. Each gives a partial (max, sum, sum of p * v) per
// query; a last pass merges the partials of each (row, head) by log-sum-exp in a fixed order. A query's arithmetic
// never depends on how many rows share its block, so a row's output does not depend on the batch.
//
// No standard-library templates here (std::vector, std::max...): their instantiations are shared with the other
// translation units by the linker, and one compiled with AVX-512 could end up run on a CPU without it.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "spct/prefix_attention.h"

#ifndef SPCT_ISA
#error "define SPCT_ISA before including prefix_attention_impl.h"
#endif

namespace spct {
namespace cpu {
namespace SPCT_ISA {
namespace {

using attn::kChunk;
using attn::PrefixAttention;

#include "vec_impl.h"

inline float fmax2(float a, float b) { return a < b ? b : a; }
// D consecutive values starting at p as D / W float vectors.
template <int D>
inline void load_row(const float* p, vf* out) {
  for (int c = 0; c < D / W; ++c) out[c] = loadv(p + c * W);
}
template <int D>
inline void load_row(const uint16_t* p, vf* out) {
  typedef uint16_t vh __attribute__((vector_size(32)));
  for (int c = 0; c < D / W; ++c) {
    vh h;
    memcpy(&h, p + c * W, sizeof h);
    const vi bits = __builtin_convertvector(h, vi) << 16;  // bf16 is the top half of a float32
    memcpy(&out[c], &bits, sizeof bits);
  }
}
inline float hsum(vf v) {  // a fixed tree, for reproducible sums
  float h[W];
  memcpy(h, &v, sizeof h);
  for (int w = W / 2; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) h[i] += h[i + w];
  return h[0];
}
// Rows of queries blocked together in the two products (accumulators must fit the registers).
#if defined(__AVX512F__)
constexpr int kRows = 4;
#else
constexpr int kRows = 2;
#endif

// Keys are transposed into panels of 2 W tokens: panel t / (2 W) holds D rows of 2 W floats, (d, t) at
// (t / 2W) * D * 2W + d * 2W + t % 2W. A panel (8 KiB at D = 64) stays in L1 while it is written and read.
constexpr int kPanel = 2 * W;

// s[r][t] = sum_d q[r][d] * k[t][d] for R query rows; np (the padded token count) is a multiple of kPanel.
template <int D, int R>
void qk(const float* q, const float* kt, int64_t np, float* s) {
  for (int64_t t = 0; t < np; t += kPanel) {
    const float* panel = kt + t * D;
    vf acc[R][2] = {};
    for (int d = 0; d < D; ++d) {
      const vf k0 = loadv(panel + d * kPanel), k1 = loadv(panel + d * kPanel + W);
      for (int r = 0; r < R; ++r) {
        acc[r][0] += q[r * D + d] * k0;
        acc[r][1] += q[r * D + d] * k1;
      }
    }
    for (int r = 0; r < R; ++r) {
      storev(s + r * np + t, acc[r][0]);
      storev(s + r * np + t + W, acc[r][1]);
    }
  }
}

// o[r][:] = sum_t p[r][t] * v[t][:] for R rows over n tokens (p rows have stride np).
template <int D, int R>
void pv(const float* p, int64_t np, const float* v, int64_t n, float* o) {
  constexpr int C = D / W;
  vf acc[R][C] = {};
  for (int64_t t = 0; t < n; ++t) {
    vf vv[C];
    for (int c = 0; c < C; ++c) vv[c] = loadv(v + t * D + c * W);
    for (int r = 0; r < R; ++r) {
      const float pr = p[r * np + t];
      for (int c = 0; c < C; ++c) acc[r][c] += pr * vv[c];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) storev(o + r * D + c * W, acc[r][c]);
}

// Turns R score rows into probabilities in place (tokens >= n get 0) and writes each row's (max, sum).
template <int R>
void softmax_rows(float* s, int64_t np, int64_t n, float* max_out, float* sum_out) {
  for (int r = 0; r < R; ++r) {
    float* row = s + r * np;
    vf vmax = splat(-INFINITY);
    for (int64_t t = 0; t < np; t += W) {
      vf x = loadv(row + t);
      if (t + W > n)
        for (int i = 0; i < W; ++i) x[i] = t + i < n ? x[i] : -INFINITY;  // padding tokens
      vmax = vmax < x ? x : vmax;
    }
    float m = vmax[0];
    for (int i = 1; i < W; ++i) m = fmax2(m, vmax[i]);
    vf sum = {};
    const vf mv = splat(m);
    for (int64_t t = 0; t < np; t += W) {
      vf e = vexp(loadv(row + t) - mv);
      if (t + W > n)
        for (int i = 0; i < W; ++i) e[i] = t + i < n ? e[i] : 0.0f;  // padding tokens
      storev(row + t, e);
      sum += e;
    }
    float total = 0.0f;
    for (int i = 0; i < W; ++i) total += sum[i];
    max_out[r] = m;
    sum_out[r] = total;
  }
}

struct Scratch {
  Buf<float> q, kt, v, s, o;
};

// Partials of m pre-scaled float32 queries qs (m x D) over n tokens: k and v point at the first token's head,
// token stride ld elements. part (m x (D + 2)): max, sum, then sum_t p_t v_t.
template <int D, typename T, int R>
void attend_block(const float* qs, int64_t m, const T* k, const T* v, int64_t ld, int64_t n, Scratch* sc,
                  float* const* part) {
  const int64_t np = (n + kPanel - 1) / kPanel * kPanel;
  sc->kt.resize(D * np);
  sc->v.resize(n * D);
  for (int64_t t = 0; t < np; ++t) {
    float* col = sc->kt.data() + (t / kPanel) * D * kPanel + t % kPanel;
    if (t >= n) {  // padding tokens: zero keys (their scores are masked anyway)
      for (int d = 0; d < D; ++d) col[d * kPanel] = 0.0f;
      continue;
    }
    vf row[D / W];
    load_row<D>(k + t * ld, row);
    for (int c = 0; c < D / W; ++c)
      for (int i = 0; i < W; ++i) col[(c * W + i) * kPanel] = row[c][i];
    load_row<D>(v + t * ld, row);
    for (int c = 0; c < D / W; ++c) storev(sc->v.data() + t * D + c * W, row[c]);
  }
  sc->s.resize(R * np);
  sc->o.resize(R * D);
  float mx[R], sm[R];
  int64_t i = 0;
  for (; i + R <= m; i += R) {
    qk<D, R>(qs + i * D, sc->kt.data(), np, sc->s.data());
    softmax_rows<R>(sc->s.data(), np, n, mx, sm);
    pv<D, R>(sc->s.data(), np, sc->v.data(), n, sc->o.data());
    for (int r = 0; r < R; ++r) {
      part[i + r][0] = mx[r];
      part[i + r][1] = sm[r];
      memcpy(part[i + r] + 2, sc->o.data() + r * D, sizeof(float) * D);
    }
  }
  for (; i < m; ++i) {  // the same arithmetic one row at a time
    qk<D, 1>(qs + i * D, sc->kt.data(), np, sc->s.data());
    softmax_rows<1>(sc->s.data(), np, n, mx, sm);
    pv<D, 1>(sc->s.data(), np, sc->v.data(), n, sc->o.data());
    part[i][0] = mx[0];
    part[i][1] = sm[0];
    memcpy(part[i] + 2, sc->o.data(), sizeof(float) * D);
  }
}

// The same partials for one sample row's queries over its own tokens (m small): dot products straight from the
// stored keys, no transposed copy. Own parts always take this path and prompt parts the blocked one, so each
// row's arithmetic still never depends on the batch.
template <int D, typename T>
void attend_direct(const float* qs, int64_t m, const T* k, const T* v, int64_t ld, int64_t n, Scratch* sc,
                   float* const* part) {
  constexpr int C = D / W;
  const int64_t np = (n + W - 1) / W * W;
  sc->s.resize(m * np);
  for (int64_t t = 0; t < n; ++t) {
    vf key[C];
    load_row<D>(k + t * ld, key);
    for (int64_t r = 0; r < m; ++r) {
      vf acc = {};
      for (int c = 0; c < C; ++c) acc += loadv(qs + r * D + c * W) * key[c];
      sc->s[r * np + t] = hsum(acc);
    }
  }
  sc->o.assign(m * D, 0.0f);
  for (int64_t r = 0; r < m; ++r) softmax_rows<1>(sc->s.data() + r * np, np, n, &part[r][0], &part[r][1]);
  for (int64_t t = 0; t < n; ++t) {
    vf val[C];
    load_row<D>(v + t * ld, val);
    for (int64_t r = 0; r < m; ++r) {
      const float p = sc->s[r * np + t];
      float* o = sc->o.data() + r * D;
      for (int c = 0; c < C; ++c) storev(o + c * W, loadv(o + c * W) + p * val[c]);
    }
  }
  for (int64_t r = 0; r < m; ++r) memcpy(part[r] + 2, sc->o.data() + r * D, sizeof(float) * D);
}

// One unit of work: prompt chunk (kind 0: index = prompt) or own chunk (kind 1: index = row), for one KV head.
struct Task {
  int64_t kind, index, head, chunk;
};

inline int64_t chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }
inline int64_t prompt_chunks(const PrefixAttention& a, int64_t p) {
  return chunks(a.prefix_indptr[p + 1] - a.prefix_indptr[p]);
}

// The work of one call: the rows of each prompt (rows_of[start[p] .. start[p + 1]), in row order), the partial
// slots of each row (row s owns parts [first[s], first[s + 1]): prompt chunks, then own chunks, each Hq x (D + 2)
// floats) and the tasks.
struct Work {
  Buf<int64_t> start, rows_of, first;
  Buf<Task> tasks;
};

void plan_work(const PrefixAttention& a, Work* w) {
  const int64_t S = a.rows, Hkv = a.kv_heads, P = a.prompts;
  Buf<int64_t> fill(P + 1, 0);
  w->start.assign(P + 1, 0);
  w->rows_of.resize(S);
  for (int64_t s = 0; s < S; ++s) ++w->start[a.prefix_index[s] + 1];  // counting sort: keeps row order
  for (int64_t p = 0; p < P; ++p) w->start[p + 1] += w->start[p];
  for (int64_t p = 0; p < P; ++p) fill[p] = w->start[p];
  for (int64_t s = 0; s < S; ++s) w->rows_of[fill[a.prefix_index[s]]++] = s;
  const auto has_rows = [&](int64_t p) { return w->start[p] != w->start[p + 1]; };
  int64_t n_tasks = 0;
  for (int64_t p = 0; p < P; ++p) n_tasks += has_rows(p) ? Hkv * prompt_chunks(a, p) : 0;
  for (int64_t s = 0; s < S; ++s) n_tasks += Hkv * chunks(a.own_len[s]);
  w->tasks.resize(n_tasks);
  w->first.assign(S + 1, 0);
  int64_t next = 0;
  for (int64_t p = 0; p < P; ++p) {
    if (!has_rows(p)) continue;
    const int64_t c_n = prompt_chunks(a, p);
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t c = 0; c < c_n; ++c) w->tasks[next++] = Task{0, p, h, c};
  }
  for (int64_t s = 0; s < S; ++s) {
    const int64_t own = chunks(a.own_len[s]);
    w->first[s + 1] = w->first[s] + prompt_chunks(a, a.prefix_index[s]) + own;
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t c = 0; c < own; ++c) w->tasks[next++] = Task{1, s, h, c};
  }
}

// The partial of (row s, its part c, query head hq) in parts.
inline float* part_of(const PrefixAttention& a, const Work& w, float* parts, int64_t s, int64_t c, int64_t hq) {
  return parts + ((w.first.p[s] + c) * a.heads + hq) * (a.head_dim + 2);
}

// One task: its rows' queries (pre-scaled, float32) against its chunk of keys and values -> their partials.
template <int D, typename T>
void run_task(const PrefixAttention& a, const Work& w, const Task& task, float* parts, Scratch* sc,
              Buf<float*>* out_parts) {
  const int64_t Hq = a.heads, Hkv = a.kv_heads, G = Hq / Hkv;
  const bool prompt = task.kind == 0;
  const int64_t* rows = prompt ? w.rows_of.p + w.start.p[task.index] : &task.index;
  const int64_t m_rows = prompt ? w.start.p[task.index + 1] - w.start.p[task.index] : 1;
  int64_t n, first_token;  // the chunk's tokens, and the first one's row in prefix_k / own_k
  if (prompt) {
    first_token = a.prefix_indptr[task.index] + task.chunk * kChunk;
    n = imin(kChunk, a.prefix_indptr[task.index + 1] - first_token);
  } else {
    n = imin(kChunk, a.own_len[task.index] - task.chunk * kChunk);
    first_token = a.own_index[task.index] * a.capacity + task.chunk * kChunk;
  }
  const T* k = static_cast<const T*>(prompt ? a.prefix_k : a.own_k) + (first_token * Hkv + task.head) * D;
  const T* v = static_cast<const T*>(prompt ? a.prefix_v : a.own_v) + (first_token * Hkv + task.head) * D;
  const T* q = static_cast<const T*>(a.q);
  sc->q.resize(m_rows * G * D);
  out_parts->resize(m_rows * G);
  for (int64_t i = 0; i < m_rows; ++i) {
    const int64_t s = rows[i];
    const int64_t c = prompt ? task.chunk : prompt_chunks(a, a.prefix_index[s]) + task.chunk;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t hq = task.head * G + g;
      for (int d = 0; d < D; ++d) sc->q[(i * G + g) * D + d] = load1(q, (s * Hq + hq) * D + d) * a.scale;
      (*out_parts)[i * G + g] = part_of(a, w, parts, s, c, hq);
    }
  }
  if (prompt) {
    attend_block<D, T, kRows>(sc->q.data(), m_rows * G, k, v, Hkv * D, n, sc, out_parts->data());
  } else {
    attend_direct<D, T>(sc->q.data(), G, k, v, Hkv * D, n, sc, out_parts->data());
  }
}

// out[s, hq] from the row's partials, merged by log-sum-exp in order; zeros for a row with no token at all.
template <int D, typename T>
void merge(const PrefixAttention& a, const Work& w, float* parts, int64_t s, int64_t hq) {
  const int64_t n_parts = w.first.p[s + 1] - w.first.p[s];
  T* o = static_cast<T*>(a.out) + (s * a.heads + hq) * D;
  float top = -INFINITY;
  for (int64_t c = 0; c < n_parts; ++c) top = fmax2(top, part_of(a, w, parts, s, c, hq)[0]);
  float acc[D] = {}, total = 0.0f;
  for (int64_t c = 0; c < n_parts; ++c) {
    const float* pc = part_of(a, w, parts, s, c, hq);
    const float weight = std::exp(pc[0] - top);
    total += weight * pc[1];
    for (int d = 0; d < D; ++d) acc[d] += weight * pc[2 + d];
  }
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  for (int d = 0; d < D; ++d) store1(o, d, acc[d] * inv);
}

template <int D, typename T>
void run_typed(const PrefixAttention& a) {
  Work w;
  plan_work(a, &w);
  const int64_t n_tasks = w.tasks.n, S = a.rows, Hq = a.heads;
  Buf<float> parts_buf(w.first[S] * Hq * (D + 2));
  float* const parts = parts_buf.data();
#pragma omp parallel
  {
    Scratch sc;
    Buf<float*> out_parts;
#pragma omp for schedule(dynamic, 1)
    for (int64_t ti = 0; ti < n_tasks; ++ti) run_task<D, T>(a, w, w.tasks.p[ti], parts, &sc, &out_parts);
#pragma omp for schedule(static)
    for (int64_t sh = 0; sh < S * Hq; ++sh) merge<D, T>(a, w, parts, sh / Hq, sh % Hq);
  }
}

}  // namespace

// false when head_dim has no compiled kernel (the caller reports it).
bool prefix_attention_run(const PrefixAttention& a) {
  switch (a.head_dim) {
#define SPCT_CASE(D)                                            \
  case D:                                                       \
    if (a.bf16) run_typed<D, uint16_t>(a);                      \
    else run_typed<D, float>(a);                                \
    return true;
    SPCT_CASE(32)
    SPCT_CASE(64)
    SPCT_CASE(128)
    SPCT_CASE(256)
#undef SPCT_CASE
    default:
      return false;
  }
}

}  // namespace SPCT_ISA
}  // namespace cpu
}  // namespace spct
