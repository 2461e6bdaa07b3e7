// Random-weight checkpoints of real (and tiny) model shapes, for tests and benchmarks.
//
// writeRandomCheckpoint() writes a Hugging Face style folder (config.json + model.safetensors, HF tensor
// names, [out, in] layout) filled with seeded pseudo-random weights. The safetensors writer pulls one
// tensor at a time, so a 7B model never sits in memory (the largest tensor does: 1 GB for Llama 3 8B's
// BF16 embeddings), and it is fast: each element is one table lookup (see normalTable()).

import { mkdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { writeSafetensors, type TensorSource } from './loaders/writers.js';

export type SyntheticDType = 'F32' | 'BF16' | 'F16';
export type ShapeName = 'llama-3.2-1b' | 'qwen2.5-0.5b' | 'llama-2-7b' | 'llama-3-8b' | 'mistral-7b';
export type HfConfig = Record<string, unknown>;

export interface RandomCheckpointOptions {
  dtype: SyntheticDType;
  seed: number;
  /**
   * Standard deviation of the matrices and embeddings. Default 1/sqrt(hidden_size): 0.022 for a
   * 2048-wide model, close to the 0.02 of trained Llama checkpoints, and it keeps q.k/sqrt(head_dim)
   * at unit variance at any width, so tiny test models get peaked (not uniform) attention too.
   */
  std?: number;
}

// ---- public model shapes -------------------------------------------------------------------------
// The config.json fields that matter for the forward pass, copied from the public Hugging Face configs.
// They live in the source (not in a fixture folder) so that benchmarks run from any clone.

const SHAPES: Record<ShapeName, HfConfig> = {
  'llama-3.2-1b': {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_act: 'silu',
    attention_bias: false,
    mlp_bias: false,
    torch_dtype: 'bfloat16',
    hidden_size: 2048,
    intermediate_size: 8192,
    num_hidden_layers: 16,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    head_dim: 64,
    vocab_size: 128256,
    max_position_embeddings: 131072,
    rms_norm_eps: 1e-5,
    rope_theta: 500000.0,
    rope_scaling: {
      factor: 32.0,
      high_freq_factor: 4.0,
      low_freq_factor: 1.0,
      original_max_position_embeddings: 8192,
      rope_type: 'llama3',
    },
    tie_word_embeddings: true,
    bos_token_id: 128000,
    eos_token_id: 128001,
  },
  'qwen2.5-0.5b': {
    architectures: ['Qwen2ForCausalLM'],
    model_type: 'qwen2',
    hidden_act: 'silu',
    torch_dtype: 'bfloat16',
    hidden_size: 896,
    intermediate_size: 4864,
    num_hidden_layers: 24,
    num_attention_heads: 14,
    num_key_value_heads: 2,
    vocab_size: 151936,
    max_position_embeddings: 32768,
    max_window_layers: 24,
    sliding_window: 32768,
    use_sliding_window: false,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    tie_word_embeddings: true,
    bos_token_id: 151643,
    eos_token_id: 151643,
  },
  'llama-2-7b': {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_act: 'silu',
    attention_bias: false,
    mlp_bias: false,
    torch_dtype: 'bfloat16',
    hidden_size: 4096,
    intermediate_size: 11008,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: 32,
    vocab_size: 32000,
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    rope_scaling: null,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
  },
  'llama-3-8b': {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_act: 'silu',
    attention_bias: false,
    mlp_bias: false,
    torch_dtype: 'bfloat16',
    hidden_size: 4096,
    intermediate_size: 14336,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    vocab_size: 128256,
    max_position_embeddings: 8192,
    rms_norm_eps: 1e-5,
    rope_theta: 500000.0,
    rope_scaling: null,
    tie_word_embeddings: false,
    bos_token_id: 128000,
    eos_token_id: 128001,
  },
  'mistral-7b': {
    architectures: ['MistralForCausalLM'],
    model_type: 'mistral',
    hidden_act: 'silu',
    attention_bias: false,
    mlp_bias: false,
    torch_dtype: 'bfloat16',
    hidden_size: 4096,
    intermediate_size: 14336,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    vocab_size: 32000,
    max_position_embeddings: 32768,
    sliding_window: 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
  },
};

/** The HF config.json object of a public model shape (a fresh copy each call). */
export function shapeConfig(name: ShapeName): HfConfig {
  const cfg = SHAPES[name];
  if (!cfg) {
    throw new Error(`shapeConfig: unknown shape "${name}"; expected one of ${Object.keys(SHAPES).join(', ')}`);
  }
  return structuredClone(cfg);
}

/**
 * Tiny configs that keep an architecture's distinguishing features, for exact tests against the
 * float64 reference:
 * - qwen2: q/k/v biases, tied embeddings, rope_theta 1e6, GQA 6/2 (a group of 3, not a power of two),
 *   head_dim derived from hidden/heads as in real Qwen2 configs.
 * - llama3: `llama3` rope scaling with original_max_position_embeddings 128, so that with head_dim 32 and
 *   theta 5e5 the 16 frequencies fall in all three bands (2 kept, 2 smoothed, 12 divided by the factor);
 *   GQA 4/2, explicit head_dim, untied lm_head.
 */
export function tinyConfig(kind: 'qwen2' | 'llama3'): HfConfig {
  if (kind === 'qwen2') {
    return {
      architectures: ['Qwen2ForCausalLM'],
      model_type: 'qwen2',
      hidden_act: 'silu',
      torch_dtype: 'float32',
      hidden_size: 96,
      intermediate_size: 160,
      num_hidden_layers: 2,
      num_attention_heads: 6,
      num_key_value_heads: 2,
      vocab_size: 300,
      max_position_embeddings: 512,
      max_window_layers: 2,
      sliding_window: 512,
      use_sliding_window: false,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000.0,
      tie_word_embeddings: true,
      bos_token_id: 1,
      eos_token_id: 2,
    };
  }
  if (kind === 'llama3') {
    return {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      hidden_act: 'silu',
      attention_bias: false,
      mlp_bias: false,
      torch_dtype: 'float32',
      hidden_size: 128,
      intermediate_size: 256,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      head_dim: 32,
      vocab_size: 300,
      max_position_embeddings: 1024,
      rms_norm_eps: 1e-5,
      rope_theta: 500000.0,
      rope_scaling: {
        factor: 8.0,
        high_freq_factor: 4.0,
        low_freq_factor: 1.0,
        original_max_position_embeddings: 128,
        rope_type: 'llama3',
      },
      tie_word_embeddings: false,
      bos_token_id: 1,
      eos_token_id: 2,
    };
  }
  throw new Error(`tinyConfig: unknown kind "${String(kind)}"; expected "qwen2" or "llama3"`);
}

// ---- tensor list ---------------------------------------------------------------------------------

/** How a tensor's values are drawn: mean + std * N(0, 1). */
interface TensorSpec {
  name: string;
  shape: number[];
  mean: number;
  std: number;
}

function field(cfg: HfConfig, key: string): number {
  const v = cfg[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
    throw new Error(`writeRandomCheckpoint: config field "${key}" must be a positive integer, found ${JSON.stringify(v)}`);
  }
  return v;
}

// Norm weights ~1 and biases of moderate size: what trained models look like to the forward pass.
const NORM_STD = 0.05;
const BIAS_STD = 0.2;

function tensorSpecs(cfg: HfConfig, std: number | undefined): TensorSpec[] {
  const hidden = field(cfg, 'hidden_size');
  const inter = field(cfg, 'intermediate_size');
  const layers = field(cfg, 'num_hidden_layers');
  const heads = field(cfg, 'num_attention_heads');
  const kvHeads = cfg.num_key_value_heads === undefined ? heads : field(cfg, 'num_key_value_heads');
  const headDim = cfg.head_dim === undefined || cfg.head_dim === null ? hidden / heads : field(cfg, 'head_dim');
  const vocab = field(cfg, 'vocab_size');
  if (!Number.isInteger(headDim)) {
    throw new Error(`writeRandomCheckpoint: hidden_size ${hidden} is not a multiple of num_attention_heads ${heads}`);
  }
  // Qwen2 always has q/k/v biases. Llama's attention_bias would also add an o_proj bias, which no
  // supported checkpoint has, so it is refused rather than written half-right.
  const qkvBias = cfg.model_type === 'qwen2';
  if (cfg.attention_bias === true && !qkvBias) {
    throw new Error('writeRandomCheckpoint: attention_bias: true is only supported for model_type "qwen2"');
  }
  const tied = cfg.tie_word_embeddings === true;
  const s = std ?? 1 / Math.sqrt(hidden);

  const matrix = (name: string, out: number, inp: number): TensorSpec => ({ name, shape: [out, inp], mean: 0, std: s });
  const norm = (name: string): TensorSpec => ({ name, shape: [hidden], mean: 1, std: NORM_STD });
  const bias = (name: string, n: number): TensorSpec => ({ name, shape: [n], mean: 0, std: BIAS_STD });

  const specs: TensorSpec[] = [matrix('model.embed_tokens.weight', vocab, hidden)];
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    specs.push(norm(`${p}.input_layernorm.weight`));
    specs.push(matrix(`${p}.self_attn.q_proj.weight`, heads * headDim, hidden));
    specs.push(matrix(`${p}.self_attn.k_proj.weight`, kvHeads * headDim, hidden));
    specs.push(matrix(`${p}.self_attn.v_proj.weight`, kvHeads * headDim, hidden));
    if (qkvBias) {
      specs.push(bias(`${p}.self_attn.q_proj.bias`, heads * headDim));
      specs.push(bias(`${p}.self_attn.k_proj.bias`, kvHeads * headDim));
      specs.push(bias(`${p}.self_attn.v_proj.bias`, kvHeads * headDim));
    }
    specs.push(matrix(`${p}.self_attn.o_proj.weight`, hidden, heads * headDim));
    specs.push(norm(`${p}.post_attention_layernorm.weight`));
    specs.push(matrix(`${p}.mlp.gate_proj.weight`, inter, hidden));
    specs.push(matrix(`${p}.mlp.up_proj.weight`, inter, hidden));
    specs.push(matrix(`${p}.mlp.down_proj.weight`, hidden, inter));
    // A `wina transform` checkpoint also rotates the residual stream (random matrices here: the speed
    // of the rotations does not depend on their values).
    if (cfg.wina_transform) {
      specs.push(matrix(`${p}.attn_shortcut.weight`, hidden, hidden));
      specs.push(matrix(`${p}.mlp_shortcut.weight`, hidden, hidden));
    }
  }
  specs.push(norm('model.norm.weight'));
  // Tied models have no lm_head tensor in HF checkpoints: the loader reuses embed_tokens.
  if (!tied || cfg.wina_transform) specs.push(matrix('lm_head.weight', vocab, hidden));
  return specs;
}

// ---- number formats ------------------------------------------------------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

function bf16Bits(v: number): number {
  f32[0] = v;
  const u = u32[0];
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff; // round to nearest even
}

function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** float16 bits of the float32 nearest v (as torch's f32 -> f16 cast: the same double rounding). */
function f16Bits(v: number): number {
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  const a = Math.abs(Math.fround(v));
  if (Number.isNaN(v)) return 0x7e00;
  if (a >= 65520) return sign | 0x7c00; // 65520 and above round to infinity
  if (a < 2 ** -14) return sign | roundHalfEven(a * 2 ** 24); // subnormal (may round up to the min normal)
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--; // log2 can be off by one ulp near powers of two
  if (2 ** (e + 1) <= a) e++;
  let m = roundHalfEven((a / 2 ** e - 1) * 1024);
  if (m === 1024) {
    m = 0;
    e++;
  }
  return sign | ((e + 15) << 10) | m;
}

// ---- random numbers ------------------------------------------------------------------------------

function splitmix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** A non-zero xorshift32 state from the seed and the tensor name (so a tensor's values don't depend on order). */
function tensorState(seed: number, name: string): number {
  let h = 0x811c9dc5; // FNV-1a
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  const s = splitmix32(splitmix32(seed >>> 0) ^ h);
  return s === 0 ? 0x6d2b79f5 : s;
}

let unitNormal: Float64Array | null = null;

/**
 * 65536 N(0,1) samples (Box-Muller from a fixed seed), mirrored so their mean is exactly 0. Drawing a
 * value is then one 16-bit index into this table (pre-converted to the output dtype per tensor), which
 * keeps generation below the disk's time: Llama-3.2-1B in BF16 (2.5 GB) was measured to write in 13-20 s
 * on a 2-core VM. 65536 levels (tails cut at ~4.3 sigma) are plenty for weights.
 */
function normalTable(): Float64Array {
  if (unitNormal) return unitNormal;
  const t = new Float64Array(65536);
  let s = 0x2545f491;
  const uniform = (): number => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) + 0.5) / 4294967296;
  };
  for (let i = 0; i < 32768; i += 2) {
    const r = Math.sqrt(-2 * Math.log(uniform()));
    const phi = 2 * Math.PI * uniform();
    t[i] = r * Math.cos(phi);
    t[i + 1] = r * Math.sin(phi);
  }
  for (let i = 0; i < 32768; i++) t[32768 + i] = -t[i];
  unitNormal = t;
  return t;
}

type Lookup = Float32Array | Uint16Array;

function lookupTable(dtype: SyntheticDType, mean: number, std: number): Lookup {
  const unit = normalTable();
  if (dtype === 'F32') return Float32Array.from(unit, (z) => mean + std * z);
  const bits = dtype === 'BF16' ? bf16Bits : f16Bits;
  return Uint16Array.from(unit, (z) => bits(mean + std * z));
}

/** Fills out[0:n] (n rounded up to even) from the table. Two 16-bit draws per xorshift32 step. */
function fillRandom(out: Lookup, n: number, table: Lookup, state: number): void {
  let s = state | 0;
  for (let j = 0; j < n; j += 2) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[j] = table[s & 0xffff];
    out[j + 1] = table[s >>> 16];
  }
}

// ---- writing -------------------------------------------------------------------------------------

const DTYPE_BYTES: Record<SyntheticDType, number> = { F32: 4, BF16: 2, F16: 2 };
const TORCH_DTYPE: Record<SyntheticDType, string> = { F32: 'float32', BF16: 'bfloat16', F16: 'float16' };

/** One tensor's bytes, produced when the writer reaches it (so only one tensor is alive at a time). */
function randomTensor(t: TensorSpec, dtype: SyntheticDType, seed: number): Uint8Array {
  const n = t.shape.reduce((a, b) => a * b, 1);
  // One spare element: fillRandom writes values in pairs.
  const values = dtype === 'F32' ? new Float32Array(n + 1) : new Uint16Array(n + 1);
  fillRandom(values, n, lookupTable(dtype, t.mean, t.std), tensorState(seed, t.name));
  return new Uint8Array(values.buffer, 0, n * DTYPE_BYTES[dtype]);
}

/**
 * Writes `dir/config.json` (hfConfig with torch_dtype set to the written dtype) and
 * `dir/model.safetensors` with HF tensor names: q/k/v biases for qwen2, no lm_head when
 * tie_word_embeddings is true. Matrices and embeddings ~ N(0, std), norm weights ~ N(1, 0.05), biases
 * ~ N(0, 0.2). Deterministic in (seed, tensor name). Returns the size of model.safetensors in bytes.
 */
export async function writeRandomCheckpoint(
  dir: string,
  hfConfig: object,
  options: RandomCheckpointOptions,
): Promise<{ bytes: number }> {
  const { dtype, seed } = options;
  if (!(dtype in DTYPE_BYTES)) {
    throw new Error(`writeRandomCheckpoint: dtype must be F32, BF16 or F16, found ${JSON.stringify(dtype)}`);
  }
  if (options.std !== undefined && !(options.std >= 0)) {
    throw new Error(`writeRandomCheckpoint: std must be a non-negative number, found ${options.std}`);
  }
  const cfg = { ...(hfConfig as HfConfig), torch_dtype: TORCH_DTYPE[dtype] };
  const specs = tensorSpecs(cfg, options.std);

  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');

  const file = path.join(dir, 'model.safetensors');
  const tensors: TensorSource[] = specs.map((t) => ({
    name: t.name,
    dtype,
    shape: t.shape,
    read: () => randomTensor(t, dtype, seed),
  }));
  await writeSafetensors(file, tensors, { format: 'pt' });
  const { size: bytes } = await stat(file);
  return { bytes };
}
