// The bfloat16 packing shared by the two paths of the CPU paged_attention kernel that multiply bfloat16 pairs: the AMX
// tiles (paged_attention_amx.h) and the AVX-512 BF16 vectors (paged_attention_dpbf16.h). Included by
// paged_attention_impl.h inside the build's namespace, before either; the layouts are the AMX tiles' (B operands),
// which the vector path reads one row (16 lanes or 16 dims of pairs) at a time.

constexpr int kTok = 16;  // tokens per tile of scores and of values

// The lanes' queries as tiles of B, unscaled: group j, dims [32c, 32c + 32): 16 rows (pairs of dims) of 16 lanes
// (two bfloat16 each), at qb + (j * D / 32 + c) * 256 (32-bit words). Padding lanes are zero.
template <int D>
void pack_queries(const PagedAttention& a, int64_t q0, int64_t h, Scratch* sc) {
  const int64_t G = a.heads / a.kv_heads, lw = sc->lw;
  sc->qb.assign(lw / W * D / 32 * 256, 0u);
  const uint32_t* q = static_cast<const uint32_t*>(a.q);  // pairs of bfloat16
  for (int64_t i = 0; i < lw && sc->query[i] >= 0; ++i) {
    const int64_t query = q0 + sc->query[i], r = query / G, g = query % G;
    const uint32_t* src = q + (r * a.heads + h * G + g) * D / 2;
    uint32_t* dst = sc->qb.data() + (i / W) * D / 32 * 256 + i % W;
    for (int p = 0; p < D / 2; ++p) dst[(p / 16) * 256 + (p % 16) * 16] = src[p];
  }
}

// The block's n values (row stride ld) as tiles of B: 16-token tile t, dims [16e, 16e + 16): 8 rows (pairs of tokens)
// of 16 dims (the two tokens' bfloat16), at vb + (t * D / 16 + e) * 128 (32-bit words); zero past token n.
template <int D>
void pack_values(const uint16_t* v, int64_t ld, int64_t n, uint32_t* vb) {
  const int64_t tiles = (n + kTok - 1) / kTok;
  for (int64_t t = 0; t < tiles; ++t) {
    for (int u = 0; u < kTok / 2; ++u) {
      const int64_t t0 = t * kTok + 2 * u;
      for (int e = 0; e < D / 16; ++e) {
        const __m512i lo = t0 < n ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(v + t0 * ld + 16 * e)))
                                  : _mm512_setzero_si512();
        const __m512i hi = t0 + 1 < n
                               ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(v + (t0 + 1) * ld + 16 * e)))
                               : _mm512_setzero_si512();
        _mm512_storeu_si512(vb + ((t * D / 16 + e) * 8 + u) * 16, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    }
  }
}

// The start of a pair path's segment: the lanes (gather, no float32 queries), their queries packed, each real lane's
// accumulator. Returns the number of real lanes.
template <int D>
int64_t begin_pairs(const PagedAttention& a, const int32_t* rows, int64_t count, int64_t q0, int64_t size, int64_t h,
                    Scratch* sc) {
  const int64_t nq = gather<D, uint16_t, false>(a, rows, count, q0, size, h, sc);
  pack_queries<D>(a, q0, h, sc);
  point_accumulators<D>(nq, sc);
  return nq;
}

// Tokens t0 and t0 + 1 of one lane group's probabilities (rows of lw floats from s; zero from token nt) as one word
// per lane: the two bfloat16, rounded to nearest even, token t0 in the low half.
inline __m512i prob_pair(const float* s, int64_t lw, int64_t t0, int64_t nt) {
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                              22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512 a = t0 < nt ? _mm512_loadu_ps(s + t0 * lw) : _mm512_setzero_ps();
  const __m512 b = t0 + 1 < nt ? _mm512_loadu_ps(s + (t0 + 1) * lw) : _mm512_setzero_ps();
  return _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(b, a));  // low 16: a, high: b
}

// The keys and values of head h in block b (B tokens of D at row stride ld) into L1 (Hint _MM_HINT_T0: the AMX path,
// whose tile load waits for all of its 16 rows, which the hardware prefetcher does not fetch ahead at this stride) or
// L2 (_MM_HINT_T1: the AVX-512 BF16 path, paged_attention_dpbf16.h).
template <int D, int Hint>
void prefetch_block(const uint16_t* k, const uint16_t* v, int64_t ld, int64_t B) {
  for (int64_t t = 0; t < B; ++t) {
    for (int c = 0; c < D * 2; c += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(k + t * ld) + c, static_cast<_mm_hint>(Hint));
      _mm_prefetch(reinterpret_cast<const char*>(v + t * ld) + c, static_cast<_mm_hint>(Hint));
    }
  }
}
