// Proves the float64 reference forward (test/helpers/reference.ts) against PyTorch and llama2.c golden
// outputs, checks the features no trained fixture has (llama3 rope scaling, qwen2 biases, GQA, residual
// rotations) by exact equivalences, and round-trips the random checkpoints of lib/synthetic.ts.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Matrix, QrDecomposition } from 'ml-matrix';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tinyConfig, writeRandomCheckpoint } from '../lib/synthetic.js';
import {
  argmax,
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

// TEMPORARY stand-in until lib/loaders lands openCheckpoint/readTensorAsF32.
async function loadReferenceWeights(dir: string): Promise<Weights> {
  const buf = fs.readFileSync(path.join(dir, 'model.safetensors'));
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out: Weights = new Map();
  for (const [name, e] of Object.entries(header) as [string, any][]) {
    if (name === '__metadata__') continue;
    const raw = buf.subarray(8 + n + e.data_offsets[0], 8 + n + e.data_offsets[1]);
    const count = raw.length / (e.dtype === 'F32' ? 4 : 2);
    const f = new Float32Array(count);
    if (e.dtype === 'F32') for (let i = 0; i < count; i++) f[i] = raw.readFloatLE(4 * i);
    else { const u = new Uint32Array(f.buffer); for (let i = 0; i < count; i++) u[i] = raw.readUInt16LE(2 * i) << 16; }
    out.set(name, f);
  }
  return out;
}

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

describe.skipIf(!hasShared)('tiny-en-llama vs PyTorch (skipped: needs ../shared)', () => {
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

describe.skipIf(!hasShared)('aidreams260K vs llama2.c (tied embeddings; skipped: needs ../shared)', () => {
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
