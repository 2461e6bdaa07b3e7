// The theory behind WINA, checked on synthetic networks with the reference selection rules.
//
// Lemma 3.1 (WINA paper, v2): if W has orthogonal columns (WᵀW diagonal), the mask g that keeps the k
// largest |x_i|·||W[:,i]|| minimises ||Wx − W(g⊙x)||₂ over all masks with k ones, because the cross terms
// vanish: ||W((1−g)⊙x)||² = Σ_{i dropped} x_i²·||W[:,i]||².
// Paper v2 Table 2 ("Lemma 3.1" rows) reports, for random Kaiming networks with that property averaged over
// 20 seeds, an l2 output error of WINA 0.70/1.73/2.70/4.75 against TEAL 1.68/3.41/4.86/7.55 at
// 25/40/50/65% sparsity: WINA's error is 0.42-0.63 of TEAL's.
import { describe, expect, it } from 'vitest';
import { Matrix, SVD } from 'ml-matrix';
import { columnNorms, scoresTeal, scoresWina, topkMask } from '../lib/sparsity/masks.js';
import { mulberry32 } from './helpers/rng.js';

// ---- seeded random numbers ---------------------------------------------------------------------

/** Seeded uniform generator (mulberry32), so every run sees the same networks. */
const rng = mulberry32;

/** Standard normal samples (Box-Muller). */
function gaussian(rand: () => number, n: number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const u = 1 - rand();
    out[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
  }
  return out;
}

// ---- weights -----------------------------------------------------------------------------------

/** Kaiming-normal [out, in] matrix: entries N(0, 2/in), as nn.init.kaiming_normal_ (fan_in, ReLU gain). */
function kaiming(rand: () => number, out: number, inDim: number): Float64Array {
  const w = gaussian(rand, out * inDim);
  const std = Math.sqrt(2 / inDim);
  for (let i = 0; i < w.length; i++) w[i] *= std;
  return w;
}

/**
 * A Kaiming matrix made column-orthogonal by its own right singular vectors: W ← G·V = U·Σ. Its columns are
 * orthogonal but not orthonormal — their norms are G's singular values, which spread widely — exactly the
 * structure the checkpoint transform gives k_proj and gate_proj.
 */
function kaimingOrthogonalColumns(rand: () => number, out: number, inDim: number): Float64Array {
  if (out < inDim) throw new Error('kaimingOrthogonalColumns: needs out >= in (full right basis)');
  const G = Matrix.from1DArray(out, inDim, kaiming(rand, out, inDim));
  const V = new SVD(G, { computeLeftSingularVectors: false }).rightSingularVectors;
  return Float64Array.from(G.mmul(V).to1DArray());
}

/** y = W x for W [out, in] row-major. */
function matvec(W: Float64Array, out: number, inDim: number, x: ArrayLike<number>): Float64Array {
  const y = new Float64Array(out);
  for (let r = 0; r < out; r++) {
    let acc = 0;
    for (let i = 0; i < inDim; i++) acc += W[r * inDim + i] * x[i];
    y[r] = acc;
  }
  return y;
}

function dist(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return Math.sqrt(s);
}

function masked(x: ArrayLike<number>, mask: Uint8Array): Float64Array {
  return Float64Array.from(x, (v, i) => (mask[i] ? v : 0));
}

// ---- the reference rules themselves -------------------------------------------------------------

describe('reference masks (lib/sparsity/masks.ts)', () => {
  it('scores and column norms by hand', () => {
    // W = [[3, 0, 1], [4, 0, -1]]: column norms 5, 0, sqrt(2).
    const W = Float32Array.from([3, 0, 1, 4, 0, -1]);
    const c = columnNorms(W, 2, 3);
    expect([...c]).toEqual([5, 0, Math.SQRT2]);
    expect([...scoresTeal([-2, 1, 0.5])]).toEqual([2, 1, 0.5]);
    expect([...scoresWina([-2, 1, 0.5], c)]).toEqual([10, 0, Math.SQRT2 / 2]);
    expect(() => columnNorms(W, 3, 3)).toThrow(/expected 3x3/);
  });

  it('topkMask keeps exactly k, ties going to the lower index', () => {
    expect([...topkMask([1, 3, 3, 2, 3], 2)]).toEqual([0, 1, 1, 0, 0]);
    expect([...topkMask([1, 3, 3, 2, 3], 4)]).toEqual([0, 1, 1, 1, 1]);
    expect([...topkMask([0, 0, 0], 0)]).toEqual([0, 0, 0]);
    expect([...topkMask([0, 0, 0], 3)]).toEqual([1, 1, 1]);
    expect(() => topkMask([1, 2], 3)).toThrow(/k must be/);
  });
});

// ---- Test 1: the paper's synthetic comparison --------------------------------------------------

type Rule = 'teal' | 'wina';

interface Net {
  widths: number[]; // widths[0] = input, widths[l+1] = output of layer l
  weights: Float64Array[];
  norms: Float64Array[];
}

function buildNet(seed: number, widths: number[]): Net {
  const rand = rng(seed);
  const weights: Float64Array[] = [];
  const norms: Float64Array[] = [];
  for (let l = 0; l + 1 < widths.length; l++) {
    const w = kaimingOrthogonalColumns(rand, widths[l + 1], widths[l]);
    weights.push(w);
    norms.push(columnNorms(w, widths[l + 1], widths[l]));
  }
  return { widths, weights, norms };
}

/**
 * Forward through the network with ReLU between layers. With a rule, every layer's input is sparsified to
 * k = int(in·(1−s)) entries (the reference code's `int(d * (1 - s))`) and the sparse activations propagate.
 */
function forward(net: Net, x: Float64Array, rule: Rule | null, sparsity: number): Float64Array {
  let h: Float64Array = x;
  for (let l = 0; l < net.weights.length; l++) {
    const inDim = net.widths[l];
    if (rule) {
      const k = Math.floor(inDim * (1 - sparsity));
      const scores = rule === 'teal' ? scoresTeal(h) : scoresWina(h, net.norms[l]);
      h = masked(h, topkMask(scores, k));
    }
    h = matvec(net.weights[l], net.widths[l + 1], inDim, h);
    if (l + 1 < net.weights.length) h = h.map((v) => Math.max(v, 0));
  }
  return h;
}

describe('WINA vs TEAL on random column-orthogonal Kaiming networks (paper v2 Table 2 setting)', () => {
  // Differences from the paper (the research note gives only "random Kaiming networks, 20 seeds,
  // Lemma 3.1 setting"): depth 3, width 64, ReLU between layers, inputs x ~ N(0, I), 8 inputs per network;
  // column orthogonality is obtained by rotating each Kaiming matrix by its right singular vectors.
  const widths = [64, 64, 64, 64];
  const seeds = Array.from({ length: 20 }, (_, i) => 1000 + i);
  const levels = [0.25, 0.4, 0.5, 0.65];
  const inputsPerNet = 8;

  const err: Record<Rule, number[]> = { teal: levels.map(() => 0), wina: levels.map(() => 0) };
  for (const seed of seeds) {
    const net = buildNet(seed, widths);
    const rand = rng(seed * 7 + 1);
    for (let t = 0; t < inputsPerNet; t++) {
      const x = gaussian(rand, widths[0]);
      const dense = forward(net, x, null, 0);
      levels.forEach((s, j) => {
        for (const rule of ['teal', 'wina'] as const) {
          err[rule][j] += dist(dense, forward(net, x, rule, s)) / (seeds.length * inputsPerNet);
        }
      });
    }
  }

  it.each(levels.map((s, j) => [s, j] as const))('at sparsity %s WINA error < 0.8 × TEAL error', (s, j) => {
    const ratio = err.wina[j] / err.teal[j];
    // Measured (mean l2 error WINA / TEAL): 0.45/1.02 = 0.44, 1.09/2.11 = 0.52, 1.62/2.84 = 0.57,
    // 3.05/4.80 = 0.64 at 25/40/50/65% — the paper's ratios are 0.42, 0.51, 0.56, 0.63. Absolute errors are
    // smaller than the paper's (their widths/depth are not in our notes), the ratios are what carries over.
    expect(ratio).toBeLessThan(0.8);
    expect(err.wina[j]).toBeGreaterThan(0);
  });

  it('errors grow with sparsity for both rules', () => {
    for (const rule of ['teal', 'wina'] as const) {
      for (let j = 1; j < levels.length; j++) expect(err[rule][j]).toBeGreaterThan(err[rule][j - 1]);
    }
  });

  it('WINA beats TEAL on most single inputs too, not just on average (50% sparsity)', () => {
    // Not on every input: masks are chosen greedily layer by layer and the ReLU couples the layers, so
    // a locally optimal mask can be worse downstream. Measured: WINA wins on 154 of 160 inputs.
    let wins = 0;
    let total = 0;
    for (const seed of seeds) {
      const net = buildNet(seed, widths);
      const rand = rng(seed + 5);
      for (let t = 0; t < inputsPerNet; t++) {
        const x = gaussian(rand, widths[0]);
        const dense = forward(net, x, null, 0);
        const e = (rule: Rule) => dist(dense, forward(net, x, rule, 0.5));
        if (e('wina') < e('teal')) wins++;
        total++;
      }
    }
    expect(wins / total).toBeGreaterThan(0.75);
  });
});

// ---- Test 2: Lemma 3.1 by brute force ----------------------------------------------------------

/** All k-subsets of {0..n-1} as masks. */
function* allMasks(n: number, k: number): Generator<Uint8Array> {
  const idx = Array.from({ length: k }, (_, i) => i);
  while (true) {
    const m = new Uint8Array(n);
    for (const i of idx) m[i] = 1;
    yield m;
    let p = k - 1;
    while (p >= 0 && idx[p] === n - k + p) p--;
    if (p < 0) return;
    idx[p]++;
    for (let q = p + 1; q < k; q++) idx[q] = idx[q - 1] + 1;
  }
}

interface Search {
  best: number;
  wina: number;
  teal: number;
}

/** Exhaustive search of ||Wx − W(g⊙x)|| over all masks with k ones, next to WINA's and TEAL's masks. */
function exhaustive(W: Float64Array, out: number, n: number, x: Float64Array, k: number): Search {
  const y = matvec(W, out, n, x);
  const errOf = (m: Uint8Array) => dist(y, matvec(W, out, n, masked(x, m)));
  let best = Infinity;
  for (const m of allMasks(n, k)) best = Math.min(best, errOf(m));
  return {
    best,
    wina: errOf(topkMask(scoresWina(x, columnNorms(W, out, n)), k)),
    teal: errOf(topkMask(scoresTeal(x), k)),
  };
}

describe('Lemma 3.1: WINA mask is the exact argmin for column-orthogonal W (brute force, n = 10)', () => {
  const n = 10;
  const out = 16;
  const ks = [3, 4, 5, 6, 7];
  const seeds = [1, 2, 3, 4, 5, 6];

  it('orthogonal columns: WINA error equals the minimum over all C(10,k) masks', () => {
    let tealSuboptimal = 0;
    for (const seed of seeds) {
      const rand = rng(seed);
      const W = kaimingOrthogonalColumns(rand, out, n);
      const x = gaussian(rand, n);
      for (const k of ks) {
        const r = exhaustive(W, out, n, x, k);
        expect(r.wina).toBeLessThanOrEqual(r.best * (1 + 1e-12) + 1e-14);
        if (r.teal > r.best * (1 + 1e-9)) tealSuboptimal++;

      }
    }
    // The brute force discriminates: TEAL's |x| mask misses the optimum in most cases (measured 21 of 30).
    expect(tealSuboptimal).toBeGreaterThan(seeds.length * ks.length / 2);
  });

  it('without orthogonal columns WINA is not always optimal (the lemma needs its hypothesis)', () => {
    let winaSuboptimal = 0;
    let cases = 0;
    for (const seed of seeds) {
      const rand = rng(seed + 100);
      // Plain Kaiming plus a shared direction in every column: strongly correlated columns, WᵀW far from
      // diagonal, so dropped columns can cancel each other and the column-norm ranking is no longer exact.
      const W = kaiming(rand, out, n);
      const shared = gaussian(rand, out);
      for (let r = 0; r < out; r++) for (let i = 0; i < n; i++) W[r * n + i] += 0.5 * shared[r];
      const x = gaussian(rand, n);
      for (const k of ks) {
        const r = exhaustive(W, out, n, x, k);
        expect(r.wina).toBeGreaterThanOrEqual(r.best * (1 - 1e-12));
        cases++;
        if (r.wina > r.best * (1 + 1e-9)) winaSuboptimal++;
      }
    }
    // Measured: WINA's mask misses the optimum in 17 of the 30 cases.
    expect(winaSuboptimal).toBeGreaterThanOrEqual(cases / 4);
  });
});
