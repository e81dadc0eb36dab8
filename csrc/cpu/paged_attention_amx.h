// The AMX path of the CPU paged_attention kernel (bfloat16, head_dim a multiple of 32, block_size a multiple of 16):
// included by paged_attention_impl.h inside the AMX build's namespace (paged_attention_amx.cpp), which defines
// SPCT_AMX; the tile registers are granted and configured by the caller (amx_configure, per thread and call).
//
// Why: the vector kernel spends a decode step's attention in float32 dot products, one lane per query. A row's own
// tokens (k = 1, or a sample's generated tokens) are read by the G = Hq / Hkv queries of one row, so 3 of 16 lanes
// do work (SmolLM2: Hq 9, Hkv 3), and a 16-row step over a 1,100-token prompt took 0.40 ms per layer; with 300
// tokens of their own, 0.83 ms. One tile multiply does 16 x 16 x 32 products whatever the queries, so the dot
// products cost next to nothing and what is left is the softmax and the packing.
//
// Per block, as the vector kernel (the rule in spct/paged_attention.h, one online-softmax update per block):
//   scores   S^T (tokens x lanes) = K (16 tokens x 32 dims, read in place from the cache) . Q^T (the lanes' queries,
//            packed once per segment as pairs of dims), summed over the dims in tiles of 32, in order, in float32;
//            then the vector kernel's softmax_step (lane-wise), which takes them times scale.
//   values   O (lanes x D) = P (lanes x 16 tokens, the probabilities rounded to bfloat16, as FlashAttention does on
//            GPUs) . V (pairs of tokens x D, packed once per block), over the block's tiles of 16 tokens in order;
//            then acc = acc * corr + O per query, in float32.
// Tokens past the block's last are zero in both P and V (the cache rows there may hold anything). Each output of a
// tile multiply depends only on its own row of A and column of B, so a query's bits do not depend on its lane, on
// the other queries or on the task: the batch invariance of the vector kernel holds here too (tested).

// tmm0-3: results (16 rows of 16 floats); tmm4: keys (16 tokens x 32 dims); tmm5: queries (16 pairs of dims x 16
// lanes); tmm6: probabilities (16 lanes x 16 tokens); tmm7: values (8 pairs of tokens x 16 dims).
void amx_configure() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = t == 6 ? 32 : 64;
    cfg.rows[t] = t == 7 ? 8 : 16;
  }
  tile_loadconfig(cfg);
}

// A segment read by at most kNarrow queries (a row's own tokens: the G = Hq / Hkv queries of one row) runs on tiles
// cut to its first kNarrow lanes: tmm0: scores (16 tokens x 4 lanes); tmm1-2: P . V results (4 lanes x 16 floats);
// tmm4: keys; tmm5: queries (16 pairs of dims x 4 lanes); tmm6: probabilities (4 lanes x 16 tokens); tmm7: values.
// Why: with 16 lanes, 13 of them padding, most of a block's tile work went into rows and columns no query reads (the
// products, and the stores of scores and results to memory). An output of a tile product depends only on its own
// row of A and column of B, so a query's bits are the same on either shape (tests: rows do not depend on the other
// rows of their segments). Measured against the 16-lane tiles on the same calls, alternated in one process (2-core
// Xeon, bench_paged_attention shapes): 16 rows of 120-136 own tokens 1.28-1.37x faster on 2 threads, 1.12-1.14x on
// one; one row of 1,128 tokens (k = 1) 1.22-1.28x; a 16-row decode step over a 1,000-token prompt 1.11-1.13x.
constexpr int64_t kNarrow = 4;
void amx_configure_narrow() {
  TileConfig cfg;
  const uint16_t colsb[8] = {kNarrow * 4, 64, 64, 64, 64, kNarrow * 4, 32, 64};
  const uint8_t rows[8] = {16, kNarrow, kNarrow, kNarrow, 16, 16, kNarrow, 8};
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = colsb[t];
    cfg.rows[t] = rows[t];
  }
  tile_loadconfig(cfg);
}

// The tiles narrow or full, configured again only when that changes (between segments: no tile is live there).
void amx_shape(bool narrow, Scratch* sc) {
  if (narrow == sc->narrow) return;
  if (narrow) {
    amx_configure_narrow();
  } else {
    amx_configure();
  }
  sc->narrow = narrow;
}

// The probabilities of lane group j for tokens [0, nt) of one 16-token tile (s: rows of lw floats, the group's
// first lane at s[0]) as a tile of A: 16 rows (lanes) of 16 tokens in bfloat16, rounded to nearest even; zero from
// token nt. pairs[u] holds tokens 2u and 2u + 1 of every lane (one 32-bit word per lane); the tile is their 8 x 16
// transpose, done in registers (4 x 4 word blocks by unpacking, then 128-bit chunks by permutes).
void pack_probs(const float* s, int64_t lw, int64_t nt, uint32_t* pa) {
  __m512i pairs[kTok / 2];
  for (int u = 0; u < kTok / 2; ++u) pairs[u] = prob_pair(s, lw, 2 * u, nt);
  __m512i x[8], y[8];
  for (int u = 0; u < 8; u += 2) {  // x[u]: words (u, u + 1) of lanes 4c, 4c + 1; x[u + 1]: of lanes 4c + 2, 4c + 3
    x[u] = _mm512_unpacklo_epi32(pairs[u], pairs[u + 1]);
    x[u + 1] = _mm512_unpackhi_epi32(pairs[u], pairs[u + 1]);
  }
  for (int half = 0; half < 2; ++half) {  // y[4 half + i]: words 4 half .. 4 half + 3 of lane 4c + i, chunk c
    const __m512i* p = x + 4 * half;
    y[4 * half + 0] = _mm512_unpacklo_epi64(p[0], p[2]);
    y[4 * half + 1] = _mm512_unpackhi_epi64(p[0], p[2]);
    y[4 * half + 2] = _mm512_unpacklo_epi64(p[1], p[3]);
    y[4 * half + 3] = _mm512_unpackhi_epi64(p[1], p[3]);
  }
  for (int i = 0; i < 4; ++i) {
    for (int c = 0; c < 4; c += 2) {  // lanes 4c + i and 4(c + 1) + i: 8 words each
      const __m512i idx = _mm512_set_epi32(16 + 4 * c + 7, 16 + 4 * c + 6, 16 + 4 * c + 5, 16 + 4 * c + 4,
                                           4 * c + 7, 4 * c + 6, 4 * c + 5, 4 * c + 4, 16 + 4 * c + 3,
                                           16 + 4 * c + 2, 16 + 4 * c + 1, 16 + 4 * c, 4 * c + 3, 4 * c + 2,
                                           4 * c + 1, 4 * c);
      const __m512i rows = _mm512_permutex2var_epi32(y[i], idx, y[4 + i]);
      _mm256_storeu_si256((__m256i*)(pa + (4 * c + i) * 8), _mm512_castsi512_si256(rows));
      _mm256_storeu_si256((__m256i*)(pa + (4 * c + 4 + i) * 8), _mm512_extracti64x4_epi64(rows, 1));
    }
  }
}

// Scores of the block's n tokens (keys k, row stride ld) for every lane group into s (row t at s + t * lw),
// unscaled. Rows past n hold whatever the cache rows there gave (never read). A tile of keys is loaded once for the
// (at most 3) lane groups, each into its own result tile.
#define SPCT_QK_GROUP(J)                                              \
  if (groups > J) {                                                   \
    _tile_loadd(5, sc.qb.p + (J * D / 32 + c) * 256, 64);             \
    _tile_dpbf16ps(J, 4, 5);                                          \
  }
template <int D>
void amx_scores(const uint16_t* k, int64_t ld, int64_t n, const Scratch& sc, float* s) {
  const int64_t lw = sc.lw, groups = lw / W, tiles = (n + kTok - 1) / kTok;
  for (int64_t t = 0; t < tiles; ++t) {
    _tile_zero(0);
    if (groups > 1) _tile_zero(1);
    if (groups > 2) _tile_zero(2);
    for (int c = 0; c < D / 32; ++c) {
      _tile_loadd(4, k + t * kTok * ld + 32 * c, ld * 2);
      SPCT_QK_GROUP(0)
      SPCT_QK_GROUP(1)
      SPCT_QK_GROUP(2)
    }
    float* row = s + t * kTok * lw;
    _tile_stored(0, row, lw * 4);
    if (groups > 1) _tile_stored(1, row + W, lw * 4);
    if (groups > 2) _tile_stored(2, row + 2 * W, lw * 4);
  }
}
#undef SPCT_QK_GROUP

// Result tiles [e0, e0 + E) of one lane group: the sum over the block's token tiles of P (pb: the group's packed
// probabilities, one tile per 16 tokens) . V, into o (16 lanes x D).
#define SPCT_PV_TILE(C)                                                    \
  if (E > C) {                                                             \
    _tile_loadd(7, vb + ((t * (D / 16)) + e0 + C) * 128, 64);              \
    _tile_dpbf16ps(C, 6, 7);                                               \
  }
#define SPCT_PV_STORE(C) \
  if (E > C) _tile_stored(C, o + (e0 + C) * 16, D * 4);
template <int D, int E>
void pv_tiles(const uint32_t* pb, int64_t tiles, const uint32_t* vb, int64_t e0, float* o) {
  _tile_zero(0);
  if (E > 1) _tile_zero(1);
  if (E > 2) _tile_zero(2);
  if (E > 3) _tile_zero(3);
  for (int64_t t = 0; t < tiles; ++t) {
    _tile_loadd(6, pb + t * 128, 32);
    SPCT_PV_TILE(0)
    SPCT_PV_TILE(1)
    SPCT_PV_TILE(2)
    SPCT_PV_TILE(3)
  }
  SPCT_PV_STORE(0)
  SPCT_PV_STORE(1)
  SPCT_PV_STORE(2)
  SPCT_PV_STORE(3)
}
#undef SPCT_PV_TILE
#undef SPCT_PV_STORE

// amx_values on the narrow tiles (amx_configure_narrow): lane group 0's results two tiles of dims at a time, in
// tmm1-2 (tmm0 holds the scores' shape).
template <int D>
void amx_values_narrow(const uint32_t* pb, const uint32_t* vb, int64_t n, Scratch* sc) {
  const int64_t tiles = (n + kTok - 1) / kTok;
  float* o = sc->o.p;
  for (int64_t e0 = 0; e0 < D / 16; e0 += 2) {
    _tile_zero(1);
    _tile_zero(2);
    for (int64_t t = 0; t < tiles; ++t) {
      _tile_loadd(6, pb + t * 128, 32);
      _tile_loadd(7, vb + (t * (D / 16) + e0) * 128, 64);
      _tile_dpbf16ps(1, 6, 7);
      _tile_loadd(7, vb + (t * (D / 16) + e0 + 1) * 128, 64);
      _tile_dpbf16ps(2, 6, 7);
    }
    _tile_stored(1, o + e0 * 16, D * 4);
    _tile_stored(2, o + (e0 + 1) * 16, D * 4);
  }
}

// The probabilities of the block's n tokens (s) for every lane group as tiles of A, into pb: group j's tile of
// tokens [16t, 16t + 16) at pb + (j * tiles + t) * 128.
void pack_block_probs(const float* s, int64_t lw, int64_t n, uint32_t* pb) {
  const int64_t tiles = (n + kTok - 1) / kTok;
  for (int64_t j = 0; j < lw / W; ++j)
    for (int64_t t = 0; t < tiles; ++t)
      pack_probs(s + t * kTok * lw + j * W, lw, imin(kTok, n - t * kTok), pb + (j * tiles + t) * 128);
}

// A block's P . V (n tokens: pb from pack_block_probs, vb from pack_values) for every lane group into sc->o
// (lw x D).
template <int D>
void amx_values(const uint32_t* pb, const uint32_t* vb, int64_t n, Scratch* sc) {
  constexpr int E = D / 16 < 4 ? D / 16 : 4;  // result tiles per pass
  const int64_t groups = sc->lw / W, tiles = (n + kTok - 1) / kTok;
  for (int64_t j = 0; j < groups; ++j)
    for (int64_t e0 = 0; e0 < D / 16; e0 += E) pv_tiles<D, E>(pb + j * tiles * 128, tiles, vb, e0, sc->o.p + j * W * D);
}

// Each real lane's accumulator after a block: acc * corr + o (sc->o from amx_values).
template <int D>
void accumulate(const float* corr, int64_t nq, Scratch* sc) {
  for (int64_t i = 0; i < nq; ++i) {
    float* acc = sc->accs[i];
    const __m512 c = _mm512_set1_ps(corr[i]);
    for (int d = 0; d < D; d += W)
      _mm512_storeu_ps(acc + d, _mm512_fmadd_ps(_mm512_loadu_ps(acc + d), c, _mm512_loadu_ps(sc->o.p + i * D + d)));
  }
}

// attend_segment on tiles (the vector kernel's bookkeeping: lanes, visible tokens, softmax_step), software-pipelined
// by one block: block b's scores, then block b - 1's P . V, then b's values packed, b's softmax step and
// probabilities packed, then b - 1's accumulation. Why: a tile load right after the vector stores that wrote its
// bytes waits for them, and so do vector loads right after a tile store; in this order every store has other work
// between it and its load. Each lane's accumulator still takes its blocks in order, once each: the same bits as the
// plain loop (checked). Measured on a 2-core Xeon over 30 layers' KV: a row's own 1,100 tokens (k = 1) 84 -> 63 us
// per layer, 16 rows over a 1,000-token prompt plus 100 tokens each 295 -> 248 us. The block after a segment's
// last is the first of the task's next segment (`after`, -1: none): a sample's own tokens are a few blocks, and
// their first one missed the cache (16 rows of 100 own tokens: 106-116 -> 92-96 us per layer). Tried and dropped:
// prefetching two blocks ahead instead of one (slower).
template <int D>
void attend_segment_amx(const PagedAttention& a, int64_t s, const int32_t* rows, int64_t count, int64_t q0,
                        int64_t size, int64_t h, int64_t after, Scratch* sc) {
  const int64_t nq = begin_pairs<D>(a, rows, count, q0, size, h, sc), lw = sc->lw;
  const int64_t B = a.block_size, ld = a.kv_heads * D, len = a.seg_len[s];
  const bool causal = a.causal != nullptr && a.causal[s] != 0;
  const uint16_t* k_cache = static_cast<const uint16_t*>(a.k_cache);
  const uint16_t* v_cache = static_cast<const uint16_t*>(a.v_cache);
  const bool narrow = nq <= kNarrow;
  amx_shape(narrow, sc);
  const auto values = narrow ? amx_values_narrow<D> : amx_values<D>;
  const int64_t pb_size = lw / W * (B / kTok) * 128, vb_size = B * D / 2;
  sc->s.resize(B * lw);
  sc->corr.resize(2 * lw);
  sc->vb.resize(2 * vb_size);
  sc->pb.resize(2 * pb_size);
  sc->o.resize(lw * D);
  const int64_t b_end = a.seg_block_indptr[s + 1];
  int64_t pending = 0;  // tokens of the previous block, whose P . V and accumulation are still to do (0: none)
  int cur = 0;          // which half of corr, vb and pb the current block uses
  for (int64_t bi = 0, b = a.seg_block_indptr[s]; b < b_end; ++b, ++bi) {
    const int64_t n = visible(a, s, bi, imin(B, len - bi * B), lw, sc);
    if (n == 0) continue;
    const int64_t first = head_offset(a, a.block_ids[b], h, D);
    const int64_t ahead = b + 1 < b_end ? int64_t(a.block_ids[b + 1]) : after;
    if (ahead >= 0) {
      const int64_t next = head_offset(a, ahead, h, D);
      prefetch_block<D, _MM_HINT_T0>(k_cache + next, v_cache + next, ld, B);
    }
    uint32_t *vb = sc->vb.p + cur * vb_size, *pb = sc->pb.p + cur * pb_size;
    float* corr = sc->corr.p + cur * lw;
    amx_scores<D>(k_cache + first, ld, n, *sc, sc->s.data());
    if (pending) values(sc->pb.p + (1 - cur) * pb_size, sc->vb.p + (1 - cur) * vb_size, pending, sc);
    pack_values<D>(v_cache + first, ld, n, vb);
    softmax_block(a, causal, lw, n, corr, a.scale, sc);
    pack_block_probs(sc->s.data(), lw, n, pb);
    if (pending) accumulate<D>(sc->corr.p + (1 - cur) * lw, nq, sc);
    pending = n;
    cur = 1 - cur;
  }
  if (pending) {
    values(sc->pb.p + (1 - cur) * pb_size, sc->vb.p + (1 - cur) * vb_size, pending, sc);
    accumulate<D>(sc->corr.p + (1 - cur) * lw, nq, sc);
  }
  store_states(nq, sc);
}
