// Evaluation metrics over Model.logits: rolling-window perplexity, KL of a sparse model from dense, and
// lm-eval-style log-likelihood of a continuation.
//
// Conventions follow EleutherAI lm-evaluation-harness where it has one:
// - perplexity is token-level and every token is scored exactly once, with as much left context as its
//   window gives (lm-eval `loglikelihood_rolling` with stride = window; a smaller stride overlaps windows
//   to give later tokens more context, as the Hugging Face perplexity guide does);
// - a (context, continuation) pair is tokenised whole and split at the context's length, after moving the
//   context's trailing spaces to the continuation (lm-eval `_encode_pair`), so that a SentencePiece
//   tokenizer sees " word" as it would in running text.
// Log-softmax and KL are accumulated in float64: a 4096-way softmax in float32 loses the small
// probabilities that dominate KL at low sparsity.
import type { Model } from '../model.js';
import type { SparsityOptions } from '../sparsity/plan.js';
import type { WinaTokenizer } from '../tokenizer.js';

// ---------------------------------------------------------------------------------------------------------
// Log-softmax and KL
// ---------------------------------------------------------------------------------------------------------

/** log-sum-exp of row `row` of a [T * vocab] logits array. */
export function logSumExp(logits: ArrayLike<number>, vocab: number, row: number): number {
  const base = row * vocab;
  let max = -Infinity;
  for (let j = 0; j < vocab; j++) if (logits[base + j] > max) max = logits[base + j];
  let sum = 0;
  for (let j = 0; j < vocab; j++) sum += Math.exp(logits[base + j] - max);
  return max + Math.log(sum);
}

/** log p(token | row's prefix) under row `row` of the logits. */
export function logProb(logits: ArrayLike<number>, vocab: number, row: number, token: number): number {
  return logits[row * vocab + token] - logSumExp(logits, vocab, row);
}

/** The log-softmax of one row, in float64. */
export function logSoftmax(logits: ArrayLike<number>, vocab: number, row: number): Float64Array {
  const lse = logSumExp(logits, vocab, row);
  const out = new Float64Array(vocab);
  const base = row * vocab;
  for (let j = 0; j < vocab; j++) out[j] = logits[base + j] - lse;
  return out;
}

/** KL(P || Q) of the next-token distributions in row `row` of dense (P) and sparse (Q) logits. */
export function klAt(dense: ArrayLike<number>, sparse: ArrayLike<number>, vocab: number, row: number): number {
  return new KlReference(dense, vocab, [row]).klSum(sparse);
}

/**
 * The dense side of KL(dense || sparse) on some rows, prepared once so that each sparse pass costs one
 * log-sum-exp and one dot product per row:
 *   KL_row = sum_j p_j (log p_j - z_j) + lse(z) * sum_j p_j,  z = the sparse logits of the row.
 * (sum_j p_j is kept rather than taken as 1 so the identity holds to rounding.)
 */
export class KlReference {
  readonly rows: readonly number[];
  readonly #vocab: number;
  readonly #p: Float64Array; // rows.length x vocab
  readonly #plogp: Float64Array; // per row: sum_j p_j log p_j
  readonly #mass: Float64Array; // per row: sum_j p_j

  constructor(dense: ArrayLike<number>, vocab: number, rows: ArrayLike<number>) {
    this.rows = Array.from(rows);
    this.#vocab = vocab;
    const n = this.rows.length;
    const total = dense.length / vocab;
    this.#p = new Float64Array(n * vocab);
    this.#plogp = new Float64Array(n);
    this.#mass = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const r = this.rows[i];
      if (!(Number.isInteger(r) && r >= 0 && r < total)) throw new RangeError(`position ${r} is not a row in [0, ${total})`);
      const lse = logSumExp(dense, vocab, r);
      let plogp = 0, mass = 0;
      for (let j = 0; j < vocab; j++) {
        const lp = dense[r * vocab + j] - lse;
        const p = Math.exp(lp);
        this.#p[i * vocab + j] = p;
        plogp += p * lp;
        mass += p;
      }
      this.#plogp[i] = plogp;
      this.#mass[i] = mass;
    }
  }

  /** Sum over the rows of KL(dense || sparse). */
  klSum(sparse: ArrayLike<number>): number {
    const vocab = this.#vocab;
    let sum = 0;
    for (let i = 0; i < this.rows.length; i++) {
      const base = this.rows[i] * vocab;
      let pz = 0;
      for (let j = 0; j < vocab; j++) pz += this.#p[i * vocab + j] * sparse[base + j];
      const kl = this.#plogp[i] - pz + logSumExp(sparse, vocab, this.rows[i]) * this.#mass[i];
      // Rounding can leave -1e-17 for identical rows; KL is non-negative by definition.
      sum += Math.max(kl, 0);
    }
    return sum;
  }
}

/**
 * Mean over `positions` (row indices of the [T * vocab] arrays) of KL(dense || sparse) of the next-token
 * distributions. `vocab` is the row length (model.config.vocabSize).
 */
export function meanKl(denseLogits: ArrayLike<number>, sparseLogits: ArrayLike<number>, positions: ArrayLike<number>, vocab: number): number {
  if (denseLogits.length !== sparseLogits.length) throw new RangeError(`logits lengths differ: ${denseLogits.length} vs ${sparseLogits.length}`);
  if (positions.length === 0) throw new RangeError('positions must not be empty');
  return new KlReference(denseLogits, vocab, positions).klSum(sparseLogits) / positions.length;
}

// ---------------------------------------------------------------------------------------------------------
// Rolling windows and perplexity
// ---------------------------------------------------------------------------------------------------------

/** One forward pass of a rolling evaluation: input ids, and which rows predict which text tokens. */
export interface RollingWindow {
  /** Model input: [BOS] + a slice of the text's tokens (never the window's last target). */
  input: number[];
  /** Rows of the window's logits that are scored: rows[i] predicts targets[i]. */
  rows: number[];
  /** The text tokens those rows predict. */
  targets: number[];
}

export interface WindowOptions {
  /** Tokens per model input, BOS included; a window predicts up to seqLen tokens. */
  seqLen: number;
  /** New tokens scored per window (default and maximum: seqLen). */
  stride?: number;
  /** Prepended to every window; null = none (then the text's first token is never scored). */
  bos: number | null;
}

/**
 * Splits a token stream into model inputs of at most seqLen tokens so that every token (but the first,
 * without BOS) is scored exactly once, by the window that ends `stride` tokens after the previous one;
 * the rest of that window is left context. With stride = seqLen this is lm-eval's
 * `get_rolling_token_windows` (which uses EOS where we use BOS as the first window's prefix).
 */
export function rollingWindows(tokens: ArrayLike<number>, opts: WindowOptions): RollingWindow[] {
  const { seqLen } = opts;
  if (!Number.isSafeInteger(seqLen) || seqLen < 1) throw new RangeError(`seqLen must be a positive integer, got ${seqLen}`);
  // A stride past seqLen would skip tokens; cap it rather than fail.
  const stride = Math.min(opts.stride ?? seqLen, seqLen);
  if (!Number.isSafeInteger(stride) || stride < 1) throw new RangeError(`stride must be a positive integer, got ${opts.stride}`);
  const prefix = opts.bos === null ? [] : [opts.bos];
  // The input holds text tokens [start, end - 1): the last target is predicted, never fed.
  const reach = seqLen + 1 - prefix.length;
  const n = tokens.length;
  const ids = Array.from(tokens);
  const windows: RollingWindow[] = [];
  let scored = prefix.length ? 0 : 1; // text tokens [0, scored) are done
  let end = Math.min(n, reach);
  while (scored < end) {
    const start = Math.max(0, end - reach);
    const input = prefix.concat(ids.slice(start, end - 1));
    const rows: number[] = [];
    const targets: number[] = [];
    for (let t = scored; t < end; t++) {
      rows.push(prefix.length + (t - start) - 1); // the row of the token before t
      targets.push(ids[t]);
    }
    windows.push({ input, rows, targets });
    scored = end;
    end = Math.min(n, end + stride);
  }
  return windows;
}

/** Negative log-likelihood summed over a window's scored rows. */
export function windowNll(logits: ArrayLike<number>, vocab: number, w: RollingWindow): number {
  let nll = 0;
  for (let i = 0; i < w.rows.length; i++) nll -= logProb(logits, vocab, w.rows[i], w.targets[i]);
  return nll;
}

export interface PerplexityOptions {
  /** Tokens per window, BOS included (default: the model's maxPositions). */
  seqLen?: number;
  /** New tokens per window (default: all of the window's). */
  stride?: number;
  sparsity?: SparsityOptions | null;
  /** Evaluate only the first `limit` windows. */
  limit?: number;
  /**
   * Token prepended to every window (default: the tokenizer's BOS). null for a stream that carries its own
   * document markers, e.g. `<s> paragraph </s>` per line as tiny-en-llama was trained.
   */
  bos?: number | null;
}

export interface PerplexityResult {
  /** exp(nll). */
  ppl: number;
  /** Mean negative log-likelihood per scored token (nats). */
  nll: number;
  /** Tokens scored. */
  tokens: number;
  windows: number;
}

/** Text -> ids without special tokens (the windows add BOS themselves). */
export function textTokens(tokenizer: WinaTokenizer, text: string): number[] {
  return tokenizer.encode(text, { addSpecialTokens: false });
}

/** The window layout perplexity() and the sweep share for a model. */
export function windowsFor(model: Model, tokens: string | ArrayLike<number>,
  opts: { seqLen?: number; stride?: number; limit?: number; bos?: number | null }): RollingWindow[] {
  const ids = typeof tokens === 'string' ? textTokens(requireTokenizer(model), tokens) : tokens;
  const seqLen = opts.seqLen ?? model.config.maxPositions;
  if (seqLen > model.config.maxPositions) throw new RangeError(`seqLen ${seqLen} exceeds the model's context (${model.config.maxPositions})`);
  const all = rollingWindows(ids, { seqLen, stride: opts.stride, bos: opts.bos === undefined ? model.tokenizer?.bosId ?? null : opts.bos });
  return opts.limit === undefined ? all : all.slice(0, opts.limit);
}

/** Token-level perplexity of a text (or its token ids, without BOS) under the model. */
export async function perplexity(model: Model, tokens: string | ArrayLike<number>, opts: PerplexityOptions = {}): Promise<PerplexityResult> {
  const windows = windowsFor(model, tokens, opts);
  if (windows.length === 0) throw new RangeError('the text has too few tokens to score');
  const vocab = model.config.vocabSize;
  let nll = 0;
  let count = 0;
  for (const w of windows) {
    const logits = await model.logits(w.input, { sparsity: opts.sparsity ?? null });
    nll += windowNll(logits, vocab, w);
    count += w.rows.length;
  }
  return { ppl: Math.exp(nll / count), nll: nll / count, tokens: count, windows: windows.length };
}

// ---------------------------------------------------------------------------------------------------------
// Log-likelihood of a continuation
// ---------------------------------------------------------------------------------------------------------

function requireTokenizer(model: Model): WinaTokenizer {
  if (!model.tokenizer) throw new TypeError(`the model at ${model.path} has no tokenizer; evaluation needs text -> ids`);
  return model.tokenizer;
}

/** A tokenised (context, continuation) pair and the model inputs that score its continuation. */
export interface EncodedPair {
  /** Continuation ids (the targets, in order across the windows). */
  continuation: number[];
  /**
   * One input when context + continuation fit the model (the usual case); a continuation longer than the
   * model's context is scored over several, each token once with as much left context as fits.
   */
  windows: RollingWindow[];
}

/**
 * lm-eval's `_encode_pair`: trailing spaces of the context move to the continuation, the whole string is
 * encoded once (with BOS, as this model's tokenizer adds it) and split at the context's token count, so
 * the continuation ids are the ones running text would produce. Inputs longer than maxLength drop the
 * oldest tokens after BOS. (lm-eval also truncates from the left, but cannot score a continuation longer
 * than the model; a few PIQA solutions are, for a 256-token model.)
 */
export function encodePair(tokenizer: WinaTokenizer, context: string, continuation: string, maxLength: number): EncodedPair {
  const spaces = context.length - context.trimEnd().length;
  if (spaces > 0) {
    continuation = context.slice(context.length - spaces) + continuation;
    context = context.slice(0, context.length - spaces);
  }
  const whole = tokenizer.encode(context + continuation);
  const H = tokenizer.encode(context).length;
  const cont = whole.slice(H);
  if (cont.length === 0) throw new RangeError(`the continuation ${JSON.stringify(continuation)} adds no tokens to its context`);
  if (H === 0) throw new RangeError('the context must not be empty when the tokenizer adds no BOS');
  // BOS stays in front of every input; the window slides over the text after it.
  const keep = tokenizer.bosId !== null && whole[0] === tokenizer.bosId ? 1 : 0;
  const room = maxLength - keep;
  if (room < 1) throw new RangeError(`maxLength must leave room for text after BOS, got ${maxLength}`);
  const windows: RollingWindow[] = [];
  for (let scored = 0; scored < cont.length;) {
    // Targets whole[H + scored .. H + end); the input is whole[start .. H + end - 1) after BOS, and must
    // reach back to the token before the first target. Each window scores as many tokens as fit, as
    // lm-eval's rolling windows do, so the first window of an over-long continuation keeps only the
    // context's last token.
    const end = Math.min(cont.length, scored + room);
    const start = Math.max(keep, H + end - 1 - room);
    const input = whole.slice(0, keep).concat(whole.slice(start, H + end - 1));
    const rows: number[] = [];
    const targets: number[] = [];
    for (let t = H + scored; t < H + end; t++) {
      rows.push(keep + (t - 1 - start));
      targets.push(whole[t]);
    }
    windows.push({ input, rows, targets });
    scored = end;
  }
  return { continuation: cont, windows };
}

/** Sum of log p(target) over a window's rows, and whether every target was the argmax. */
export function windowScore(logits: ArrayLike<number>, vocab: number, w: RollingWindow): { logProb: number; greedy: boolean } {
  let sum = 0;
  let greedy = true;
  for (let i = 0; i < w.rows.length; i++) {
    const row = w.rows[i];
    const target = w.targets[i];
    sum += logProb(logits, vocab, row, target);
    const base = row * vocab;
    for (let j = 0; j < vocab && greedy; j++) if (logits[base + j] > logits[base + target]) greedy = false;
  }
  return { logProb: sum, greedy };
}

export interface LogLikelihood {
  /** Sum of the continuation tokens' log-probabilities (nats). */
  logProb: number;
  /** Every continuation token was the model's argmax (lm-eval `is_greedy`). */
  greedy: boolean;
  /** Continuation tokens scored. */
  tokens: number;
}

/** log p(continuation | context) under the model with the given sparsity (null = dense). */
export async function logLikelihood(model: Model, context: string, continuation: string, sparsity: SparsityOptions | null = null): Promise<LogLikelihood> {
  const pair = encodePair(requireTokenizer(model), context, continuation, model.config.maxPositions);
  let sum = 0;
  let greedy = true;
  for (const w of pair.windows) {
    const s = windowScore(await model.logits(w.input, { sparsity }), model.config.vocabSize, w);
    sum += s.logProb;
    greedy &&= s.greedy;
  }
  return { logProb: sum, greedy, tokens: pair.continuation.length };
}
