// Sparsity plans: which inputs of which matrix are kept, turned into the flat arrays the engine reads.
//
// Methods (see README, "Methods"):
//   teal      score |x_i| on all seven linears;
//   wina      the published WINA code: |x_i| * ||W[:, i]||_2 on k_proj and gate_proj, |x_i| elsewhere,
//             a separate mask per matrix;
//   wina-all  our named extension: the weight-informed score on all seven linears.
// Selection: exact top-k (k = floor(n * (1 - s)), the paper's accuracy mode) or calibrated thresholds
// (s-quantile of the score distribution on calibration text, the fast mode).
import type { ModelConfig } from '../loaders/types.js';
import type { NativePlan } from '../native.js';

export const MATRICES = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const;
export type MatrixName = (typeof MATRICES)[number];
export type Method = 'dense' | 'teal' | 'wina' | 'wina-all';
export type Selection = 'topk' | 'threshold';
export type PrefillSparsity = 'dense' | 'sparse' | 'eval';
export const METHODS: readonly Method[] = ['dense', 'teal', 'wina', 'wina-all'];

/** Number of quantiles stored per score distribution: levels 0, 0.01, ..., 1. */
export const QUANTILE_STEPS = 100;

/** What `wina calibrate` writes and `--calibration FILE` / `loadModel(path, {sparsity})` read. */
export interface Calibration {
  format: 'wina-calibration';
  version: 1;
  model: { numLayers: number; hiddenSize: number; intermediateSize: number; numHeads: number; headDim: number };
  /** Tokens of calibration text the distributions were measured on. */
  tokens: number;
  /**
   * quantiles[score][layer][matrix][j] = the (j / QUANTILE_STEPS)-quantile of the score of that matrix's
   * inputs over all calibration tokens; score 'abs' is |x_i|, 'wina' is |x_i| * ||W[:, i]||_2.
   */
  quantiles: { abs: number[][][]; wina: number[][][] };
  /** Greedy per-matrix allocation (TEAL's block-wise greedy), per method, per layer: rows of the search. */
  greedy?: Partial<Record<Exclude<Method, 'dense'>, GreedyRow[][]>>;
}

export interface GreedyRow {
  /** Parameter-weighted layer sparsity of this row. */
  effective: number;
  /** Sparsity of q, k, v, o, gate, up, down. */
  levels: number[];
  error?: number;
}

export interface SparsityOptions {
  method?: Method;
  /** Uniform sparsity level in [0, 1): the fraction of inputs dropped. */
  sparsity?: number;
  select?: Selection;
  /** Use the greedy per-matrix levels of the calibration (nearest row to `sparsity` per layer). */
  greedy?: boolean;
  calibration?: Calibration;
  /** Prompt tokens: dense (serving default), sparse (all masked) or eval (all but the first 1%, as the paper). */
  prefill?: PrefillSparsity;
  /** Explicit per-layer per-matrix levels (overrides sparsity/greedy). */
  levels?: number[][];
}

const SCORE_ABS = 0;
const SCORE_WINA = 1;
const SEL_DENSE = 0;
const SEL_TOPK = 1;
const SEL_THRESHOLD = 2;

export function usesWinaScore(method: Method, matrix: MatrixName): boolean {
  if (method === 'wina-all') return true;
  if (method === 'wina') return matrix === 'k' || matrix === 'gate';
  return false;
}

export function matrixInputs(cfg: ModelConfig, matrix: MatrixName): number {
  if (matrix === 'o') return cfg.numHeads * cfg.headDim;
  if (matrix === 'down') return cfg.intermediateSize;
  return cfg.hiddenSize;
}

/** Parameter counts of the seven matrices of a layer (the greedy's step weights). */
export function matrixParams(cfg: ModelConfig): number[] {
  const q = cfg.numHeads * cfg.headDim;
  const kv = cfg.numKvHeads * cfg.headDim;
  const d = cfg.hiddenSize;
  const f = cfg.intermediateSize;
  return [q * d, kv * d, kv * d, q * d, f * d, f * d, f * d];
}

/** Threshold for sparsity s from a quantile table (linear interpolation, as the reference icdf). */
export function thresholdFor(quantiles: number[], s: number): number {
  const x = Math.min(Math.max(s, 0), 1) * QUANTILE_STEPS;
  const i = Math.min(Math.floor(x), QUANTILE_STEPS - 1);
  const f = x - i;
  return quantiles[i] * (1 - f) + quantiles[i + 1] * f;
}

export function checkCalibration(cal: Calibration, cfg: ModelConfig, source = 'calibration'): void {
  if (!cal || cal.format !== 'wina-calibration' || cal.version !== 1)
    throw new TypeError(`${source}: not a wina calibration file (format/version)`);
  const m = cal.model;
  if (m.numLayers !== cfg.numLayers || m.hiddenSize !== cfg.hiddenSize || m.intermediateSize !== cfg.intermediateSize)
    throw new RangeError(`${source}: made for a model with ${m.numLayers} layers, hidden ${m.hiddenSize}, ffn ${m.intermediateSize}; ` +
      `this model has ${cfg.numLayers}, ${cfg.hiddenSize}, ${cfg.intermediateSize}`);
}

function greedyLevels(rows: GreedyRow[][], target: number): number[][] {
  return rows.map((layerRows) => {
    let best = layerRows[0];
    for (const r of layerRows) if (Math.abs(r.effective - target) < Math.abs(best.effective - target)) best = r;
    return best.levels.slice();
  });
}

/** Per-layer per-matrix sparsity levels for the options. */
export function planLevels(cfg: ModelConfig, opts: SparsityOptions): number[][] {
  const method = opts.method ?? 'wina';
  if (method === 'dense') return Array.from({ length: cfg.numLayers }, () => MATRICES.map(() => 0));
  if (opts.levels) {
    if (opts.levels.length !== cfg.numLayers || opts.levels.some((l) => l.length !== 7))
      throw new RangeError(`levels must be numLayers (${cfg.numLayers}) rows of 7 values`);
    return opts.levels.map((l) => l.slice());
  }
  const s = opts.sparsity ?? 0.5;
  if (!(s >= 0 && s < 1)) throw new RangeError(`sparsity must be in [0, 1), got ${s}`);
  if (opts.greedy) {
    const rows = opts.calibration?.greedy?.[method];
    if (!rows) throw new TypeError(`greedy sparsity needs a calibration with a greedy table for method '${method}' (run \`wina calibrate --greedy --method ${method === 'wina-all' ? 'wina' : method}\`)`);
    return greedyLevels(rows, s);
  }
  return Array.from({ length: cfg.numLayers }, () => MATRICES.map(() => s));
}

const PREFILL: Record<PrefillSparsity, number> = { dense: 0, eval: 1, sparse: 2 };

/** The engine's plan for the options, or null for dense. */
export function buildPlan(cfg: ModelConfig, opts: SparsityOptions): NativePlan | null {
  const method = opts.method ?? 'wina';
  if (!METHODS.includes(method)) throw new TypeError(`method must be one of ${METHODS.join(', ')}, got ${JSON.stringify(method)}`);
  const select = opts.select ?? (opts.calibration && !opts.greedy ? 'threshold' : 'topk');
  if (select !== 'topk' && select !== 'threshold') throw new TypeError(`select must be 'topk' or 'threshold', got ${JSON.stringify(select)}`);
  const prefill = opts.prefill ?? 'dense';
  if (!(prefill in PREFILL)) throw new TypeError(`prefill must be 'dense', 'sparse' or 'eval', got ${JSON.stringify(prefill)}`);
  if (method === 'dense') return null;
  if (select === 'threshold') {
    if (!opts.calibration) throw new TypeError('threshold selection needs a calibration (run `wina calibrate`)');
    checkCalibration(opts.calibration, cfg);
  }
  const levels = planLevels(cfg, opts);
  const n = cfg.numLayers * 7;
  const plan: NativePlan = {
    modes: new Int32Array(n), scores: new Int32Array(n), ks: new Float64Array(n), thresholds: new Float32Array(n),
    prefill: PREFILL[prefill],
  };
  for (let l = 0; l < cfg.numLayers; l++) {
    MATRICES.forEach((name, j) => {
      const i = l * 7 + j;
      const s = levels[l][j];
      if (!(s >= 0 && s <= 1)) throw new RangeError(`level of layer ${l} ${name} must be in [0, 1], got ${s}`);
      const wina = usesWinaScore(method, name);
      plan.scores[i] = wina ? SCORE_WINA : SCORE_ABS;
      if (s === 0) {
        plan.modes[i] = SEL_DENSE;
      } else if (select === 'topk') {
        plan.modes[i] = SEL_TOPK;
        const nIn = matrixInputs(cfg, name);
        plan.ks[i] = Math.floor(nIn * (1 - s) + 1e-9); // k = int(n * (1 - s)) as the reference code
      } else {
        plan.modes[i] = SEL_THRESHOLD;
        const q = opts.calibration!.quantiles[wina ? 'wina' : 'abs'][l][j];
        plan.thresholds[i] = thresholdFor(q, s);
      }
    });
  }
  return plan;
}
