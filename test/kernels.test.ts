// Every kernel x ISA x dtype against the scalar reference (and the scalar reference against plain
// float64 math / a plain sort), on odd sizes and tails, all-zero input, ties, k = 0 and k = n; plus the
// argument checks of the kernel API.
import { describe, expect, it } from 'vitest';

import {
  InputMajorMatrix, columnNorms, gatingScores, gemvDense, gemvDenseAsync, gemvSparse, gemvSparseAsync,
  selectThreshold, selectTopk, supportedIsas, activeIsa,
} from '../lib/kernels.js';
import { Tensor, type DtypeName } from '../lib/tensor.js';

const ISAS = supportedIsas();
const DTYPES: DtypeName[] = ['f32', 'bf16', 'f16'];
const SIZES: [number, number][] = [[1, 1], [7, 5], [33, 17], [64, 100], [257, 33], [4097, 7], [130, 1000]];

function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x / 4294967296;
  };
}

function randomVec(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => (r() * 2 - 1) * scale);
}

/** The stored weights as float64 (bf16/f16 decoded from their bit patterns). */
function decoded(m: InputMajorMatrix): Float64Array {
  const d = m.tensor.data;
  if (m.dtype === 'f32') return Float64Array.from(d as Float32Array);
  const u = d as Uint16Array;
  const out = new Float64Array(u.length);
  const f = new Float32Array(1);
  const b = new Uint32Array(f.buffer);
  for (let i = 0; i < u.length; i++) {
    if (m.dtype === 'bf16') {
      b[0] = u[i] << 16;
      out[i] = f[0];
    } else {
      const s = u[i] >> 15 ? -1 : 1, e = (u[i] >> 10) & 31, mant = u[i] & 1023;
      out[i] = e === 0 ? s * mant * 2 ** -24 : e === 31 ? (mant ? NaN : s * Infinity) : s * (1 + mant / 1024) * 2 ** (e - 15);
    }
  }
  return out;
}

/** y = sum over idx of x[i] * W[:, i] in float64, plus the bound sum |x_i w_i| for tolerances. */
function refGemv(m: InputMajorMatrix, x: Float32Array, idx: ArrayLike<number>): { y: Float64Array; mag: Float64Array } {
  const w = decoded(m);
  const y = new Float64Array(m.out), mag = new Float64Array(m.out);
  for (let j = 0; j < idx.length; j++) {
    const i = idx[j];
    for (let o = 0; o < m.out; o++) {
      y[o] += x[i] * w[i * m.ld + o];
      mag[o] += Math.abs(x[i] * w[i * m.ld + o]);
    }
  }
  return { y, mag };
}

function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, mag: ArrayLike<number>, rel: number, what: string) {
  for (let o = 0; o < want.length; o++) {
    const tol = rel * (mag[o] + 1e-30) + 1e-30;
    if (!(Math.abs(got[o] - want[o]) <= tol)) throw new Error(`${what}: [${o}] got ${got[o]}, want ${want[o]} (tol ${tol})`);
  }
}

// f32 accumulation over n terms: relative error of the sum is bounded by ~n * 2^-24 of sum |terms|;
// 1e-5 covers n up to ~4097 with margin (the products themselves are exact in f64 for bf16/f16 weights).
const REL = 1e-5;

function matrix(nIn: number, out: number, dtype: DtypeName, seed: number, ld = out): InputMajorMatrix {
  return InputMajorMatrix.fromRowMajor(randomVec(out * nIn, seed), out, nIn, dtype, ld);
}

describe(`kernels on ${ISAS.join(', ')} (active: ${activeIsa()})`, () => {
  it('has the scalar reference and at least the ISA it runs', () => {
    expect(ISAS[0]).toBe('scalar');
    expect(ISAS).toContain(activeIsa());
  });

  for (const dtype of DTYPES) {
    for (const [nIn, out] of SIZES) {
      it(`${dtype} ${nIn}x${out}: column norms, dense and sparse gemv agree across ISAs and with float64`, () => {
        const ld = out + (out % 3); // padded rows too
        const m = matrix(nIn, out, dtype, nIn * 31 + out, ld);
        const x = randomVec(nIn, 5 + nIn);
        const all = Int32Array.from({ length: nIn }, (_, i) => i);
        const sel = Int32Array.from(all.filter((i) => (i * 7 + 3) % 5 < 2)); // ~40%, with gaps and tails
        const w = decoded(m);
        const normRef = Float64Array.from({ length: nIn }, (_, i) => {
          let s = 0;
          for (let o = 0; o < out; o++) s += w[i * ld + o] ** 2;
          return Math.sqrt(s);
        });
        const dense = refGemv(m, x, all);
        const sparse = refGemv(m, x, sel);
        for (const isa of ISAS) {
          const c = columnNorms(m, { isa });
          expectClose(c, normRef, normRef, REL, `${isa} norms`);
          expectClose(gemvDense(m, x, { isa }), dense.y, dense.mag, REL, `${isa} dense`);
          expectClose(gemvSparse(m, x, sel, { isa }), sparse.y, sparse.mag, REL, `${isa} sparse`);
        }
        // The threaded layer (active ISA, thread pool, split-k) matches too.
        expectClose(gemvDense(m, x), dense.y, dense.mag, REL, 'pool dense');
        expectClose(gemvSparse(m, x, sel), sparse.y, sparse.mag, REL, 'pool sparse');
        m.dispose();
      });
    }

    it(`${dtype}: all-zero input gives zero output; empty selection gives zero`, () => {
      const m = matrix(33, 20, dtype, 9);
      for (const isa of ISAS) {
        expect([...gemvDense(m, new Float32Array(33), { isa })].every((v) => v === 0)).toBe(true);
        expect([...gemvSparse(m, randomVec(33, 1), new Int32Array(0), { isa })].every((v) => v === 0)).toBe(true);
      }
      m.dispose();
    });
  }

  it('sparse gemv over a sub-range of a fused matrix (q|k|v style) equals the sub-matrix', async () => {
    const m = matrix(40, 96, 'bf16', 3);
    const x = randomVec(40, 2);
    const idx = Int32Array.from([0, 3, 4, 9, 17, 39]);
    const full = gemvSparse(m, x, idx);
    expect(Array.from(await gemvSparseAsync(m, x, idx))).toEqual(Array.from(full));
    const d = await gemvDenseAsync(m, x);
    expect(d.length).toBe(96);
    m.dispose();
  });

  for (const n of [1, 7, 33, 1000, 4097, 14336]) {
    it(`selection n=${n}: threshold and exact top-k agree with a plain sort on every ISA`, () => {
      const r = rng(n);
      // Quantised values make many ties; a block of zeros covers all-zero stretches.
      const s = Float32Array.from({ length: n }, (_, i) => (i % 11 === 0 ? 0 : Math.floor(r() * 50) / 8));
      const order = [...s.keys()].sort((a, b) => s[b] - s[a] || a - b);
      for (const k of [0, 1, Math.floor(n / 3), Math.floor(n / 2), n - 1, n].filter((v) => v >= 0 && v <= n)) {
        const want = order.slice(0, k).sort((a, b) => a - b);
        for (const isa of ISAS) expect(Array.from(selectTopk(s, k, { isa })), `${isa} k=${k}`).toEqual(want);
      }
      for (const t of [-1, 0, 1.5, 3.125, 100]) {
        const want = [...s.keys()].filter((i) => s[i] > t);
        for (const isa of ISAS) expect(Array.from(selectThreshold(s, t, { isa })), `${isa} t=${t}`).toEqual(want);
      }
    });
  }

  it('gating scores: |x| * c and |x| on every ISA, odd lengths', () => {
    for (const n of [1, 7, 33, 4097]) {
      const x = randomVec(n, n), c = randomVec(n, n + 1).map(Math.abs);
      for (const isa of ISAS) {
        const s = gatingScores(x, c, { isa });
        const a = gatingScores(x, null, { isa });
        for (let i = 0; i < n; i++) {
          expect(s[i]).toBe(Math.fround(Math.abs(x[i]) * c[i]));
          expect(a[i]).toBe(Math.abs(x[i]));
        }
      }
    }
  });
});

describe('kernel argument checks', () => {
  const m = matrix(8, 4, 'f32', 1);
  it('names the bad argument', () => {
    expect(() => gemvDense(m, new Float32Array(7))).toThrow(RangeError);
    expect(() => gemvDense(m, new Float32Array(7))).toThrow(/x\.length/);
    expect(() => gemvDense(m, [1, 2] as unknown as Float32Array)).toThrow(TypeError);
    expect(() => gemvSparse(m, new Float32Array(8), Int32Array.from([8]))).toThrow(/indices\[0\] = 8/);
    expect(() => gemvSparse(m, new Float32Array(8), Int32Array.from([-1]))).toThrow(RangeError);
    expect(() => gemvSparse(m, new Float32Array(8), [1] as unknown as Int32Array)).toThrow(/indices must be an Int32Array/);
    expect(() => selectTopk(new Float32Array(4), 5)).toThrow(/k must be in \[0, 4\]/);
    expect(() => selectTopk(new Float32Array(4), 1.5)).toThrow(TypeError);
    expect(() => gatingScores(new Float32Array(4), new Float32Array(3))).toThrow(/norms\.length/);
    expect(() => columnNorms(m, { isa: 'sse9' as never })).toThrow(/isa must be/);
    expect(() => Tensor.alloc('f64' as never, 3)).toThrow(/dtype/);
    expect(() => new InputMajorMatrix(Tensor.alloc('f32', 10), 4, 3)).toThrow(/needs nIn \* ld/);
    expect(() => InputMajorMatrix.fromRowMajor(new Float32Array(5), 2, 3)).toThrow(/expected out \* in/);
  });
  it('refuses disposed tensors, in TS and in native code', () => {
    const t = matrix(8, 4, 'bf16', 2);
    const data = t.tensor.data;
    t.dispose();
    expect(t.tensor.disposed).toBe(true);
    expect(() => t.tensor.data).toThrow(/disposed/);
    expect(() => gemvDense(t, new Float32Array(8))).toThrow(/disposed/);
    expect(data.length).toBe(0); // the old view is detached, not dangling
    t.dispose(); // idempotent
  });
});
