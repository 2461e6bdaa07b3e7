// An independent float64 forward pass with Hugging Face Llama / Mistral / Qwen2 semantics.
//
// The tests prove the native engine against this on architectures we have no trained model for. It is
// written from the HF modelling code's math, not from our engine, and imports nothing from lib/ but
// the checkpoint reader (in loadReferenceWeights only). It is plain loops over typed arrays,
// token by token with a KV cache, so it reads like the math and is only meant for tiny models.

import { openCheckpoint, readTensorAsF32 } from '../../lib/loaders/index.js';

// ---- config --------------------------------------------------------------------------------------

export interface RefRopeScaling {
  /** HF rope_scaling with rope_type "llama3". */
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositions: number;
}

/** The fields of an HF config.json the forward pass needs (see refConfigFromHf). */
export interface RefConfig {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RefRopeScaling | null;
  /** lm_head = embed_tokens. */
  tieWordEmbeddings: boolean;
  /** Mistral: a query at position i sees keys j with i - j < slidingWindow. */
  slidingWindow: number | null;
}

function hfNumber(hf: Record<string, unknown>, key: string, fallback?: number): number {
  const v = hf[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new Error(`refConfigFromHf: config field "${key}" must be a number, found ${JSON.stringify(hf[key])}`);
  }
  return v;
}

/** A RefConfig from a parsed HF config.json, with HF's defaults (LlamaConfig / Qwen2Config / MistralConfig). */
export function refConfigFromHf(hf: Record<string, unknown>): RefConfig {
  const hiddenSize = hfNumber(hf, 'hidden_size');
  const numHeads = hfNumber(hf, 'num_attention_heads');
  // transformers >= 5 moves rope_theta and the scaling into rope_parameters.
  const ropeParameters = (hf.rope_parameters ?? null) as Record<string, unknown> | null;
  const rs = (hf.rope_scaling ?? ropeParameters) as Record<string, unknown> | null | undefined;
  let ropeScaling: RefRopeScaling | null = null;
  if (rs) {
    const type = rs.rope_type ?? rs.type;
    if (type === 'llama3') {
      ropeScaling = {
        factor: hfNumber(rs, 'factor'),
        lowFreqFactor: hfNumber(rs, 'low_freq_factor'),
        highFreqFactor: hfNumber(rs, 'high_freq_factor'),
        originalMaxPositions: hfNumber(rs, 'original_max_position_embeddings'),
      };
    } else if (type !== 'default' && type !== undefined) {
      throw new Error(`refConfigFromHf: rope_scaling type ${JSON.stringify(type)} is not supported (only llama3)`);
    }
  }
  let slidingWindow: number | null = null;
  if (hf.model_type === 'mistral' && typeof hf.sliding_window === 'number') slidingWindow = hf.sliding_window;
  if (hf.model_type === 'qwen2' && hf.use_sliding_window === true) {
    throw new Error('refConfigFromHf: qwen2 with use_sliding_window is not supported');
  }
  return {
    hiddenSize,
    intermediateSize: hfNumber(hf, 'intermediate_size'),
    numLayers: hfNumber(hf, 'num_hidden_layers'),
    numHeads,
    numKvHeads: hfNumber(hf, 'num_key_value_heads', numHeads),
    headDim: hfNumber(hf, 'head_dim', hiddenSize / numHeads),
    vocabSize: hfNumber(hf, 'vocab_size'),
    rmsNormEps: hfNumber(hf, 'rms_norm_eps', 1e-6),
    ropeTheta: hfNumber(hf, 'rope_theta', (ropeParameters?.rope_theta as number | undefined) ?? 10000),
    ropeScaling,
    tieWordEmbeddings: hf.tie_word_embeddings === true,
    slidingWindow,
  };
}

// ---- building blocks -----------------------------------------------------------------------------

type Weights = Map<string, Float64Array | Float32Array>;
type Vec = Float64Array;

/** x / sqrt(mean(x^2) + eps) * w */
function rmsnorm(x: Vec, w: ArrayLike<number>, eps: number): Vec {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const scale = 1 / Math.sqrt(ss / x.length + eps);
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] * scale * w[i];
  return out;
}

/** y = W x (+ b), W in PyTorch [out, in] row-major layout. */
function linear(w: ArrayLike<number>, x: Vec, outDim: number, b?: ArrayLike<number>): Vec {
  const n = x.length;
  const y = new Float64Array(outDim);
  for (let o = 0; o < outDim; o++) {
    let acc = b ? b[o] : 0;
    const row = o * n;
    for (let i = 0; i < n; i++) acc += w[row + i] * x[i];
    y[o] = acc;
  }
  return y;
}

/**
 * RoPE inverse frequencies theta^(-2i/d), i < d/2, with HF's `llama3` rule: frequencies whose wavelength
 * is shorter than original_max/high_freq_factor are kept, longer than original_max/low_freq_factor are
 * divided by factor, and those in between are interpolated smoothly between the two.
 */
export function ropeInvFreq(cfg: RefConfig): Float64Array {
  const half = cfg.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = Math.pow(cfg.ropeTheta, (-2 * i) / cfg.headDim);
  const s = cfg.ropeScaling;
  if (!s) return inv;
  const lowFreqWavelen = s.originalMaxPositions / s.lowFreqFactor;
  const highFreqWavelen = s.originalMaxPositions / s.highFreqFactor;
  for (let i = 0; i < half; i++) {
    const wavelen = (2 * Math.PI) / inv[i];
    if (wavelen < highFreqWavelen) continue;
    if (wavelen > lowFreqWavelen) {
      inv[i] /= s.factor;
    } else {
      const smooth = (s.originalMaxPositions / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
      inv[i] = (1 - smooth) * (inv[i] / s.factor) + smooth * inv[i];
    }
  }
  return inv;
}

/** In place, HF rotate_half layout: within each head, element i pairs with i + headDim/2. */
function rope(v: Vec, nHeads: number, headDim: number, pos: number, invFreq: Float64Array): void {
  const half = headDim / 2;
  for (let h = 0; h < nHeads; h++) {
    const base = h * headDim;
    for (let i = 0; i < half; i++) {
      const angle = pos * invFreq[i];
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      const x1 = v[base + i];
      const x2 = v[base + i + half];
      v[base + i] = x1 * c - x2 * s;
      v[base + i + half] = x2 * c + x1 * s;
    }
  }
}

const silu = (x: number): number => x / (1 + Math.exp(-x));

// ---- forward -------------------------------------------------------------------------------------

export interface ReferenceSession {
  /** Feeds the token at the next position (0, 1, ...) and returns the logits there. */
  step(token: number): Float64Array;
}

/**
 * A token-by-token forward with a KV cache. Weights are HF-named, [out, in]. Uses q/k/v biases when
 * `...self_attn.q_proj.bias` is present, and the residual rotations of transformed checkpoints when
 * `model.layers.{i}.attn_shortcut.weight` is present: r = W_attn_shortcut r + attn(r);
 * r = W_mlp_shortcut r + mlp(r).
 */
export function referenceSession(cfg: RefConfig, weights: Weights): ReferenceSession {
  const { hiddenSize: H, intermediateSize: I, numHeads, numKvHeads, headDim: D, vocabSize: V } = cfg;
  const qDim = numHeads * D;
  const kvDim = numKvHeads * D;
  if (numHeads % numKvHeads !== 0) throw new Error(`heads ${numHeads} not a multiple of kv heads ${numKvHeads}`);
  const group = numHeads / numKvHeads;

  const get = (name: string, size: number): Float64Array | Float32Array => {
    const w = weights.get(name);
    if (!w) throw new Error(`referenceForward: missing tensor ${name}`);
    if (w.length !== size) throw new Error(`referenceForward: ${name} has ${w.length} elements, expected ${size}`);
    return w;
  };
  const optional = (name: string, size: number): Float64Array | Float32Array | undefined =>
    weights.has(name) ? get(name, size) : undefined;

  const embed = get('model.embed_tokens.weight', V * H);
  const lmHead = cfg.tieWordEmbeddings ? embed : get('lm_head.weight', V * H);
  const finalNorm = get('model.norm.weight', H);
  const layers = Array.from({ length: cfg.numLayers }, (_, l) => {
    const p = `model.layers.${l}`;
    return {
      inNorm: get(`${p}.input_layernorm.weight`, H),
      wq: get(`${p}.self_attn.q_proj.weight`, qDim * H),
      wk: get(`${p}.self_attn.k_proj.weight`, kvDim * H),
      wv: get(`${p}.self_attn.v_proj.weight`, kvDim * H),
      bq: optional(`${p}.self_attn.q_proj.bias`, qDim),
      bk: optional(`${p}.self_attn.k_proj.bias`, kvDim),
      bv: optional(`${p}.self_attn.v_proj.bias`, kvDim),
      wo: get(`${p}.self_attn.o_proj.weight`, H * qDim),
      postNorm: get(`${p}.post_attention_layernorm.weight`, H),
      wGate: get(`${p}.mlp.gate_proj.weight`, I * H),
      wUp: get(`${p}.mlp.up_proj.weight`, I * H),
      wDown: get(`${p}.mlp.down_proj.weight`, H * I),
      attnShortcut: optional(`${p}.attn_shortcut.weight`, H * H),
      mlpShortcut: optional(`${p}.mlp_shortcut.weight`, H * H),
      // Post-RoPE keys and values, one [kvDim] vector per position.
      kCache: [] as Vec[],
      vCache: [] as Vec[],
    };
  });

  const invFreq = ropeInvFreq(cfg);
  const scale = 1 / Math.sqrt(D);
  let pos = 0;

  const step = (tok: number): Float64Array => {
    if (!Number.isInteger(tok) || tok < 0 || tok >= V) throw new Error(`referenceForward: token ${tok} out of range`);
    let r: Vec = Float64Array.from(embed.subarray(tok * H, (tok + 1) * H));

    for (const L of layers) {
      // Attention block.
      const x = rmsnorm(r, L.inNorm, cfg.rmsNormEps);
      const q = linear(L.wq, x, qDim, L.bq);
      const k = linear(L.wk, x, kvDim, L.bk);
      const v = linear(L.wv, x, kvDim, L.bv);
      rope(q, numHeads, D, pos, invFreq);
      rope(k, numKvHeads, D, pos, invFreq);
      L.kCache.push(k);
      L.vCache.push(v);

      const first = cfg.slidingWindow === null ? 0 : Math.max(0, pos - cfg.slidingWindow + 1);
      const att = new Float64Array(qDim);
      const scores = new Float64Array(pos + 1);
      for (let h = 0; h < numHeads; h++) {
        const qOff = h * D;
        const kvOff = Math.floor(h / group) * D; // GQA: q heads [g*group, (g+1)*group) share kv head g
        let max = -Infinity;
        for (let j = first; j <= pos; j++) {
          const kj = L.kCache[j];
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[qOff + d] * kj[kvOff + d];
          scores[j] = dot * scale;
          if (scores[j] > max) max = scores[j];
        }
        let sum = 0;
        for (let j = first; j <= pos; j++) {
          scores[j] = Math.exp(scores[j] - max);
          sum += scores[j];
        }
        for (let j = first; j <= pos; j++) {
          const p = scores[j] / sum;
          const vj = L.vCache[j];
          for (let d = 0; d < D; d++) att[qOff + d] += p * vj[kvOff + d];
        }
      }
      const attnOut = linear(L.wo, att, H);
      const rAttn = L.attnShortcut ? linear(L.attnShortcut, r, H) : r;
      for (let i = 0; i < H; i++) rAttn[i] += attnOut[i];
      r = rAttn;

      // SwiGLU MLP block: down(silu(gate(y)) * up(y)).
      const y = rmsnorm(r, L.postNorm, cfg.rmsNormEps);
      const gate = linear(L.wGate, y, I);
      const up = linear(L.wUp, y, I);
      for (let i = 0; i < I; i++) gate[i] = silu(gate[i]) * up[i];
      const mlpOut = linear(L.wDown, gate, H);
      const rMlp = L.mlpShortcut ? linear(L.mlpShortcut, r, H) : r;
      for (let i = 0; i < H; i++) rMlp[i] += mlpOut[i];
      r = rMlp;
    }

    pos++;
    return linear(lmHead, rmsnorm(r, finalNorm, cfg.rmsNormEps), V);
  };
  return { step };
}

/** Logits at every position of `tokens` (positions 0..n-1), in float64. */
export function referenceForward(cfg: RefConfig, weights: Weights, tokens: number[]): Float64Array[] {
  const session = referenceSession(cfg, weights);
  return tokens.map((t) => session.step(t));
}

/** Index of the largest value (the first one on ties, like torch.argmax). */
export function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

/** Greedy (argmax) continuation: `steps` new ids after `prompt`, no EOS stop. */
export function referenceGreedy(cfg: RefConfig, weights: Weights, prompt: number[], steps: number): number[] {
  if (prompt.length === 0) throw new Error('referenceGreedy: empty prompt');
  const session = referenceSession(cfg, weights);
  let logits: Float64Array = new Float64Array(0);
  for (const t of prompt) logits = session.step(t);
  const out: number[] = [];
  for (let s = 0; s < steps; s++) {
    out.push(argmax(logits));
    if (s + 1 < steps) logits = session.step(out[s]);
  }
  return out;
}

// ---- loading -------------------------------------------------------------------------------------

/**
 * Every tensor of a checkpoint (safetensors folder or GGUF file) as f32 in HF names and layout, through
 * the project's loader (which validates the tensors against config.json). For tiny models only.
 */
export async function loadReferenceWeights(dir: string): Promise<Map<string, Float32Array>> {
  const checkpoint = await openCheckpoint(dir);
  const weights = new Map<string, Float32Array>();
  for (const [name, info] of checkpoint.tensors) weights.set(name, readTensorAsF32(info));
  return weights;
}
