// The column-orthogonalising transform: (a) k_proj and gate_proj come out column-orthogonal with column
// norms equal to their singular values, (b) the transformed model computes the same logits as the original
// (checked with the independent float64 reference forward, which applies the shortcut rotations), and
// (c) a GQA k_proj ([kv_dim, hidden]) has hidden − kv_dim ~zero columns afterwards.
import { describe, expect, it } from 'vitest';
import { Matrix, SVD } from 'ml-matrix';
import type { ModelConfig } from '../lib/loaders/types.js';
import { columnNorms } from '../lib/sparsity/masks.js';
import { transformWeights } from '../lib/sparsity/transform.js';
import { referenceForward } from './helpers/reference.js';

// ---- a random tiny model held in memory --------------------------------------------------------

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

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
  const G = Matrix.from1DArray(out, inDim, Array.from(W));
  const gram = G.transpose().mmul(G);
  let off = 0;
  let diag = 0;
  for (let i = 0; i < inDim; i++) {
    diag = Math.max(diag, gram.get(i, i));
    for (let j = 0; j < inDim; j++) if (i !== j) off = Math.max(off, Math.abs(gram.get(i, j)));
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
