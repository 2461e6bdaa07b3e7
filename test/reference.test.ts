// Proves the float64 reference forward (test/helpers/reference.ts) against PyTorch and llama2.c golden
// outputs, checks the features no trained fixture has (llama3 rope scaling, qwen2 biases, GQA, residual
// rotations) by exact equivalences, and round-trips the random checkpoints of lib/synthetic.ts.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Matrix, QrDecomposition } from 'ml-matrix';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseModelConfig } from '../lib/loaders/config.js';
import { openCheckpoint, readTensorAsF32 } from '../lib/loaders/index.js';
import { shapeConfig, tinyConfig, writeRandomCheckpoint, type SyntheticDType } from '../lib/synthetic.js';
import {
  argmax,
  loadReferenceWeights,
  refConfigFromHf,
  referenceForward,
  referenceGreedy,
  referenceSession,
  ropeInvFreq,
  type RefConfig,
} from './helpers/reference.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const shared = path.resolve(repoRoot, '../shared');
const hasShared = fs.existsSync(shared);

type Weights = Map<string, Float64Array | Float32Array>;

const readJson = (file: string): Record<string, unknown> => JSON.parse(fs.readFileSync(file, 'utf8'));

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function range(v: ArrayLike<number>): number {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < v.length; i++) {
    lo = Math.min(lo, v[i]);
    hi = Math.max(hi, v[i]);
  }
  return hi - lo;
}

// ---- trained fixtures ----------------------------------------------------------------------------

interface TinyEnReference {
  prompt: string;
  prompt_ids: number[];
  greedy_ids: number[];
  last_logits: number[];
  last_logits_argmax: number;
}

describe.skipIf(!hasShared)('tiny-en-llama vs PyTorch (needs ../shared, skipped without it)', () => {
  const dir = path.join(shared, 'models/tiny-en-llama');
  let cfg: RefConfig;
  let weights: Weights;
  let refs: TinyEnReference[];

  beforeAll(async () => {
    cfg = refConfigFromHf(readJson(path.join(dir, 'config.json')));
    // The BF16 file: reference.json's logits were computed on exactly these (BF16-rounded) weights.
    weights = await loadReferenceWeights(dir);
    refs = (readJson(path.join(dir, 'reference.json')) as { references: TinyEnReference[] }).references;
  });

  it('last-position logits match within 1e-3 of the logit range, for every prompt', () => {
    expect(refs.length).toBe(4);
    for (const ref of refs) {
      const logits = referenceForward(cfg, weights, ref.prompt_ids);
      const last = logits[logits.length - 1];
      expect(maxAbsDiff(last, ref.last_logits)).toBeLessThanOrEqual(1e-3 * range(ref.last_logits));
      expect(argmax(last)).toBe(ref.last_logits_argmax);
    }
  });

  it('32-token greedy continuations equal greedy_ids for every prompt', () => {
    for (const ref of refs) {
      expect(referenceGreedy(cfg, weights, ref.prompt_ids, 32)).toEqual(ref.greedy_ids);
    }
  });
});

describe.skipIf(!hasShared)('aidreams260K vs llama2.c, tied embeddings (needs ../shared, skipped without it)', () => {
  it('40 greedy ids from BOS equal reference.json', async () => {
    const dir = path.join(shared, 'models/aidreams260K');
    const cfg = refConfigFromHf(readJson(path.join(dir, 'config.json')));
    expect(cfg.tieWordEmbeddings).toBe(true);
    const weights = await loadReferenceWeights(dir);
    expect(weights.has('lm_head.weight')).toBe(false);
    const ref = readJson(path.join(dir, 'reference.json')) as { prompt_ids: number[]; greedy_ids: number[] };
    expect(referenceGreedy(cfg, weights, ref.prompt_ids, ref.greedy_ids.length)).toEqual(ref.greedy_ids);
  });
});

// ---- synthetic checks ----------------------------------------------------------------------------

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'wina-reference-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

async function tinyModel(kind: 'qwen2' | 'llama3', seed: number): Promise<{ cfg: RefConfig; weights: Weights }> {
  const dir = path.join(tmpRoot, `${kind}-${seed}`);
  await writeRandomCheckpoint(dir, tinyConfig(kind), { dtype: 'F32', seed });
  return { cfg: refConfigFromHf(readJson(path.join(dir, 'config.json'))), weights: await loadReferenceWeights(dir) };
}

/** A fixed pseudo-random token sequence (xorshift32), so the tests need no tokenizer. */
function tokenSequence(n: number, vocab: number, seed: number): number[] {
  let s = seed;
  return Array.from({ length: n }, () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % vocab;
  });
}

describe('llama3 rope scaling', () => {
  it('keeps high frequencies, divides low ones by factor and interpolates in between', () => {
    const cfg = refConfigFromHf(tinyConfig('llama3'));
    const s = cfg.ropeScaling!;
    const scaled = ropeInvFreq(cfg);
    const plain = ropeInvFreq({ ...cfg, ropeScaling: null });
    const bands = { kept: 0, divided: 0, between: 0 };
    for (let i = 0; i < plain.length; i++) {
      expect(plain[i]).toBeCloseTo(Math.pow(cfg.ropeTheta, -i / (cfg.headDim / 2)), 15);
      const wavelen = (2 * Math.PI) / plain[i];
      if (wavelen < s.originalMaxPositions / s.highFreqFactor) {
        expect(scaled[i]).toBe(plain[i]);
        bands.kept++;
      } else if (wavelen > s.originalMaxPositions / s.lowFreqFactor) {
        expect(scaled[i]).toBeCloseTo(plain[i] / s.factor, 15);
        bands.divided++;
      } else {
        expect(scaled[i]).toBeGreaterThan(plain[i] / s.factor);
        expect(scaled[i]).toBeLessThan(plain[i]);
        bands.between++;
      }
    }
    // tinyConfig('llama3') is meant to exercise all three bands.
    expect(bands.kept).toBeGreaterThan(0);
    expect(bands.divided).toBeGreaterThan(0);
    expect(bands.between).toBeGreaterThan(0);
  });

  it('changes the logits of a random tiny llama3 model', async () => {
    const { cfg, weights } = await tinyModel('llama3', 11);
    const tokens = tokenSequence(24, cfg.vocabSize, 5);
    const scaled = referenceForward(cfg, weights, tokens);
    const plain = referenceForward({ ...cfg, ropeScaling: null }, weights, tokens);
    // Position 0 has no rotation at all, so the two agree there exactly.
    expect(maxAbsDiff(scaled[0], plain[0])).toBe(0);
    const last = tokens.length - 1;
    expect(maxAbsDiff(scaled[last], plain[last])).toBeGreaterThan(1e-3 * range(plain[last]));
  });
});

describe('qwen2 features', () => {
  it('uses q/k/v biases (zeroing them changes the logits) and the tied embedding as lm_head', async () => {
    const { cfg, weights } = await tinyModel('qwen2', 3);
    expect(cfg.tieWordEmbeddings).toBe(true);
    expect(weights.has('lm_head.weight')).toBe(false);
    const tokens = tokenSequence(12, cfg.vocabSize, 9);
    const withBias = referenceForward(cfg, weights, tokens);
    for (const bias of ['q_proj', 'k_proj', 'v_proj']) {
      const zeroed = new Map(weights);
      for (let l = 0; l < cfg.numLayers; l++) {
        const name = `model.layers.${l}.self_attn.${bias}.bias`;
        zeroed.set(name, new Float64Array(weights.get(name)!.length));
      }
      const without = referenceForward(cfg, zeroed, tokens);
      const last = tokens.length - 1;
      expect(maxAbsDiff(withBias[last], without[last]), bias).toBeGreaterThan(1e-3 * range(withBias[last]));
    }
  });

  it('grouped-query attention equals multi-head attention with each kv head repeated per group', async () => {
    const { cfg, weights } = await tinyModel('qwen2', 4);
    const group = cfg.numHeads / cfg.numKvHeads;
    expect(group).toBeGreaterThan(1);
    const D = cfg.headDim;
    const H = cfg.hiddenSize;
    // HF repeat_kv: q head h reads kv head floor(h / group); repeat each kv head's rows `group` times.
    const mha: Weights = new Map(weights);
    for (let l = 0; l < cfg.numLayers; l++) {
      for (const proj of ['k_proj', 'v_proj']) {
        const w = weights.get(`model.layers.${l}.self_attn.${proj}.weight`)!;
        const b = weights.get(`model.layers.${l}.self_attn.${proj}.bias`)!;
        const w2 = new Float64Array(cfg.numHeads * D * H);
        const b2 = new Float64Array(cfg.numHeads * D);
        for (let h = 0; h < cfg.numHeads; h++) {
          const kv = Math.floor(h / group);
          w2.set(w.subarray(kv * D * H, (kv + 1) * D * H), h * D * H);
          b2.set(b.subarray(kv * D, (kv + 1) * D), h * D);
        }
        mha.set(`model.layers.${l}.self_attn.${proj}.weight`, w2);
        mha.set(`model.layers.${l}.self_attn.${proj}.bias`, b2);
      }
    }
    const tokens = tokenSequence(10, cfg.vocabSize, 2);
    const gqa = referenceForward(cfg, weights, tokens);
    const full = referenceForward({ ...cfg, numKvHeads: cfg.numHeads }, mha, tokens);
    for (let p = 0; p < tokens.length; p++) expect(maxAbsDiff(gqa[p], full[p])).toBeLessThan(1e-9);
  });
});

describe('mistral sliding window', () => {
  it('a query at position p sees exactly the keys p-W+1..p (one layer, where RoPE is relative)', async () => {
    const { cfg: full, weights } = await tinyModel('llama3', 31);
    // With one layer the keys depend on their own token only, and RoPE scores depend only on
    // position differences, so a window equals full attention over the last W tokens alone.
    const oneLayer: RefConfig = { ...full, numLayers: 1, ropeScaling: null };
    const W = 3;
    const tokens = tokenSequence(9, oneLayer.vocabSize, 17);
    const windowed = referenceForward({ ...oneLayer, slidingWindow: W }, weights, tokens);
    for (let p = 0; p < tokens.length; p++) {
      const recent = referenceForward(oneLayer, weights, tokens.slice(Math.max(0, p - W + 1), p + 1));
      expect(maxAbsDiff(windowed[p], recent[recent.length - 1])).toBeLessThan(1e-9);
    }
    const unwindowed = referenceForward(oneLayer, weights, tokens);
    expect(maxAbsDiff(windowed[W - 1], unwindowed[W - 1])).toBe(0);
    expect(maxAbsDiff(windowed[W], unwindowed[W])).toBeGreaterThan(1e-3);
  });

  it('is read from mistral configs only', () => {
    expect(refConfigFromHf(shapeConfig('mistral-7b')).slidingWindow).toBe(4096);
    expect(refConfigFromHf(shapeConfig('qwen2.5-0.5b')).slidingWindow).toBeNull();
  });
});

// ---- residual rotations --------------------------------------------------------------------------

function randomOrthogonal(n: number, seed: number): Matrix {
  const z = tokenSequence(n * n, 1 << 30, seed).map((v) => v / (1 << 29) - 1);
  return new QrDecomposition(new Matrix([...Array(n)].map((_, i) => z.slice(i * n, (i + 1) * n)))).orthogonalMatrix;
}

const toMatrix = (w: ArrayLike<number>, rows: number, cols: number): Matrix =>
  new Matrix([...Array(rows)].map((_, r) => Array.from({ length: cols }, (_, c) => w[r * cols + c])));
const fromMatrix = (m: Matrix): Float64Array => Float64Array.from(m.to1DArray());

/** W diag(norm): folds an RMSNorm weight into the linear layer that reads the norm's output. */
function foldNorm(w: ArrayLike<number>, rows: number, norm: ArrayLike<number>): Matrix {
  const cols = norm.length;
  return new Matrix([...Array(rows)].map((_, r) => Array.from({ length: cols }, (_, c) => w[r * cols + c] * norm[c])));
}

describe('residual rotations (attn_shortcut / mlp_shortcut)', () => {
  it('a model rewritten in rotated residual bases, with shortcuts between them, gives the same logits', async () => {
    const { cfg, weights } = await tinyModel('llama3', 21);
    const H = cfg.hiddenSize;
    const qDim = cfg.numHeads * cfg.headDim;
    const kvDim = cfg.numKvHeads * cfg.headDim;
    const I = cfg.intermediateSize;
    const ones = new Float64Array(H).fill(1);
    let seed = 100;
    // The residual before layer l lives in basis B (real r = B r'); after attention in A, after the MLP in M.
    let B = randomOrthogonal(H, seed++);
    const rotated: Weights = new Map();
    const embed = toMatrix(weights.get('model.embed_tokens.weight')!, cfg.vocabSize, H);
    rotated.set('model.embed_tokens.weight', fromMatrix(embed.mmul(B))); // rows e' = B^T e
    for (let l = 0; l < cfg.numLayers; l++) {
      const p = `model.layers.${l}`;
      const w = (name: string) => weights.get(`${p}.${name}`)!;
      const A = randomOrthogonal(H, seed++);
      const M = randomOrthogonal(H, seed++);
      const inNorm = w('input_layernorm.weight');
      const postNorm = w('post_attention_layernorm.weight');
      // RMSNorm commutes with an orthogonal change of basis only without its weight, so fold it first.
      rotated.set(`${p}.input_layernorm.weight`, ones);
      rotated.set(`${p}.self_attn.q_proj.weight`, fromMatrix(foldNorm(w('self_attn.q_proj.weight'), qDim, inNorm).mmul(B)));
      rotated.set(`${p}.self_attn.k_proj.weight`, fromMatrix(foldNorm(w('self_attn.k_proj.weight'), kvDim, inNorm).mmul(B)));
      rotated.set(`${p}.self_attn.v_proj.weight`, fromMatrix(foldNorm(w('self_attn.v_proj.weight'), kvDim, inNorm).mmul(B)));
      rotated.set(`${p}.self_attn.o_proj.weight`, fromMatrix(A.transpose().mmul(toMatrix(w('self_attn.o_proj.weight'), H, qDim))));
      rotated.set(`${p}.attn_shortcut.weight`, fromMatrix(A.transpose().mmul(B)));
      rotated.set(`${p}.post_attention_layernorm.weight`, ones);
      rotated.set(`${p}.mlp.gate_proj.weight`, fromMatrix(foldNorm(w('mlp.gate_proj.weight'), I, postNorm).mmul(A)));
      rotated.set(`${p}.mlp.up_proj.weight`, fromMatrix(foldNorm(w('mlp.up_proj.weight'), I, postNorm).mmul(A)));
      rotated.set(`${p}.mlp.down_proj.weight`, fromMatrix(M.transpose().mmul(toMatrix(w('mlp.down_proj.weight'), H, I))));
      rotated.set(`${p}.mlp_shortcut.weight`, fromMatrix(M.transpose().mmul(A)));
      B = M;
    }
    rotated.set('model.norm.weight', ones);
    const lmHead = foldNorm(weights.get('lm_head.weight')!, cfg.vocabSize, weights.get('model.norm.weight')!);
    rotated.set('lm_head.weight', fromMatrix(lmHead.mmul(B)));

    const tokens = tokenSequence(8, cfg.vocabSize, 13);
    const plain = referenceForward(cfg, weights, tokens);
    const viaRotations = referenceForward(cfg, rotated, tokens);
    for (let p = 0; p < tokens.length; p++) expect(maxAbsDiff(plain[p], viaRotations[p])).toBeLessThan(1e-9);

    // And the shortcuts are really used: dropping them breaks the equivalence.
    const noShortcuts = new Map([...rotated].filter(([name]) => !name.includes('_shortcut.')));
    const broken = referenceForward(cfg, noShortcuts, tokens);
    expect(maxAbsDiff(plain[tokens.length - 1], broken[tokens.length - 1])).toBeGreaterThan(1e-3);
  });
});

describe('referenceSession', () => {
  it('step by step gives the same logits as referenceForward, and rejects out-of-range tokens', async () => {
    const { cfg, weights } = await tinyModel('qwen2', 8);
    const tokens = tokenSequence(6, cfg.vocabSize, 3);
    const all = referenceForward(cfg, weights, tokens);
    const session = referenceSession(cfg, weights);
    tokens.forEach((t, p) => expect(maxAbsDiff(session.step(t), all[p])).toBe(0));
    expect(() => session.step(cfg.vocabSize)).toThrow(/out of range/);
  });
});

// ---- random checkpoints --------------------------------------------------------------------------

/** float32 -> bfloat16 -> float32, round to nearest even (independent of the writer's table). */
function bf16Round(values: Float32Array): Float32Array {
  const out = Float32Array.from(values);
  const u = new Uint32Array(out.buffer);
  for (let i = 0; i < u.length; i++) u[i] = ((u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16) << 16;
  return out;
}

function meanStd(v: Float32Array): { mean: number; std: number } {
  let s = 0;
  let ss = 0;
  for (const x of v) {
    s += x;
    ss += x * x;
  }
  const mean = s / v.length;
  return { mean, std: Math.sqrt(ss / v.length - mean * mean) };
}

describe('writeRandomCheckpoint round trip through openCheckpoint', () => {
  async function written(kind: 'qwen2' | 'llama3', dtype: SyntheticDType, seed: number, std?: number) {
    const dir = path.join(tmpRoot, `rt-${kind}-${dtype}-${seed}-${std ?? 'default'}`);
    const { bytes } = await writeRandomCheckpoint(dir, tinyConfig(kind), { dtype, seed, std });
    expect(bytes).toBe(fs.statSync(path.join(dir, 'model.safetensors')).size);
    return openCheckpoint(dir);
  }

  it('tiny qwen2: arch, biases, tied embeddings without lm_head, GQA shapes', async () => {
    const ckpt = await written('qwen2', 'BF16', 1);
    const c = ckpt.config;
    expect(c).toMatchObject({
      arch: 'qwen2', hiddenSize: 96, numLayers: 2, numHeads: 6, numKvHeads: 2, headDim: 16,
      vocabSize: 300, ropeTheta: 1e6, ropeScaling: null, tieWordEmbeddings: true, attentionBias: true,
    });
    // 2 layers x (4 attention + 3 biases + 3 MLP + 2 norms) + embed + final norm; no lm_head.
    expect(ckpt.tensors.size).toBe(2 * 12 + 2);
    expect(ckpt.tensors.has('lm_head.weight')).toBe(false);
    expect(ckpt.tensors.get('model.layers.1.self_attn.q_proj.weight')?.shape).toEqual([96, 96]);
    expect(ckpt.tensors.get('model.layers.1.self_attn.k_proj.weight')?.shape).toEqual([32, 96]);
    expect(ckpt.tensors.get('model.layers.1.self_attn.v_proj.bias')?.shape).toEqual([32]);
    expect(ckpt.tensors.get('model.layers.0.mlp.down_proj.weight')?.shape).toEqual([96, 160]);
    expect(ckpt.tensors.get('model.embed_tokens.weight')?.shape).toEqual([300, 96]);
    for (const t of ckpt.tensors.values()) expect(t.dtype).toBe('BF16');
  });

  it('tiny llama3: llama3 rope scaling, explicit head_dim, untied lm_head, no biases', async () => {
    const ckpt = await written('llama3', 'F32', 1);
    expect(ckpt.config).toMatchObject({
      arch: 'llama', hiddenSize: 128, numHeads: 4, numKvHeads: 2, headDim: 32, tieWordEmbeddings: false,
      attentionBias: false, ropeTheta: 500000,
      ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 128 },
    });
    expect(ckpt.tensors.size).toBe(2 * 9 + 3);
    expect(ckpt.tensors.get('lm_head.weight')?.shape).toEqual([300, 128]);
    expect([...ckpt.tensors.keys()].some((n) => n.endsWith('.bias'))).toBe(false);
    expect(ckpt.tensors.get('model.layers.0.self_attn.o_proj.weight')?.shape).toEqual([128, 128]);
    expect(ckpt.tensors.get('model.layers.0.self_attn.k_proj.weight')?.shape).toEqual([64, 128]);
  });

  it('values: seeded, BF16/F16 are the roundings of the F32 values, trained-model-like scale', async () => {
    const f32 = await written('qwen2', 'F32', 5);
    const bf16 = await written('qwen2', 'BF16', 5);
    const f16 = await written('qwen2', 'F16', 5);
    const again = await written('qwen2', 'F32', 5);
    const other = await written('qwen2', 'F32', 6);
    const read = (ckpt: typeof f32, name: string) => readTensorAsF32(ckpt.tensors.get(name)!);

    for (const name of f32.tensors.keys()) {
      const ref = read(f32, name);
      // (maxAbsDiff, not toEqual: deep equality over typed arrays is slow)
      expect(maxAbsDiff(read(again, name), ref), name).toBe(0);
      expect(maxAbsDiff(read(bf16, name), bf16Round(ref)), name).toBe(0);
      // F16 rounds to nearest: within half an ulp, 2^-11 relative for normals, 2^-25 absolute below 2^-14.
      const half = read(f16, name);
      let worst = 0;
      for (let i = 0; i < ref.length; i++) {
        worst = Math.max(worst, Math.abs(half[i] - ref[i]) / Math.max(Math.abs(ref[i]) * 2 ** -11, 2 ** -25));
      }
      expect(worst, name).toBeLessThanOrEqual(1);
      expect(maxAbsDiff(read(other, name), ref), name).toBeGreaterThan(0);
    }

    const q = meanStd(read(f32, 'model.layers.0.self_attn.q_proj.weight'));
    expect(Math.abs(q.mean)).toBeLessThan(0.01);
    expect(q.std).toBeCloseTo(1 / Math.sqrt(96), 2); // the default std
    const norm = meanStd(read(f32, 'model.layers.1.input_layernorm.weight'));
    expect(Math.abs(norm.mean - 1)).toBeLessThan(0.05);
    const custom = await written('qwen2', 'F32', 5, 0.02);
    expect(meanStd(read(custom, 'model.embed_tokens.weight')).std).toBeCloseTo(0.02, 3);
  });

  it('shapeConfig gives copies of the public configs, which the config parser accepts', () => {
    const c = shapeConfig('qwen2.5-0.5b');
    expect(c).toMatchObject({ hidden_size: 896, num_attention_heads: 14, num_key_value_heads: 2, tie_word_embeddings: true });
    c.hidden_size = 1; // a copy: the next call is unaffected
    expect(shapeConfig('qwen2.5-0.5b').hidden_size).toBe(896);
    expect(shapeConfig('llama-3.2-1b')).toMatchObject({ head_dim: 64, rope_scaling: { rope_type: 'llama3', factor: 32 } });
    expect(shapeConfig('mistral-7b')).toMatchObject({ sliding_window: 4096, num_key_value_heads: 8 });
    expect(() => shapeConfig('gpt-2' as never)).toThrow(/unknown shape/);
    const names = ['llama-3.2-1b', 'qwen2.5-0.5b', 'llama-2-7b', 'llama-3-8b', 'mistral-7b'] as const;
    const parsed = names.map((n) => parseModelConfig(shapeConfig(n), `${n}/config.json`));
    expect(parsed.map((c) => c.arch)).toEqual(['llama', 'qwen2', 'llama', 'llama', 'mistral']);
    expect(parsed.map((c) => c.headDim)).toEqual([64, 64, 128, 128, 128]);
    expect(parsed[0].ropeScaling?.originalMaxPositions).toBe(8192);
  });
});
