// wina native kernels: the small C API every ISA implements.
//
// Layout. A linear layer y = W x with W[out][in] (PyTorch order) is stored *input-major*:
// Wt[in][ld], where row i holds column i of W (out values, padded to ld >= out elements). One
// selected input neuron is then one contiguous run of out*sizeof(dtype) bytes, which is what makes
// input-sparse decoding bandwidth-proportional. A sub-range of output columns of a fused matrix
// (q|k|v, gate|up) is addressed by offsetting the base pointer and passing the sub-width as `out`
// with the fused `ld`, so kernels must accept any element offset (use unaligned loads).
//
// Row-major ("rows") kernels serve the embedding / lm_head matrix [vocab][d], where a dense
// dot product per output row is the natural access.
//
// All accumulation is fp32. Scores are non-negative. Every ISA translation unit (kernels_scalar.cc,
// kernels_avx2.cc, kernels_avx512.cc) defines its functions `static` and exports only its table: no
// inline code is shared between translation units compiled with different -m flags (a shared inline
// function may be linked in its AVX-512 copy and raise SIGILL on older CPUs).
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum wina_dtype { WINA_F32 = 0, WINA_BF16 = 1, WINA_F16 = 2 };

typedef struct wina_kernels {
  const char *name; /* "scalar" | "avx2" | "avx512" */

  /* c[i] = ||Wt[i, 0:out]||_2 for i in [0, n_in). */
  void (*col_norms)(int dtype, const void *wt, int64_t ld, int64_t n_in, int64_t out, float *c);

  /* s[i] = |x[i]| * c[i]; c == NULL means s[i] = |x[i]|. */
  void (*gating_scores)(const float *x, const float *c, int64_t n, float *s);

  /* Writes every i with s[i] > t to idx in ascending order; returns the count. */
  int64_t (*select_threshold)(const float *s, int64_t n, float t, int32_t *idx);

  /* Exact top-k of s (k largest, ties broken by lower index), indices written in ascending order.
     No full sort. scratch: at least n int32 (may be used or ignored). Returns k (0 <= k <= n). */
  int64_t (*select_topk)(const float *s, int64_t n, int64_t k, int32_t *idx, int32_t *scratch);

  /* y[0:out] += sum_{j<nidx} x[idx[j]] * Wt[idx[j], 0:out]   (x is indexed by input index) */
  void (*gemv_sparse)(int dtype, const void *wt, int64_t ld, int64_t out, const float *x,
                      const int32_t *idx, int64_t nidx, float *y);

  /* y[0:out] += sum_{i in [i0,i1)} x[i] * Wt[i, 0:out]   (dense, input rows i0..i1 for split-k) */
  void (*gemv_dense)(int dtype, const void *wt, int64_t ld, int64_t out, const float *x,
                     int64_t i0, int64_t i1, float *y);

  /* Prefill GEMM over input-major weights, for output columns [o0, o1):
     Y[t][o] = sum_{i<n_in} X[t][i] * Wt[i][o]   for t < T   (overwrites Y[t][o0:o1]).
     X has row stride ldx, Y row stride ldy (floats). */
  void (*gemm)(int dtype, const void *wt, int64_t ld, int64_t n_in, int64_t o0, int64_t o1,
               const float *x, int64_t ldx, int64_t T, float *y, int64_t ldy);

  /* Row-major dense: y[r] = dot(W[r, 0:cols], x) for r in [r0, r1); W rows have stride ld. */
  void (*gemv_rows)(int dtype, const void *w, int64_t ld, int64_t cols, const float *x,
                    int64_t r0, int64_t r1, float *y);

  /* Helpers for attention and reductions. */
  float (*dot_f32)(const float *a, const float *b, int64_t n);
  void (*axpy_f32)(float a, const float *x, float *y, int64_t n); /* y += a*x */
  void (*add_f32)(float *dst, const float *src, int64_t n);        /* dst += src */
} wina_kernels;

extern const wina_kernels wina_kernels_scalar;
extern const wina_kernels wina_kernels_avx2;   /* AVX2 + FMA + F16C */
extern const wina_kernels wina_kernels_avx512; /* AVX-512 F/BW/VL/DQ (+BF16 where it pays) */

/* Run-time dispatch (dispatch.cc). The active table is chosen once from the CPU's features and the
   OS's support for them; WINA_ISA=scalar|avx2|avx512 forces a lower level (a higher one than the CPU
   supports falls back to the best supported, with a warning on stderr). */
const wina_kernels *wina_kernels_active(void);
/* The table for a named ISA, or NULL when this CPU/OS cannot run it. */
const wina_kernels *wina_kernels_for(const char *isa);
/* Bit set of supported ISAs: 1 scalar, 2 avx2, 4 avx512, 8 avx512bf16. */
int wina_cpu_features(void);

/* Element conversions (scalar, used by loaders and tests; defined in dispatch.cc). */
float wina_bf16_to_f32(uint16_t h);
uint16_t wina_f32_to_bf16(float f); /* round to nearest even, NaN preserved */
float wina_f16_to_f32(uint16_t h);
uint16_t wina_f32_to_f16(float f);  /* round to nearest even */

#ifdef __cplusplus
}
#endif
