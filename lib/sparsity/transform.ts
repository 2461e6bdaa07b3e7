// The column-orthogonalising checkpoint transform of WINA (paper v2 §3.3 / App. A.2, SliceGPT-style).
//
// WINA's score |x_i|·||W[:,i]|| is the exact best mask only when W has orthogonal columns (Lemma 3.1).
// Trained k_proj / gate_proj do not, but their rotated versions W·Q do when Q = V, the right singular
// basis of W: (WV)ᵀ(WV) = Σ². Rotating the residual stream into that basis keeps the model's function
// exactly (RMSNorm with unit gain commutes with an orthogonal Q), at the price of one dense d×d "shortcut"
// rotation per residual add, because attention wants the basis of its k_proj and the MLP that of its
// gate_proj. The engine then computes, per layer ℓ,
//   r ← S_attn(ℓ)·r + attn(r),   r ← S_mlp(ℓ)·r + mlp(r).
//
// Conventions: column vectors, weights [out, in] as in PyTorch, y = W x. A residual vector r in the
// original basis is stored as r' = Qᵀ r, so a linear reading it becomes W·Q (W r = W Q Qᵀ r) and a
// linear writing into it becomes Qᵀ·W. The steps (wina-teal.md §1.4, with the fixes noted there):
//   1. untie lm_head from the embedding (the reference code re-ties it, which is wrong for tied models);
//   2. fold every RMSNorm gain into the linears that read its output, set the gain to 1 (the reference
//      also subtracts the embedding mean, which is exact only for LayerNorm models; we do not);
//   3. Q_k(ℓ) = V(W_k(ℓ)), Q_g(ℓ) = V(W_gate(ℓ)) from the folded weights, float64, full in×in;
//      E ← E·Q_k(0); W_q,k,v ← W·Q_k(ℓ); W_o ← Q_g(ℓ)ᵀ·W_o; W_gate,up ← W·Q_g(ℓ);
//      W_down ← Q_k(ℓ+1)ᵀ·W_down (last layer: Q_g(L−1)); lm_head ← W·Q_g(L−1);
//      S_attn(ℓ) = Q_g(ℓ)ᵀ·Q_k(ℓ), S_mlp(ℓ) = Q_k(ℓ+1)ᵀ·Q_g(ℓ) (identity at the last layer, still written).
// Biases of linears that write into the residual (o_proj, down_proj) are rotated like their rows; biases
// of linears that read it (Qwen2 q/k/v) are unchanged, since only their inputs are rotated.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { openCheckpoint, readTensorAsF32, type GgufCheckpoint } from '../loaders/index.js';
import type { Checkpoint, ModelConfig } from '../loaders/types.js';
import { writeSafetensors, type TensorSource } from '../loaders/writers.js';
import { tokenizerFilesFromGguf } from '../tokenizer.js';
import { matmul, rightSingularBasis, scaleColumns, transpose } from './linalg.js';

// ---- names and shapes --------------------------------------------------------------------------

const EMBED = 'model.embed_tokens.weight';
const FINAL_NORM = 'model.norm.weight';
const LM_HEAD = 'lm_head.weight';
const layerName = (i: number, rest: string): string => `model.layers.${i}.${rest}`;

/** The per-layer tensors the transform knows, with their shapes ([out, in] / [n]) for this config. */
function layerShapes(cfg: ModelConfig): Record<string, number[]> {
  const h = cfg.hiddenSize;
  const qDim = cfg.numHeads * cfg.headDim;
  const kvDim = cfg.numKvHeads * cfg.headDim;
  const ff = cfg.intermediateSize;
  return {
    'input_layernorm.weight': [h],
    'self_attn.q_proj.weight': [qDim, h],
    'self_attn.k_proj.weight': [kvDim, h],
    'self_attn.v_proj.weight': [kvDim, h],
    'self_attn.q_proj.bias': [qDim],
    'self_attn.k_proj.bias': [kvDim],
    'self_attn.v_proj.bias': [kvDim],
    'self_attn.o_proj.weight': [h, qDim],
    'self_attn.o_proj.bias': [h],
    'post_attention_layernorm.weight': [h],
    'mlp.gate_proj.weight': [ff, h],
    'mlp.up_proj.weight': [ff, h],
    'mlp.gate_proj.bias': [ff],
    'mlp.up_proj.bias': [ff],
    'mlp.down_proj.weight': [h, ff],
    'mlp.down_proj.bias': [h],
  };
}

// ---- the streaming core ------------------------------------------------------------------------

/** Where the transform reads weights: `get` returns a fresh float64 copy it may modify in place. */
export interface WeightSource {
  has(name: string): boolean;
  get(name: string): Float64Array;
}

/** One output tensor, float64, [out, in]. */
export interface OutputTensor {
  name: string;
  shape: number[];
  data: Float64Array;
}

export interface TransformProgress {
  /** Steps done so far (1 = embeddings, then one per layer, then the head). */
  done: number;
  total: number;
  /** What was just finished, e.g. `layer 3`. */
  what: string;
}

/** One layer's tensors after folding its norm gains (all float64, [out, in]). */
interface FoldedLayer {
  index: number;
  tensors: Map<string, Float64Array>;
}

function loadFoldedLayer(cfg: ModelConfig, src: WeightSource, index: number): FoldedLayer {
  const h = cfg.hiddenSize;
  const tensors = new Map<string, Float64Array>();
  for (const [rest, shape] of Object.entries(layerShapes(cfg))) {
    const name = layerName(index, rest);
    if (src.has(name)) tensors.set(rest, take(src, name, shape));
    else if (rest.endsWith('.weight')) throw new Error(`transform: the source has no tensor ${name}`);
  }
  const w = (rest: string): Float64Array => tensors.get(rest) as Float64Array;
  // RMSNorm(x) = γ ⊙ x/rms(x), so W·RMSNorm(x) = (W·diag γ)·(x/rms(x)): the gain moves into W's columns.
  const inGain = w('input_layernorm.weight');
  for (const p of ['q', 'k', 'v']) {
    const rest = `self_attn.${p}_proj.weight`;
    scaleColumns(w(rest), w(rest).length / h, h, inGain);
  }
  const postGain = w('post_attention_layernorm.weight');
  for (const p of ['gate', 'up']) {
    const rest = `mlp.${p}_proj.weight`;
    scaleColumns(w(rest), w(rest).length / h, h, postGain);
  }
  inGain.fill(1);
  postGain.fill(1);
  return { index, tensors };
}

/** src.get(name), checked against the shape the config implies. */
function take(src: WeightSource, name: string, shape: number[]): Float64Array {
  const data = src.get(name);
  const n = shape.reduce((a, b) => a * b, 1);
  if (data.length !== n) {
    throw new Error(`transform: ${name} has ${data.length} values, expected [${shape.join(', ')}] = ${n}`);
  }
  return data;
}

/** Q = V of W[out, in] (the k_proj or gate_proj of a folded layer). */
function basisOf(layer: FoldedLayer, rest: string, h: number): Float64Array {
  const W = layer.tensors.get(rest) as Float64Array;
  return rightSingularBasis(W, W.length / h, h).Q;
}

/** Rotates one folded layer; returns its tensors plus the two shortcut rotations. */
function rotateLayer(cfg: ModelConfig, layer: FoldedLayer, Qk: Float64Array, Qg: Float64Array, Qnext: Float64Array): OutputTensor[] {
  const h = cfg.hiddenSize;
  const shapes = layerShapes(cfg);
  const QgT = transpose(Qg, h, h);
  const QnextT = transpose(Qnext, h, h);
  const out: OutputTensor[] = [];
  const put = (rest: string, shape: number[], data: Float64Array): void => {
    out.push({ name: layerName(layer.index, rest), shape, data });
  };
  for (const [rest, W] of layer.tensors) {
    const shape = shapes[rest];
    const rows = shape[0];
    const cols = shape[1] ?? 1;
    switch (rest) {
      case 'self_attn.q_proj.weight':
      case 'self_attn.k_proj.weight':
      case 'self_attn.v_proj.weight':
        put(rest, shape, matmul(W, Qk, rows, h, h));
        break;
      case 'self_attn.o_proj.weight':
      case 'self_attn.o_proj.bias':
        put(rest, shape, matmul(QgT, W, h, h, cols));
        break;
      case 'mlp.gate_proj.weight':
      case 'mlp.up_proj.weight':
        put(rest, shape, matmul(W, Qg, rows, h, h));
        break;
      case 'mlp.down_proj.weight':
      case 'mlp.down_proj.bias':
        put(rest, shape, matmul(QnextT, W, h, h, cols));
        break;
      default:
        // Norm gains (already 1) and biases of linears that read the residual: unchanged.
        put(rest, shape, W);
    }
  }
  put('attn_shortcut.weight', [h, h], matmul(QgT, Qk, h, h, h));
  put('mlp_shortcut.weight', [h, h], matmul(QnextT, Qg, h, h, h));
  return out;
}

/**
 * The transform as a stream of output tensors, produced one layer at a time: at most two folded layers
 * and three h×h bases are alive at once, so a checkpoint is never held whole in float64. Order: the
 * embedding, then per layer its tensors (source order) and attn_shortcut, mlp_shortcut, then lm_head and
 * model.norm.
 */
export function* transformTensors(
  cfg: ModelConfig,
  src: WeightSource,
  onProgress?: (p: TransformProgress) => void,
): Generator<OutputTensor, void, undefined> {
  const h = cfg.hiddenSize;
  const V = cfg.vocabSize;
  const L = cfg.numLayers;
  if (L < 1) throw new Error('transform: the model has no layers');
  if (cfg.residualRotations) throw new Error('transform: the model is already transformed (it has residual rotations)');
  if (!cfg.tieWordEmbeddings && !src.has(LM_HEAD)) {
    throw new Error(`transform: tie_word_embeddings is false but the source has no ${LM_HEAD}`);
  }
  const total = L + 2;
  const progress = (done: number, what: string): void => onProgress?.({ done, total, what });

  let cur = loadFoldedLayer(cfg, src, 0);
  let Qk = basisOf(cur, 'self_attn.k_proj.weight', h);
  yield { name: EMBED, shape: [V, h], data: matmul(take(src, EMBED, [V, h]), Qk, V, h, h) };
  progress(1, 'embeddings');

  let Qg = Qk;
  for (let i = 0; i < L; i++) {
    Qg = basisOf(cur, 'mlp.gate_proj.weight', h);
    const next = i + 1 < L ? loadFoldedLayer(cfg, src, i + 1) : null;
    const Qnext = next ? basisOf(next, 'self_attn.k_proj.weight', h) : Qg;
    yield* rotateLayer(cfg, cur, Qk, Qg, Qnext);
    progress(i + 2, `layer ${i}`);
    if (next) cur = next;
    Qk = Qnext;
  }

  // Untying: a tied head is read from the source embedding, which is still unrotated there.
  const head = take(src, cfg.tieWordEmbeddings ? EMBED : LM_HEAD, [V, h]);
  const finalGain = take(src, FINAL_NORM, [h]);
  scaleColumns(head, V, h, finalGain);
  yield { name: LM_HEAD, shape: [V, h], data: matmul(head, Qg, V, h, h) };
  yield { name: FINAL_NORM, shape: [h], data: finalGain.fill(1) };
  progress(total, 'lm_head');
}

/**
 * The transform on an in-memory model (HF names, float64, [out, in]). Returns a new map (the input is
 * not modified) holding an untied `lm_head.weight` and the per-layer `attn_shortcut.weight` /
 * `mlp_shortcut.weight`; the norm gains are all 1.
 */
export function transformWeights(
  cfg: ModelConfig,
  weights: Map<string, Float64Array>,
  onProgress?: (p: TransformProgress) => void,
): Map<string, Float64Array> {
  const out = new Map<string, Float64Array>();
  const src: WeightSource = {
    has: (name) => weights.has(name),
    get: (name) => {
      const w = weights.get(name);
      if (!w) throw new Error(`transformWeights: missing tensor ${name}`);
      return Float64Array.from(w);
    },
  };
  for (const t of transformTensors(cfg, src, onProgress)) out.set(t.name, t.data);
  return out;
}

// ---- checkpoints on disk -----------------------------------------------------------------------

export type TransformDType = 'F32' | 'BF16' | 'F16';

export interface TransformCheckpointOptions {
  /**
   * Output dtype. Default: the source's (that of layer 0's q_proj): F32, BF16 and F16 stay as they are,
   * Q8_0 becomes BF16. BF16/F16 output rounds the rotated weights and the shortcut rotations, which moves
   * the logits slightly (see test/transform.test.ts for the measured size); pass 'F32' to avoid it.
   */
  dtype?: TransformDType;
  onProgress?: (p: TransformProgress) => void;
}

export interface TransformCheckpointResult {
  /** The written folder (config.json, model.safetensors, tokenizer files). */
  outDir: string;
  dtype: TransformDType;
  /** Number of tensors written. */
  tensors: number;
}

/** Files next to a safetensors checkpoint that describe the tokenizer and generation; copied verbatim. */
const SIDE_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'tokenizer.model',
  'special_tokens_map.json',
  'added_tokens.json',
  'vocab.json',
  'merges.txt',
  'chat_template.jinja',
  'generation_config.json',
];

const TORCH_DTYPE: Record<TransformDType, string> = { F32: 'float32', BF16: 'bfloat16', F16: 'float16' };

/**
 * Transforms a checkpoint (a safetensors folder or a GGUF file) into `outDir` as a safetensors folder the
 * loader reads as `residualRotations`: model.safetensors, config.json with `wina_transform` and
 * `tie_word_embeddings: false`, and the tokenizer / generation files. The float64 work runs one layer at
 * a time and each tensor is encoded and written as soon as it is final.
 *
 * Cost (JS, one core): two hidden×hidden eigendecompositions per layer plus the rotations. Measured
 * 2.3-2.5 s of CPU for tiny-en-llama (hidden 256, 4 layers, vocab 4096). Both parts grow as hidden³
 * (times the layer's width for the matmuls): a 4096-wide 32-layer model (Llama-3-8B) needs ~10 min per
 * eigendecomposition and ~1e12 multiply-adds per layer, i.e. on the order of ten hours. It is offline
 * and one-off; memory stays at about three layers in float64 (each tensor is written once final).
 */
export async function transformCheckpoint(
  source: string,
  outDir: string,
  options: TransformCheckpointOptions = {},
): Promise<TransformCheckpointResult> {
  const ckpt = await openCheckpoint(source);
  const cfg = ckpt.config;
  if (cfg.residualRotations) {
    throw new Error(`${ckpt.path}: this checkpoint is already transformed (config.json has "wina_transform")`);
  }
  const outResolved = path.resolve(outDir);
  const sourceDir = ckpt.format === 'gguf' ? path.dirname(ckpt.path) : ckpt.path;
  if (outResolved === path.resolve(sourceDir)) {
    throw new Error(`${outResolved}: the output folder must differ from the source folder (its config.json would be overwritten)`);
  }
  const dtype = options.dtype ?? defaultDType(ckpt);
  const encode = ENCODERS[dtype];

  const src: WeightSource = {
    has: (name) => ckpt.tensors.has(name),
    get: (name) => {
      const info = ckpt.tensors.get(name);
      if (!info) throw new Error(`${ckpt.path}: no tensor ${name}`);
      return Float64Array.from(readTensorAsF32(info));
    },
  };

  // The safetensors header needs every name and shape before the first byte of data, so they are
  // planned from the config; the writer then pulls the tensors in that order from the lazy stream.
  const plan = plannedOutputs(cfg, (name) => ckpt.tensors.has(name));
  const stream = transformTensors(cfg, src, options.onProgress);
  const pending = new Map<string, OutputTensor>();
  const pull = (name: string): OutputTensor => {
    while (!pending.has(name)) {
      const next = stream.next();
      if (next.done) throw new Error(`transform: produced no tensor ${name}`);
      pending.set(next.value.name, next.value);
    }
    const t = pending.get(name) as OutputTensor;
    pending.delete(name);
    return t;
  };
  const tensors: TensorSource[] = plan.map(([name, shape]) => ({
    name,
    dtype,
    shape,
    read: () => encode(pull(name).data),
  }));

  await fs.promises.mkdir(outResolved, { recursive: true });
  await writeSafetensors(path.join(outResolved, 'model.safetensors'), tensors, { format: 'pt' });
  if (!stream.next().done || pending.size > 0) throw new Error('transform: produced tensors that were not planned');

  await writeJson(path.join(outResolved, 'config.json'), await outputConfig(ckpt, dtype));
  await writeSideFiles(ckpt, outResolved);
  return { outDir: outResolved, dtype, tensors: plan.length };
}

function defaultDType(ckpt: Checkpoint): TransformDType {
  const q = ckpt.tensors.get(layerName(0, 'self_attn.q_proj.weight'));
  const d = q?.dtype ?? 'F32';
  return d === 'Q8_0' ? 'BF16' : d;
}

/** Output names and shapes in the order transformTensors produces them. */
function plannedOutputs(cfg: ModelConfig, has: (name: string) => boolean): [string, number[]][] {
  const h = cfg.hiddenSize;
  const plan: [string, number[]][] = [[EMBED, [cfg.vocabSize, h]]];
  const shapes = layerShapes(cfg);
  for (let i = 0; i < cfg.numLayers; i++) {
    for (const [rest, shape] of Object.entries(shapes)) {
      if (has(layerName(i, rest))) plan.push([layerName(i, rest), shape]);
    }
    plan.push([layerName(i, 'attn_shortcut.weight'), [h, h]], [layerName(i, 'mlp_shortcut.weight'), [h, h]]);
  }
  plan.push([LM_HEAD, [cfg.vocabSize, h]], [FINAL_NORM, [h]]);
  return plan;
}

/** The source config.json (or, for GGUF, one built from the parsed config), marked as transformed. */
async function outputConfig(ckpt: Checkpoint, dtype: TransformDType): Promise<Record<string, unknown>> {
  const base = ckpt.format === 'gguf'
    ? hfConfigFromModelConfig(ckpt.config)
    : (JSON.parse(await fs.promises.readFile(path.join(ckpt.path, 'config.json'), 'utf8')) as Record<string, unknown>);
  return {
    ...base,
    tie_word_embeddings: false,
    torch_dtype: TORCH_DTYPE[dtype],
    wina_transform: {
      version: 1,
      source: path.basename(ckpt.path),
      note:
        'Column-orthogonalising transform (WINA): RMSNorm gains folded into the following linears, residual ' +
        'stream rotated by the right singular vectors of k_proj / gate_proj; the engine must apply ' +
        'attn_shortcut / mlp_shortcut before each residual add.',
    },
  };
}

/** The Hugging Face config.json fields the loader reads, for checkpoints that came from GGUF. */
function hfConfigFromModelConfig(c: ModelConfig): Record<string, unknown> {
  const architectures = { llama: 'LlamaForCausalLM', mistral: 'MistralForCausalLM', qwen2: 'Qwen2ForCausalLM' };
  return {
    architectures: [architectures[c.arch]],
    model_type: c.arch,
    hidden_act: 'silu',
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    head_dim: c.headDim,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.maxPositions,
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    rope_scaling: c.ropeScaling && {
      rope_type: 'llama3',
      factor: c.ropeScaling.factor,
      low_freq_factor: c.ropeScaling.lowFreqFactor,
      high_freq_factor: c.ropeScaling.highFreqFactor,
      original_max_position_embeddings: c.ropeScaling.originalMaxPositions,
    },
    ...(c.arch === 'mistral' ? { sliding_window: c.slidingWindow } : {}),
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenIds.length === 1 ? c.eosTokenIds[0] : c.eosTokenIds,
  };
}

async function writeSideFiles(ckpt: Checkpoint, outDir: string): Promise<void> {
  if (ckpt.format === 'gguf') {
    // GGUF keeps its tokenizer in metadata; write the Hugging Face files built from it.
    const files = tokenizerFilesFromGguf((ckpt as GgufCheckpoint).ggufMetadata);
    await writeJson(path.join(outDir, 'tokenizer.json'), files.json);
    await writeJson(path.join(outDir, 'tokenizer_config.json'), files.config);
    return;
  }
  for (const name of SIDE_FILES) {
    try {
      await fs.promises.copyFile(path.join(ckpt.path, name), path.join(outDir, name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

async function writeJson(file: string, value: unknown): Promise<void> {
  await fs.promises.writeFile(file, JSON.stringify(value, null, 2) + '\n');
}

// ---- number formats ----------------------------------------------------------------------------
// float64 → stored bytes (little-endian). BF16 and F16 round the float32 nearest the value to nearest
// even, as torch's f32 → bf16/f16 casts do (the double rounding f64 → f32 → 16-bit is what a float32
// pipeline would do too).

const ENCODERS: Record<TransformDType, (data: Float64Array) => Uint8Array> = {
  F32: (data) => new Uint8Array(Float32Array.from(data).buffer),
  BF16: (data) => encode16(data, bf16Bits),
  F16: (data) => encode16(data, f16Bits),
};

/** Encodes float64 values as `dtype` bytes (exported for tests). */
export function encodeValues(data: Float64Array, dtype: TransformDType): Uint8Array {
  return ENCODERS[dtype](data);
}

function encode16(data: Float64Array, bits: (f32Bits: number) => number): Uint8Array {
  const f32 = Float32Array.from(data);
  const u32 = new Uint32Array(f32.buffer);
  const out = new Uint16Array(data.length);
  for (let i = 0; i < out.length; i++) out[i] = bits(u32[i]);
  return new Uint8Array(out.buffer);
}

function bf16Bits(u: number): number {
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) return ((u >>> 16) | 0x40) & 0xffff; // NaN stays NaN
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

function f16Bits(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  const mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half: bits = round(value·2^24) = round(m·2^(e−14)); below 2^-25 everything rounds to 0.
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    let half = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (half & 1) !== 0)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (up to infinity).
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1) !== 0)) half++;
  return sign | half;
}
