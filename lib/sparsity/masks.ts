// Reference activation-selection rules, written to read like the math (tests and calibration use them;
// the decode path uses the native select_* kernels).
//
// For a linear layer y = W x with W stored [out, in] row-major (PyTorch order):
//   TEAL score  s_i = |x_i|
//   WINA score  s_i = |x_i| * ||W[:, i]||_2        (column norm over the output rows)
// and the mask keeps the k inputs with the largest score.

type Vec = ArrayLike<number>;

/** TEAL's criterion: the magnitude of each input. */
export function scoresTeal(x: Vec): Float64Array {
  const s = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) s[i] = Math.abs(x[i]);
  return s;
}

/** WINA's criterion: |x_i| weighted by the L2 norm of the weight column that x_i multiplies. */
export function scoresWina(x: Vec, colNorms: Vec): Float64Array {
  if (colNorms.length !== x.length) {
    throw new Error(`scoresWina: ${x.length} inputs but ${colNorms.length} column norms`);
  }
  const s = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) s[i] = Math.abs(x[i]) * colNorms[i];
  return s;
}

/**
 * 0/1 mask keeping exactly k entries with the largest score. Ties go to the lower index, so the result
 * is deterministic and matches a stable descending sort (the native selector is tested against this).
 */
export function topkMask(scores: Vec, k: number): Uint8Array {
  const n = scores.length;
  if (!Number.isInteger(k) || k < 0 || k > n) {
    throw new Error(`topkMask: k must be an integer in [0, ${n}], got ${k}`);
  }
  const order = Array.from({ length: n }, (_, i) => i);
  order.sort((a, b) => scores[b] - scores[a] || a - b);
  const mask = new Uint8Array(n);
  for (let j = 0; j < k; j++) mask[order[j]] = 1;
  return mask;
}

/** L2 norm of each input column of W ([out, in] row-major): the `c` of WINA's score. */
export function columnNorms(W: Float64Array | Float32Array, out: number, inDim: number): Float64Array {
  if (W.length !== out * inDim) {
    throw new Error(`columnNorms: W has ${W.length} values, expected ${out}x${inDim} = ${out * inDim}`);
  }
  const sq = new Float64Array(inDim);
  for (let r = 0; r < out; r++) {
    const row = r * inDim;
    for (let i = 0; i < inDim; i++) sq[i] += W[row + i] * W[row + i];
  }
  for (let i = 0; i < inDim; i++) sq[i] = Math.sqrt(sq[i]);
  return sq;
}
