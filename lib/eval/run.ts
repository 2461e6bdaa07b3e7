// The evaluation sweep: one task, every (method, sparsity), each scored by the task metric and by the
// mean KL of its next-token distribution from dense on the same inputs.
//
// The loop runs input-outer: each input (a perplexity window, or one choice of a multiple-choice item)
// gets its dense logits once, then every sparse configuration runs on it and is compared while those
// logits are at hand. Keeping all dense logits instead would cost T x vocab floats per input (4 MB per
// 256-token window of a 4096-token vocabulary).
import type { Model } from '../model.js';
import type { Method, Selection, SparsityOptions } from '../sparsity/plan.js';
import { KlReference, encodePair, windowNll, windowScore, windowsFor, type EncodedPair } from './metrics.js';
import { scoreMultipleChoice, type MultipleChoiceRequest } from './requests.js';

export const TASKS = ['ppl', 'piqa', 'arc-easy', 'arc-challenge', 'hellaswag', 'boolq'] as const;
export type Task = (typeof TASKS)[number];

export interface SweepOptions {
  model: Model;
  task: Task;
  /** ppl: the text (or its ids without BOS); other tasks: the multiple-choice requests. */
  data: string | ArrayLike<number> | MultipleChoiceRequest[];
  methods: Method[];
  /** Levels in [0, 1); a non-dense method at 0 is dense and reuses the dense result. */
  sparsities: number[];
  select?: Selection;
  greedy?: boolean;
  /** ppl: windows; other tasks: items. */
  limit?: number;
  /** ppl window (default: the model's maxPositions). */
  seqLen?: number;
  stride?: number;
  /** ppl: token prepended to every window (default: the tokenizer's BOS; null for none). */
  bos?: number | null;
  /** Called after every forward pass. */
  onProgress?: (done: number, total: number) => void;
}

export interface SweepCell {
  method: Method;
  sparsity: number;
  /** ppl: {ppl, nll}; multiple choice: {acc, acc_norm}. */
  metrics: Record<string, number>;
  /** Mean KL(dense || this) over the scored positions (nats). */
  kl: number;
}

export interface SweepResult {
  task: Task;
  select: Selection;
  greedy: boolean;
  limit: number | null;
  seqLen: number;
  stride: number | null;
  /** Windows (ppl) or items (multiple choice) evaluated. */
  items: number;
  /** Positions scored per configuration (the KL's denominator too). */
  tokens: number;
  cells: SweepCell[];
}

interface Config {
  method: Method;
  sparsity: number;
  options: SparsityOptions;
}

/** The sparse configurations to run (dense and level-0 cells are served by the dense pass). */
function sparseConfigs(opts: SweepOptions): Config[] {
  const configs: Config[] = [];
  for (const method of opts.methods) {
    if (method === 'dense') continue;
    for (const sparsity of opts.sparsities) {
      if (sparsity === 0) continue;
      configs.push({ method, sparsity, options: { method, sparsity, select: opts.select ?? 'topk', greedy: opts.greedy ?? false, prefill: 'eval' } });
    }
  }
  return configs;
}

function checkOptions(opts: SweepOptions): void {
  if (!(TASKS as readonly string[]).includes(opts.task)) throw new TypeError(`task must be one of ${TASKS.join(', ')}, got ${JSON.stringify(opts.task)}`);
  if (opts.methods.length === 0) throw new RangeError('methods must not be empty');
  for (const s of opts.sparsities) if (!(s >= 0 && s < 1)) throw new RangeError(`sparsity must be in [0, 1), got ${s}`);
  if (opts.methods.some((m) => m !== 'dense') && opts.sparsities.length === 0) throw new RangeError('sparsities must not be empty');
  const needsCalibration = opts.select === 'threshold' || opts.greedy;
  if (needsCalibration && !opts.model.calibration)
    throw new TypeError(`${opts.greedy ? 'greedy levels' : 'threshold selection'} need a calibration: pass --calibration FILE ` +
      '(written by `wina calibrate`), or use --select topk without --greedy');
  if (opts.limit !== undefined && !(Number.isSafeInteger(opts.limit) && opts.limit >= 1)) throw new RangeError(`limit must be a positive integer, got ${opts.limit}`);
}

/** Cells in table order: dense first when asked, then each method at each level (level 0 = dense). */
function assemble(opts: SweepOptions, dense: Omit<SweepCell, 'method' | 'sparsity'>, sparse: Map<Config, Omit<SweepCell, 'method' | 'sparsity'>>): SweepCell[] {
  const cells: SweepCell[] = [];
  for (const method of opts.methods) {
    if (method === 'dense') {
      cells.push({ method, sparsity: 0, ...dense });
      continue;
    }
    for (const sparsity of opts.sparsities) {
      if (sparsity === 0) {
        cells.push({ method, sparsity, ...dense });
        continue;
      }
      const entry = [...sparse].find(([c]) => c.method === method && c.sparsity === sparsity);
      cells.push({ method, sparsity, ...entry![1] });
    }
  }
  return cells;
}

function baseResult(opts: SweepOptions): Omit<SweepResult, 'items' | 'tokens' | 'cells'> {
  const seqLen = opts.seqLen ?? opts.model.config.maxPositions;
  return {
    task: opts.task, select: opts.select ?? 'topk', greedy: opts.greedy ?? false, limit: opts.limit ?? null, seqLen,
    // As rollingWindows applies it: a stride past the window is capped at the window.
    stride: opts.task === 'ppl' ? Math.min(opts.stride ?? seqLen, seqLen) : null,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Perplexity
// ---------------------------------------------------------------------------------------------------------

async function sweepPerplexity(opts: SweepOptions): Promise<SweepResult> {
  const { model } = opts;
  if (typeof opts.data !== 'string' && !isIds(opts.data)) throw new TypeError('task ppl needs a text (or token ids)');
  const windows = windowsFor(model, opts.data, opts);
  if (windows.length === 0) throw new RangeError('the text has too few tokens to score');
  const vocab = model.config.vocabSize;
  const configs = sparseConfigs(opts);
  const acc = configs.map(() => ({ nll: 0, kl: 0 }));
  let denseNll = 0;
  let tokens = 0;
  const total = windows.length * (1 + configs.length);
  let done = 0;
  for (const w of windows) {
    const dense = await model.logits(w.input, { sparsity: null });
    opts.onProgress?.(++done, total);
    denseNll += windowNll(dense, vocab, w);
    tokens += w.rows.length;
    const ref = new KlReference(dense, vocab, w.rows);
    for (let c = 0; c < configs.length; c++) {
      const logits = await model.logits(w.input, { sparsity: configs[c].options });
      opts.onProgress?.(++done, total);
      acc[c].nll += windowNll(logits, vocab, w);
      acc[c].kl += ref.klSum(logits);
    }
  }
  const cell = (nll: number, kl: number) => ({ metrics: { ppl: Math.exp(nll / tokens), nll: nll / tokens }, kl: kl / tokens });
  const sparse = new Map(configs.map((c, i) => [c, cell(acc[i].nll, acc[i].kl)]));
  return { ...baseResult(opts), items: windows.length, tokens, cells: assemble(opts, cell(denseNll, 0), sparse) };
}

function isIds(data: unknown): data is ArrayLike<number> {
  return ArrayBuffer.isView(data) || (Array.isArray(data) && (data.length === 0 || typeof data[0] === 'number'));
}

// ---------------------------------------------------------------------------------------------------------
// Multiple choice
// ---------------------------------------------------------------------------------------------------------

async function sweepMultipleChoice(opts: SweepOptions): Promise<SweepResult> {
  const { model } = opts;
  if (!Array.isArray(opts.data) || isIds(opts.data)) throw new TypeError(`task ${opts.task} needs multiple-choice requests`);
  const tokenizer = model.tokenizer;
  if (!tokenizer) throw new TypeError(`the model at ${model.path} has no tokenizer; multiple-choice tasks need one`);
  const requests = (opts.data as MultipleChoiceRequest[]).slice(0, opts.limit);
  if (requests.length === 0) throw new RangeError('no multiple-choice items to score');
  const vocab = model.config.vocabSize;
  const configs = sparseConfigs(opts);
  const pairs: EncodedPair[][] = requests.map((r) => r.choices.map((choice) => encodePair(tokenizer, r.context, choice, model.config.maxPositions)));
  const passes = pairs.flat().reduce((n, p) => n + p.windows.length, 0);
  const total = passes * (1 + configs.length);
  let done = 0;

  // logProbs[config + 1][item][choice]; slot 0 is dense.
  const logProbs = [null, ...configs].map(() => requests.map((r) => new Array<number>(r.choices.length).fill(0)));
  const kl = configs.map(() => 0);
  let tokens = 0;
  for (let i = 0; i < requests.length; i++) {
    for (let j = 0; j < pairs[i].length; j++) {
      for (const w of pairs[i][j].windows) {
        const dense = await model.logits(w.input, { sparsity: null });
        opts.onProgress?.(++done, total);
        logProbs[0][i][j] += windowScore(dense, vocab, w).logProb;
        tokens += w.rows.length;
        const ref = new KlReference(dense, vocab, w.rows);
        for (let c = 0; c < configs.length; c++) {
          const logits = await model.logits(w.input, { sparsity: configs[c].options });
          opts.onProgress?.(++done, total);
          logProbs[c + 1][i][j] += windowScore(logits, vocab, w).logProb;
          kl[c] += ref.klSum(logits);
        }
      }
    }
  }
  const cell = (slot: number, klSum: number) => ({ metrics: accuracy(requests, logProbs[slot]), kl: klSum / tokens });
  const sparse = new Map(configs.map((c, i) => [c, cell(i + 1, kl[i])]));
  return { ...baseResult(opts), items: requests.length, tokens, cells: assemble(opts, cell(0, 0), sparse) };
}

/** Mean acc and acc_norm over items. */
function accuracy(requests: MultipleChoiceRequest[], logProbs: number[][]): { acc: number; acc_norm: number } {
  let acc = 0;
  let accNorm = 0;
  requests.forEach((r, i) => {
    const s = scoreMultipleChoice(r, logProbs[i]);
    acc += s.acc;
    accNorm += s.acc_norm;
  });
  return { acc: acc / requests.length, acc_norm: accNorm / requests.length };
}

// ---------------------------------------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------------------------------------

/** Runs the task for dense and every (method, sparsity); see SweepResult. */
export async function runSweep(opts: SweepOptions): Promise<SweepResult> {
  checkOptions(opts);
  return opts.task === 'ppl' ? sweepPerplexity(opts) : sweepMultipleChoice(opts);
}
