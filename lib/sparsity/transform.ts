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

import type { ModelConfig } from '../loaders/types.js';
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

/** Every tensor name a source checkpoint may hold for this config, with its shape. */
export function expectedSourceShapes(cfg: ModelConfig): Map<string, number[]> {
  const shapes = new Map<string, number[]>([
    [EMBED, [cfg.vocabSize, cfg.hiddenSize]],
    [FINAL_NORM, [cfg.hiddenSize]],
    [LM_HEAD, [cfg.vocabSize, cfg.hiddenSize]],
  ]);
  const per = layerShapes(cfg);
  for (let i = 0; i < cfg.numLayers; i++) {
    for (const [rest, shape] of Object.entries(per)) shapes.set(layerName(i, rest), shape);
  }
  return shapes;
}

// ---- the streaming core ------------------------------------------------------------------------

/** Where the transform reads weights: `get` returns a fresh float64 copy it may modify in place. */
export interface WeightSource {
  has(name: string): boolean;
  get(name: string): Float64Array;
}

/** Receives each output tensor once, in float64, as soon as it is final (so it can be encoded and freed). */
export type WeightSink = (name: string, shape: number[], data: Float64Array) => void;

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

/** Rotates one folded layer and emits its tensors plus the two shortcut rotations. */
function emitLayer(
  cfg: ModelConfig,
  layer: FoldedLayer,
  Qk: Float64Array,
  Qg: Float64Array,
  Qnext: Float64Array,
  emit: WeightSink,
): void {
  const h = cfg.hiddenSize;
  const shapes = layerShapes(cfg);
  const QgT = transpose(Qg, h, h);
  const QnextT = transpose(Qnext, h, h);
  const rotated = (rest: string, data: Float64Array): void => emit(layerName(layer.index, rest), shapes[rest], data);
  for (const [rest, W] of layer.tensors) {
    const rows = shapes[rest][0];
    const cols = shapes[rest][1] ?? 1;
    switch (rest) {
      case 'self_attn.q_proj.weight':
      case 'self_attn.k_proj.weight':
      case 'self_attn.v_proj.weight':
        rotated(rest, matmul(W, Qk, rows, h, h));
        break;
      case 'self_attn.o_proj.weight':
      case 'self_attn.o_proj.bias':
        rotated(rest, matmul(QgT, W, h, h, cols));
        break;
      case 'mlp.gate_proj.weight':
      case 'mlp.up_proj.weight':
        rotated(rest, matmul(W, Qg, rows, h, h));
        break;
      case 'mlp.down_proj.weight':
      case 'mlp.down_proj.bias':
        rotated(rest, matmul(QnextT, W, h, h, cols));
        break;
      default:
        // Norm gains (already 1) and biases of linears that read the residual: unchanged.
        rotated(rest, W);
    }
  }
  emit(layerName(layer.index, 'attn_shortcut.weight'), [h, h], matmul(QgT, Qk, h, h, h));
  emit(layerName(layer.index, 'mlp_shortcut.weight'), [h, h], matmul(QnextT, Qg, h, h, h));
}

/**
 * Runs the transform from `src` into `emit`, one layer at a time: at most two folded layers and three
 * h×h bases are alive at once, so a checkpoint is never held whole in float64.
 */
export function transformStream(
  cfg: ModelConfig,
  src: WeightSource,
  emit: WeightSink,
  onProgress?: (p: TransformProgress) => void,
): void {
  const h = cfg.hiddenSize;
  const V = cfg.vocabSize;
  const L = cfg.numLayers;
  if (L < 1) throw new Error('transform: the model has no layers');
  const total = L + 2;
  const progress = (done: number, what: string): void => onProgress?.({ done, total, what });

  // Untie first: the head must be copied from the embedding before the embedding is rotated.
  const tied = cfg.tieWordEmbeddings || !src.has(LM_HEAD);
  if (!cfg.tieWordEmbeddings && !src.has(LM_HEAD)) {
    throw new Error(`transform: tie_word_embeddings is false but the source has no ${LM_HEAD}`);
  }

  let cur = loadFoldedLayer(cfg, src, 0);
  let Qk = basisOf(cur, 'self_attn.k_proj.weight', h);
  emit(EMBED, [V, h], matmul(take(src, EMBED, [V, h]), Qk, V, h, h));
  progress(1, 'embeddings');

  let Qg = Qk;
  for (let i = 0; i < L; i++) {
    Qg = basisOf(cur, 'mlp.gate_proj.weight', h);
    const next = i + 1 < L ? loadFoldedLayer(cfg, src, i + 1) : null;
    const Qnext = next ? basisOf(next, 'self_attn.k_proj.weight', h) : Qg;
    emitLayer(cfg, cur, Qk, Qg, Qnext, emit);
    progress(i + 2, `layer ${i}`);
    if (next) cur = next;
    Qk = Qnext;
  }

  const head = take(src, tied ? EMBED : LM_HEAD, [V, h]);
  const finalGain = take(src, FINAL_NORM, [h]);
  scaleColumns(head, V, h, finalGain);
  emit(LM_HEAD, [V, h], matmul(head, Qg, V, h, h));
  emit(FINAL_NORM, [h], finalGain.fill(1));
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
  transformStream(cfg, src, (name, _shape, data) => out.set(name, data), onProgress);
  return out;
}
