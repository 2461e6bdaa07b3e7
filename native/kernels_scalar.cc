// Scalar reference kernels: plain loops that read like the math in kernels.h.
//
// This table is the floor every CPU can run and the reference the SIMD tables are tested against
// (native/tests/kernel_tests.cc). Clarity wins over speed here; the only concession is that weights
// are converted through one small helper so every kernel reads "w(i, o)".
//
// Compiled without any -m flag. Everything is static except the exported table (see kernels.h for
// why no inline code may be shared with the ISA translation units).
#include <string.h>

#include "kernels.h"

// ---- element access -----------------------------------------------------------------------------

// Element e of a weight array of the given dtype, as f32. bf16 and f16 convert exactly.
static float weight_at(int dtype, const void *w, int64_t e) {
  if (dtype == WINA_BF16) return wina_bf16_to_f32(((const uint16_t *)w)[e]);
  if (dtype == WINA_F16) return wina_f16_to_f32(((const uint16_t *)w)[e]);
  return ((const float *)w)[e];
}

// Scores are ranked through an unsigned key with the same order as the floats (IEEE totalOrder:
// flip every bit of a negative, set the sign bit of a non-negative). For the non-negative scores of
// the contract this is the float's bit pattern with the top bit set.
static uint32_t score_key(float s) {
  uint32_t b;
  memcpy(&b, &s, sizeof b);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// ---- norms and selection ------------------------------------------------------------------------

static void col_norms(int dtype, const void *wt, int64_t ld, int64_t n_in, int64_t out, float *c) {
  for (int64_t i = 0; i < n_in; i++) {
    float sum = 0.0f;
    for (int64_t o = 0; o < out; o++) {
      float w = weight_at(dtype, wt, i * ld + o);
      sum += w * w;
    }
    c[i] = __builtin_sqrtf(sum);
  }
}

static void gating_scores(const float *x, const float *c, int64_t n, float *s) {
  for (int64_t i = 0; i < n; i++) s[i] = __builtin_fabsf(x[i]) * (c ? c[i] : 1.0f);
}

static int64_t select_threshold(const float *s, int64_t n, float t, int32_t *idx) {
  int64_t m = 0;
  for (int64_t i = 0; i < n; i++)
    if (s[i] > t) idx[m++] = (int32_t)i;
  return m;
}

// Exact top-k without sorting: find the k-th largest key bit by bit from the top (the largest t
// with count(key >= t) >= k), then keep every key above t and the first ties at t by index.
static int64_t select_topk(const float *s, int64_t n, int64_t k, int32_t *idx, int32_t *scratch) {
  (void)scratch;
  if (k <= 0 || n <= 0) return 0;
  if (k > n) k = n;
  uint32_t t = 0;
  for (int bit = 31; bit >= 0; bit--) {
    uint32_t candidate = t | (1u << bit);
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) count += score_key(s[i]) >= candidate;
    if (count >= k) t = candidate;
  }
  int64_t above = 0;
  for (int64_t i = 0; i < n; i++) above += score_key(s[i]) > t;
  int64_t ties = k - above, m = 0;
  for (int64_t i = 0; i < n; i++) {
    uint32_t key = score_key(s[i]);
    if (key > t || (key == t && ties-- > 0)) idx[m++] = (int32_t)i;
  }
  return m;
}

// ---- input-major matrix products ----------------------------------------------------------------

static void gemv_sparse(int dtype, const void *wt, int64_t ld, int64_t out, const float *x,
                        const int32_t *idx, int64_t nidx, float *y) {
  for (int64_t j = 0; j < nidx; j++) {
    int64_t i = idx[j];
    for (int64_t o = 0; o < out; o++) y[o] += x[i] * weight_at(dtype, wt, i * ld + o);
  }
}

static void gemv_dense(int dtype, const void *wt, int64_t ld, int64_t out, const float *x,
                       int64_t i0, int64_t i1, float *y) {
  for (int64_t i = i0; i < i1; i++)
    for (int64_t o = 0; o < out; o++) y[o] += x[i] * weight_at(dtype, wt, i * ld + o);
}

static void gemm(int dtype, const void *wt, int64_t ld, int64_t n_in, int64_t o0, int64_t o1,
                 const float *x, int64_t ldx, int64_t T, float *y, int64_t ldy) {
  for (int64_t t = 0; t < T; t++) {
    float *yt = y + t * ldy;
    for (int64_t o = o0; o < o1; o++) yt[o] = 0.0f;
    for (int64_t i = 0; i < n_in; i++) {
      float xi = x[t * ldx + i];
      for (int64_t o = o0; o < o1; o++) yt[o] += xi * weight_at(dtype, wt, i * ld + o);
    }
  }
}

// ---- row-major (embedding / lm_head) ------------------------------------------------------------

static void gemv_rows(int dtype, const void *w, int64_t ld, int64_t cols, const float *x,
                      int64_t r0, int64_t r1, float *y) {
  for (int64_t r = r0; r < r1; r++) {
    float sum = 0.0f;
    for (int64_t c = 0; c < cols; c++) sum += weight_at(dtype, w, r * ld + c) * x[c];
    y[r] = sum;
  }
}

// ---- helpers ------------------------------------------------------------------------------------

static float dot_f32(const float *a, const float *b, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; i++) sum += a[i] * b[i];
  return sum;
}

static void axpy_f32(float a, const float *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void add_f32(float *dst, const float *src, int64_t n) {
  for (int64_t i = 0; i < n; i++) dst[i] += src[i];
}

extern "C" const wina_kernels wina_kernels_scalar = {
    "scalar",   col_norms, gating_scores, select_threshold, select_topk, gemv_sparse,
    gemv_dense, gemm,      gemv_rows,     dot_f32,          axpy_f32,    add_f32,
};
