// The AVX-512 BF16 path of the CPU paged_attention kernel (bfloat16, head_dim a multiple of 32, block_size a multiple
// of 16): included by paged_attention_impl.h inside its build's namespace (paged_attention_avx512bf16.cpp), which
// defines SPCT_DPBF16; for CPUs with AVX-512 BF16 and no AMX (AMD Zen 4, Intel Cooper Lake).
//
// Why: the float32 vector kernel converts every key and value to float32 and spends one FMA per query, dimension and
// token on each of q . k and p . v. A bfloat16 pair instruction (VDPBF16PS) does two of those products per lane and
// reads the cache as it is stored. The arithmetic is the AMX path's, one vector row at a time (its comment in
// paged_attention_amx.h): scores summed over pairs of dims in order in float32, the vector kernel's softmax_step,
// probabilities rounded to bfloat16, P . V of the block from zero over pairs of tokens in order, then acc = acc *
// corr + O. Every lane's sums take the same instructions in the same order whatever the other lanes, tokens past a
// lane's last are zero in P (past the block's last, in V too), so a query's bits depend on neither its lane, the
// other queries nor the task (the rule in spct/paged_attention.h; tested as for the AMX path).
//
// Measured on a 2-core EPYC over 30 cold copies of a layer's KV (16 rows over a 1,000-token prompt plus 1 and 128
// tokens each): 272 and 523 us per layer prefetching one block ahead into L1, 220 and 367 us with the
// prefetch below. A segment of at most kNarrow lanes (a row's own, a prompt read by one or two rows) takes its
// scores with the block's tokens across the lanes from a transpose of the keys (dp_scores_narrow), and its softmax
// that way too (narrow_softmax); a gather per pair of dims instead was slower (204 against 179 us for the own tokens
// alone).

constexpr int kDpAcc = 24;  // float32 accumulators (vectors) a pass keeps in registers
constexpr int64_t kAhead = 2;  // blocks prefetched ahead

// Scores of U tokens (keys from k, row stride ld) for lane groups [j0, j0 + J) into s (row u at s + u * lw).
template <int D, int U, int J>
inline void dp_tokens(const uint32_t* qb, int64_t j0, const uint16_t* k, int64_t ld, int64_t lw, float* s) {
  __m512 acc[U][J];
  for (int u = 0; u < U; ++u)
    for (int j = 0; j < J; ++j) acc[u][j] = _mm512_setzero_ps();
  for (int p = 0; p < D / 2; ++p) {
    __m512bh qv[J];
    for (int j = 0; j < J; ++j)
      qv[j] = (__m512bh)_mm512_loadu_si512(qb + ((j0 + j) * D / 32 + p / 16) * 256 + p % 16 * 16);
    for (int u = 0; u < U; ++u) {
      uint32_t pair;
      memcpy(&pair, k + u * ld + 2 * p, sizeof pair);
      const __m512bh kv = (__m512bh)_mm512_set1_epi32(int(pair));
      for (int j = 0; j < J; ++j) acc[u][j] = _mm512_dpbf16_ps(acc[u][j], qv[j], kv);
    }
  }
  for (int u = 0; u < U; ++u)
    for (int j = 0; j < J; ++j) _mm512_storeu_ps(s + u * lw + (j0 + j) * W, acc[u][j]);
}

template <int D, int J>
void dp_groups(const uint32_t* qb, int64_t j0, const uint16_t* k, int64_t ld, int64_t n, int64_t lw, float* s) {
  constexpr int U = kDpAcc / J < 8 ? kDpAcc / J : 8;
  int64_t t = 0;
  for (; t + U <= n; t += U) dp_tokens<D, U, J>(qb, j0, k + t * ld, ld, lw, s + t * lw);
  for (; t < n; ++t) dp_tokens<D, 1, J>(qb, j0, k + t * ld, ld, lw, s + t * lw);
}

// Scores of the block's n tokens for every lane group, unscaled (softmax_step scales them).
template <int D>
void dp_scores(const uint32_t* qb, const uint16_t* k, int64_t ld, int64_t n, int64_t lw, float* s) {
  int64_t j = 0;
  for (; j + 3 <= lw / W; j += 3) dp_groups<D, 3>(qb, j, k, ld, n, lw, s);
  if (lw / W - j == 2) dp_groups<D, 2>(qb, j, k, ld, n, lw, s);
  if (lw / W - j == 1) dp_groups<D, 1>(qb, j, k, ld, n, lw, s);
}

// A segment with at most this many real lanes (one group) takes its scores with the tokens across the lanes
// (dp_scores_narrow): a decode row's own segment (G lanes) and a prompt read by one or two rows. Measured
// alternately in one process over 20 copies of a layer's KV (2-core EPYC, Hq 9 over Hkv 3, bfloat16), against
// dp_scores: one row over a 1,000-token prompt 78 against 84 us (1 thread: 106 against 119); 16 rows over it plus
// 128 tokens each 312 against 330 us; the 16 rows' own 128 tokens alone 133 against 141 (1 thread: 232 against
// 265). The softmax then ran over all 16 lanes; narrow_softmax takes it over the real ones.
constexpr int kNarrow = 8;

// 16 rows of 16 words (row u at src + u * ld words) transposed: col[p] holds word p of rows 0..15.
inline void transpose16(const uint32_t* src, int64_t ld, __m512i col[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    const __m512i a = _mm512_loadu_si512(src + i * ld), b = _mm512_loadu_si512(src + (i + 1) * ld);
    t[i] = _mm512_unpacklo_epi32(a, b);  // per 128-bit lane L: rows i, i + 1 of words 4L, 4L + 1
    t[i + 1] = _mm512_unpackhi_epi32(a, b);  // words 4L + 2, 4L + 3
  }
  for (int g = 0; g < 4; ++g) {  // u[4g + m]: word 4L + m of rows 4g .. 4g + 3
    u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int m = 0; m < 4; ++m) {  // t: words m, 8 + m (0x88) and 4 + m, 12 + m (0xdd) of rows 0-7, then 8-15
    t[m] = _mm512_shuffle_i32x4(u[m], u[4 + m], 0x88);
    t[4 + m] = _mm512_shuffle_i32x4(u[m], u[4 + m], 0xdd);
    t[8 + m] = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0x88);
    t[12 + m] = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0xdd);
  }
  for (int m = 0; m < 4; ++m) {
    col[m] = _mm512_shuffle_i32x4(t[m], t[8 + m], 0x88);
    col[8 + m] = _mm512_shuffle_i32x4(t[m], t[8 + m], 0xdd);
    col[4 + m] = _mm512_shuffle_i32x4(t[4 + m], t[12 + m], 0x88);
    col[12 + m] = _mm512_shuffle_i32x4(t[4 + m], t[12 + m], 0xdd);
  }
}

// dp_scores for Q real lanes of one group (lw = W), each 16 tokens of the block as one vector: the keys transposed
// (a vector per pair of dims) and every query's pairs broadcast. The same bits as dp_scores: each score is summed
// by the same instruction over the same pairs of dims in the same order from zero (a product of two bfloat16 is
// exact, so which operand holds the key does not matter). Why: dp_scores spends one instruction per token and pair
// of dims for all 16 lanes, 3 of them real in a decode row's own segment; this spends a 16-token transpose and one
// instruction per pair and query. Lane i's scores go to sn + i * B with the tokens across (narrow_softmax); tokens
// past n are computed from the block's rows past them and never read.
template <int D, int Q>
void dp_scores_narrow(const uint32_t* qb, const uint16_t* k, int64_t ld, int64_t n, int64_t B, float* sn) {
  for (int64_t t0 = 0; t0 < n; t0 += kTok) {
    __m512 acc[Q];
    for (int i = 0; i < Q; ++i) acc[i] = _mm512_setzero_ps();
    for (int c = 0; c < D / 32; ++c) {
      __m512i col[16];
      transpose16(reinterpret_cast<const uint32_t*>(k + t0 * ld) + 16 * c, ld / 2, col);
      for (int p = 0; p < 16; ++p)
        for (int i = 0; i < Q; ++i)
          acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)col[p],
                                    (__m512bh)_mm512_set1_epi32(int(qb[c * 256 + p * 16 + i])));
    }
    for (int i = 0; i < Q; ++i) _mm512_storeu_ps(sn + i * B + t0, acc[i]);
  }
}

// The narrow scores for nq (1 .. kNarrow) real lanes.
template <int D>
void dp_scores_few(const uint32_t* qb, const uint16_t* k, int64_t ld, int64_t n, int64_t nq, int64_t B, float* sn) {
  switch (nq) {
#define SPCT_NARROW(Q) \
  case Q:              \
    return dp_scores_narrow<D, Q>(qb, k, ld, n, B, sn);
    SPCT_NARROW(1)
    SPCT_NARROW(2)
    SPCT_NARROW(3)
    SPCT_NARROW(4)
    SPCT_NARROW(5)
    SPCT_NARROW(6)
    SPCT_NARROW(7)
    SPCT_NARROW(8)
#undef SPCT_NARROW
  }
}

// softmax_step and dp_pack_probs for the nq real lanes of a narrow segment (lw = W), on their scores as laid by
// dp_scores_narrow (lane i's n tokens at sn + i * B): probabilities into pw as dp_pack_probs lays them, the lanes'
// m, l and corr updated. The same bits as softmax_step: each lane's maximum is the same sequence of comparisons,
// each probability the same lane-wise expressions (a score times scale, minus the maximum, vexp: written as there,
// so the compiler contracts them alike), each sum the same float32 additions in token order, the state update the
// same vector expressions. The padding lanes' sums are left out (their states are never read: store_states keeps
// the real lanes'). Why: softmax_step spends a vexp per token on all 16 lanes, 3 of them real in a decode row's own
// segment and in a single row's prompt. Measured alternately in one process over 20 copies of a layer's KV (2-core
// EPYC, Hq 9 over Hkv 3; the values of the few lanes in one pass too, dp_block_values): 16 rows over a 1,000-token
// prompt plus 128 tokens each 341-345 against 368-372 us per layer; their own 128 tokens alone 131-169 against
// 152-203; one row over the prompt plus 128 tokens 68-93 against 86-119.
template <bool Masked>
void narrow_softmax(const float* sn, int64_t B, int64_t n, int64_t nq, const int32_t* nv, float* m, float* l,
                    float* corr, float scale, uint32_t* pw) {
  alignas(64) float top[W] = {}, sums[W] = {}, probs[kTok];
  for (int64_t i = 0; i < nq; ++i) {
    float t = -INFINITY;
    for (int64_t u = 0; u < n; ++u) {
      const float x = sn[i * B + u] * scale;
      if ((!Masked || u < nv[i]) && t < x) t = x;
    }
    top[i] = t;
  }
  const vi seen = loadi(nv), any = seen > 0;
  const vf old = loadv(m), topv = loadv(top);
  const vf mx = Masked ? (any & (old < topv) ? topv : old) : (old < topv ? topv : old);
  const vf c = Masked ? (any ? vexp(any ? old - mx : splat(0.0f)) : splat(1.0f)) : vexp(old - mx);
  vi token;
  for (int u = 0; u < W; ++u) token[u] = u;
  for (int64_t i = 0; i < nq; ++i) {
    const vf mi = splat(mx[i]);
    float sum = 0.0f;
    for (int64_t t0 = 0; t0 < n; t0 += kTok) {
      const vf x = loadv(sn + i * B + t0) * scale;
      vf p;
      if (Masked) {
        const vi vis = token + int32_t(t0) < vi{} + nv[i];
        p = vis ? vexp(vis ? x - mi : splat(0.0f)) : splat(0.0f);
      } else {
        p = vexp(x - mi);
      }
      p = token + int32_t(t0) < vi{} + int32_t(n) ? p : splat(0.0f);  // zero past the block's last token
      storev(probs, p);
      for (int64_t u = 0; u < kTok && t0 + u < n; ++u) sum += probs[u];
      const __m256i pairs = (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(probs));  // tokens 2u, 2u + 1: word u
      alignas(32) uint32_t words[kTok / 2];
      _mm256_store_si256((__m256i*)words, pairs);
      for (int64_t u = 0; u < kTok / 2 && t0 + 2 * u < n; ++u) pw[(t0 / 2 + u) * W + i] = words[u];
    }
    sums[i] = sum;
  }
  storev(l, loadv(l) * c + loadv(sums));
  storev(m, mx);
  storev(corr, c);
}

// The block's probabilities (s, n tokens) as pairs of tokens: word u * lw + lane holds tokens 2u and 2u + 1 of the
// lane, zero past token n.
void dp_pack_probs(const float* s, int64_t lw, int64_t n, uint32_t* pw) {
  for (int64_t u = 0; 2 * u < n; ++u)
    for (int64_t j = 0; j < lw; j += W) _mm512_storeu_si512(pw + u * lw + j, prob_pair(s + j, lw, 2 * u, n));
}

// For R queries (lanes i0 ..) and dims [16 e0, 16 (e0 + E)): O = P . V over the block's `pairs` pairs of tokens (vb
// from pack_values), then acc = acc * corr + O.
template <int R, int E, int D>
inline void dp_values(const uint32_t* pw, int64_t lw, int64_t i0, const uint32_t* vb, int64_t pairs, int64_t e0,
                      float* const* accs, const float* corr) {
  __m512 o[R][E];
  for (int r = 0; r < R; ++r)
    for (int e = 0; e < E; ++e) o[r][e] = _mm512_setzero_ps();
  for (int64_t u = 0; u < pairs; ++u) {
    __m512bh vv[E];
    for (int e = 0; e < E; ++e)
      vv[e] = (__m512bh)_mm512_loadu_si512(vb + ((u / 8 * (D / 16) + e0 + e) * 8 + u % 8) * 16);
    for (int r = 0; r < R; ++r) {
      const __m512bh p = (__m512bh)_mm512_set1_epi32(int(pw[u * lw + i0 + r]));
      for (int e = 0; e < E; ++e) o[r][e] = _mm512_dpbf16_ps(o[r][e], vv[e], p);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* acc = accs[i0 + r] + e0 * 16;
    const __m512 c = _mm512_set1_ps(corr[i0 + r]);
    for (int e = 0; e < E; ++e)
      _mm512_storeu_ps(acc + e * 16, _mm512_fmadd_ps(_mm512_loadu_ps(acc + e * 16), c, o[r][e]));
  }
}

// Every real lane's P . V for the block and its accumulation, 6 queries by 4 vectors of dims at a time.
template <int D>
void dp_block_values(const uint32_t* pw, int64_t lw, int64_t nq, const uint32_t* vb, int64_t n, float* const* accs,
                     const float* corr) {
  constexpr int E = D / 16 < 4 ? D / 16 : 4, R = kDpAcc / E < 6 ? kDpAcc / E : 6;
  const int64_t pairs = (n + 1) / 2;
  for (int64_t e0 = 0; e0 < D / 16; e0 += E) {
    int64_t i = 0;
    for (; i + R <= nq; i += R) dp_values<R, E, D>(pw, lw, i, vb, pairs, e0, accs, corr);
    switch (nq - i) {  // the rest in one pass
      case 5: dp_values<5 < R ? 5 : 1, E, D>(pw, lw, i, vb, pairs, e0, accs, corr); break;
      case 4: dp_values<4 < R ? 4 : 1, E, D>(pw, lw, i, vb, pairs, e0, accs, corr); break;
      case 3: dp_values<3 < R ? 3 : 1, E, D>(pw, lw, i, vb, pairs, e0, accs, corr); break;
      case 2: dp_values<2 < R ? 2 : 1, E, D>(pw, lw, i, vb, pairs, e0, accs, corr); break;
      case 1: dp_values<1, E, D>(pw, lw, i, vb, pairs, e0, accs, corr); break;
      default: break;
    }
  }
}

// attend_segment on bfloat16 pairs (the vector kernel's bookkeeping: lanes, visible tokens, softmax_step).
template <int D>
void attend_segment_dp(const PagedAttention& a, int64_t s, const int32_t* rows, int64_t count, int64_t q0,
                       int64_t size, int64_t h, int64_t after, Scratch* sc) {
  const int64_t nq = begin_pairs<D>(a, rows, count, q0, size, h, sc), lw = sc->lw;
  const int64_t B = a.block_size, ld = a.kv_heads * D, len = a.seg_len[s];
  const bool causal = a.causal != nullptr && a.causal[s] != 0;
  const uint16_t* k_cache = static_cast<const uint16_t*>(a.k_cache);
  const uint16_t* v_cache = static_cast<const uint16_t*>(a.v_cache);
  sc->s.resize(B * lw);
  sc->corr.resize(lw);
  sc->vb.resize(B * D / 2);
  sc->pb.resize(B / 2 * lw);
  // a window or softcap takes the wide path (softmax_step, which applies them; narrow_softmax does not)
  const bool narrow = lw == W && nq <= kNarrow && a.window == 0 && a.softcap == 0.0f;
  const int64_t b_end = a.seg_block_indptr[s + 1];
  // Blocks are prefetched kAhead ahead into L2 (the task's next segment's first after this one's last). Why:
  // prefetching the next block into L1 asked for its 64 lines at once and stalled on the L1's few outstanding misses.
  // Measured alternately in one process over 30 cold copies of a layer's KV (2-core EPYC, 16 rows over a 1,000-token
  // prompt plus 128 tokens each): 523 us per layer into L1 one block ahead, 386 into L2, 367 into L2 two ahead; no
  // prefetch 606.
  for (int64_t b = a.seg_block_indptr[s] + 1; b < b_end && b < a.seg_block_indptr[s] + kAhead; ++b) {
    const int64_t next = head_offset(a, a.block_ids[b], h, D);
    prefetch_block<D, _MM_HINT_T1>(k_cache + next, v_cache + next, ld, B);
  }
  for (int64_t bi = 0, b = a.seg_block_indptr[s]; b < b_end; ++b, ++bi) {
    const int64_t n = visible(a, s, bi, imin(B, len - bi * B), lw, sc);
    if (n == 0) continue;
    const int64_t first = head_offset(a, a.block_ids[b], h, D);
    const int64_t ahead = b + kAhead < b_end ? int64_t(a.block_ids[b + kAhead]) : b + kAhead == b_end ? after : -1;
    if (ahead >= 0) {
      const int64_t next = head_offset(a, ahead, h, D);
      prefetch_block<D, _MM_HINT_T1>(k_cache + next, v_cache + next, ld, B);
    }
    if (narrow) {
      dp_scores_few<D>(sc->qb.p, k_cache + first, ld, n, nq, B, sc->s.data());
      if (causal) {
        narrow_softmax<true>(sc->s.data(), B, n, nq, sc->nv.p, sc->lm.p, sc->ll.p, sc->corr.p, a.scale, sc->pb.p);
      } else {
        narrow_softmax<false>(sc->s.data(), B, n, nq, sc->nv.p, sc->lm.p, sc->ll.p, sc->corr.p, a.scale, sc->pb.p);
      }
    } else {
      dp_scores<D>(sc->qb.p, k_cache + first, ld, n, lw, sc->s.data());
      softmax_block(a, causal, lw, n, sc->corr.p, a.scale, sc);
      dp_pack_probs(sc->s.data(), lw, n, sc->pb.p);
    }
    pack_values<D>(v_cache + first, ld, n, sc->vb.p);
    dp_block_values<D>(sc->pb.p, lw, nq, sc->vb.p, n, sc->accs.data(), sc->corr.p);
  }
  store_states(nq, sc);
}
