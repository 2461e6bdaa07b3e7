// The decoding loop: prompt -> prefill (one batched forward) -> sample -> decode one token at a time,
// streaming text pieces, until EOS, a stop token or string, max tokens, or an abort.
import { Sampler } from './sampling.js';
import { StopMatcher, StreamDetokenizer } from './detokenizer.js';
import type { Model } from './model.js';
import type { SparsityOptions } from './sparsity/plan.js';

export interface GenerateOptions {
  maxTokens?: number;
  /** 0 = greedy. Default: greedy unless the model's generation_config.json says do_sample. */
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  seed?: number;
  /** More token ids that end generation (EOS ids always do). */
  stopTokens?: number[];
  /** Strings that end generation; the stop string itself is not returned. */
  stop?: string[];
  /** Format the prompt with the model's chat template as one user message. */
  chat?: boolean;
  signal?: AbortSignal;
  /** Sparsity for this call (default: the model's). */
  sparsity?: SparsityOptions | null;
}

export interface GenerateChunk {
  text: string;
  tokenIds: number[];
}

export type FinishReason = 'eos' | 'stop' | 'length' | 'abort' | 'context';

export interface GenerationStats {
  promptTokens: number;
  generatedTokens: number;
  prefillSeconds: number;
  decodeSeconds: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  /** Mean fraction of matrix inputs kept in decode (1 = dense). */
  keptFraction: number;
}

export interface CompletionResult {
  text: string;
  tokenIds: number[];
  finishReason: FinishReason;
  stats: GenerationStats;
}

function num(v: unknown): number | undefined {
  return typeof v === 'number' ? v : undefined;
}

/** Options merged with the model's generation_config.json defaults. */
function resolveOptions(model: Model, o: GenerateOptions) {
  const gc = model.generationConfig ?? {};
  const sampleByDefault = gc.do_sample === true;
  return {
    maxTokens: o.maxTokens ?? 128,
    temperature: o.temperature ?? (sampleByDefault ? num(gc.temperature) ?? 1 : 0),
    topK: o.topK ?? (sampleByDefault ? num(gc.top_k) : undefined),
    topP: o.topP ?? (sampleByDefault ? num(gc.top_p) : undefined),
    minP: o.minP,
    repetitionPenalty: o.repetitionPenalty ?? num(gc.repetition_penalty),
    seed: o.seed,
  };
}

function promptIds(model: Model, prompt: string | number[], chat: boolean): number[] {
  if (Array.isArray(prompt)) {
    if (chat) throw new TypeError('chat needs a text prompt');
    return prompt;
  }
  if (typeof prompt !== 'string') throw new TypeError('prompt must be a string or an array of token ids');
  const tok = model.tokenizer;
  if (!tok) throw new TypeError('this model has no tokenizer: pass token ids instead of text');
  if (chat) {
    const text = tok.applyChatTemplate([{ role: 'user', content: prompt }], { addGenerationPrompt: true });
    return tok.encode(text, { addSpecialTokens: false });
  }
  return tok.encode(prompt);
}

export async function* generateWithStats(model: Model, prompt: string | number[], options: GenerateOptions,
  onDone: (r: { finishReason: FinishReason; stats: GenerationStats }) => void): AsyncGenerator<GenerateChunk> {
  const o = resolveOptions(model, options);
  if (!Number.isSafeInteger(o.maxTokens) || o.maxTokens < 0) throw new RangeError(`maxTokens must be a non-negative integer, got ${o.maxTokens}`);
  const sampler = new Sampler({ temperature: o.temperature, topK: o.topK, topP: o.topP, minP: o.minP,
    repetitionPenalty: o.repetitionPenalty, seed: o.seed });
  const ids = promptIds(model, prompt, options.chat ?? false);
  if (ids.length === 0) throw new RangeError('the prompt is empty (no tokens)');
  const maxPos = model.config.maxPositions;
  if (ids.length > maxPos) throw new RangeError(`the prompt has ${ids.length} tokens; the model's context is ${maxPos}`);
  const ctx = Math.min(maxPos, ids.length + o.maxTokens);
  const session = model.createSession({ contextLength: ctx, sparsity: options.sparsity });
  const tok = model.tokenizer;
  const detok = tok ? new StreamDetokenizer(tok) : null;
  // The text continues the prompt: prime the detokenizer with the prompt's last token so the
  // SentencePiece "strip one leading space" rule applies to the prompt, not to the continuation.
  detok?.push(ids[ids.length - 1]);
  const stops = new StopMatcher(options.stop ?? []);
  const stopIds = new Set([...(tok?.eosIds ?? model.config.eosTokenIds), ...(options.stopTokens ?? [])]);
  const history = ids.slice();
  const generated: number[] = [];
  let finishReason: FinishReason = 'length';
  let kept = 0;
  let prefillSeconds = 0;
  let decodeStart = 0;
  try {
    const t0 = performance.now();
    let { logits } = await session.forward(ids, { logits: 'last' });
    prefillSeconds = (performance.now() - t0) / 1000;
    decodeStart = performance.now();
    let pending: number[] = [];
    while (generated.length < o.maxTokens) {
      if (options.signal?.aborted) {
        finishReason = 'abort';
        break;
      }
      const next = sampler.sample(logits, history);
      if (stopIds.has(next)) {
        finishReason = 'eos';
        break;
      }
      generated.push(next);
      history.push(next);
      pending.push(next);
      const piece = detok ? detok.push(next) : '';
      const { text, stopped } = stops.push(piece);
      if (text || !detok) {
        yield { text, tokenIds: pending };
        pending = [];
      }
      if (stopped) {
        finishReason = 'stop';
        break;
      }
      if (generated.length >= o.maxTokens) break;
      if (session.position >= ctx) {
        finishReason = 'context';
        break;
      }
      const r = await session.forward([next], { logits: 'last', into: logits });
      logits = r.logits;
      kept += r.stats.selectedFraction;
    }
    if (finishReason !== 'stop') {
      const last = stops.push(detok?.flush() ?? '');
      if (last.stopped) finishReason = 'stop';
      const tail = last.text + (last.stopped ? '' : stops.flush());
      if (tail || pending.length) yield { text: tail, tokenIds: pending };
    }
  } finally {
    session.dispose();
    const decodeSeconds = decodeStart > 0 ? (performance.now() - decodeStart) / 1000 : 0;
    const decodeSteps = Math.max(0, generated.length - 1);
    onDone({
      finishReason,
      stats: {
        promptTokens: ids.length,
        generatedTokens: generated.length,
        prefillSeconds,
        decodeSeconds,
        prefillTokensPerSecond: prefillSeconds > 0 ? ids.length / prefillSeconds : 0,
        decodeTokensPerSecond: decodeSeconds > 0 && decodeSteps > 0 ? decodeSteps / decodeSeconds : 0,
        keptFraction: decodeSteps > 0 ? kept / decodeSteps : 1,
      },
    });
  }
}

export function generate(model: Model, prompt: string | number[], options: GenerateOptions): AsyncIterable<GenerateChunk> {
  return generateWithStats(model, prompt, options, () => {});
}

export async function complete(model: Model, prompt: string | number[], options: GenerateOptions): Promise<CompletionResult> {
  let done: { finishReason: FinishReason; stats: GenerationStats } | null = null;
  let text = '';
  const tokenIds: number[] = [];
  for await (const c of generateWithStats(model, prompt, options, (r) => (done = r))) {
    text += c.text;
    tokenIds.push(...c.tokenIds);
  }
  const d = done as unknown as { finishReason: FinishReason; stats: GenerationStats };
  return { text, tokenIds, finishReason: d.finishReason, stats: d.stats };
}
