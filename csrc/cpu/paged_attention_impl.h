// The CPU paged_attention kernel, compiled once per instruction set: paged_attention.cpp (baseline),
// paged_attention_avx2.cpp and paged_attention_avx512.cpp include this file with SPCT_ISA naming the namespace, and
// paged_attention.cpp picks one at run time. Written on GCC vector types of 16 floats, which each build lowers to its
// widest registers.
//
// Work: one task per (KV head, tile of queries). The queries of KV head h are the (row, query head) pairs reading
// it, numbered r * G + g (G = Hq / Hkv), and cut into tiles (tile_size). A task walks every segment in index
// order and, for the segment's rows with queries in its tile, every block in order: the block's keys and values are
// read once (as float32) for all those queries (laid across vector lanes), then each query's online-softmax state
// (max, sum, float32 accumulator of D) is updated once for the block (the rule in spct/paged_attention.h). Every
// operation on a query is lane-wise or its own sequential loop, so its bits do not depend on its lane, on which
// other queries share the block, or on the task's other segments; tasks share nothing, so neither do threads. (The
// AVX-512 BF16 build cuts a call of fewer tasks than two per thread into pieces of blocks instead, with the same
// bits: paged_attention_split.h.)
//
// No standard-library templates here (std::vector, std::max...): their instantiations are shared with the other
// translation units by the linker, and one compiled with AVX-512 could end up run on a CPU without it.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "spct/paged_attention.h"

#if defined(SPCT_AMX) || defined(SPCT_DPBF16)
#include <immintrin.h>
#endif
#if defined(SPCT_AMX)
#include "amx_tiles.h"
#endif

#ifndef SPCT_ISA
#error "define SPCT_ISA before including paged_attention_impl.h"
#endif

namespace spct {
namespace cpu {
namespace SPCT_ISA {
namespace {

using attn::PagedAttention;

#include "vec_impl.h"  // W (floats per vector: queries per lane group), Buf, vf/vi, bf16, load1/store1, vexp

// Queries per task. A query's bits do not depend on the tile it is in (tested), so the size follows the work: one
// vector of lanes while a KV head has fewer than three vectors of queries, three vectors from there. Each task
// walks all of its segments' blocks (converting K and V to float32, the online-softmax bookkeeping), which cost
// more than the dot products of one vector of lanes: a 16-row decode step over a 1,100-token prompt (Hq 9, Hkv 3:
// 48 queries per KV head) took 570 us as 9 tasks of 16 queries on 2 threads and 372 us as 3 tasks of 48, though
// one thread then does two of the three.
#if defined(SPCT_AMX) || defined(SPCT_DPBF16)
// The AMX and AVX-512 BF16 builds walk a block for little more than the products of its lane groups (no float32
// copies of K and V), so the tile is the largest (3, 2 or 1 vectors of lanes) that still gives every thread two tasks:
// a 16-row step (48 queries per KV head, 3 KV heads) on 2 threads runs 6 tasks of 2 and 1 vectors instead of 3 of 3,
// one thread doing two of them.
inline int64_t tile_size(int64_t queries, int64_t kv_heads, int64_t threads) {
  for (int64_t size = 3 * W; size > W; size -= W)
    if (queries >= size && kv_heads * ((queries + size - 1) / size) >= 2 * threads) return size;
  return W;
}
#else
inline int64_t tile_size(int64_t queries, int64_t, int64_t) { return queries >= 3 * W ? 3 * W : W; }
#endif
#if defined(__AVX512F__)
constexpr int kAcc = 24;  // score accumulators (vectors of W) a q . k pass holds in registers
#else
constexpr int kAcc = 6;
#endif
constexpr int kQueries = 4;  // queries per p . v pass

inline int64_t imax(int64_t a, int64_t b) { return a < b ? b : a; }
typedef float vf8 __attribute__((vector_size(32)));

template <typename V>
inline V loadv(const float* p) {
  V v;
  memcpy(&v, p, sizeof v);
  return v;
}
inline vi loadi(const int32_t* p) {
  vi v;
  memcpy(&v, p, sizeof v);
  return v;
}
template <typename V>
inline void storev(float* p, V v) {
  memcpy(p, &v, sizeof v);
}

// n rows of D values (row stride ld elements) as float32 rows: float32 ones where they are (the row stride stays ld),
// bfloat16 ones converted into dst (row stride D).
template <int D>
const float* rows_f32(const float* src, int64_t* ld, int64_t, float*) {
  (void)ld;
  return src;
}
template <int D>
const float* rows_f32(const uint16_t* src, int64_t* ld, int64_t n, float* dst) {
  typedef uint16_t vh __attribute__((vector_size(32)));
  constexpr int C = D / W;
  for (int64_t t = 0; t < n; ++t) {
    for (int c = 0; c < C; ++c) {
      vh h;
      memcpy(&h, src + t * *ld + c * W, sizeof h);
      const vi bits = __builtin_convertvector(h, vi) << 16;  // bf16 is the top half of a float32
      memcpy(dst + t * D + c * W, &bits, sizeof bits);
    }
    for (int d = C * W; d < D; ++d) {
      const uint32_t u = uint32_t(src[t * *ld + d]) << 16;
      memcpy(dst + t * D + d, &u, sizeof u);
    }
  }
  *ld = D;
  return dst;
}

// Scores of U tokens (k: U rows of D floats, row stride kld) for the J lane groups from j0: s[u * lw + j * W + lane]
// = sum_d qt[d * lw + j * W + lane] * k[u * kld + d], summed over d in order (every query's score, whatever U, J
// and j0).
template <int D, int U, int J>
inline void qk_tokens(const float* qt, int64_t lw, int64_t j0, const float* k, int64_t kld, float* s) {
  vf acc[U][J] = {};
  for (int d = 0; d < D; ++d) {
    vf qv[J];
    for (int j = 0; j < J; ++j) qv[j] = loadv(qt + d * lw + (j0 + j) * W);
    for (int u = 0; u < U; ++u) {
      const float kd = k[u * kld + d];
      for (int j = 0; j < J; ++j) acc[u][j] += qv[j] * kd;
    }
  }
  for (int u = 0; u < U; ++u)
    for (int j = 0; j < J; ++j) storev(s + u * lw + (j0 + j) * W, acc[u][j]);
}

template <int D, int J>
void qk_groups(const float* qt, int64_t lw, int64_t j0, const float* k, int64_t kld, int64_t n, float* s) {
  constexpr int U = kAcc / J < 8 ? kAcc / J : 8;
  int64_t t = 0;
  for (; t + U <= n; t += U) qk_tokens<D, U, J>(qt, lw, j0, k + t * kld, kld, s + t * lw);
  for (; t < n; ++t) qk_tokens<D, 1, J>(qt, lw, j0, k + t * kld, kld, s + t * lw);
}

// Scores s (n x lw) of the lanes' queries qt (D x lw) against n keys k (n x D, row stride kld).
template <int D>
void qk(const float* qt, int64_t lw, const float* k, int64_t kld, int64_t n, float* s) {
  int64_t j = 0;
  for (; j + 3 <= lw / W; j += 3) qk_groups<D, 3>(qt, lw, j, k, kld, n, s);
  if (lw / W - j == 2) qk_groups<D, 2>(qt, lw, j, k, kld, n, s);
  if (lw / W - j == 1) qk_groups<D, 1>(qt, lw, j, k, kld, n, s);
}

// The online-softmax step of one block for every lane: lane i sees the block's tokens [fv[i], nv[i]) (nv[i] = 0:
// none, its state is left as it is). Scores s (n x lw) become probabilities p = exp(score - new max) (0 where not
// seen); m and l are the running max and sum; corr gets exp(old max - new max), the factor of the lane's
// accumulator. The scores are taken times scale (the vector kernel's are scaled already: 1, exact), then, Capped,
// capped to cap * tanh(score / cap) (written back into s by the first pass, which the second reads). Masked = false
// when every lane sees all n tokens (padding lanes too: their queries are zeros): the same bits without the masks.
template <bool Masked, bool Capped>
void softmax_step(float* s, int64_t lw, int64_t n, const int32_t* fv, const int32_t* nv, float* m, float* l,
                  float* corr, float scale, float cap) {
  for (int64_t j = 0; j < lw; j += W) {
    const vi from = loadi(fv + j), seen = loadi(nv + j), any = seen > 0;
    vf top = splat(-INFINITY);
    for (int64_t t = 0; t < n; ++t) {
      vf x = loadv(s + t * lw + j) * scale;
      if (Capped) {
        x = cap * vtanh(x / cap);
        storev(s + t * lw + j, x);
      }
      const vi tv = vi{} + int32_t(t);
      top = Masked ? ((from <= tv) & (tv < seen) & (top < x) ? x : top) : (top < x ? x : top);
    }
    const vf old = loadv(m + j);
    const vf mx = Masked ? (any & (old < top) ? top : old) : (old < top ? top : old);
    // old = -inf (nothing seen yet): exp(-87) ~ 1.6e-38, times a zero sum and accumulator
    const vf c = Masked ? (any ? vexp(any ? old - mx : splat(0.0f)) : splat(1.0f)) : vexp(old - mx);
    vf sum = {};
    for (int64_t t = 0; t < n; ++t) {
      const vf x = Capped ? loadv(s + t * lw + j) : loadv(s + t * lw + j) * scale;
      vf p;
      if (Masked) {
        const vi tv = vi{} + int32_t(t), vis = (from <= tv) & (tv < seen);
        p = vis ? vexp(vis ? x - mx : splat(0.0f)) : splat(0.0f);
      } else {
        p = vexp(x - mx);
      }
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

// acc[i] = acc[i] * corr[i] + sum_t p[t][lane[i]] * v[t] for R queries over n tokens (v: n rows of D floats, row
// stride vld).
template <int D, int R>
inline void pv_queries(const float* p, int64_t lw, const int32_t* lane, const float* v, int64_t vld, int64_t n,
                       float* const* acc, const float* corr) {
  typedef typename DVec<D>::type V;
  constexpr int L = sizeof(V) / sizeof(float), C = D / L;
  V a[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) a[r][c] = loadv<V>(acc[r] + c * L) * corr[lane[r]];
  for (int64_t t = 0; t < n; ++t) {
    V vv[C];
    for (int c = 0; c < C; ++c) vv[c] = loadv<V>(v + t * vld + c * L);
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
  Buf<int32_t> query, pos, fv, nv, lane;  // lanes: local query (-1: padding), q_pos, tokens seen [fv, nv); real lanes
  Buf<float*> accs;
  Buf<uint32_t> qb, vb, pb;  // the AMX path's packed queries, values and probabilities (paged_attention_amx.h)
  Buf<float> o;          // the AMX path's P . V of one block (lw, D)
  int64_t lw = 0;
  bool narrow = false;  // the AMX path's tiles are configured narrow (paged_attention_amx.h)
};

// The rows of each tile of `size` queries, grouped by segment in segment order: tile t's entries are [start[t],
// start[t + 1]). A row is in every tile that holds one of its queries (r * G .. r * G + G - 1); segments without
// tokens are left out.
struct Tiles {
  int64_t size = W, count = 0;
  Buf<int64_t> start;
  Buf<int32_t> seg, row;
};

void plan_tiles(const PagedAttention& a, Tiles* tl) {
  const int64_t G = a.heads / a.kv_heads, size = tile_size(a.rows * G, a.kv_heads, omp_get_max_threads());
  const int64_t tiles = (a.rows * G + size - 1) / size;
  tl->size = size;
  tl->count = tiles;
  Buf<int64_t> fill;
  tl->start.assign(tiles + 1, 0);
  for (int pass = 0; pass < 2; ++pass) {  // count, then fill
    for (int64_t s = 0; s < a.segments; ++s) {
      for (int64_t i = a.seg_row_indptr[s]; a.seg_len[s] > 0 && i < a.seg_row_indptr[s + 1]; ++i) {
        const int64_t r = a.seg_rows[i];
        for (int64_t t = r * G / size; t <= (r * G + G - 1) / size; ++t) {
          if (pass == 0) {
            ++tl->start[t + 1];
            continue;
          }
          const int64_t e = fill[t]++;
          tl->seg[e] = int32_t(s);
          tl->row[e] = int32_t(r);
        }
      }
    }
    if (pass == 1) break;
    for (int64_t t = 0; t < tiles; ++t) tl->start[t + 1] += tl->start[t];
    fill.resize(tiles);
    for (int64_t t = 0; t < tiles; ++t) fill[t] = tl->start[t];
    tl->seg.resize(tl->start[tiles]);
    tl->row.resize(tl->start[tiles]);
  }
}

// Lanes for the queries in [q0, q0 + size) of the count rows (ids in rows) of segment s: queries scaled and
// transposed as float32 (Floats; the AMX path packs its own), states gathered. Returns the number of lanes used;
// sc->lw gets the lane width (a multiple of W).
template <int D, typename T, bool Floats = true>
int64_t gather(const PagedAttention& a, const int32_t* rows, int64_t count, int64_t q0, int64_t size, int64_t h,
               Scratch* sc) {
  const int64_t G = a.heads / a.kv_heads;
  const auto g_lo = [&](int64_t r) { return imax(0, q0 - r * G); };  // the row's queries in the tile: [lo, hi)
  const auto g_hi = [&](int64_t r) { return imin(G, q0 + size - r * G); };
  int64_t lanes = 0;
  for (int64_t e = 0; e < count; ++e) lanes += g_hi(rows[e]) - g_lo(rows[e]);
  const int64_t lw = (lanes + W - 1) / W * W;
  const T* q = static_cast<const T*>(a.q);
  sc->lw = lw;
  if (Floats) sc->qt.assign(D * lw, 0.0f);
  sc->lm.assign(lw, -INFINITY);
  sc->ll.assign(lw, 0.0f);
  sc->query.assign(lw, -1);
  sc->pos.assign(lw, 0);
  int64_t i = 0;
  for (int64_t e = 0; e < count; ++e) {
    const int64_t r = rows[e];
    for (int64_t g = g_lo(r); g < g_hi(r); ++g, ++i) {
      const int64_t local = r * G + g - q0;
      for (int d = 0; Floats && d < D; ++d) sc->qt[d * lw + i] = load1(q, (r * a.heads + h * G + g) * D + d) * a.scale;
      sc->lm[i] = sc->m[local];
      sc->ll[i] = sc->l[local];
      sc->query[i] = int32_t(local);
      sc->pos[i] = a.q_pos != nullptr ? a.q_pos[r] : 0;
    }
  }
  return i;
}

// Block bi (n tokens) of segment s for the lanes: lane i sees its tokens [fv[i], nv[i]) (causal: up to its q_pos; a
// window: from q_pos - window + 1 on; nv[i] = fv[i] = 0: none). Returns how many of its tokens the lanes see at most
// (0: none, and the block is not read: after every lane's q_pos, or wholly before every lane's window).
int64_t visible(const PagedAttention& a, int64_t s, int64_t bi, int64_t n, int64_t lw, Scratch* sc) {
  const bool causal = a.causal != nullptr && a.causal[s] != 0;
  // the block's first position (a window places every segment's tokens)
  const int64_t first = causal || a.window > 0 ? int64_t(a.seg_start[s]) + bi * a.block_size : 0;
  int64_t most = 0;
  sc->fv.resize(lw);
  sc->nv.resize(lw);
  for (int64_t i = 0; i < lw; ++i) {
    int64_t seen = sc->query[i] < 0 ? 0 : causal ? imin(n, imax(0, sc->pos[i] - first + 1)) : n;
    int64_t from = a.window > 0 ? imin(n, imax(0, sc->pos[i] - a.window + 1 - first)) : 0;
    if (from >= seen) from = seen = 0;
    sc->fv[i] = int32_t(from);
    sc->nv[i] = int32_t(seen);
    most = imax(most, seen);
  }
  return most;
}

// Token 0 of KV head h in cache block `block` (elements from the cache's start).
inline int64_t head_offset(const PagedAttention& a, int64_t block, int64_t h, int64_t D) {
  return (block * a.block_size * a.kv_heads + h) * D;
}

// Each real lane's float32 accumulator (the task's, by local query), for the segment's P . V.
template <int D>
void point_accumulators(int64_t nq, Scratch* sc) {
  sc->accs.resize(nq);
  for (int64_t i = 0; i < nq; ++i) sc->accs[i] = sc->acc.data() + sc->query[i] * D;
}

// softmax_step on the block's scores sc->s (from visible()), masked where the segment is causal or a window is set
// (a window's bounds differ by lane in any segment), capped where a softcap is set.
inline void softmax_block(const PagedAttention& a, bool causal, int64_t lw, int64_t n, float* corr, float scale,
                          Scratch* sc) {
  float *s = sc->s.data(), *m = sc->lm.data(), *l = sc->ll.data();
  const int32_t *fv = sc->fv.data(), *nv = sc->nv.data();
  const float cap = a.softcap;
  if (causal || a.window > 0) {
    if (cap > 0.0f) return softmax_step<true, true>(s, lw, n, fv, nv, m, l, corr, scale, cap);
    return softmax_step<true, false>(s, lw, n, fv, nv, m, l, corr, scale, cap);
  }
  if (cap > 0.0f) return softmax_step<false, true>(s, lw, n, fv, nv, m, l, corr, scale, cap);
  softmax_step<false, false>(s, lw, n, fv, nv, m, l, corr, scale, cap);
}

// The lanes' online-softmax states back into the task's, after the segment's last block.
inline void store_states(int64_t nq, Scratch* sc) {
  for (int64_t i = 0; i < nq; ++i) {
    sc->m[sc->query[i]] = sc->lm[i];
    sc->l[sc->query[i]] = sc->ll[i];
  }
}

// The segment s for the task's rows listed in it (rows[0 .. count)): block by block, one online-softmax step each.
template <int D, typename T>
void attend_segment(const PagedAttention& a, int64_t s, const int32_t* rows, int64_t count, int64_t q0,
                    int64_t size, int64_t h, Scratch* sc) {
  const int64_t nq = gather<D, T>(a, rows, count, q0, size, h, sc), lw = sc->lw;
  const int64_t B = a.block_size, ld = a.kv_heads * D, len = a.seg_len[s];
  const bool causal = a.causal != nullptr && a.causal[s] != 0;
  const T* k_cache = static_cast<const T*>(a.k_cache);
  const T* v_cache = static_cast<const T*>(a.v_cache);
  sc->s.resize(B * lw);
  sc->corr.resize(lw);
  sc->k.resize(B * D);
  sc->v.resize(B * D);
  point_accumulators<D>(nq, sc);
  sc->lane.resize(nq);
  for (int64_t i = 0; i < nq; ++i) sc->lane[i] = int32_t(i);
  for (int64_t bi = 0, b = a.seg_block_indptr[s]; b < a.seg_block_indptr[s + 1]; ++b, ++bi) {
    const int64_t n = visible(a, s, bi, imin(B, len - bi * B), lw, sc);
    if (n == 0) continue;  // a block no lane here sees (causal, or before the window): not read, states as they are
    const int64_t first = head_offset(a, a.block_ids[b], h, D);
    int64_t kld = ld, vld = ld;
    const float* k = rows_f32<D>(k_cache + first, &kld, n, sc->k.data());
    const float* v = rows_f32<D>(v_cache + first, &vld, n, sc->v.data());
    qk<D>(sc->qt.data(), lw, k, kld, n, sc->s.data());
    softmax_block(a, causal, lw, n, sc->corr.data(), 1.0f, sc);
    int64_t i = 0;
    for (; i + kQueries <= nq; i += kQueries)
      pv_queries<D, kQueries>(sc->s.data(), lw, sc->lane.data() + i, v, vld, n, sc->accs.data() + i,
                              sc->corr.data());
    for (; i < nq; ++i)
      pv_queries<D, 1>(sc->s.data(), lw, sc->lane.data() + i, v, vld, n, sc->accs.data() + i, sc->corr.data());
  }
  store_states(nq, sc);
}

#if defined(SPCT_AMX) || defined(SPCT_DPBF16)
#include "paged_attention_bf16.h"
#endif
#if defined(SPCT_AMX)
#include "paged_attention_amx.h"
#elif defined(SPCT_DPBF16)
#include "paged_attention_dpbf16.h"
#include "paged_attention_split.h"
#endif

// One task: KV head h for the queries of tile `tile`; writes their outputs (zeros for a row that saw no token).
template <int D, typename T>
void run_task(const PagedAttention& a, const Tiles& tl, int64_t tile, int64_t h, Scratch* sc) {
  const int64_t G = a.heads / a.kv_heads, q0 = tile * tl.size, nq = imin(tl.size, a.rows * G - q0);
  sc->m.assign(nq, -INFINITY);
  sc->l.assign(nq, 0.0f);
  sc->acc.assign(nq * D, 0.0f);
  const int64_t end = tl.start.p[tile + 1];
  for (int64_t e = tl.start.p[tile]; e < end;) {
    int64_t next = e;
    while (next < end && tl.seg.p[next] == tl.seg.p[e]) ++next;
#if defined(SPCT_AMX) || defined(SPCT_DPBF16)
    if constexpr (sizeof(T) == 2 && D % 32 == 0) {
      // the first block of the task's next segment, prefetched during this one's last block
      const int64_t after = next < end ? int64_t(a.block_ids[a.seg_block_indptr[tl.seg.p[next]]]) : -1;
#if defined(SPCT_AMX)
      attend_segment_amx<D>(a, tl.seg.p[e], tl.row.p + e, next - e, q0, tl.size, h, after, sc);
#else
      attend_segment_dp<D>(a, tl.seg.p[e], tl.row.p + e, next - e, q0, tl.size, h, after, sc);
#endif
    } else {
      attend_segment<D, T>(a, tl.seg.p[e], tl.row.p + e, next - e, q0, tl.size, h, sc);
    }
#else
    attend_segment<D, T>(a, tl.seg.p[e], tl.row.p + e, next - e, q0, tl.size, h, sc);
#endif
    e = next;
  }
  T* out = static_cast<T*>(a.out);
  for (int64_t i = 0; i < nq; ++i) {
    const float inv = sc->l[i] > 0.0f ? 1.0f / sc->l[i] : 0.0f;
    const int64_t r = (q0 + i) / G, o = (r * a.heads + h * G + (q0 + i) % G) * D;
    for (int d = 0; d < D; ++d) store1(out, o + d, sc->acc[i * D + d] * inv);
  }
}

// The plan and each thread's scratch are kept for the thread's next call (every buffer is sized and filled where it is
// used). Why: made anew, their buffers were allocated and freed in every call, every layer of every step; in a k = 1
// decode step malloc and free took 2.5% of the samples.
template <int D, typename T>
void run_typed(const PagedAttention& a) {
  thread_local Tiles kept;
  plan_tiles(a, &kept);
  const Tiles* tl = &kept;  // the calling thread's, for every thread (inside the region `kept` names the thread's own)
#if defined(SPCT_DPBF16)
  if constexpr (sizeof(T) == 2 && D % 32 == 0) {
    thread_local Split split;
    if (plan_split(a, kept, omp_get_max_threads(), &split)) return run_split<D>(a, &split);
  }
#endif
  const int64_t tasks = tl->count * a.kv_heads;
#pragma omp parallel
  {
    thread_local Scratch sc;
    sc.narrow = false;  // the AMX path's tiles: configured full below
#if defined(SPCT_AMX)
    amx_configure();
#endif
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) run_task<D, T>(a, *tl, task / a.kv_heads, task % a.kv_heads, &sc);
#if defined(SPCT_AMX)
    _tile_release();
#endif
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
