// Calibration: score quantiles (thresholds keep about 1 - s of the inputs they were measured on) and
// TEAL's block-wise greedy allocation (monotone rows, parameter-weighted steps, no worse than uniform).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadModel, type Model } from '../lib/model.js';
import { calibrateModel } from '../lib/sparsity/calibrate.js';
import { calibrationSequences } from '../lib/sparsity/calibrate-cli.js';
import { buildPlan, matrixParams, type Calibration } from '../lib/sparsity/plan.js';
import { native } from '../lib/native.js';

const TEXT = `Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in
Liberty, and dedicated to the proposition that all men are created equal. Now we are engaged in a great civil war,
testing whether that nation, or any nation so conceived and so dedicated, can long endure. We are met on a great
battle-field of that war. We have come to dedicate a portion of that field, as a final resting place for those who
here gave their lives that that nation might live. It is altogether fitting and proper that we should do this.`;

let model: Model;
let seqs: number[][];
let cal: Calibration;

beforeAll(async () => {
  model = await loadModel(undefined, { progress: false, dtype: 'f32' });
  seqs = calibrationSequences(model.tokenizer!.encode(TEXT, { addSpecialTokens: false }), model.tokenizer!.bosId, 48, 96);
  cal = await calibrateModel(model, seqs, { greedy: { method: 'wina', target: 0.5, step: 0.1 } });
});
afterAll(() => model?.dispose());

describe('calibration', () => {
  it('splits text into BOS-led windows up to the token budget', () => {
    expect(seqs.length).toBe(2);
    for (const s of seqs) {
      expect(s.length).toBe(48);
      expect(s[0]).toBe(model.tokenizer!.bosId);
    }
    expect(calibrationSequences([5, 6, 7], null, 2, 10)).toEqual([[5, 6]]);
  });

  it('thresholds keep about 1 - s of the calibration inputs', () => {
    // Re-run layer 2 on the calibration text and count what the 50% threshold of gate (wina score) keeps.
    const d = model.config.hiddenSize;
    const x = new Float32Array(seqs[0].length * d);
    native.embed(model.handle, Int32Array.from(seqs[0]), x);
    for (let l = 0; l < 2; l++) {
      const y = new Float32Array(x.length);
      native.layerForward(model.handle, l, x, seqs[0].length, null, y, null);
      x.set(y);
    }
    const caps = [d, model.config.numHeads * model.config.headDim, d, model.config.intermediateSize].map((w) => new Float32Array(seqs[0].length * w));
    native.layerForward(model.handle, 2, x, seqs[0].length, null, new Float32Array(x.length), caps);
    const norms = model.columnNorms(2, 4);
    const plan = buildPlan(model.config, { method: 'wina', sparsity: 0.5, select: 'threshold', calibration: cal })!;
    const t = plan.thresholds[2 * 7 + 4];
    let kept = 0;
    for (let i = 0; i < caps[2].length; i++) if (Math.abs(caps[2][i]) * norms[i % d] > t) kept++;
    expect(kept / caps[2].length).toBeGreaterThan(0.4);
    expect(kept / caps[2].length).toBeLessThan(0.6);
  });

  it('greedy rows rise monotonically to the target with parameter-weighted steps', () => {
    const rows = cal.greedy!.wina!;
    expect(rows).toHaveLength(model.config.numLayers);
    const p = matrixParams(model.config);
    for (const layer of rows) {
      expect(layer[0].effective).toBe(0);
      expect(layer.at(-1)!.effective).toBeGreaterThanOrEqual(0.5 - 1e-9);
      for (let i = 1; i < layer.length; i++) {
        expect(layer[i].effective).toBeGreaterThan(layer[i - 1].effective);
        // exactly one matrix moved, by base_step / (params / params_q)
        const moved = layer[i].levels.map((v, j) => v - layer[i - 1].levels[j]).map((dl, j) => [dl, j] as const).filter(([dl]) => dl > 1e-9);
        expect(moved).toHaveLength(1);
        const [dl, j] = moved[0];
        expect(dl).toBeCloseTo(Math.min(0.1 / (p[j] / p[0]), 1 - layer[i - 1].levels[j]), 5);
      }
    }
  });

  it('greedy levels are no worse than uniform at the same layer sparsity (layer output error)', async () => {
    const layer = 1;
    const row = cal.greedy!.wina![layer].at(-1)!;
    const d = model.config.hiddenSize;
    const T = seqs[0].length;
    const x = new Float32Array(T * d);
    native.embed(model.handle, Int32Array.from(seqs[0]), x);
    const y0 = new Float32Array(T * d);
    native.layerForward(model.handle, 0, x, T, null, y0, null);
    const ref = new Float32Array(T * d);
    native.layerForward(model.handle, layer, y0, T, null, ref, null);
    const err = (levels: number[]) => {
      const all = Array.from({ length: model.config.numLayers }, () => [0, 0, 0, 0, 0, 0, 0]);
      all[layer] = levels;
      const plan = buildPlan(model.config, { method: 'wina', select: 'threshold', calibration: cal, levels: all, prefill: 'sparse' })!;
      const y = new Float32Array(T * d);
      native.layerForward(model.handle, layer, y0, T, plan, y, null);
      let e = 0;
      for (let i = 0; i < y.length; i++) e += (y[i] - ref[i]) ** 2;
      return Math.sqrt(e);
    };
    const greedy = err(row.levels);
    const uniform = err(row.levels.map(() => row.effective));
    expect(greedy).toBeGreaterThan(0);
    expect(greedy).toBeLessThan(uniform * 1.05);
  });

  it('round-trips through a file and loads with the model; rejects a mismatched model', async () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'wina-cal-')), 'cal.json');
    fs.writeFileSync(file, JSON.stringify(cal));
    const m = await loadModel(undefined, { progress: false, calibration: file, sparsity: { method: 'wina', sparsity: 0.5, greedy: true } });
    const r = await m.complete('In the beginning', { maxTokens: 8, temperature: 0 });
    expect(r.tokenIds.length).toBe(8);
    m.dispose();
    const bad = { ...cal, model: { ...cal.model, hiddenSize: 512 } };
    fs.writeFileSync(file, JSON.stringify(bad));
    await expect(loadModel(undefined, { progress: false, calibration: file })).rejects.toThrow(/hidden 512/);
  });
});
