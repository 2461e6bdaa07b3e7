// Dense float64 matrix helpers for the offline checkpoint transform. Matrices are row-major Float64Arrays
// with their shape passed alongside ([rows, cols], PyTorch order for weights). Plain loops whose inner loop
// walks contiguous rows of B and C; ml-matrix does the eigendecomposition.

import { EVD, Matrix } from 'ml-matrix';

/**
 * C[m,n] = A[m,k] · B[k,n]. Four rows of B per pass over a row of C: the simple i-k-j loop is bound by
 * loading and storing C, and this is ~3× faster in V8 (measured 0.4 s vs 1.2 s for 4096×256·256×256).
 */
export function matmul(A: Float64Array, B: Float64Array, m: number, k: number, n: number): Float64Array {
  checkSize('matmul A', A, m * k);
  checkSize('matmul B', B, k * n);
  const C = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    const row = C.subarray(i * n, (i + 1) * n);
    const a = i * k;
    let p = 0;
    for (; p + 3 < k; p += 4) {
      const a0 = A[a + p];
      const a1 = A[a + p + 1];
      const a2 = A[a + p + 2];
      const a3 = A[a + p + 3];
      const b0 = p * n;
      const b1 = b0 + n;
      const b2 = b1 + n;
      const b3 = b2 + n;
      for (let j = 0; j < n; j++) row[j] += a0 * B[b0 + j] + a1 * B[b1 + j] + a2 * B[b2 + j] + a3 * B[b3 + j];
    }
    for (; p < k; p++) {
      const ap = A[a + p];
      const b = p * n;
      for (let j = 0; j < n; j++) row[j] += ap * B[b + j];
    }
  }
  return C;
}

/** C[m,n] = A[k,m]ᵀ · B[k,n] (A given untransposed). */
export function matmulTN(A: Float64Array, B: Float64Array, k: number, m: number, n: number): Float64Array {
  return matmul(transpose(A, k, m), B, m, k, n);
}

/** Aᵀ for A[rows, cols]. */
export function transpose(A: Float64Array, rows: number, cols: number): Float64Array {
  checkSize('transpose', A, rows * cols);
  const T = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) T[c * rows + r] = A[r * cols + c];
  return T;
}

/** W[:, i] *= g[i] in place: folds a norm gain that multiplies W's input into W itself. */
export function scaleColumns(W: Float64Array, rows: number, cols: number, g: ArrayLike<number>): void {
  checkSize('scaleColumns', W, rows * cols);
  if (g.length !== cols) throw new Error(`scaleColumns: ${cols} columns but ${g.length} gains`);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) W[r * cols + c] *= g[c];
}

export interface RightBasis {
  /** Q[in, in], orthogonal: column j is the j-th right singular vector of W. */
  Q: Float64Array;
  /** Singular values of W, descending; zeros beyond rank(W) (length in, as for full_matrices). */
  singularValues: Float64Array;
}

/**
 * The full right singular basis V of W[out, in] (the `Vh.T` of torch.linalg.svd(W, full_matrices=True)),
 * so that W·V = U·Σ has orthogonal columns whose norms are the singular values.
 *
 * V is taken as the eigenvectors of the Gram matrix WᵀW (in×in, symmetric: ml-matrix's tred2/tql2). That
 * gives the full in×in basis even when out < in (GQA k_proj), which a thin SVD would not, and it is about
 * 1.3-1.6× faster than ml-matrix's SVD here. (WV)ᵀ(WV) = VᵀWᵀWV is then diagonal to ~1e-15 relative to
 * σ_max²; singular values far below σ_max·1e-8 come out only as accurate as that (they are ~0 anyway).
 * Cost: O(in²·out) for the Gram matrix plus ~10·in³ for the eigensolver — measured on this machine (one
 * core) about 0.2 s at in = 256, 10 s at in = 1024; expect ~10 min per matrix at in = 4096.
 */
export function rightSingularBasis(W: Float64Array, out: number, inDim: number): RightBasis {
  checkSize('rightSingularBasis', W, out * inDim);
  const gram = matmulTN(W, W, out, inDim, inDim);
  const evd = new EVD(Matrix.from1DArray(inDim, inDim, gram), { assumeSymmetric: true });
  const lambda = evd.realEigenvalues;
  const V = evd.eigenvectorMatrix;
  // tql2 returns ascending eigenvalues; order the basis like an SVD (largest singular value first).
  const order = Array.from({ length: inDim }, (_, i) => i).sort((a, b) => lambda[b] - lambda[a]);
  const Q = new Float64Array(inDim * inDim);
  const singularValues = new Float64Array(inDim);
  order.forEach((src, j) => {
    singularValues[j] = Math.sqrt(Math.max(lambda[src], 0));
    for (let i = 0; i < inDim; i++) Q[i * inDim + j] = V.get(i, src);
  });
  return { Q, singularValues };
}

function checkSize(what: string, A: Float64Array, n: number): void {
  if (A.length !== n) throw new Error(`${what}: expected ${n} values, found ${A.length}`);
}
