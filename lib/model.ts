// loadModel(): checkpoint on disk -> weights repacked once into native input-major memory -> Model.
// A Model is shared by any number of Sessions (each with its own KV cache); generate()/complete()
// run the decoding loop on top of a fresh session.
import cliProgress from 'cli-progress';
import fs from 'node:fs';
import path from 'node:path';

import { WinaLoadError } from './errors.js';
import { dequantizeQ8_0, isGgufCheckpoint, openCheckpoint, readTensorAsF32 } from './loaders/index.js';
import { openForReading, readFully } from './loaders/source.js';
import type { Checkpoint, ModelConfig, TensorInfo } from './loaders/types.js';
import { native, packageRoot, type Dtype, type ModelHandle, type NativePlan } from './native.js';
import { ropeInvFreq } from './rope.js';
import { buildPlan, checkCalibration, type Calibration, type SparsityOptions } from './sparsity/plan.js';
import { dtypeCode, type DtypeName } from './tensor.js';
import { WinaTokenizer, tokenizerFilesFromGguf } from './tokenizer.js';
import { Session } from './session.js';
import { generate, complete, type GenerateOptions, type GenerateChunk, type CompletionResult } from './generate.js';

/** The embedded default model (BF16 tiny-en-llama, MIT), shipped in the package. */
export const DEFAULT_MODEL_PATH = path.join(packageRoot, 'models', 'tiny-en-llama');

export interface LoadOptions {
  /** Weight dtype in memory; default: the checkpoint's (Q8_0 is dequantized to bf16). */
  dtype?: DtypeName;
  /** Compute threads of the addon's pool (default: all cores). */
  threads?: number;
  /** Default sparsity of sessions made from this model (dense when omitted). */
  sparsity?: SparsityOptions;
  /** A calibration file written by `wina calibrate` (or its parsed content). */
  calibration?: string | Calibration;
  /** Bytes read per step while loading (default 64 MiB): bounds the loader's memory above the weights. */
  chunkBytes?: number;
  /** Show a progress bar on a terminal for loads over a second (default: true when stderr is a TTY). */
  progress?: boolean | ((done: number, total: number) => void);
}

// HF tensor name -> engine tensor kind (native/model.h TensorKind).
const GLOBAL_KINDS: Record<string, number> = {
  'model.embed_tokens.weight': 0,
  'lm_head.weight': 1,
  'model.norm.weight': 2,
};
const LAYER_KINDS: Record<string, number> = {
  'input_layernorm.weight': 3,
  'post_attention_layernorm.weight': 4,
  'self_attn.q_proj.weight': 5,
  'self_attn.k_proj.weight': 6,
  'self_attn.v_proj.weight': 7,
  'self_attn.o_proj.weight': 8,
  'mlp.gate_proj.weight': 9,
  'mlp.up_proj.weight': 10,
  'mlp.down_proj.weight': 11,
  'self_attn.q_proj.bias': 12,
  'self_attn.k_proj.bias': 13,
  'self_attn.v_proj.bias': 14,
  'attn_shortcut.weight': 15,
  'mlp_shortcut.weight': 16,
};

function tensorKind(name: string): { kind: number; layer: number } | null {
  if (name in GLOBAL_KINDS) return { kind: GLOBAL_KINDS[name], layer: 0 };
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(name);
  if (m && m[2] in LAYER_KINDS) return { kind: LAYER_KINDS[m[2]], layer: Number(m[1]) };
  return null;
}

const FILE_DTYPE: Record<string, Dtype> = { F32: 0, BF16: 1, F16: 2 };

function defaultDtype(ck: Checkpoint): DtypeName {
  const q = ck.tensors.get('model.layers.0.self_attn.q_proj.weight');
  switch (q?.dtype) {
    case 'F32': return 'f32';
    case 'F16': return 'f16';
    default: return 'bf16'; // BF16 and Q8_0 (dequantized to bf16 at load)
  }
}

function progressReporter(opt: LoadOptions['progress'], total: number): { tick(n: number): void; stop(): void } {
  if (typeof opt === 'function') return { tick: (n) => opt(n, total), stop() {} };
  const enabled = opt ?? process.stderr.isTTY === true;
  if (!enabled) return { tick() {}, stop() {} };
  const start = Date.now();
  let bar: cliProgress.SingleBar | null = null;
  return {
    tick(n) {
      if (!bar && Date.now() - start > 1000) {
        bar = new cliProgress.SingleBar({ stream: process.stderr, format: 'loading {bar} {percentage}% | {value}/{total} MB | {eta}s' },
          cliProgress.Presets.shades_classic);
        bar.start(Math.round(total / 1e6), 0);
      }
      bar?.update(Math.round(n / 1e6));
    },
    stop() {
      bar?.stop();
    },
  };
}

function readCalibration(c: string | Calibration): Calibration {
  if (typeof c !== 'string') return c;
  let text: string;
  try {
    text = fs.readFileSync(c, 'utf8');
  } catch (e) {
    throw new WinaLoadError({ file: c, expected: 'a calibration file written by `wina calibrate`', found: (e as Error).message });
  }
  try {
    return JSON.parse(text) as Calibration;
  } catch (e) {
    throw new WinaLoadError({ file: c, expected: 'JSON', found: (e as Error).message });
  }
}

export class Model {
  readonly config: ModelConfig;
  readonly dtype: DtypeName;
  readonly tokenizer: WinaTokenizer | null;
  readonly path: string;
  readonly format: Checkpoint['format'];
  readonly generationConfig: Record<string, unknown> | null;
  readonly calibration: Calibration | null;
  /** Bytes of weights in memory. */
  readonly weightBytes: number;
  /** Seconds the load took. */
  readonly loadSeconds: number;
  defaultSparsity: SparsityOptions | null;
  #handle: ModelHandle | null;
  #sessions = new Set<Session>();

  /** @internal use loadModel() */
  constructor(init: {
    handle: ModelHandle; ck: Checkpoint; dtype: DtypeName; tokenizer: WinaTokenizer | null;
    calibration: Calibration | null; sparsity: SparsityOptions | null; loadSeconds: number;
  }) {
    this.#handle = init.handle;
    this.config = init.ck.config;
    this.dtype = init.dtype;
    this.tokenizer = init.tokenizer;
    this.path = init.ck.path;
    this.format = init.ck.format;
    this.generationConfig = init.ck.generationConfig;
    this.calibration = init.calibration;
    this.defaultSparsity = init.sparsity;
    this.weightBytes = native.modelInfo(init.handle).weightBytes;
    this.loadSeconds = init.loadSeconds;
  }

  /** @internal */
  get handle(): ModelHandle {
    if (!this.#handle) throw new TypeError('the model is disposed');
    return this.#handle;
  }

  get disposed(): boolean {
    return this.#handle === null;
  }

  /** The engine plan for sparsity options (null = dense); calibration defaults to the model's. */
  plan(opts: SparsityOptions | null | undefined): NativePlan | null {
    if (!opts) return null;
    const withCal = opts.calibration || !this.calibration ? opts : { ...opts, calibration: this.calibration };
    return buildPlan(this.config, withCal);
  }

  /** A new session (KV cache of contextLength tokens) sharing this model's weights. */
  createSession(opts: { contextLength?: number; sparsity?: SparsityOptions | null } = {}): Session {
    const ctx = opts.contextLength ?? this.config.maxPositions;
    if (!Number.isSafeInteger(ctx) || ctx <= 0) throw new RangeError(`contextLength must be a positive integer, got ${ctx}`);
    const s = new Session(this, ctx, this.plan(opts.sparsity === undefined ? this.defaultSparsity : opts.sparsity), () => this.#sessions.delete(s));
    this.#sessions.add(s);
    return s;
  }

  /** Column norms ||W[:, i]||_2 of matrix `matrix` (0..6 = q, k, v, o, gate, up, down) of a layer. */
  columnNorms(layer: number, matrix: number): Float32Array {
    return native.modelColumnNorms(this.handle, layer, matrix);
  }

  /** Text pieces as they are generated (with their token ids). */
  generate(prompt: string | number[], options: GenerateOptions = {}): AsyncIterable<GenerateChunk> {
    return generate(this, prompt, options);
  }

  /** The whole completion and its statistics. */
  complete(prompt: string | number[], options: GenerateOptions = {}): Promise<CompletionResult> {
    return complete(this, prompt, options);
  }

  /**
   * Logits for every position of tokenIds ([T * vocab], row t = prediction after token t), for evaluation.
   * Sparse options apply to the prompt tokens as `prefill` says (default 'eval': all but the first 1%).
   */
  async logits(tokenIds: ArrayLike<number>, opts: { sparsity?: SparsityOptions | null } = {}): Promise<Float32Array> {
    const T = tokenIds.length;
    if (T === 0) throw new RangeError('tokenIds must not be empty');
    let sp = opts.sparsity === undefined ? this.defaultSparsity : opts.sparsity;
    if (sp && !sp.prefill) sp = { ...sp, prefill: 'eval' };
    const s = this.createSession({ contextLength: T, sparsity: sp });
    try {
      const out = new Float32Array(T * this.config.vocabSize);
      await s.forward(tokenIds, { logits: 'all', into: out });
      return out;
    } finally {
      s.dispose();
    }
  }

  /** Releases the weights (after disposing every session of this model). */
  dispose(): void {
    if (!this.#handle) return;
    for (const s of [...this.#sessions]) s.dispose();
    native.modelDispose(this.#handle);
    this.#handle = null;
  }
}

/** Loads a Hugging Face folder (safetensors) or a GGUF file; no path = the embedded default model. */
export async function loadModel(modelPath: string = DEFAULT_MODEL_PATH, options: LoadOptions = {}): Promise<Model> {
  const t0 = performance.now();
  if (options.threads !== undefined) {
    if (!Number.isSafeInteger(options.threads) || options.threads < 0) throw new RangeError(`threads must be a non-negative integer, got ${options.threads}`);
    native.setThreads(options.threads);
  }
  const ck = await openCheckpoint(modelPath);
  const cfg = ck.config;
  const dtype = options.dtype ?? defaultDtype(ck);
  const calibration = options.calibration ? readCalibration(options.calibration) : null;
  if (calibration) checkCalibration(calibration, cfg, typeof options.calibration === 'string' ? options.calibration : 'calibration');

  let tokenizer: WinaTokenizer | null = null;
  const tokFiles = ck.tokenizer ?? (isGgufCheckpoint(ck) ? tokenizerFilesFromGguf(ck.ggufMetadata) : null);
  if (tokFiles) tokenizer = new WinaTokenizer(tokFiles, { eosTokenIds: cfg.eosTokenIds });

  const handle = native.modelCreate({
    ...cfg, slidingWindow: cfg.slidingWindow ?? 0, dtype: dtypeCode(dtype), invFreq: ropeInvFreq(cfg),
  });
  try {
    // Tensors in file order, each in chunks of rows through one reusable buffer: peak memory is the
    // final weights plus CHUNK_BYTES (a whole tensor only where the GGUF q/k row permutation needs it).
    const infos = [...ck.tensors.values()].sort((a, b) => (a.file === b.file ? a.offset - b.offset : a.file < b.file ? -1 : 1));
    const progress = progressReporter(options.progress, ck.totalBytes);
    const chunkBytes = options.chunkBytes ?? CHUNK_BYTES;
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 1) throw new RangeError(`chunkBytes must be a positive integer, got ${chunkBytes}`);
    const reader = new ChunkReader(chunkBytes);
    try {
      let done = 0;
      for (const info of infos) {
        const k = tensorKind(info.name);
        if (!k) continue; // e.g. rotary_emb.inv_freq (validated by the loader)
        uploadTensor(handle, k.kind, k.layer, info, reader);
        done += info.byteLength;
        progress.tick(done);
      }
    } finally {
      reader.close();
    }
    progress.stop();
    native.modelFinalize(handle);
  } catch (e) {
    native.modelDispose(handle);
    if (e instanceof WinaLoadError) throw e;
    throw new WinaLoadError({ file: ck.path, expected: 'a loadable checkpoint', found: (e as Error).message });
  }
  return new Model({
    handle, ck, dtype, tokenizer, calibration,
    sparsity: options.sparsity ? { ...options.sparsity, calibration: options.sparsity.calibration ?? calibration ?? undefined } : null,
    loadSeconds: (performance.now() - t0) / 1000,
  });
}

const CHUNK_BYTES = 64 << 20;

/** Positional reads into one reusable buffer, one open descriptor per file. */
class ChunkReader {
  #fds = new Map<string, number>();
  #buffer: Buffer;
  readonly chunkBytes: number;

  constructor(chunkBytes: number) {
    this.chunkBytes = chunkBytes;
    this.#buffer = Buffer.allocUnsafe(Math.min(chunkBytes, 1 << 30));
  }

  read(file: string, position: number, length: number): Buffer {
    if (length > this.#buffer.length) this.#buffer = Buffer.allocUnsafe(length);
    let fd = this.#fds.get(file);
    if (fd === undefined) this.#fds.set(file, (fd = openForReading(file)));
    return readFully(fd, file, position, length, this.#buffer.subarray(0, length)) as Buffer;
  }

  close(): void {
    for (const fd of this.#fds.values()) fs.closeSync(fd);
    this.#fds.clear();
  }
}

function uploadTensor(handle: ModelHandle, kind: number, layer: number, info: TensorInfo, reader: ChunkReader): void {
  const rows = info.shape[0];
  const cols = info.shape.length > 1 ? info.shape[1] : 1;
  if (info.rowPermutation) {
    // GGUF q/k: the permutation mixes rows, so the tensor goes in whole (these are small matrices).
    const bytes = info.dtype === 'Q8_0' ? null : reader.read(info.file, info.offset, info.byteLength);
    if (bytes) native.modelSetTensor(handle, kind, layer, bytes, FILE_DTYPE[info.dtype], rows, cols, info.rowPermutation);
    else native.modelSetTensor(handle, kind, layer, readTensorAsF32(info), 0, rows, cols, null); // un-permuted by the loader
    return;
  }
  const rowBytes = info.byteLength / rows;
  const chunkRows = Math.max(1, Math.floor(reader.chunkBytes / (info.dtype === 'Q8_0' ? cols * 4 : rowBytes)));
  const f32 = info.dtype === 'Q8_0' ? new Float32Array(Math.min(rows, chunkRows) * cols) : null;
  for (let r0 = 0; r0 < rows; r0 += chunkRows) {
    const n = Math.min(chunkRows, rows - r0);
    const bytes = reader.read(info.file, info.offset + r0 * rowBytes, n * rowBytes);
    if (f32) {
      // Q8_0 blocks run along a row: dequantize this chunk of rows to f32; the engine rounds to its dtype.
      const out = f32.subarray(0, n * cols);
      dequantizeQ8_0(bytes, out);
      native.modelSetTensor(handle, kind, layer, out, 0, n, cols, null, r0);
    } else {
      native.modelSetTensor(handle, kind, layer, bytes, FILE_DTYPE[info.dtype], n, cols, null, r0);
    }
  }
}
