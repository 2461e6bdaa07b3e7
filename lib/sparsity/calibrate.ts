// Calibration: score distributions of every matrix input on calibration text (-> thresholds for any
// sparsity), and TEAL's block-wise greedy allocation of per-matrix levels (-> `greedy` tables).
//
// Runs the dense model layer by layer (as TEAL's grab_acts does): each layer's dense inputs feed both
// the distributions and that layer's greedy search, then become the next layer's inputs.
import { native, type NativePlan } from '../native.js';
import type { Model } from '../model.js';
import {
  MATRICES, QUANTILE_STEPS, matrixParams, thresholdFor, usesWinaScore,
  type Calibration, type GreedyRow, type Method,
} from './plan.js';

export interface CalibrateOptions {
  /** Build the greedy table for this method (omit for distributions only). */
  greedy?: { method: Exclude<Method, 'dense'>; target?: number; step?: number; lastFraction?: number };
  /** Values kept per distribution (uniform subsample above this), for bounded memory and time. */
  maxSamples?: number;
  onProgress?: (stage: string, done: number, total: number) => void;
}

// Which layer capture feeds which matrix: 0 attention input, 1 o_proj input, 2 MLP input, 3 down input.
const CAPTURE_OF = [0, 0, 0, 1, 2, 2, 3];

function quantiles(values: Float32Array): number[] {
  const v = values.slice().sort();
  const out: number[] = [];
  for (let j = 0; j <= QUANTILE_STEPS; j++) {
    const pos = (j / QUANTILE_STEPS) * (v.length - 1);
    const i = Math.floor(pos);
    const f = pos - i;
    out.push(i + 1 < v.length ? v[i] * (1 - f) + v[i + 1] * f : v[i]);
  }
  return out;
}

/** Reservoir of at most `cap` values, kept uniform over everything offered (seeded, deterministic). */
class Sample {
  readonly values: Float32Array;
  n = 0;
  seen = 0;
  #x = 0x9e3779b9;
  constructor(cap: number) {
    this.values = new Float32Array(cap);
  }
  add(v: number): void {
    this.seen++;
    if (this.n < this.values.length) {
      this.values[this.n++] = v;
      return;
    }
    this.#x ^= this.#x << 13; this.#x >>>= 0; this.#x ^= this.#x >>> 17; this.#x ^= this.#x << 5; this.#x >>>= 0;
    const j = this.#x % this.seen;
    if (j < this.values.length) this.values[j] = v;
  }
  get(): Float32Array {
    return this.values.subarray(0, this.n);
  }
}

function widths(model: Model): number[] {
  const c = model.config;
  return [c.hiddenSize, c.numHeads * c.headDim, c.hiddenSize, c.intermediateSize];
}

/** Runs `layer` on x[T][d], optionally capturing its four matrix inputs. */
function runLayer(model: Model, layer: number, x: Float32Array, T: number, plan: NativePlan | null, capture: boolean) {
  const d = model.config.hiddenSize;
  const y = new Float32Array(T * d);
  const caps = capture ? widths(model).map((w) => new Float32Array(T * w)) : null;
  native.layerForward(model.handle, layer, x, T, plan, y, caps);
  return { y, caps };
}

/** TEAL's layer error: L2 over the last `lastFraction` of positions per channel, mean over channels. */
function layerError(ref: Float32Array, y: Float32Array, T: number, d: number, lastFraction: number): number {
  const s = Math.floor(T * (1 - lastFraction));
  let sum = 0;
  for (let c = 0; c < d; c++) {
    let e = 0;
    for (let t = s; t < T; t++) {
      const diff = ref[t * d + c] - y[t * d + c];
      e += diff * diff;
    }
    sum += Math.sqrt(e);
  }
  return sum / d;
}

function thresholdPlan(model: Model, layer: number, levels: number[], method: Method, q: Calibration['quantiles']): NativePlan {
  const n = model.config.numLayers * 7;
  const plan: NativePlan = { modes: new Int32Array(n), scores: new Int32Array(n), ks: new Float64Array(n), thresholds: new Float32Array(n), prefill: 2 };
  MATRICES.forEach((name, j) => {
    const i = layer * 7 + j;
    const wina = usesWinaScore(method, name);
    plan.scores[i] = wina ? 1 : 0;
    if (levels[j] > 0) {
      plan.modes[i] = 2;
      plan.thresholds[i] = thresholdFor(q[wina ? 'wina' : 'abs'][layer][j], levels[j]);
    }
  });
  return plan;
}

/** TEAL block-wise greedy for one layer: rows of (effective sparsity, levels) from 0 up to target. */
function greedyLayer(model: Model, layer: number, xs: { x: Float32Array; T: number; ref: Float32Array }[],
  method: Method, q: Calibration['quantiles'], target: number, baseStep: number, lastFraction: number): GreedyRow[] {
  const params = matrixParams(model.config);
  const w = params.map((p) => p / params[0]);
  const wsum = w.reduce((a, b) => a + b, 0);
  const d = model.config.hiddenSize;
  const levels = MATRICES.map(() => 0);
  const effective = () => levels.reduce((a, s, j) => a + s * w[j], 0) / wsum;
  const error = (lv: number[]) => {
    const plan = thresholdPlan(model, layer, lv, method, q);
    let e = 0;
    for (const s of xs) e += layerError(s.ref, runLayer(model, layer, s.x, s.T, plan, false).y, s.T, d, lastFraction);
    return e;
  };
  const rows: GreedyRow[] = [{ effective: 0, levels: levels.slice(), error: 0 }];
  while (effective() < target) {
    let best = -1;
    let bestErr = Infinity;
    for (let j = 0; j < 7; j++) {
      if (levels[j] >= 1) continue;
      const cand = levels.slice();
      cand[j] = Math.min(1, cand[j] + baseStep / w[j]);
      const e = error(cand);
      if (e < bestErr) {
        bestErr = e;
        best = j;
      }
    }
    if (best < 0) break;
    levels[best] = Math.min(1, levels[best] + baseStep / w[best]);
    rows.push({ effective: +effective().toFixed(6), levels: levels.map((v) => +v.toFixed(6)), error: bestErr });
  }
  return rows;
}

/** Calibrates `model` on token sequences (each run from position 0, as separate samples). */
export async function calibrateModel(model: Model, sequences: number[][], opts: CalibrateOptions): Promise<Calibration> {
  const c = model.config;
  const d = c.hiddenSize;
  const maxSamples = opts.maxSamples ?? 1 << 20;
  const seqs = sequences.filter((s) => s.length > 0);
  if (seqs.length === 0) throw new RangeError('calibration needs at least one non-empty token sequence');
  let xs: { x: Float32Array; T: number }[] = seqs.map((toks) => {
    const x = new Float32Array(toks.length * d);
    native.embed(model.handle, Int32Array.from(toks), x);
    return { x, T: toks.length };
  });
  const quant: Calibration['quantiles'] = { abs: [], wina: [] };
  const greedy: GreedyRow[][] = [];
  for (let l = 0; l < c.numLayers; l++) {
    opts.onProgress?.('layers', l, c.numLayers);
    const norms = MATRICES.map((_, j) => model.columnNorms(l, j));
    const abs = MATRICES.map(() => new Sample(maxSamples));
    const wina = MATRICES.map(() => new Sample(maxSamples));
    const next: { x: Float32Array; T: number; ref: Float32Array }[] = [];
    for (const s of xs) {
      const { y, caps } = runLayer(model, l, s.x, s.T, null, true);
      MATRICES.forEach((_, j) => {
        const cap = caps![CAPTURE_OF[j]];
        const n = norms[j].length;
        const nj = norms[j];
        for (let i = 0; i < cap.length; i++) {
          const a = Math.abs(cap[i]);
          abs[j].add(a);
          wina[j].add(a * nj[i % n]);
        }
      });
      next.push({ x: s.x, T: s.T, ref: y });
    }
    quant.abs.push(abs.map((s) => quantiles(s.get())));
    quant.wina.push(wina.map((s) => quantiles(s.get())));
    if (opts.greedy) {
      const g = opts.greedy;
      greedy.push(greedyLayer(model, l, next, g.method, quant, g.target ?? 0.7, g.step ?? 0.025, g.lastFraction ?? 0.25));
    }
    xs = next.map((s) => ({ x: s.ref, T: s.T }));
    await new Promise((r) => setImmediate(r)); // let the event loop breathe between layers
  }
  opts.onProgress?.('layers', c.numLayers, c.numLayers);
  const cal: Calibration = {
    format: 'wina-calibration',
    version: 1,
    model: { numLayers: c.numLayers, hiddenSize: d, intermediateSize: c.intermediateSize, numHeads: c.numHeads, headDim: c.headDim },
    tokens: seqs.reduce((a, s) => a + s.length, 0),
    quantiles: quant,
  };
  if (opts.greedy) cal.greedy = { [opts.greedy.method]: greedy };
  return cal;
}
