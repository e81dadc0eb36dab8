// The CPU paged_attention kernel, compiled once per instruction set: paged_attention.cpp (baseline),
// paged_attention_avx2.cpp and paged_attention_avx512.cpp include this file with SPCT_ISA naming the namespace, and
// paged_attention.cpp picks one at run time. Written on GCC vector types of 16 floats, which each build lowers to its
// widest registers.
//
// Work: one task per (KV head, tile of kTileRows rows). A task walks every segment in index order and, for the
// segment's rows in its tile, every block in order: the block's keys and values are read once (as float32) for
// all those rows' queries (rows x Hq/Hkv heads, laid across vector lanes), then each query's online-softmax state
// (max, sum, float32 accumulator of D) is updated once for the block (the rule in spct/paged_attention.h). Every
// operation on a query is lane-wise or its own sequential loop, so its bits do not depend on its lane, on which
// other queries share the block, or on the task's other segments; tasks share nothing, so neither do threads.
//
// No standard-library templates here (std::vector, std::max...): their instantiations are shared with the other
// translation units by the linker, and one compiled with AVX-512 could end up run on a CPU without it.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "spct/paged_attention.h"

#ifndef SPCT_ISA
#error "define SPCT_ISA before including paged_attention_impl.h"
#endif

namespace spct {
namespace cpu {
namespace SPCT_ISA {
namespace {

using attn::PagedAttention;

constexpr int W = 16;               // floats per vector: queries per lane group
constexpr int64_t kTileRows = 8;    // rows per task: fixed, so that a row's work never depends on the batch
#if defined(__AVX512F__)
constexpr int kTok = 8;  // tokens per q . k pass (accumulators held in registers)
#else
constexpr int kTok = 4;
#endif
constexpr int kQueries = 4;  // queries per p . v pass

// A growable buffer of trivially copyable T (local, see above).
template <typename T>
struct Buf {
  T* p = nullptr;
  int64_t n = 0, cap = 0;
  Buf() = default;
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { free(p); }
  void resize(int64_t size) {
    if (size > cap) {
      T* grown = static_cast<T*>(realloc(p, sizeof(T) * size_t(size > 0 ? size : 1)));
      if (grown == nullptr) abort();
      p = grown;
      cap = size;
    }
    n = size;
  }
  void assign(int64_t size, T fill) {
    resize(size);
    for (int64_t i = 0; i < size; ++i) p[i] = fill;
  }
  T* data() { return p; }
  T& operator[](int64_t i) { return p[i]; }
};
inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a < b ? b : a; }

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef float vf8 __attribute__((vector_size(32)));

template <typename V>
inline V loadv(const float* p) {
  V v;
  memcpy(&v, p, sizeof v);
  return v;
}
inline vf loadv(const float* p) { return loadv<vf>(p); }
inline vi loadi(const int32_t* p) {
  vi v;
  memcpy(&v, p, sizeof v);
  return v;
}
template <typename V>
inline void storev(float* p, V v) {
  memcpy(p, &v, sizeof v);
}
inline vf splat(float x) { return vf{} + x; }

inline float from_bf16(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
inline uint16_t to_bf16(float f) {  // round to nearest even, as torch does
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if (std::isnan(f)) return 0x7FC0;
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
inline float load1(const float* p, int64_t i) { return p[i]; }
inline float load1(const uint16_t* p, int64_t i) { return from_bf16(p[i]); }
inline void store1(float* p, int64_t i, float v) { p[i] = v; }
inline void store1(uint16_t* p, int64_t i, float v) { p[i] = to_bf16(v); }

// exp(x) for x <= 0 (Cephes expf, as in prefix_attention_impl.h: relative error ~1e-7; below -87 it returns
// exp(-87) ~ 1.6e-38, nothing measurable next to the running maximum's 1). Lane-wise.
inline vf vexp(vf x) {
  const vf lo = splat(-87.0f);
  x = x < lo ? lo : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf n = (x * 1.44269504088896341f + magic) - magic;
  const vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vf y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  memcpy(&scale, &e, sizeof scale);
  return y * scale;
}

// n rows of D values (row stride ld elements) as float32 rows of D, in dst.
template <int D>
void rows_f32(const float* src, int64_t ld, int64_t n, float* dst) {
  for (int64_t t = 0; t < n; ++t) memcpy(dst + t * D, src + t * ld, sizeof(float) * D);
}
template <int D>
void rows_f32(const uint16_t* src, int64_t ld, int64_t n, float* dst) {
  for (int64_t t = 0; t < n; ++t) {
    for (int d = 0; d < D; ++d) {
      const uint32_t u = uint32_t(src[t * ld + d]) << 16;  // bf16 is the top half of a float32
      memcpy(dst + t * D + d, &u, sizeof u);
    }
  }
}

// Scores of U tokens (k: U rows of D floats) for the W queries of lane group j: s[u * lw + j * W + lane] = sum_d
// qt[d * lw + j * W + lane] * k[u * D + d], summed over d in order (every query's score, whatever U and j).
template <int D, int U>
inline void qk_tokens(const float* qt, int64_t lw, int64_t j, const float* k, float* s) {
  vf acc[U] = {};
  for (int d = 0; d < D; ++d) {
    const vf qv = loadv(qt + d * lw + j * W);
    for (int u = 0; u < U; ++u) acc[u] += qv * k[u * D + d];
  }
  for (int u = 0; u < U; ++u) storev(s + u * lw + j * W, acc[u]);
}

template <int D>
void qk(const float* qt, int64_t lw, const float* k, int64_t n, float* s) {
  for (int64_t j = 0; j < lw / W; ++j) {
    int64_t t = 0;
    for (; t + kTok <= n; t += kTok) qk_tokens<D, kTok>(qt, lw, j, k + t * D, s + t * lw);
    for (; t < n; ++t) qk_tokens<D, 1>(qt, lw, j, k + t * D, s + t * lw);
  }
}

// The online-softmax step of one block for every lane: lane i sees the block's first nv[i] tokens (0: its state is
// left as it is). Scores s (n x lw) become probabilities p = exp(score - new max) (0 where not seen); m and l are
// the running max and sum; corr gets exp(old max - new max), the factor of the lane's accumulator.
void softmax_step(float* s, int64_t lw, int64_t n, const int32_t* nv, float* m, float* l, float* corr) {
  for (int64_t j = 0; j < lw; j += W) {
    const vi seen = loadi(nv + j);
    vf top = splat(-INFINITY);
    for (int64_t t = 0; t < n; ++t) {
      const vf x = loadv(s + t * lw + j);
      top = (vi{} + int32_t(t) < seen) & (top < x) ? x : top;
    }
    const vf old = loadv(m + j);
    const vi any = seen > 0;
    const vf mx = any & (old < top) ? top : old;
    const vf c = any ? vexp(any ? old - mx : splat(0.0f)) : splat(1.0f);  // old = -inf: exp(-87), times 0
    vf sum = {};
    for (int64_t t = 0; t < n; ++t) {
      const vi vis = vi{} + int32_t(t) < seen;
      const vf p = vis ? vexp(vis ? loadv(s + t * lw + j) - mx : splat(0.0f)) : splat(0.0f);
      storev(s + t * lw + j, p);
      sum += p;
    }
    storev(l + j, loadv(l + j) * c + sum);
    storev(m + j, mx);
    storev(corr + j, c);
  }
}

// The vector type that covers D: 16 floats, or 8 for D = 8.
template <int D>
struct DVec {
  typedef vf type;
};
template <>
struct DVec<8> {
  typedef vf8 type;
};

// acc[i] = acc[i] * corr[i] + sum_t p[t][lane[i]] * v[t] for R queries over n tokens (v: n rows of D floats).
template <int D, int R>
inline void pv_queries(const float* p, int64_t lw, const int32_t* lane, const float* v, int64_t n,
                       float* const* acc, const float* corr) {
  typedef typename DVec<D>::type V;
  constexpr int L = sizeof(V) / sizeof(float), C = D / L;
  V a[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) a[r][c] = loadv<V>(acc[r] + c * L) * corr[lane[r]];
  for (int64_t t = 0; t < n; ++t) {
    V vv[C];
    for (int c = 0; c < C; ++c) vv[c] = loadv<V>(v + t * D + c * L);
    for (int r = 0; r < R; ++r) {
      const float pr = p[t * lw + lane[r]];
      for (int c = 0; c < C; ++c) a[r][c] += pr * vv[c];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) storev(acc[r] + c * L, a[r][c]);
}

// Per task: the state of its queries (local query i = local row * G + g) and the lanes of the current segment.
struct Scratch {
  Buf<float> m, l, acc;                // (nq,), (nq,), (nq, D): the task's online-softmax states
  Buf<float> qt, lm, ll, corr, s, k, v;  // lanes: (D, lw) scaled queries, (lw,) states, (B, lw) scores, K/V rows
  Buf<int32_t> query, pos, nv, lane;   // lanes: local query (-1: padding), q_pos, tokens seen; real lanes
  Buf<float*> accs;
};

// The rows of each tile, grouped by segment in segment order: tile t's entries are [start[t], start[t + 1]).
struct Tiles {
  Buf<int64_t> start;
  Buf<int32_t> seg, row;
};

void plan_tiles(const PagedAttention& a, Tiles* tl) {
  const int64_t tiles = (a.rows + kTileRows - 1) / kTileRows;
  Buf<int64_t> fill;
  tl->start.assign(tiles + 1, 0);
  const auto live = [&](int64_t s) { return a.seg_len[s] > 0; };
  for (int64_t s = 0; s < a.segments; ++s)
    for (int64_t i = a.seg_row_indptr[s]; live(s) && i < a.seg_row_indptr[s + 1]; ++i)
      ++tl->start[a.seg_rows[i] / kTileRows + 1];
  for (int64_t t = 0; t < tiles; ++t) tl->start[t + 1] += tl->start[t];
  fill.resize(tiles);
  for (int64_t t = 0; t < tiles; ++t) fill[t] = tl->start[t];
  tl->seg.resize(tl->start[tiles]);
  tl->row.resize(tl->start[tiles]);
  for (int64_t s = 0; s < a.segments; ++s) {
    for (int64_t i = a.seg_row_indptr[s]; live(s) && i < a.seg_row_indptr[s + 1]; ++i) {
      const int64_t e = fill[a.seg_rows[i] / kTileRows]++;
      tl->seg[e] = int32_t(s);
      tl->row[e] = a.seg_rows[i];
    }
  }
}

// Lanes for the count rows (ids in rows) of segment s in the task's tile: queries scaled and transposed, states
// gathered. Returns the lane width lw (a multiple of W).
template <int D, typename T>
int64_t gather(const PagedAttention& a, const int32_t* rows, int64_t count, int64_t r0, int64_t h, Scratch* sc) {
  const int64_t G = a.heads / a.kv_heads, nq = count * G, lw = (nq + W - 1) / W * W;
  const T* q = static_cast<const T*>(a.q);
  sc->qt.assign(D * lw, 0.0f);
  sc->lm.assign(lw, -INFINITY);
  sc->ll.assign(lw, 0.0f);
  sc->query.assign(lw, -1);
  sc->pos.assign(lw, 0);
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t r = rows[i / G], hq = h * G + i % G, local = (r - r0) * G + i % G;
    for (int d = 0; d < D; ++d) sc->qt[d * lw + i] = load1(q, (r * a.heads + hq) * D + d) * a.scale;
    sc->lm[i] = sc->m[local];
    sc->ll[i] = sc->l[local];
    sc->query[i] = int32_t(local);
    sc->pos[i] = a.q_pos != nullptr ? a.q_pos[r] : 0;
  }
  return lw;
}

// Block bi (n tokens) of segment s for the lanes: returns how many of its tokens the lanes see at most (0: none).
int64_t visible(const PagedAttention& a, int64_t s, int64_t bi, int64_t n, int64_t lw, Scratch* sc) {
  const bool causal = a.causal != nullptr && a.causal[s] != 0;
  const int64_t first = causal ? int64_t(a.seg_start[s]) + bi * a.block_size : 0;  // the block's first position
  int64_t most = 0;
  sc->nv.resize(lw);
  for (int64_t i = 0; i < lw; ++i) {
    int64_t seen = sc->query[i] < 0 ? 0 : causal ? imin(n, imax(0, sc->pos[i] - first + 1)) : n;
    sc->nv[i] = int32_t(seen);
    most = imax(most, seen);
  }
  return most;
}

// The segment s for the task's rows listed in it (rows[0 .. count)): block by block, one online-softmax step each.
template <int D, typename T>
void attend_segment(const PagedAttention& a, int64_t s, const int32_t* rows, int64_t count, int64_t r0, int64_t h,
                    Scratch* sc) {
  const int64_t lw = gather<D, T>(a, rows, count, r0, h, sc), nq = count * (a.heads / a.kv_heads);
  const int64_t B = a.block_size, ld = a.kv_heads * D, len = a.seg_len[s];
  sc->s.resize(B * lw);
  sc->corr.resize(lw);
  sc->k.resize(B * D);
  sc->v.resize(B * D);
  sc->accs.resize(nq);
  for (int64_t i = 0; i < nq; ++i) sc->accs[i] = sc->acc.data() + sc->query[i] * D;
  sc->lane.resize(nq);
  for (int64_t i = 0; i < nq; ++i) sc->lane[i] = int32_t(i);
  for (int64_t bi = 0, b = a.seg_block_indptr[s]; b < a.seg_block_indptr[s + 1]; ++b, ++bi) {
    const int64_t n = visible(a, s, bi, imin(B, len - bi * B), lw, sc);
    if (n == 0) continue;  // a causal block no row here sees yet: every state stays as it is
    const int64_t first = (int64_t(a.block_ids[b]) * B * a.kv_heads + h) * D;  // token 0 of the block, head h
    rows_f32<D>(static_cast<const T*>(a.k_cache) + first, ld, n, sc->k.data());
    rows_f32<D>(static_cast<const T*>(a.v_cache) + first, ld, n, sc->v.data());
    qk<D>(sc->qt.data(), lw, sc->k.data(), n, sc->s.data());
    softmax_step(sc->s.data(), lw, n, sc->nv.data(), sc->lm.data(), sc->ll.data(), sc->corr.data());
    int64_t i = 0;
    for (; i + kQueries <= nq; i += kQueries)
      pv_queries<D, kQueries>(sc->s.data(), lw, sc->lane.data() + i, sc->v.data(), n, sc->accs.data() + i,
                              sc->corr.data());
    for (; i < nq; ++i)
      pv_queries<D, 1>(sc->s.data(), lw, sc->lane.data() + i, sc->v.data(), n, sc->accs.data() + i,
                       sc->corr.data());
  }
  for (int64_t i = 0; i < nq; ++i) {
    sc->m[sc->query[i]] = sc->lm[i];
    sc->l[sc->query[i]] = sc->ll[i];
  }
}

// One task: KV head h for the rows of tile `tile`; writes their outputs (zeros for a row that saw no token).
template <int D, typename T>
void run_task(const PagedAttention& a, const Tiles& tl, int64_t tile, int64_t h, Scratch* sc) {
  const int64_t G = a.heads / a.kv_heads, r0 = tile * kTileRows, nr = imin(kTileRows, a.rows - r0), nq = nr * G;
  sc->m.assign(nq, -INFINITY);
  sc->l.assign(nq, 0.0f);
  sc->acc.assign(nq * D, 0.0f);
  const int64_t end = tl.start.p[tile + 1];
  for (int64_t e = tl.start.p[tile]; e < end;) {
    int64_t next = e;
    while (next < end && tl.seg.p[next] == tl.seg.p[e]) ++next;
    attend_segment<D, T>(a, tl.seg.p[e], tl.row.p + e, next - e, r0, h, sc);
    e = next;
  }
  T* out = static_cast<T*>(a.out);
  for (int64_t i = 0; i < nq; ++i) {
    const float inv = sc->l[i] > 0.0f ? 1.0f / sc->l[i] : 0.0f;
    const int64_t o = ((r0 + i / G) * a.heads + h * G + i % G) * D;
    for (int d = 0; d < D; ++d) store1(out, o + d, sc->acc[i * D + d] * inv);
  }
}

template <int D, typename T>
void run_typed(const PagedAttention& a) {
  Tiles tl;
  plan_tiles(a, &tl);
  const int64_t tiles = (a.rows + kTileRows - 1) / kTileRows, tasks = tiles * a.kv_heads;
#pragma omp parallel
  {
    Scratch sc;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) run_task<D, T>(a, tl, task / a.kv_heads, task % a.kv_heads, &sc);
  }
}

}  // namespace

// false when head_dim has no compiled kernel (the caller reports it).
bool paged_attention_run(const PagedAttention& a) {
  switch (a.head_dim) {
#define SPCT_CASE(D)                    \
  case D:                               \
    if (a.bf16) run_typed<D, uint16_t>(a); \
    else run_typed<D, float>(a);        \
    return true;
    SPCT_CASE(8)
    SPCT_CASE(16)
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
