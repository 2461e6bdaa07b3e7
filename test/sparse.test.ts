// Sparse inference in the forward pass: plans (methods, top-k vs thresholds, levels), and two
// independent code paths that must agree — decode (select, then gather only the kept columns) and
// masked prefill (zero the dropped inputs, then a dense GEMM).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadModel, type Model } from '../lib/model.js';
import { buildPlan, planLevels, thresholdFor, type SparsityOptions } from '../lib/sparsity/plan.js';
import { calibrateModel } from '../lib/sparsity/calibrate.js';

let model: Model;
const prompt = [1, 349, 1432, 599, 496, 4034, 4042, 4024, 357, 261, 745, 1278];

beforeAll(async () => {
  model = await loadModel(undefined, { progress: false, dtype: 'f32' });
});
afterAll(() => model?.dispose());

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function kl(p: Float32Array, q: Float32Array): number {
  const lse = (v: Float32Array) => {
    let m = -Infinity;
    for (const x of v) m = Math.max(m, x);
    let s = 0;
    for (const x of v) s += Math.exp(x - m);
    return m + Math.log(s);
  };
  const lp = lse(p), lq = lse(q);
  let k = 0;
  for (let i = 0; i < p.length; i++) {
    const a = p[i] - lp;
    k += Math.exp(a) * (a - (q[i] - lq));
  }
  return k;
}

/** Logits of the last prompt token, prompt run token by token (every token decoded sparsely). */
async function decodeEach(sp: SparsityOptions | null): Promise<{ logits: Float32Array; kept: number }> {
  const s = model.createSession({ contextLength: prompt.length, sparsity: sp });
  let logits = new Float32Array(0);
  let kept = 0;
  for (const id of prompt) {
    const r = await s.forward([id]);
    logits = r.logits;
    kept += r.stats.selectedFraction;
  }
  s.dispose();
  return { logits, kept: kept / prompt.length };
}

/** Logits of the last prompt token, prompt run as one masked prefill. */
async function prefill(sp: SparsityOptions | null): Promise<Float32Array> {
  const s = model.createSession({ contextLength: prompt.length, sparsity: sp });
  const { logits } = await s.forward(prompt);
  s.dispose();
  return logits;
}

describe('sparse forward', () => {
  let calibration: Awaited<ReturnType<typeof calibrateModel>>;
  beforeAll(async () => {
    const seqs = [prompt.concat(prompt.map((t) => (t * 7) % 4000 + 5)), prompt.map((t) => (t * 13) % 4000 + 5)];
    calibration = await calibrateModel(model, seqs, {});
  });

  for (const method of ['teal', 'wina', 'wina-all'] as const) {
    for (const select of ['topk', 'threshold'] as const) {
      it(`${method}/${select}: decode (gathered columns) equals masked prefill (dense GEMM)`, async () => {
        const sp: SparsityOptions = { method, sparsity: 0.5, select, calibration, prefill: 'sparse' };
        const a = await decodeEach(sp);
        const b = await prefill(sp);
        expect(maxAbsDiff(a.logits, b)).toBeLessThan(2e-3);
        if (select === 'topk') expect(a.kept).toBeCloseTo(0.5, 6);
        else expect(a.kept).toBeGreaterThan(0.2); // calibrated on other text: near, not at, 50%
        const dense = await prefill(null);
        expect(maxAbsDiff(a.logits, dense)).toBeGreaterThan(1e-2); // sparsity really changed the result
      });
    }
  }

  it('level 0 and k = n are exactly dense; more sparsity moves further from dense', async () => {
    const dense = (await decodeEach(null)).logits;
    expect(maxAbsDiff((await decodeEach({ method: 'wina', sparsity: 0 })).logits, dense)).toBe(0);
    const kls = [];
    for (const s of [0.25, 0.5, 0.75]) kls.push(kl(dense, (await decodeEach({ method: 'teal', sparsity: s, select: 'topk' })).logits));
    expect(kls[0]).toBeGreaterThan(0);
    expect(kls[1]).toBeGreaterThan(kls[0]);
    expect(kls[2]).toBeGreaterThan(kls[1]);
  });

  it('serving prefill is dense by default; eval prefill masks all but the first 1%', async () => {
    const sp = { method: 'teal', sparsity: 0.5, select: 'topk' } as const;
    expect(maxAbsDiff(await prefill(sp), await prefill(null))).toBe(0);
    expect(maxAbsDiff(await prefill({ ...sp, prefill: 'eval' }), await prefill(null))).toBeGreaterThan(1e-2);
  });

  it('plans: wina weights only k and gate; k = floor(n (1 - s)); thresholds interpolate quantiles', () => {
    const cfg = model.config;
    const plan = buildPlan(cfg, { method: 'wina', sparsity: 0.4, select: 'topk' })!;
    expect(Array.from(plan.scores.subarray(0, 7))).toEqual([0, 1, 0, 0, 1, 0, 0]);
    expect(Array.from(buildPlan(cfg, { method: 'wina-all', sparsity: 0.4 })!.scores.subarray(0, 7))).toEqual([1, 1, 1, 1, 1, 1, 1]);
    expect(Array.from(buildPlan(cfg, { method: 'teal', sparsity: 0.4 })!.scores.subarray(0, 7))).toEqual([0, 0, 0, 0, 0, 0, 0]);
    expect(plan.ks[0]).toBe(Math.floor(256 * 0.6)); // q: 256 inputs
    expect(plan.ks[6]).toBe(Math.floor(768 * 0.6)); // down: 768 inputs
    expect(buildPlan(cfg, { method: 'dense' })).toBeNull();
    expect(thresholdFor([0, 1, 2, ...Array(98).fill(2)], 0.015)).toBeCloseTo(1.5);
    expect(() => buildPlan(cfg, { method: 'wina', sparsity: 0.5, select: 'threshold' })).toThrow(/calibration/);
    expect(() => buildPlan(cfg, { method: 'wina', sparsity: 1.2 })).toThrow(RangeError);
    expect(() => buildPlan(cfg, { method: 'magic' as never })).toThrow(/method must be/);
    expect(planLevels(cfg, { method: 'teal', sparsity: 0.25 })[3]).toEqual([0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]);
  });

  it('calibration: thresholds keep about 1 - s of the inputs they were measured on', () => {
    // Quantiles are monotone and the 50% threshold sits between the 40% and 60% ones.
    for (const kind of ['abs', 'wina'] as const) {
      for (const layer of calibration.quantiles[kind]) for (const q of layer) {
        for (let i = 1; i < q.length; i++) expect(q[i]).toBeGreaterThanOrEqual(q[i - 1]);
      }
    }
    expect(calibration.tokens).toBe(prompt.length * 3);
  });
});
