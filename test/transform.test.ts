// The column-orthogonalising transform: (a) k_proj and gate_proj come out column-orthogonal with column
// norms equal to their singular values, (b) the transformed model computes the same logits as the original
// (checked with the independent float64 reference forward, which applies the shortcut rotations), and
// (c) a GQA k_proj ([kv_dim, hidden]) has hidden − kv_dim ~zero columns afterwards.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Matrix, SVD } from 'ml-matrix';
import { decodeToF32, openCheckpoint } from '../lib/loaders/index.js';
import type { ModelConfig } from '../lib/loaders/types.js';
import { columnNorms } from '../lib/sparsity/masks.js';
import { encodeValues, transformCheckpoint, transformWeights, type TransformProgress } from '../lib/sparsity/transform.js';
import { writeRandomCheckpoint, tinyConfig as syntheticTinyConfig } from '../lib/synthetic.js';
import { argmax, loadReferenceWeights, referenceForward } from './helpers/reference.js';
import { mulberry32 } from './helpers/rng.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const shared = path.resolve(repoRoot, '../shared');
const tinyModel = path.join(shared, 'models/tiny-en-llama');
const haveShared = fs.existsSync(path.join(tinyModel, 'f32/model.safetensors'));

// ---- a random tiny model held in memory --------------------------------------------------------

/** Seeded uniform generator (mulberry32), so every run sees the same networks. */
const rng = mulberry32;

function tinyConfig(over: Partial<ModelConfig> = {}): ModelConfig {
  return {
    arch: 'qwen2',
    hiddenSize: 32,
    intermediateSize: 48,
    numLayers: 3,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 8,
    vocabSize: 40,
    maxPositions: 64,
    rmsNormEps: 1e-6,
    ropeTheta: 10000,
    ropeScaling: null,
    tieWordEmbeddings: true,
    attentionBias: true,
    slidingWindow: null,
    residualRotations: false,
    bosTokenId: null,
    eosTokenIds: [],
    ...over,
  };
}

/**
 * Random weights with the config's shapes. Norm gains are far from 1 (0.3..1.7) so that folding them is
 * tested, and the embedding rows get a common offset so that wrongly subtracting the embedding mean (as
 * the reference code does) would change the logits.
 */
function randomWeights(cfg: ModelConfig, seed: number): Map<string, Float64Array> {
  const rand = rng(seed);
  const h = cfg.hiddenSize;
  const qDim = cfg.numHeads * cfg.headDim;
  const kvDim = cfg.numKvHeads * cfg.headDim;
  const ff = cfg.intermediateSize;
  const w = new Map<string, Float64Array>();
  const uniform = (n: number, scale: number, offset = 0) => Float64Array.from({ length: n }, () => offset + scale * (2 * rand() - 1));
  const std = 1 / Math.sqrt(h);
  const embed = uniform(cfg.vocabSize * h, 1);
  const offset = uniform(h, 0.5);
  for (let t = 0; t < cfg.vocabSize; t++) for (let i = 0; i < h; i++) embed[t * h + i] += offset[i];
  w.set('model.embed_tokens.weight', embed);
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    w.set(`${p}.input_layernorm.weight`, uniform(h, 0.7, 1));
    w.set(`${p}.self_attn.q_proj.weight`, uniform(qDim * h, 2 * std));
    w.set(`${p}.self_attn.k_proj.weight`, uniform(kvDim * h, 2 * std));
    w.set(`${p}.self_attn.v_proj.weight`, uniform(kvDim * h, 2 * std));
    if (cfg.attentionBias) {
      w.set(`${p}.self_attn.q_proj.bias`, uniform(qDim, 0.2));
      w.set(`${p}.self_attn.k_proj.bias`, uniform(kvDim, 0.2));
      w.set(`${p}.self_attn.v_proj.bias`, uniform(kvDim, 0.2));
    }
    w.set(`${p}.self_attn.o_proj.weight`, uniform(h * qDim, 2 * std));
    w.set(`${p}.post_attention_layernorm.weight`, uniform(h, 0.7, 1));
    w.set(`${p}.mlp.gate_proj.weight`, uniform(ff * h, 2 * std));
    w.set(`${p}.mlp.up_proj.weight`, uniform(ff * h, 2 * std));
    w.set(`${p}.mlp.down_proj.weight`, uniform(h * ff, 2 / Math.sqrt(ff)));
  }
  w.set('model.norm.weight', uniform(h, 0.7, 1));
  if (!cfg.tieWordEmbeddings) w.set('lm_head.weight', uniform(cfg.vocabSize * h, std));
  return w;
}

// ---- measurements ------------------------------------------------------------------------------

/** Largest |G_ij| (i ≠ j) of G = WᵀW, relative to the largest diagonal entry, for W [out, in]. */
function offDiagonalRatio(W: ArrayLike<number>, out: number, inDim: number): number {
  const gram = new Float64Array(inDim * inDim);
  for (let r = 0; r < out; r++) {
    for (let i = 0; i < inDim; i++) {
      const wi = W[r * inDim + i];
      for (let j = 0; j < inDim; j++) gram[i * inDim + j] += wi * W[r * inDim + j];
    }
  }
  let off = 0;
  let diag = 0;
  for (let i = 0; i < inDim; i++) {
    diag = Math.max(diag, gram[i * inDim + i]);
    for (let j = 0; j < inDim; j++) if (i !== j) off = Math.max(off, Math.abs(gram[i * inDim + j]));
  }
  return off / diag;
}

/** Singular values of W [out, in] by ml-matrix's SVD (independent of the transform's eigensolver), padded
 * with zeros to length `in` and sorted descending. */
function singularValues(W: ArrayLike<number>, out: number, inDim: number): number[] {
  const sv = new SVD(Matrix.from1DArray(out, inDim, Array.from(W)), { autoTranspose: true }).diagonal;
  return [...sv, ...new Array(Math.max(0, inDim - sv.length)).fill(0)].sort((a, b) => b - a);
}

function foldColumns(W: Float64Array, inDim: number, gain: Float64Array): Float64Array {
  return W.map((v, idx) => v * gain[idx % inDim]);
}

/** max |a − b| over all positions and vocab entries, relative to max |a|. */
function maxRelDiff(a: Float64Array[], b: Float64Array[]): number {
  let diff = 0;
  let scale = 0;
  a.forEach((row, t) => row.forEach((v, i) => {
    diff = Math.max(diff, Math.abs(v - b[t][i]));
    scale = Math.max(scale, Math.abs(v));
  }));
  return diff / scale;
}

const TOKENS = [3, 17, 5, 39, 0, 22, 22, 8, 11, 30];

// ---- the tests ---------------------------------------------------------------------------------

describe('transformWeights on a random tiny GQA model held in memory', () => {
  for (const [label, over] of [
    ['tied embeddings, q/k/v biases', {}],
    ['untied lm_head, no biases', { tieWordEmbeddings: false, attentionBias: false, arch: 'llama' }],
  ] as const) {
    describe(label, () => {
      const cfg = tinyConfig(over as Partial<ModelConfig>);
      const h = cfg.hiddenSize;
      const kvDim = cfg.numKvHeads * cfg.headDim;
      const ff = cfg.intermediateSize;
      const orig = randomWeights(cfg, 7);
      const snapshot = new Map([...orig].map(([k, v]) => [k, Float64Array.from(v)]));
      const progress: string[] = [];
      const out = transformWeights(cfg, orig, (p) => progress.push(`${p.done}/${p.total} ${p.what}`));
      const get = (name: string): Float64Array => {
        const w = out.get(name);
        if (!w) throw new Error(`transformed model lacks ${name}`);
        return w;
      };

      it('leaves its input untouched and reports every step', () => {
        for (const [k, v] of snapshot) expect(orig.get(k)).toEqual(v);
        expect(progress).toEqual(['1/5 embeddings', '2/5 layer 0', '3/5 layer 1', '4/5 layer 2', '5/5 lm_head']);
      });

      it('writes an untied lm_head, both shortcuts per layer, and unit norm gains', () => {
        expect(get('lm_head.weight').length).toBe(cfg.vocabSize * h);
        for (let l = 0; l < cfg.numLayers; l++) {
          expect(get(`model.layers.${l}.attn_shortcut.weight`).length).toBe(h * h);
          expect(get(`model.layers.${l}.mlp_shortcut.weight`).length).toBe(h * h);
          expect([...get(`model.layers.${l}.input_layernorm.weight`)].every((g) => g === 1)).toBe(true);
          expect([...get(`model.layers.${l}.post_attention_layernorm.weight`)].every((g) => g === 1)).toBe(true);
        }
        expect([...get('model.norm.weight')].every((g) => g === 1)).toBe(true);
      });

      it('(a) k_proj and gate_proj get orthogonal columns whose norms are the singular values', () => {
        for (let l = 0; l < cfg.numLayers; l++) {
          const p = `model.layers.${l}`;
          for (const [proj, rows, norm] of [
            ['self_attn.k_proj', kvDim, 'input_layernorm'],
            ['mlp.gate_proj', ff, 'post_attention_layernorm'],
          ] as const) {
            const before = foldColumns(orig.get(`${p}.${proj}.weight`)!, h, orig.get(`${p}.${norm}.weight`)!);
            const after = get(`${p}.${proj}.weight`);
            // The original is far from column-orthogonal, so the check below can fail.
            expect(offDiagonalRatio(before, rows, h)).toBeGreaterThan(0.05);
            expect(offDiagonalRatio(after, rows, h)).toBeLessThan(1e-13);
            const norms = [...columnNorms(after, rows, h)];
            const sv = singularValues(before, rows, h);
            norms.forEach((n, j) => expect(Math.abs(n - sv[j])).toBeLessThan(1e-12 * sv[0]));
          }
        }
      });

      it('(b) dense logits match the original (rel. to max |logit|: f64 < 1e-12, measured ~1e-14; f32-rounded < 2e-6, measured ~1.4e-7)', () => {
        const before = referenceForward(cfg, orig, TOKENS);
        const refCfg = { ...cfg, tieWordEmbeddings: false };
        const f64 = maxRelDiff(before, referenceForward(refCfg, out, TOKENS));
        expect(f64).toBeLessThan(1e-12);
        const rounded = new Map([...out].map(([k, v]) => [k, Float32Array.from(v)]));
        const f32 = maxRelDiff(before, referenceForward(refCfg, rounded, TOKENS));
        expect(f32).toBeLessThan(2e-6);
        // The transform is not the identity: the residual stream really is rotated.
        expect(maxRelDiff([orig.get('model.embed_tokens.weight')!], [get('model.embed_tokens.weight')])).toBeGreaterThan(0.1);
      });

      it('(c) GQA: the transformed k_proj has hidden − kv_dim ~zero columns', () => {
        for (let l = 0; l < cfg.numLayers; l++) {
          const norms = [...columnNorms(get(`model.layers.${l}.self_attn.k_proj.weight`), kvDim, h)];
          const max = Math.max(...norms);
          // Columns come ordered by singular value: the first kv_dim carry everything.
          expect(norms.slice(0, kvDim).every((n) => n > 1e-3 * max)).toBe(true);
          expect(norms.slice(kvDim).every((n) => n < 1e-7 * max)).toBe(true);
        }
      });

      it('the last mlp_shortcut is the identity, the others are proper rotations', () => {
        for (let l = 0; l < cfg.numLayers; l++) {
          for (const which of ['attn_shortcut', 'mlp_shortcut']) {
            const S = Matrix.from1DArray(h, h, Array.from(get(`model.layers.${l}.${which}.weight`)));
            const dev = S.mmul(S.transpose()).sub(Matrix.eye(h)).abs().max();
            expect(Math.abs(dev)).toBeLessThan(1e-12);
            const fromIdentity = Matrix.sub(S, Matrix.eye(h)).abs().max();
            if (which === 'mlp_shortcut' && l === cfg.numLayers - 1) expect(fromIdentity).toBeLessThan(1e-12);
            else expect(fromIdentity).toBeGreaterThan(0.1);
          }
        }
      });
    });
  }
});

// ---- checkpoints on disk -----------------------------------------------------------------------

type Weights = Map<string, Float32Array>;

/** (a) and (c) on a loaded model: returns the worst orthogonality ratio and the ~zero k_proj columns. */
function checkOrthogonality(cfg: ModelConfig, w: Weights, tol: number): { worst: number; zeroColumns: number[] } {
  const h = cfg.hiddenSize;
  const kvDim = cfg.numKvHeads * cfg.headDim;
  let worst = 0;
  const zeroColumns: number[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const k = w.get(`model.layers.${l}.self_attn.k_proj.weight`)!;
    const gate = w.get(`model.layers.${l}.mlp.gate_proj.weight`)!;
    worst = Math.max(worst, offDiagonalRatio(k, kvDim, h), offDiagonalRatio(gate, cfg.intermediateSize, h));
    const norms = [...columnNorms(k, kvDim, h)];
    const max = Math.max(...norms);
    zeroColumns.push(norms.filter((n) => n < tol * max).length);
  }
  return { worst, zeroColumns };
}

const PROMPT = [1, 349, 1432, 599, 4030, 496, 4034, 4042, 4024, 357, 261, 745];

describe('encodeValues: float64 → stored 16-bit values round to nearest even', () => {
  for (const dtype of ['BF16', 'F16'] as const) {
    it(`${dtype}: every encoded value is the nearest representable one`, () => {
      const rand = rng(3);
      const values = Float64Array.from({ length: 4000 }, (_, i) => (2 * rand() - 1) * 2 ** ((i % 40) - 26));
      const decode = (bits: Uint16Array) => decodeToF32(dtype, new Uint8Array(bits.buffer), bits.length);
      const enc = new Uint16Array(encodeValues(values, dtype).buffer);
      const got = decode(enc);
      // The neighbours one unit in the last place either side must be no closer.
      const up = decode(enc.map((b) => b + 1));
      const down = decode(enc.map((b) => (b & 0x7fff) === 0 ? b : b - 1));
      values.forEach((v, i) => {
        const f = Math.fround(v);
        const e = Math.abs(got[i] - f);
        expect(e).toBeLessThanOrEqual(Math.abs(up[i] - f));
        expect(e).toBeLessThanOrEqual(Math.abs(down[i] - f));
      });
    });
  }
});

describe('transformCheckpoint on a random tiny Qwen2 checkpoint (tied embeddings, q/k/v biases)', () => {
  let tmp = '';
  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wina-transform-'));
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('writes a loadable untied checkpoint with the same logits (F32 output: < 2e-6 relative)', async () => {
    const src = path.join(tmp, 'qwen2');
    await writeRandomCheckpoint(src, syntheticTinyConfig('qwen2'), { dtype: 'F32', seed: 11 });
    const progress: TransformProgress[] = [];
    const res = await transformCheckpoint(src, path.join(tmp, 'qwen2-t'), { onProgress: (p) => progress.push(p) });
    expect(res.dtype).toBe('F32');
    expect(progress.at(-1)).toEqual({ done: 4, total: 4, what: 'lm_head' });

    const before = await openCheckpoint(src);
    const after = await openCheckpoint(res.outDir);
    expect(after.config.residualRotations).toBe(true);
    expect(after.config.tieWordEmbeddings).toBe(false);
    expect(after.tensors.has('lm_head.weight')).toBe(true);
    const tokens = [1, 5, 77, 299, 2, 140, 9];
    const a = referenceForward(before.config, await loadReferenceWeights(src), tokens);
    const b = referenceForward(after.config, await loadReferenceWeights(res.outDir), tokens);
    expect(maxRelDiff(a, b)).toBeLessThan(2e-6);
    const { worst, zeroColumns } = checkOrthogonality(after.config, await loadReferenceWeights(res.outDir), 1e-5);
    expect(worst).toBeLessThan(1e-5);
    // hidden 96, kv_dim 2·16 = 32: 64 of the 96 k_proj columns vanish.
    expect(zeroColumns).toEqual([64, 64]);
  });

  it('keeps the source dtype (BF16 in, BF16 out) unless { dtype: "F32" } is asked for', async () => {
    const src = path.join(tmp, 'qwen2-bf16');
    await writeRandomCheckpoint(src, syntheticTinyConfig('qwen2'), { dtype: 'BF16', seed: 12 });
    const tokens = [1, 5, 77, 299, 2, 140, 9];
    const before = await openCheckpoint(src);
    const a = referenceForward(before.config, await loadReferenceWeights(src), tokens);
    // Measured: 7.6e-3 (BF16 output) and 1.2e-7 (F32 output) relative to max |logit|.
    for (const [dtype, tol] of [[undefined, 2e-2], ['F32', 2e-6]] as const) {
      const res = await transformCheckpoint(src, path.join(tmp, `qwen2-bf16-${dtype ?? 'default'}`), { dtype });
      const after = await openCheckpoint(res.outDir);
      expect(res.dtype).toBe(dtype ?? 'BF16');
      expect([...after.tensors.values()].every((t) => t.dtype === res.dtype)).toBe(true);
      const b = referenceForward(after.config, await loadReferenceWeights(res.outDir), tokens);
      expect(maxRelDiff(a, b)).toBeLessThan(tol);
    }
  });

  it('refuses a checkpoint that is already transformed, and writing over the source', async () => {
    await expect(transformCheckpoint(path.join(tmp, 'qwen2-t'), path.join(tmp, 'again'))).rejects.toThrow(/already transformed/);
    await expect(transformCheckpoint(path.join(tmp, 'qwen2'), path.join(tmp, 'qwen2'))).rejects.toThrow(/must differ/);
  });
});

describe.skipIf(!haveShared)('transformCheckpoint on tiny-en-llama (skipped: ../shared/models/tiny-en-llama absent)', () => {
  let tmp = '';
  let cfg: ModelConfig;
  let original: Weights;
  let originalLogits: Float64Array[];
  let outDir = '';
  let transformed: Weights;
  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wina-transform-'));
    cfg = (await openCheckpoint(path.join(tinyModel, 'f32'))).config;
    original = await loadReferenceWeights(path.join(tinyModel, 'f32'));
    originalLogits = referenceForward(cfg, original, PROMPT);
    // One transform (~3 s on an idle core) shared by the tests below.
    outDir = (await transformCheckpoint(path.join(tinyModel, 'f32'), path.join(tmp, 'f32'))).outDir;
    transformed = await loadReferenceWeights(outDir);
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('f32 → f32: (b) logits within 2e-6 of the original, relative to max |logit| (measured ~2e-7)', async () => {
    const ckpt = await openCheckpoint(outDir);
    expect(ckpt.config.residualRotations).toBe(true);
    expect(ckpt.config.tieWordEmbeddings).toBe(false);
    expect(ckpt.tensors.get('model.embed_tokens.weight')!.dtype).toBe('F32');
    const logits = referenceForward(ckpt.config, transformed, PROMPT);
    expect(maxRelDiff(originalLogits, logits)).toBeLessThan(2e-6);
  });

  it('(a) k/gate columns orthogonal, norms = singular values; (c) 128 of 256 k_proj columns ~zero', () => {
    const { worst, zeroColumns } = checkOrthogonality(cfg, transformed, 1e-5);
    expect(worst).toBeLessThan(1e-5);
    expect(zeroColumns).toEqual([128, 128, 128, 128]); // hidden 256 − kv_dim 4·32
    // ml-matrix's SVD of a 768×256 gate_proj takes seconds, so the independent check of the norms runs on
    // every k_proj and on the last layer's gate_proj.
    for (let l = 0; l < cfg.numLayers; l++) {
      const p = `model.layers.${l}`;
      for (const [proj, rows, norm] of [
        ['self_attn.k_proj', 128, 'input_layernorm'],
        ...(l === cfg.numLayers - 1 ? [['mlp.gate_proj', 768, 'post_attention_layernorm'] as const] : []),
      ] as const) {
        const folded = foldColumns(Float64Array.from(original.get(`${p}.${proj}.weight`)!), 256,
          Float64Array.from(original.get(`${p}.${norm}.weight`)!));
        const sv = singularValues(folded, rows, 256);
        const norms = [...columnNorms(transformed.get(`${p}.${proj}.weight`)!, rows, 256)];
        norms.forEach((n, j) => expect(Math.abs(n - sv[j])).toBeLessThan(1e-5 * sv[0]));
      }
    }
  });

  it('writes config.json with wina_transform and copies the tokenizer and generation config', () => {
    const config = JSON.parse(fs.readFileSync(path.join(outDir, 'config.json'), 'utf8'));
    expect(config.wina_transform).toMatchObject({ version: 1, source: 'f32' });
    expect(config.tie_word_embeddings).toBe(false);
    expect(config.torch_dtype).toBe('float32');
    for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) {
      expect(fs.readFileSync(path.join(outDir, f))).toEqual(fs.readFileSync(path.join(tinyModel, 'f32', f)));
    }
  });

  it('bf16 rounding of the transformed weights moves the logits about as much as bf16 itself does', async () => {
    // BF16 output = RNE of these f32 values (encodeValues is what transformCheckpoint writes with).
    const rounded: Weights = new Map([...transformed].map(([k, v]) => [k,
      decodeToF32('BF16', encodeValues(Float64Array.from(v), 'BF16'), v.length)]));
    const bf16Original = await loadReferenceWeights(tinyModel); // model.safetensors = RNE(f32/) in BF16
    const logits = referenceForward({ ...cfg, tieWordEmbeddings: false }, rounded, PROMPT);
    const bf16Logits = referenceForward(cfg, bf16Original, PROMPT);
    const transformedBf16 = maxRelDiff(originalLogits, logits);
    const plainBf16 = maxRelDiff(originalLogits, bf16Logits);
    // Measured (max |Δlogit| / max |logit| against the f32 original): 5.6e-3 for the transformed model in
    // bf16, 5.7e-3 for the original model in bf16; the argmax agrees at all 12 positions. (Transforming the
    // BF16 checkpoint itself, BF16 in and out, lands 6.4e-3 from the BF16 original.)
    expect(transformedBf16).toBeLessThan(2 * plainBf16);
    expect(transformedBf16).toBeGreaterThan(0);
    const agree = logits.filter((row, t) => argmax(row) === argmax(originalLogits[t])).length;
    expect(agree).toBeGreaterThanOrEqual(PROMPT.length - 1);
  });

  it('a GGUF source gives the same model (config and tokenizer rebuilt from GGUF metadata)', async () => {
    const res = await transformCheckpoint(path.join(tinyModel, 'gguf/tiny-en-llama-f32.gguf'), path.join(tmp, 'gguf'));
    const ckpt = await openCheckpoint(res.outDir);
    expect(ckpt.tokenizer).not.toBeNull();
    expect(ckpt.config).toMatchObject({ ...cfg, residualRotations: true, eosTokenIds: ckpt.config.eosTokenIds });
    const logits = referenceForward(ckpt.config, await loadReferenceWeights(res.outDir), PROMPT);
    expect(maxRelDiff(originalLogits, logits)).toBeLessThan(2e-6);
    const config = JSON.parse(fs.readFileSync(path.join(res.outDir, 'config.json'), 'utf8'));
    expect(config.wina_transform.source).toBe('tiny-en-llama-f32.gguf');
  });
});
