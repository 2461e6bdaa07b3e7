// AVX2 kernels (AVX2 + FMA + F16C, ymm). Compiled with those flags; reached only through
// wina_kernels_avx2 after dispatch.cc has checked the CPU and the OS (YMM state saved).
//
// The same designs as kernels_avx512.cc on 8-lane vectors: 8 weight rows per pass into the whole
// output vector with the next pass's rows prefetched, a 6-token register tile over a packed f32
// panel for prefill, 8 rows per pass for row-major gemv. AVX2 has no masked compress, so selection packs indices with a 256-entry
// permutation table; it has no masked byte loads, so the ragged tails of bf16/f16 rows run as
// short scalar loops.
//
// Everything is static except the exported table: no inline code may be shared with translation
// units compiled for other ISAs (see kernels.h).
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

// ---- SIMD vocabulary ----------------------------------------------------------------------------

// Lane mask for the first n lanes (n in 0..8), for maskload/maskstore.
static inline __m256i mask_first8(int64_t n) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 8 ? n : 8)), lanes);
}

// 8 weights as f32: f32 loads, bf16 widened and shifted, f16 through F16C.
static inline __m256 load8_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 load8_bf16(const uint16_t *p) {
  __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
static inline __m256 load8_f16(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static inline __m256 load8(int dtype, const void *p) {
  if (dtype == WINA_BF16) return load8_bf16((const uint16_t *)p);
  if (dtype == WINA_F16) return load8_f16((const uint16_t *)p);
  return load8_f32((const float *)p);
}

// One weight as f32, for the ragged tails.
static inline float load1(int dtype, const void *p) {
  if (dtype == WINA_F32) return *(const float *)p;
  uint16_t h;
  memcpy(&h, p, sizeof h);
  if (dtype == WINA_F16) return _cvtsh_ss(h);
  uint32_t b = (uint32_t)h << 16;
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

// First n (0..8) weights as f32, zeros after: a short copy into a zero-padded block.
static inline __m256 load8_partial(int dtype, const void *p, int64_t n) {
  alignas(32) float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t es = dtype == WINA_F32 ? 4 : 2;
  for (int64_t e = 0; e < n && e < 8; e++) tmp[e] = load1(dtype, (const char *)p + e * es);
  return _mm256_load_ps(tmp);
}

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Signed integer key with the float order (negatives have their 31 low bits flipped); for the
// non-negative scores of the contract the key is the bit pattern itself.
static inline __m256i score_keys(__m256 s) {
  __m256i b = _mm256_castps_si256(s);
  return _mm256_xor_si256(b, _mm256_and_si256(_mm256_srai_epi32(b, 31), _mm256_set1_epi32(0x7fffffff)));
}
static inline int32_t score_key(float s) {
  int32_t b;
  memcpy(&b, &s, sizeof b);
  return b ^ ((b >> 31) & 0x7fffffff);
}

static inline int lane_mask(__m256i m) { return _mm256_movemask_ps(_mm256_castsi256_ps(m)); }

// Compress table: entry m packs the lanes set in the 8-bit mask m to the front, 4 bits per lane.
struct compress_table {
  uint32_t lanes[256];
};
static constexpr compress_table compress_table_make(void) {
  compress_table table{};
  for (int m = 0; m < 256; m++) {
    uint32_t packed = 0;
    int slot = 0;
    for (int lane = 0; lane < 8; lane++)
      if (m & (1 << lane)) packed |= (uint32_t)lane << (4 * slot++);
    table.lanes[m] = packed;
  }
  return table;
}
static constexpr compress_table compress_lanes = compress_table_make();

// The lanes of v selected by the 8-bit mask m, packed to the front.
static inline __m256i compress8(__m256i v, int m) {
  __m256i nibbles = _mm256_set1_epi32((int)compress_lanes.lanes[m]);
  __m256i perm = _mm256_and_si256(_mm256_srlv_epi32(nibbles, _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                                  _mm256_set1_epi32(7));
  return _mm256_permutevar8x32_epi32(v, perm);
}

// ---- norms and scores ---------------------------------------------------------------------------

static void col_norms(int dtype, const void *wt, int64_t ld, int64_t n_in, int64_t out, float *c) {
  size_t es = dtype == WINA_F32 ? 4 : 2;
  for (int64_t i = 0; i < n_in; i++) {
    const char *row = (const char *)wt + (size_t)(i * ld) * es;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t o = 0;
    for (; o + 16 <= out; o += 16) {
      __m256 a = load8(dtype, row + o * es), b = load8(dtype, row + (o + 8) * es);
      s0 = _mm256_fmadd_ps(a, a, s0);
      s1 = _mm256_fmadd_ps(b, b, s1);
    }
    for (; o < out; o += 8) {
      __m256 a = out - o >= 8 ? load8(dtype, row + o * es) : load8_partial(dtype, row + o * es, out - o);
      s0 = _mm256_fmadd_ps(a, a, s0);
    }
    c[i] = __builtin_sqrtf(hsum(_mm256_add_ps(s0, s1)));
  }
}

static void gating_scores(const float *x, const float *c, int64_t n, float *s) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask);
    if (c) v = _mm256_mul_ps(v, _mm256_loadu_ps(c + i));
    _mm256_storeu_ps(s + i, v);
  }
  for (; i < n; i++) s[i] = __builtin_fabsf(x[i]) * (c ? c[i] : 1.0f);
}

// ---- selection ----------------------------------------------------------------------------------

// Store the lanes of `lanes` selected by mask m at idx[count..], exactly popcount(m) of them.
static inline int64_t emit_indices(int m, __m256i lanes, int32_t *idx, int64_t count) {
  int p = __builtin_popcount((unsigned)m);
  _mm256_maskstore_epi32(idx + count, mask_first8(p), compress8(lanes, m));
  return count + p;
}

static int64_t select_threshold(const float *s, int64_t n, float t, int32_t *idx) {
  const __m256 tv = _mm256_set1_ps(t);
  __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t count = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s + i), tv, _CMP_GT_OQ));
    count = emit_indices(m, lanes, idx, count);
    lanes = _mm256_add_epi32(lanes, _mm256_set1_epi32(8));
  }
  for (; i < n; i++)
    if (s[i] > t) idx[count++] = (int32_t)i;
  return count;
}

// Exact top-k by radix select on the score keys (see kernels_avx512.cc for the four steps).
static int64_t select_topk(const float *s, int64_t n, int64_t k, int32_t *idx, int32_t *scratch) {
  if (k <= 0 || n <= 0) return 0;
  if (k >= n) {
    for (int64_t i = 0; i < n; i++) idx[i] = (int32_t)i;
    return n;
  }
  // 1. histogram of the top 12 bits of the key (biased to unsigned so bins follow the order)
  uint32_t hist[4096];
  memset(hist, 0, sizeof hist);
  for (int64_t i = 0; i < n; i++) hist[((uint32_t)score_key(s[i]) ^ 0x80000000u) >> 20]++;
  int64_t above = 0;
  uint32_t bin = 4095;
  while (above + hist[bin] < k) above += hist[bin--];
  int64_t need = k - above;

  // 2. the signed keys of that bin, packed into scratch (count <= i keeps 8-lane stores in bounds)
  const int32_t bin_lo = (int32_t)((bin << 20) ^ 0x80000000u);  // smallest signed key in the bin
  const __m256i bin_v = _mm256_set1_epi32(bin_lo >> 20);           // = signed key >> 20 in the bin
  int64_t m = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i key = score_keys(_mm256_loadu_ps(s + i));
    int sel = lane_mask(_mm256_cmpeq_epi32(_mm256_srai_epi32(key, 20), bin_v));
    _mm256_storeu_si256((__m256i *)(scratch + m), compress8(key, sel));
    m += __builtin_popcount((unsigned)sel);
  }
  for (; i < n; i++) {
    int32_t key = score_key(s[i]);
    if (((uint32_t)key ^ 0x80000000u) >> 20 == bin) scratch[m++] = key;
  }

  // 3. the low 20 bits of the k-th largest key, by counting candidates >= probe
  int32_t t = bin_lo;
  for (int bit = 19; bit >= 0; bit--) {
    const int32_t probe = t | (int32_t)(1u << bit);
    const __m256i probe_minus1 = _mm256_set1_epi32(probe - 1);  // key >= probe <=> key > probe - 1
    int64_t count = 0, j = 0;
    for (; j + 8 <= m; j += 8)
      count += __builtin_popcount((unsigned)lane_mask(
          _mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i *)(scratch + j)), probe_minus1)));
    for (; j < m; j++) count += scratch[j] >= probe;
    if (count >= need) t = probe;
  }
  int64_t greater_in_bin = 0;
  for (int64_t j = 0; j < m; j++) greater_in_bin += scratch[j] > t;
  int64_t ties = need - greater_in_bin;

  // 4. emit keys above t and the first ties at t, ascending
  const __m256i tv = _mm256_set1_epi32(t);
  __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t count = 0;
  for (i = 0; i + 8 <= n; i += 8) {
    __m256i key = score_keys(_mm256_loadu_ps(s + i));
    int sel = lane_mask(_mm256_cmpgt_epi32(key, tv));
    if (ties > 0) {
      unsigned eq = (unsigned)lane_mask(_mm256_cmpeq_epi32(key, tv));
      while (eq && ties > 0) {
        sel |= (int)(eq & (0u - eq));
        eq &= eq - 1;
        ties--;
      }
    }
    count = emit_indices(sel, lanes, idx, count);
    lanes = _mm256_add_epi32(lanes, _mm256_set1_epi32(8));
  }
  for (; i < n; i++) {
    int32_t key = score_key(s[i]);
    if (key > t || (key == t && ties-- > 0)) idx[count++] = (int32_t)i;
  }
  return count;
}

// ---- input-major gemv: 8 rows per pass ----------------------------------------------------------

// Software prefetch of the next pass's rows, one row after another, 512 bytes per step, stepped
// at the rate the current pass consumes its rows (see kernels_avx512.cc for the measurement).
struct next_rows {
  const char *row[8];
  int n;          // rows to prefetch (0 .. 8)
  int64_t bytes;  // bytes per row that the pass reads
  int u;
  int64_t offset;
};

static inline void next_rows_step(next_rows *p) {
  if (p->u >= p->n) return;
  const char *q = p->row[p->u] + p->offset;
  for (int k = 0; k < 8; k++) _mm_prefetch(q + 64 * k, _MM_HINT_T1);
  p->offset += 512;
  if (p->offset >= p->bytes) {
    p->u++;
    p->offset = 0;
  }
}

// y[0:out] += sum_u a[u] * r[u][0:out]; main blocks of 8 outputs, then a scalar tail.
static void rows8(int dtype, const void *const r[8], const float a_s[8], int64_t out, float *y,
                  next_rows next) {
  size_t es = dtype == WINA_F32 ? 4 : 2;
  int64_t step_outputs = dtype == WINA_F32 ? 16 : 32;  // outputs per 512 bytes of the 8 rows
  __m256 a[8];
  for (int u = 0; u < 8; u++) a[u] = _mm256_set1_ps(a_s[u]);
  const char *r0 = (const char *)r[0], *r1 = (const char *)r[1], *r2 = (const char *)r[2],
             *r3 = (const char *)r[3], *r4 = (const char *)r[4], *r5 = (const char *)r[5],
             *r6 = (const char *)r[6], *r7 = (const char *)r[7];
  int64_t o = 0;
  // One copy of the loop per dtype so the loads inline without a branch per block.
#define WINA_ROWS8_LOOP(LOAD)                                                  \
  for (; o + 8 <= out; o += 8) {                                               \
    if ((o + 8) % step_outputs == 0) next_rows_step(&next);                    \
    size_t off = (size_t)o * es;                                               \
    __m256 s0 = _mm256_loadu_ps(y + o);                                        \
    __m256 s1 = _mm256_mul_ps(a[1], LOAD(r1 + off));                           \
    s0 = _mm256_fmadd_ps(a[0], LOAD(r0 + off), s0);                            \
    s0 = _mm256_fmadd_ps(a[2], LOAD(r2 + off), s0);                            \
    s1 = _mm256_fmadd_ps(a[3], LOAD(r3 + off), s1);                            \
    s0 = _mm256_fmadd_ps(a[4], LOAD(r4 + off), s0);                            \
    s1 = _mm256_fmadd_ps(a[5], LOAD(r5 + off), s1);                            \
    s0 = _mm256_fmadd_ps(a[6], LOAD(r6 + off), s0);                            \
    s1 = _mm256_fmadd_ps(a[7], LOAD(r7 + off), s1);                            \
    _mm256_storeu_ps(y + o, _mm256_add_ps(s0, s1));                            \
  }
#define WINA_LOAD_F32(p) load8_f32((const float *)(p))
#define WINA_LOAD_BF16(p) load8_bf16((const uint16_t *)(p))
#define WINA_LOAD_F16(p) load8_f16((const uint16_t *)(p))
  if (dtype == WINA_BF16) {
    WINA_ROWS8_LOOP(WINA_LOAD_BF16)
  } else if (dtype == WINA_F16) {
    WINA_ROWS8_LOOP(WINA_LOAD_F16)
  } else {
    WINA_ROWS8_LOOP(WINA_LOAD_F32)
  }
#undef WINA_ROWS8_LOOP
#undef WINA_LOAD_F32
#undef WINA_LOAD_BF16
#undef WINA_LOAD_F16
  for (; o < out; o++) {
    float sum = y[o];
    for (int u = 0; u < 8; u++) sum += a_s[u] * load1(dtype, (const char *)r[u] + o * es);
    y[o] = sum;
  }
}

static void row1(int dtype, const void *r, float a_s, int64_t out, float *y) {
  size_t es = dtype == WINA_F32 ? 4 : 2;
  const __m256 a = _mm256_set1_ps(a_s);
  int64_t o = 0;
  for (; o + 8 <= out; o += 8)
    _mm256_storeu_ps(y + o, _mm256_fmadd_ps(a, load8(dtype, (const char *)r + o * es), _mm256_loadu_ps(y + o)));
  for (; o < out; o++) y[o] += a_s * load1(dtype, (const char *)r + o * es);
}

static void gemv_sparse(int dtype, const void *wt, int64_t ld, int64_t out, const float *x,
                        const int32_t *idx, int64_t nidx, float *y) {
  size_t es = dtype == WINA_F32 ? 4 : 2, row_bytes = (size_t)ld * es;
  const char *base = (const char *)wt;
  int64_t j = 0;
  for (; j + 8 <= nidx; j += 8) {
    const void *r[8];
    float a[8];
    for (int u = 0; u < 8; u++) {
      int64_t i = idx[j + u];
      r[u] = base + (size_t)i * row_bytes;
      a[u] = x[i];
    }
    next_rows next = {{nullptr}, 0, out * (int64_t)es, 0, 0};
    for (int64_t jn = j + 8; jn < nidx && next.n < 8; jn++) next.row[next.n++] = base + (size_t)idx[jn] * row_bytes;
    rows8(dtype, r, a, out, y, next);
  }
  for (; j < nidx; j++) row1(dtype, base + (size_t)idx[j] * row_bytes, x[idx[j]], out, y);
}

static void gemv_dense(int dtype, const void *wt, int64_t ld, int64_t out, const float *x,
                       int64_t i0, int64_t i1, float *y) {
  size_t es = dtype == WINA_F32 ? 4 : 2, row_bytes = (size_t)ld * es;
  const char *base = (const char *)wt;
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    const void *r[8];
    for (int u = 0; u < 8; u++) r[u] = base + (size_t)(i + u) * row_bytes;
    next_rows next = {{nullptr}, 0, out * (int64_t)es, 0, 0};
    for (int64_t in = i + 8; in < i1 && next.n < 8; in++) next.row[next.n++] = base + (size_t)in * row_bytes;
    rows8(dtype, r, x + i, out, y, next);
  }
  for (; i < i1; i++) row1(dtype, base + (size_t)i * row_bytes, x[i], out, y);
}

// ---- prefill GEMM -------------------------------------------------------------------------------
// Blocks of 16 output columns x 256 inputs are converted once to a contiguous f32 panel (16 KiB),
// then a 6-token x 16-column register tile (12 accumulators of the 16 ymm registers) runs over it.

static const int64_t GEMM_NR = 16, GEMM_KC = 256, GEMM_MR = 6;

static void gemm_pack(int dtype, const void *wt, int64_t ld, int64_t i0, int64_t kc, int64_t o,
                      int64_t width, float *panel) {
  size_t es = dtype == WINA_F32 ? 4 : 2;
  for (int64_t i = 0; i < kc; i++) {
    const char *row = (const char *)wt + (size_t)((i0 + i) * ld + o) * es;
    for (int c = 0; c < GEMM_NR; c += 8) {
      int64_t n = width - c;
      __m256 v = n >= 8 ? load8(dtype, row + c * es) : load8_partial(dtype, row + c * es, n < 0 ? 0 : n);
      _mm256_store_ps(panel + i * GEMM_NR + c, v);
    }
  }
}

static void gemm_tile6(const float *panel, int64_t kc, const float *x, int64_t ldx, float *y,
                       int64_t ldy, const __m256i m[2], int accumulate) {
  __m256 acc[GEMM_MR][2];
  for (int t = 0; t < GEMM_MR; t++)
    for (int c = 0; c < 2; c++)
      acc[t][c] = accumulate ? _mm256_maskload_ps(y + t * ldy + 8 * c, m[c]) : _mm256_setzero_ps();
  for (int64_t i = 0; i < kc; i++) {
    __m256 w0 = _mm256_load_ps(panel + i * GEMM_NR), w1 = _mm256_load_ps(panel + i * GEMM_NR + 8);
#pragma GCC unroll 6
    for (int t = 0; t < GEMM_MR; t++) {
      __m256 b = _mm256_broadcast_ss(x + t * ldx + i);
      acc[t][0] = _mm256_fmadd_ps(b, w0, acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(b, w1, acc[t][1]);
    }
  }
  for (int t = 0; t < GEMM_MR; t++)
    for (int c = 0; c < 2; c++) _mm256_maskstore_ps(y + t * ldy + 8 * c, m[c], acc[t][c]);
}

static void gemm_tile1(const float *panel, int64_t kc, const float *x, float *y, const __m256i m[2],
                       int accumulate) {
  __m256 acc0 = accumulate ? _mm256_maskload_ps(y, m[0]) : _mm256_setzero_ps();
  __m256 acc1 = accumulate ? _mm256_maskload_ps(y + 8, m[1]) : _mm256_setzero_ps();
  for (int64_t i = 0; i < kc; i++) {
    __m256 b = _mm256_broadcast_ss(x + i);
    acc0 = _mm256_fmadd_ps(b, _mm256_load_ps(panel + i * GEMM_NR), acc0);
    acc1 = _mm256_fmadd_ps(b, _mm256_load_ps(panel + i * GEMM_NR + 8), acc1);
  }
  _mm256_maskstore_ps(y, m[0], acc0);
  _mm256_maskstore_ps(y + 8, m[1], acc1);
}

static void gemm(int dtype, const void *wt, int64_t ld, int64_t n_in, int64_t o0, int64_t o1,
                 const float *x, int64_t ldx, int64_t T, float *y, int64_t ldy) {
  alignas(32) float panel[GEMM_KC * GEMM_NR];
  for (int64_t o = o0; o < o1; o += GEMM_NR) {
    int64_t width = o1 - o < GEMM_NR ? o1 - o : GEMM_NR;
    __m256i m[2] = {mask_first8(width), mask_first8(width - 8 < 0 ? 0 : width - 8)};
    if (n_in == 0)  // an empty sum still overwrites Y
      for (int64_t t = 0; t < T; t++)
        for (int c = 0; c < 2; c++) _mm256_maskstore_ps(y + t * ldy + o + 8 * c, m[c], _mm256_setzero_ps());
    for (int64_t i0 = 0; i0 < n_in; i0 += GEMM_KC) {
      int64_t kc = n_in - i0 < GEMM_KC ? n_in - i0 : GEMM_KC;
      gemm_pack(dtype, wt, ld, i0, kc, o, width, panel);
      int64_t t = 0;
      for (; t + GEMM_MR <= T; t += GEMM_MR)
        gemm_tile6(panel, kc, x + t * ldx + i0, ldx, y + t * ldy + o, ldy, m, i0 > 0);
      for (; t < T; t++) gemm_tile1(panel, kc, x + t * ldx + i0, y + t * ldy + o, m, i0 > 0);
    }
  }
}

// ---- row-major gemv (lm_head): 8 rows per pass --------------------------------------------------
// One accumulator per row (8 independent FMA chains), the next 8 rows prefetched one after another.

static void rows8_dot(int dtype, const void *const r[8], const float *x, int64_t cols, float out8[8],
                      next_rows next) {
  size_t es = dtype == WINA_F32 ? 4 : 2;
  int64_t step_cols = dtype == WINA_F32 ? 16 : 32;  // columns per 512 bytes of the 8 rows
  __m256 acc[8];
  for (int u = 0; u < 8; u++) acc[u] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= cols; c += 8) {
    if ((c + 8) % step_cols == 0) next_rows_step(&next);
    __m256 xv = _mm256_loadu_ps(x + c);
    for (int u = 0; u < 8; u++) acc[u] = _mm256_fmadd_ps(load8(dtype, (const char *)r[u] + c * es), xv, acc[u]);
  }
  for (int u = 0; u < 8; u++) {
    float sum = hsum(acc[u]);
    for (int64_t e = c; e < cols; e++) sum += load1(dtype, (const char *)r[u] + e * es) * x[e];
    out8[u] = sum;
  }
}

static void gemv_rows(int dtype, const void *w, int64_t ld, int64_t cols, const float *x,
                      int64_t r0, int64_t r1, float *y) {
  size_t es = dtype == WINA_F32 ? 4 : 2, row_bytes = (size_t)ld * es;
  const char *base = (const char *)w;
  for (int64_t r = r0; r < r1; r += 8) {
    const void *rows[8];
    float dots[8];
    int n = r1 - r < 8 ? (int)(r1 - r) : 8;
    for (int u = 0; u < 8; u++) rows[u] = base + (size_t)(r + (u < n ? u : 0)) * row_bytes;
    next_rows next = {{nullptr}, 0, cols * (int64_t)es, 0, 0};
    for (int64_t rn = r + 8; rn < r1 && next.n < 8; rn++) next.row[next.n++] = base + (size_t)rn * row_bytes;
    rows8_dot(dtype, rows, x, cols, dots, next);
    for (int u = 0; u < n; u++) y[r + u] = dots[u];
  }
}

// ---- helpers ------------------------------------------------------------------------------------

static float dot_f32(const float *a, const float *b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  float sum = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; i++) sum += a[i] * b[i];
  return sum;
}

static void axpy_f32(float a, const float *x, float *y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += a * x[i];
}

static void add_f32(float *dst, const float *src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_add_ps(_mm256_loadu_ps(dst + i), _mm256_loadu_ps(src + i)));
  for (; i < n; i++) dst[i] += src[i];
}

extern "C" const wina_kernels wina_kernels_avx2 = {
    "avx2",     col_norms, gating_scores, select_threshold, select_topk, gemv_sparse,
    gemv_dense, gemm,      gemv_rows,     dot_f32,          axpy_f32,    add_f32,
};
#endif
