// The split path of the AVX-512 BF16 kernel (paged_attention_dpbf16.h): a call whose few queries make fewer tasks
// than two per thread (a decode step of one or two rows: 3 KV heads, so 3 tasks on 2 threads) has its blocks cut
// into pieces that any thread can take, in three passes:
//   1. scores: each piece's blocks' scores (dp_scores_few) and each lane's maximum over a block, kept per block;
//   2. values: each piece walks the maxima of its task's blocks before it (comparisons only, the running maximum a
//      lane has on entering its first block), then per block narrow_softmax from that maximum and a zero sum (which
//      gives the block's sum of probabilities and its factor corr) and P . V of the block from zero (dp_block_values
//      on a zero accumulator: fma(0, corr, O) = O), kept per block;
//   3. per task, in block order: l = l * corr + sum and acc = fma(acc, corr, O), then the outputs.
// The same bits as attend_segment_dp: every score, maximum, probability, sum and product is computed by the same
// functions from the same values, and the running sum and accumulator take the same float32 operations in the same
// order (tested against one thread, which takes attend_segment_dp, and against the rows among others).
//
// Why: with 3 tasks on 2 threads one thread walks two KV heads while the other waits at the call's barrier. Measured
// in two processes (before and after) taking turns, 30 turns of 20 passes over 30 cold copies of a layer's KV (2-core
// EPYC, Hq 9 over Hkv 3, bfloat16, blocks of 16; load 1.8-2.1 from other tenants): one row over a 1,000-token prompt
// plus 128 of its own tokens 112 against 97 us per layer (median of the paired ratios 1.06 and 1.10 in two runs), two
// rows 144 against 130 (1.07). In a whole k = 1 decode step, where attention is about a fifth, the change was within
// the host's noise (paired ratio 0.98, quartiles 0.88 and 1.08).

constexpr int64_t kSplitBlocks = 8;  // blocks per piece at least

// The steps (blocks the lanes see, in the order attend_segment_dp walks them) of the call's one tile, the lanes of
// each group (a segment's rows), and what the passes keep per (KV head, step).
struct Split {
  int64_t steps = 0, groups = 0, queries = 0, per = 1, pieces = 0;  // per: steps per piece
  Buf<int32_t> group, block, n, nv;  // per step: group, cache block, tokens seen at most, tokens seen per lane (W)
  Buf<int32_t> seg, nq, query;       // per group: segment, lanes, local query per lane (W)
  Buf<float> sn, top, corr, sums, o;  // per (head, step): scores (kNarrow * B), maxima, corr, sums (W), P . V
};

// The blocks of segment s that group g's lanes (positions pos) see, as steps of sp (sized for every block).
inline void add_steps(const PagedAttention& a, int64_t s, const int32_t* pos, int64_t lanes, int64_t g, Split* sp) {
  const int64_t B = a.block_size;
  const bool causal = a.causal != nullptr && a.causal[s] != 0;
  for (int64_t bi = 0, b = a.seg_block_indptr[s]; b < a.seg_block_indptr[s + 1]; ++b, ++bi) {
    const int64_t len = imin(B, a.seg_len[s] - bi * B), first = causal ? a.seg_start[s] + bi * B : 0;
    int32_t nv[W] = {}, most = 0;
    for (int64_t l = 0; l < lanes; ++l) {
      nv[l] = int32_t(causal ? imin(len, imax(0, pos[l] - first + 1)) : len);
      most = nv[l] > most ? nv[l] : most;
    }
    if (most == 0) continue;  // a causal block no lane sees yet (attend_segment_dp skips it too)
    sp->group[sp->steps] = int32_t(g);
    sp->block[sp->steps] = a.block_ids[b];
    sp->n[sp->steps] = most;
    memcpy(sp->nv.p + sp->steps * W, nv, sizeof nv);
    sp->steps += 1;
  }
}

// Whether the call takes the split path (and its plan in sp): one tile, fewer tasks than two per thread, at most
// kNarrow lanes in every segment, no window and no softcap (narrow_softmax applies neither: such a call takes
// attend_segment_dp's wide path, softmax_step).
inline bool plan_split(const PagedAttention& a, const Tiles& tl, int64_t threads, Split* sp) {
  const int64_t G = a.heads / a.kv_heads;
  if (threads < 2 || tl.count != 1 || a.kv_heads >= 2 * threads || a.window > 0 || a.softcap > 0.0f) return false;
  const int64_t end = tl.start.p[1];
  int64_t blocks = 0;  // of the segments, at most as many steps
  sp->groups = 0;
  for (int64_t e = 0; e < end;) {
    int64_t next = e;
    while (next < end && tl.seg.p[next] == tl.seg.p[e]) ++next;
    if ((next - e) * G > kNarrow) return false;
    sp->groups += 1;
    blocks += a.seg_block_indptr[tl.seg.p[e] + 1] - a.seg_block_indptr[tl.seg.p[e]];
    e = next;
  }
  sp->seg.resize(sp->groups);
  sp->nq.resize(sp->groups);
  sp->query.resize(sp->groups * W);
  sp->group.resize(blocks);
  sp->block.resize(blocks);
  sp->n.resize(blocks);
  sp->nv.resize(blocks * W);
  sp->steps = 0;
  for (int64_t e = 0, g = 0; e < end; ++g) {
    const int64_t s = tl.seg.p[e];
    int32_t pos[W];
    int64_t i = 0;
    for (; e < end && tl.seg.p[e] == s; ++e)
      for (int64_t q = 0; q < G; ++q, ++i) {
        sp->query[g * W + i] = int32_t(tl.row.p[e] * G + q);
        pos[i] = a.q_pos != nullptr ? a.q_pos[tl.row.p[e]] : 0;
      }
    sp->seg[g] = int32_t(s);
    sp->nq[g] = int32_t(i);
    add_steps(a, s, pos, i, g, sp);
  }
  // as many pieces per KV head as threads (every thread as many pieces of each pass), of kSplitBlocks blocks at least:
  // 2, 4 and 6 per KV head measured alike (one row over a 1,000-token prompt, 2 threads)
  const int64_t pieces = imax(1, imin(threads, (sp->steps + kSplitBlocks - 1) / kSplitBlocks));
  sp->per = imax(1, (sp->steps + pieces - 1) / pieces);
  sp->pieces = (sp->steps + sp->per - 1) / sp->per;
  sp->queries = a.rows * G;
  return true;
}

// Each thread's buffers for the passes.
struct SplitScratch {
  Buf<uint32_t> qb, pw, vb;
  Buf<float> m, l, acc, lanes;
  Buf<float*> accs;
};

// The keys (or values) of head h in the cache block into L2, as prefetch_block does for both.
template <int D>
inline void prefetch_rows(const uint16_t* x, int64_t ld, int64_t B) {
  for (int64_t t = 0; t < B; ++t)
    for (int c = 0; c < D * 2; c += 64) _mm_prefetch(reinterpret_cast<const char*>(x + t * ld) + c, _MM_HINT_T1);
}

// Pass 1 for the steps [j0, j1) of KV head h.
template <int D>
void split_scores(const PagedAttention& a, Split* sp, int64_t h, int64_t j0, int64_t j1, SplitScratch* sc) {
  const int64_t G = a.heads / a.kv_heads, B = a.block_size, ld = a.kv_heads * D, at = h * sp->steps;
  const uint16_t* k_cache = static_cast<const uint16_t*>(a.k_cache);
  const uint32_t* q = static_cast<const uint32_t*>(a.q);  // pairs of bfloat16
  sc->qb.resize(D / 32 * 256);
  for (int64_t j = j0 + 1; j < j1 && j < j0 + kAhead; ++j)
    prefetch_rows<D>(k_cache + head_offset(a, sp->block[j], h, D), ld, B);
  int64_t packed = -1;
  for (int64_t j = j0; j < j1; ++j) {
    const int64_t g = sp->group[j], nq = sp->nq[g], n = sp->n[j];
    if (g != packed) {  // the group's queries, laid as pack_queries lays one lane group
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t local = sp->query[g * W + i];
        const uint32_t* src = q + ((local / G) * a.heads + h * G + local % G) * D / 2;
        for (int p = 0; p < D / 2; ++p) sc->qb[(p / 16) * 256 + (p % 16) * 16 + i] = src[p];
      }
      packed = g;
    }
    if (j + kAhead < j1) prefetch_rows<D>(k_cache + head_offset(a, sp->block[j + kAhead], h, D), ld, B);
    float* sn = sp->sn.p + (at + j) * kNarrow * B;
    dp_scores_few<D>(sc->qb.p, k_cache + head_offset(a, sp->block[j], h, D), ld, n, nq, B, sn);
    const int32_t* nv = sp->nv.p + j * W;
    const bool causal = a.causal != nullptr && a.causal[sp->seg[g]] != 0;
    for (int64_t i = 0; i < nq; ++i) {  // narrow_softmax's maximum
      float t = -INFINITY;
      for (int64_t u = 0; u < n; ++u) {
        const float x = sn[i * B + u] * a.scale;
        if ((!causal || u < nv[i]) && t < x) t = x;
      }
      sp->top[(at + j) * W + i] = t;
    }
  }
}

// Pass 2 for the steps [j0, j1) of KV head h.
template <int D>
void split_values(const PagedAttention& a, Split* sp, int64_t h, int64_t j0, int64_t j1, SplitScratch* sc) {
  const int64_t B = a.block_size, ld = a.kv_heads * D, at = h * sp->steps;
  const uint16_t* v_cache = static_cast<const uint16_t*>(a.v_cache);
  sc->m.assign(sp->queries, -INFINITY);
  for (int64_t j = 0; j < j0; ++j) {  // each lane's running maximum, as narrow_softmax updates it
    const int64_t g = sp->group[j];
    for (int64_t i = 0; i < sp->nq[g]; ++i) {
      float& m = sc->m[sp->query[g * W + i]];
      const float top = sp->top[(at + j) * W + i];
      if (sp->nv[j * W + i] > 0 && m < top) m = top;
    }
  }
  sc->lanes.resize(W);
  sc->pw.resize(B / 2 * W);
  sc->vb.resize(B * D / 2);
  sc->accs.resize(kNarrow);
  for (int64_t j = j0 + 1; j < j1 && j < j0 + kAhead; ++j)
    prefetch_rows<D>(v_cache + head_offset(a, sp->block[j], h, D), ld, B);
  for (int64_t j = j0; j < j1; ++j) {
    const int64_t g = sp->group[j], nq = sp->nq[g], n = sp->n[j], first = head_offset(a, sp->block[j], h, D);
    if (j + kAhead < j1) prefetch_rows<D>(v_cache + head_offset(a, sp->block[j + kAhead], h, D), ld, B);
    for (int64_t i = 0; i < W; ++i) sc->lanes[i] = i < nq ? sc->m[sp->query[g * W + i]] : -INFINITY;
    float* sums = sp->sums.p + (at + j) * W;
    float* corr = sp->corr.p + (at + j) * W;
    for (int64_t i = 0; i < W; ++i) sums[i] = 0.0f;  // narrow_softmax's l: 0 * corr + the block's sum
    const float* sn = sp->sn.p + (at + j) * kNarrow * B;
    if (a.causal != nullptr && a.causal[sp->seg[g]] != 0) {
      narrow_softmax<true>(sn, B, n, nq, sp->nv.p + j * W, sc->lanes.p, sums, corr, a.scale, sc->pw.p);
    } else {
      narrow_softmax<false>(sn, B, n, nq, sp->nv.p + j * W, sc->lanes.p, sums, corr, a.scale, sc->pw.p);
    }
    for (int64_t i = 0; i < nq; ++i) sc->m[sp->query[g * W + i]] = sc->lanes[i];
    float* o = sp->o.p + (at + j) * kNarrow * D;
    for (int64_t i = 0; i < nq * D; ++i) o[i] = 0.0f;
    for (int64_t i = 0; i < nq; ++i) sc->accs[i] = o + i * D;
    pack_values<D>(v_cache + first, ld, n, sc->vb.p);
    dp_block_values<D>(sc->pw.p, W, nq, sc->vb.p, n, sc->accs.p, corr);
  }
}

// Pass 3 for KV head h: the running sums and accumulators in block order, then the outputs (as run_task writes them).
template <int D>
void split_outputs(const PagedAttention& a, Split* sp, int64_t h, SplitScratch* sc) {
  const int64_t G = a.heads / a.kv_heads, at = h * sp->steps;
  sc->l.assign(sp->queries, 0.0f);
  sc->acc.assign(sp->queries * D, 0.0f);
  sc->lanes.resize(W);
  for (int64_t j = 0; j < sp->steps; ++j) {
    const int64_t g = sp->group[j], nq = sp->nq[g];
    const int32_t* query = sp->query.p + g * W;
    const float* corr = sp->corr.p + (at + j) * W;
    for (int64_t i = 0; i < W; ++i) sc->lanes[i] = i < nq ? sc->l[query[i]] : 0.0f;
    storev(sc->lanes.p, loadv(sc->lanes.p) * loadv(corr) + loadv(sp->sums.p + (at + j) * W));  // narrow_softmax's
    for (int64_t i = 0; i < nq; ++i) {
      sc->l[query[i]] = sc->lanes[i];
      float* acc = sc->acc.p + query[i] * D;
      const float* o = sp->o.p + ((at + j) * kNarrow + i) * D;
      const __m512 c = _mm512_set1_ps(corr[i]);
      for (int e = 0; e < D / 16; ++e)  // dp_values'
        _mm512_storeu_ps(acc + e * 16, _mm512_fmadd_ps(_mm512_loadu_ps(acc + e * 16), c, _mm512_loadu_ps(o + e * 16)));
    }
  }
  uint16_t* out = static_cast<uint16_t*>(a.out);
  for (int64_t i = 0; i < sp->queries; ++i) {
    const float inv = sc->l[i] > 0.0f ? 1.0f / sc->l[i] : 0.0f;
    const int64_t r = i / G, o = (r * a.heads + h * G + i % G) * D;
    for (int d = 0; d < D; ++d) store1(out, o + d, sc->acc[i * D + d] * inv);
  }
}

// The three passes over the plan sp (plan_split), each thread taking pieces as it is free.
template <int D>
void run_split(const PagedAttention& a, Split* sp) {
  const int64_t B = a.block_size, H = a.kv_heads, cells = H * sp->steps;
  sp->sn.resize(cells * kNarrow * B);
  sp->top.resize(cells * W);
  sp->corr.resize(cells * W);
  sp->sums.resize(cells * W);
  sp->o.resize(cells * kNarrow * D);
  const int64_t pieces = H * sp->pieces;
#pragma omp parallel
  {
    thread_local SplitScratch sc;
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < pieces; ++p) {
      const int64_t j0 = p % sp->pieces * sp->per;
      split_scores<D>(a, sp, p / sp->pieces, j0, imin(j0 + sp->per, sp->steps), &sc);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < pieces; ++p) {
      const int64_t j0 = p % sp->pieces * sp->per;
      split_values<D>(a, sp, p / sp->pieces, j0, imin(j0 + sp->per, sp->steps), &sc);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t h = 0; h < H; ++h) split_outputs<D>(a, sp, h, &sc);
  }
}
