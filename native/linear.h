// Threaded linear layers over the kernel table: the persistent native thread pool and the
// split-k sparse / dense GEMV, the prefill GEMM and the row-major (lm_head) GEMV.
#pragma once
#include <stdint.h>
#include <functional>
#include "kernels.h"

namespace wina {

// ---- thread pool -------------------------------------------------------------------------------
// One process-wide persistent pool owned by the addon (never libuv's, never the JS thread).
// run() executes fn(task, thread) for task in [0, n_tasks) with the calling thread taking part as
// thread 0; it returns when all tasks are done. Workers spin briefly then sleep on a condition
// variable (pure spinning stalls for milliseconds when the OS preempts a spinner on small VMs).
// run() is not reentrant; callers serialise (one forward at a time per pool).
void pool_set_threads(int n);  // n <= 0: the machine's cores
int pool_threads();
void pool_run(int n_tasks, const std::function<void(int task, int thread)> &fn);

// ---- aligned memory ----------------------------------------------------------------------------
void *aligned_alloc64(size_t bytes);  // 64-byte aligned, zeroed, MADV_HUGEPAGE for large blocks
void aligned_free64(void *p);

// ---- matrices ----------------------------------------------------------------------------------
struct Matrix {
  int dtype = WINA_F32;        // wina_dtype
  const void *data = nullptr;  // Wt[n_in][ld], input-major
  int64_t n_in = 0;
  int64_t out = 0;
  int64_t ld = 0;              // elements per input row (>= out)
};
size_t dtype_size(int dtype);
// The output columns [col0, col0 + width) of a fused matrix, same ld.
Matrix matrix_cols(const Matrix &m, int64_t col0, int64_t width);

// y[0:out] = W x over all inputs (threaded).
void linear_dense(const Matrix &w, const float *x, float *y);
// y[0:out] = W x restricted to the selected inputs idx[0:nidx] (threaded, split-k + reduction).
void linear_sparse(const Matrix &w, const float *x, const int32_t *idx, int64_t nidx, float *y);
// Several matrices sharing one input x, one index list each, in one parallel region:
// y[m] = W[m] x over idx[m][0:nidx[m]]; idx[m] == nullptr means dense for that matrix.
void linear_sparse_group(int n, const Matrix *w, const float *x, const int32_t *const *idx,
                         const int64_t *nidx, float *const *y);
// Prefill: Y[t][0:out] = W X[t] for t < T (threaded), X row stride n_in... given as ldx, Y as ldy.
void linear_gemm(const Matrix &w, const float *x, int64_t ldx, int64_t T, float *y, int64_t ldy);
// Row-major dense [rows][ld] (embedding / lm_head): y[r] = dot(W[r, 0:cols], x), threaded over rows.
void rows_gemv(int dtype, const void *w, int64_t ld, int64_t rows, int64_t cols, const float *x,
               float *y);

const wina_kernels *K();  // the active kernel table (wina_kernels_active())

}  // namespace wina
